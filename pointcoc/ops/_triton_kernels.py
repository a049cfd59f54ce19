"""The Triton kernels behind :mod:`pointcoc.ops.triton_backend` (imported on first use: it imports triton)."""
import triton
import triton.language as tl

__all__ = ["fps_kernel", "knn_kernel", "knn_cells_kernel"]


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
                # Evict the worst (distance, index) pair: among slots at the worst distance, the highest index.
                worst_at = tl.max(tl.where(best_d == worst[:, None], best_i, -1), axis=1)
                pos = tl.min(tl.where((best_d == worst[:, None]) & (best_i == worst_at[:, None]), slots[None, :],
                                      K_PAD), axis=1)
                hit = take[:, None] & (slots[None, :] == pos[:, None])
                best_d = tl.where(hit, v[:, None], best_d)
                best_i = tl.where(hit, j[:, None].to(tl.int32), best_i)
                worst = tl.max(best_d, axis=1)
                dist2 = tl.where(cols[None, :] == j[:, None], inf, dist2)
        at = (b * m + rows)[:, None] * k + slots[None, :]
        keep = row_ok[:, None] & (slots[None, :] < k)
        tl.store(out_d_ptr + at, best_d, mask=keep)
        tl.store(out_i_ptr + at, best_i.to(tl.int64), mask=keep)


