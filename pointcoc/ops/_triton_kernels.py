"""The Triton kernels behind :mod:`pointcoc.ops.triton_backend` (imported on first use: it imports triton)."""
import triton
import triton.language as tl

__all__ = ["fps_kernel", "knn_kernel"]


@triton.jit
def fps_kernel(coords_ptr, lengths_ptr, start_ptr, min_ptr, out_ptr, n, n_samples,
               DIM: tl.constexpr, BLOCK: tl.constexpr):
    """FPS of set b = program_id(0); coords (B, DIM, N) coordinate-major, min (B, N) the starting minimum.

    ``min`` holds the reference's start (inf, or 1e10 with the near-origin rule) and -1 on points never picked.
    """
    b = tl.program_id(0).to(tl.int64)
    length = tl.load(lengths_ptr + b)
    base = coords_ptr + b * DIM * n
    mins = min_ptr + b * n
    out = out_ptr + b * n_samples
    offs = tl.arange(0, BLOCK)
    far = tl.load(start_ptr + b)
    for i in range(0, tl.minimum(length, n_samples)):
        tl.store(out + i, far)
        fx = tl.load(base + far)
        fy = tl.load(base + n + far)
        fz = fx
        if DIM == 3:
            fz = tl.load(base + 2 * n + far)
        best = tl.full([], -1.0, min_ptr.dtype.element_ty)
        best_at = far * 0  # no candidate left (all -1): index 0, as the reference's argmax
        for s in range(0, length, BLOCK):
            j = s + offs
            valid = j < length
            diff = tl.load(base + j, mask=valid, other=0.0) - fx
            dist2 = diff * diff
            diff = tl.load(base + n + j, mask=valid, other=0.0) - fy
            dist2 = dist2 + diff * diff
            if DIM == 3:
                diff = tl.load(base + 2 * n + j, mask=valid, other=0.0) - fz
                dist2 = dist2 + diff * diff
            nearest = tl.minimum(tl.load(mins + j, mask=valid, other=0.0), dist2)
            tl.store(mins + j, nearest, mask=valid)
            nearest = tl.where(valid, nearest, -1.0)
            top = tl.max(nearest, axis=0)
            at = tl.min(tl.where(nearest == top, j, 2147483647), axis=0)  # ties: lowest index
            better = top > best  # an earlier block keeps its tie
            best_at = tl.where(better, at.to(tl.int64), best_at)
            best = tl.where(better, top, best)
        far = best_at
        tl.debug_barrier()  # this sweep's minimums are stored before the next sweep reads them
    for i in range(length, n_samples):
        tl.store(out + i, -1)

@triton.jit
def knn_kernel(q_ptr, p_ptr, qlen_ptr, plen_ptr, out_d_ptr, out_i_ptr, m, n, k,
               DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, K_PAD: tl.constexpr):
    """Queries tile program_id(0) of set program_id(1); q (B, DIM, M), p (B, DIM, N) coordinate-major.

    Writes the k nearest (unsorted, lowest indices among ties) into out (B, M, k), which holds inf / -1.
    """
    b = tl.program_id(1).to(tl.int64)
    qlen = tl.load(qlen_ptr + b)
    plen = tl.load(plen_ptr + b)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    if tl.program_id(0) * BLOCK_M < qlen:
        row_ok = rows < qlen
        qbase = q_ptr + b * DIM * m
        pbase = p_ptr + b * DIM * n
        qx = tl.load(qbase + rows, mask=row_ok, other=0.0)
        qy = tl.load(qbase + m + rows, mask=row_ok, other=0.0)
        qz = qx
        if DIM == 3:
            qz = tl.load(qbase + 2 * m + rows, mask=row_ok, other=0.0)
        slots = tl.arange(0, K_PAD)
        inf = float("inf")
        # Slots past k hold -inf: never the worst, never replaced, never stored.
        best_d = tl.where(slots[None, :] < k, inf, -inf) + tl.zeros([BLOCK_M, K_PAD], qx.dtype)
        best_i = tl.full([BLOCK_M, K_PAD], -1, tl.int32)
        worst = tl.max(best_d, axis=1)
        cols0 = tl.arange(0, BLOCK_N)
        for s in range(0, plen, BLOCK_N):
            cols = s + cols0
            col_ok = cols < plen
            diff = qx[:, None] - tl.load(pbase + cols, mask=col_ok, other=0.0)[None, :]
            dist2 = diff * diff
            diff = qy[:, None] - tl.load(pbase + n + cols, mask=col_ok, other=0.0)[None, :]
            dist2 = dist2 + diff * diff
            if DIM == 3:
                diff = qz[:, None] - tl.load(pbase + 2 * n + cols, mask=col_ok, other=0.0)[None, :]
                dist2 = dist2 + diff * diff
            dist2 = tl.where(col_ok[None, :], dist2, inf)
            # Insert this tile's improving points in (distance, index) order; later tiles
            # have higher indices, so a strict < keeps the lowest indices among ties.
            while tl.max((dist2 < worst[:, None]).to(tl.int32)) > 0:
                v = tl.min(dist2, axis=1)
                j = tl.min(tl.where(dist2 == v[:, None], cols[None, :], 2147483647), axis=1)
                take = v < worst
                pos = tl.min(tl.where(best_d == worst[:, None], slots[None, :], K_PAD), axis=1)
                hit = take[:, None] & (slots[None, :] == pos[:, None])
                best_d = tl.where(hit, v[:, None], best_d)
                best_i = tl.where(hit, j[:, None].to(tl.int32), best_i)
                worst = tl.max(best_d, axis=1)
                dist2 = tl.where(cols[None, :] == j[:, None], inf, dist2)
        at = (b * m + rows)[:, None] * k + slots[None, :]
        keep = row_ok[:, None] & (slots[None, :] < k)
        tl.store(out_d_ptr + at, best_d, mask=keep)
        tl.store(out_i_ptr + at, best_i.to(tl.int64), mask=keep)