@triton.jit
def knn_cells_kernel(q_ptr, order_ptr, n_rows, m, origin_ptr, inv_ptr, dims_ptr, offset_ptr, starts_ptr, coords_ptr,
                     index_ptr, steps_ptr, gap_ptr, n_steps, max_per_cell, shrink, floor, out_d_ptr, out_i_ptr,
                     settled_ptr, k, DIM: tl.constexpr, BLOCK_M: tl.constexpr, K_PAD: tl.constexpr):
    """kNN through the cells of :func:`pointcoc.ops.cells.build_cells`, for queries order[pid * BLOCK_M ...].

    q (B * M, DIM) row-major; order: flat query indices b * M + i, valid ones by cell. Cells are
    visited in the order of ``steps`` (S, 3) around each query's cell until ``gap`` (S + 1,), a lower
    bound in squared cells on every later offset, exceeds the k-th distance found; a cell whose own
    gap does is skipped. Candidates are kept in (distance, index) order. Writes the k nearest
    (unsorted) into out (B, M, k), which holds inf / -1, and settled[t] = 1 where the offsets
    settled the query (the caller redoes the others by brute force).
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    t = tl.load(order_ptr + rows, mask=row_ok, other=0)
    b = t // m
    scale = tl.load(inv_ptr + b, mask=row_ok, other=1.0)
    nx = tl.load(dims_ptr + 3 * b, mask=row_ok, other=1)
    ny = tl.load(dims_ptr + 3 * b + 1, mask=row_ok, other=1)
    nz = tl.load(dims_ptr + 3 * b + 2, mask=row_ok, other=1)
    base = tl.load(offset_ptr + b, mask=row_ok, other=0)
    qx = tl.load(q_ptr + t * DIM, mask=row_ok, other=0.0)
    qy = tl.load(q_ptr + t * DIM + 1, mask=row_ok, other=0.0)
    tx = (qx.to(tl.float64) - tl.load(origin_ptr + 3 * b, mask=row_ok, other=0.0)) * scale
    ty = (qy.to(tl.float64) - tl.load(origin_ptr + 3 * b + 1, mask=row_ok, other=0.0)) * scale
    qz = qx
    tz = tx * 0 + 0.5
    if DIM == 3:
        qz = tl.load(q_ptr + t * DIM + 2, mask=row_ok, other=0.0)
        tz = (qz.to(tl.float64) - tl.load(origin_ptr + 3 * b + 2, mask=row_ok, other=0.0)) * scale
    cx = tl.minimum(tl.maximum(tl.floor(tx).to(tl.int64), 0), nx - 1)
    cy = tl.minimum(tl.maximum(tl.floor(ty).to(tl.int64), 0), ny - 1)
    cz = tl.minimum(tl.maximum(tl.floor(tz).to(tl.int64), 0), nz - 1)
    slots = tl.arange(0, K_PAD)
    inf = float("inf")
    # Slots past k hold -inf: never the worst, never replaced, never stored.
    best_d = tl.where(slots[None, :] < k, inf, -inf) + tl.zeros([BLOCK_M, K_PAD], qx.dtype)
    best_i = tl.full([BLOCK_M, K_PAD], -1, tl.int64)
    limit = tl.full([BLOCK_M], inf, tl.float64)  # the k-th distance in squared cells, widened by the margin
    done = ~row_ok
    s = 0
    while s < n_steps:
        done = done | (tl.load(gap_ptr + s) > limit)
        if tl.min(done.to(tl.int32)) == 1:
            s = n_steps + 1  # every row is settled
        else:
            gx = cx + tl.load(steps_ptr + 3 * s)
            gy = cy + tl.load(steps_ptr + 3 * s + 1)
            gz = cz + tl.load(steps_ptr + 3 * s + 2)
            ok = ~done & (gx >= 0) & (gx < nx) & (gy >= 0) & (gy < ny) & (gz >= 0) & (gz < nz)
            ex = tl.maximum(tl.maximum(gx - tx, tx - gx - 1.0), 0.0)
            ey = tl.maximum(tl.maximum(gy - ty, ty - gy - 1.0), 0.0)
            ez = tl.maximum(tl.maximum(gz - tz, tz - gz - 1.0), 0.0)
            ex = tl.maximum(ex - 1e-7, 0.0)
            ey = tl.maximum(ey - 1e-7, 0.0)
            ez = tl.maximum(ez - 1e-7, 0.0)
            ok = ok & (ex * ex + ey * ey + ez * ez <= limit)
            cell = base + (gx * ny + gy) * nz + gz
            lo = tl.load(starts_ptr + cell, mask=ok, other=0)
            count = tl.load(starts_ptr + cell + 1, mask=ok, other=0) - lo
            for j in range(0, max_per_cell):
                has = j < count
                p = lo + j
                diff = qx - tl.load(coords_ptr + p * DIM, mask=has, other=0.0)
                d = diff * diff
                diff = qy - tl.load(coords_ptr + p * DIM + 1, mask=has, other=0.0)
                d = d + diff * diff
                if DIM == 3:
                    diff = qz - tl.load(coords_ptr + p * DIM + 2, mask=has, other=0.0)
                    d = d + diff * diff
                at = tl.load(index_ptr + p, mask=has, other=0)
                worst = tl.max(best_d, axis=1)
                worst_at = tl.max(tl.where(best_d == worst[:, None], best_i, -1), axis=1)
                take = has & ((d < worst) | ((d == worst) & (at < worst_at)))
                pos = tl.min(tl.where((best_d == worst[:, None]) & (best_i == worst_at[:, None]), slots[None, :],
                                      K_PAD), axis=1)
                hit = take[:, None] & (slots[None, :] == pos[:, None])
                best_d = tl.where(hit, d[:, None], best_d)
                best_i = tl.where(hit, at[:, None], best_i)
            kth = tl.max(best_d, axis=1)
            limit = tl.where(kth < inf, (kth.to(tl.float64) + floor) / shrink * scale * scale, limit)
            s += 1
    done = done | (tl.load(gap_ptr + n_steps) > limit)
    out = t[:, None] * k + slots[None, :]
    keep = row_ok[:, None] & (slots[None, :] < k)
    tl.store(out_d_ptr + out, best_d, mask=keep)
    tl.store(out_i_ptr + out, best_i, mask=keep)
    tl.store(settled_ptr + t, done.to(tl.int8), mask=row_ok)
