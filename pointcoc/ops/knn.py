"""k nearest neighbours between two point sets."""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from . import backends
from .library import knn_op
from .validation import check_count, check_lengths, check_points, check_same_batch

__all__ = ["knn", "KNNResult", "knn_torch", "knn_mm", "exact_dist2", "exact_among_candidates", "sort_pairs"]

# Upper bound on the number of elements of one (B, m, N) distance chunk: the
# reference holds about five such temporaries (8 MiB each in float32).
_CHUNK_ELEMENTS = 1 << 21
# Queries per centred tile of the matmul path (see knn_mm).
_TILE = 64
# The matmul path keeps one (B, m, N) chunk (16 MiB in float32): few enough chunks that
# a loaded machine does not pay many parallel-region start-ups, small enough to bound memory.
_MM_CHUNK_ELEMENTS = 1 << 22


class KNNResult(NamedTuple):
    """dist2: (B, M, k) squared distances, ascending; idx: (B, M, k) long indices."""

    dist2: torch.Tensor
    idx: torch.Tensor


def _pairwise_dist2(query: torch.Tensor, points: torch.Tensor, out: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """(B, m, D), (B, N, D) -> (B, m, N) squared distances, summed x then y then z, written into ``out``.

    ``out`` and ``work`` are (B, m, N) buffers that the caller reuses from chunk to chunk: fresh (B, m, N)
    temporaries for every chunk made glibc's heap grow to many GiB over one 50k-point self-kNN (its mmap threshold
    rises to the chunk size after the first free, and the freed chunks fragment). Each square is rounded before
    it is added, as ``dist2 + diff * diff`` does.
    """
    torch.sub(query[:, :, None, 0], points[:, None, :, 0], out=work)
    torch.mul(work, work, out=out)
    for d in range(1, query.shape[-1]):
        torch.sub(query[:, :, None, d], points[:, None, :, d], out=work)
        out.add_(work.mul_(work))
    return out


def knn_torch(
    query: torch.Tensor,
    points: torch.Tensor,
    k: int,
    query_lengths: torch.Tensor,
    point_lengths: torch.Tensor,
) -> KNNResult:
    """Reference kNN: exact distances in chunks of queries, then topk.

    Args:
        query: Tensor (B, M, D); points: Tensor (B, N, D); k: int >= 1;
        query_lengths, point_lengths: LongTensor (B,).

    Returns:
        KNNResult with dist2 (B, M, k) and idx (B, M, k); padding as in :func:`knn`.
    """
    batch, m, _ = query.shape
    n = points.shape[1]
    kk = min(k, n)
    padded_points = torch.arange(n, device=points.device)[None, None, :] >= point_lengths[:, None, None]
    chunk = max(1, min(m, _CHUNK_ELEMENTS // max(1, batch * n)))
    dtype = torch.promote_types(query.dtype, points.dtype)
    out = torch.empty(batch, chunk, n, dtype=dtype, device=query.device)
    work = torch.empty_like(out)
    dists, idxs = [], []
    for s in range(0, m, chunk):
        size = min(chunk, m - s)
        dist2 = _pairwise_dist2(query[:, s : s + size], points, out[:, :size], work[:, :size])
        dist2.masked_fill_(padded_points, float("inf"))
        d, i = _lowest_k(dist2, kk)
        dists.append(d)
        idxs.append(i)
    return _finish(torch.cat(dists, 1), torch.cat(idxs, 1), k, query_lengths, point_lengths)


def _lowest_k(dist2: torch.Tensor, k: int):
    """The k smallest of each row in (distance, index) order: ties at the k-th distance go to the lowest indices.

    Args:
        dist2: Tensor (B, m, N), N >= k. Returns (values, indices), each (B, m, k).
    """
    n = dist2.shape[-1]
    values, idx = torch.topk(dist2, min(k + 1, n), dim=-1, largest=False, sorted=True)
    if k < n:
        # Only where the (k+1)-th equals the k-th can topk have chosen among equal points at the boundary.
        tied = (values[..., k] == values[..., k - 1]).nonzero(as_tuple=True)
        values, idx = values[..., :k].contiguous(), idx[..., :k].contiguous()
        if len(tied[0]):
            rows, kth = dist2[tied], values[tied][:, -1:]
            below, at = rows < kth, rows == kth
            take = below | (at & (at.cumsum(-1) <= k - below.sum(-1, keepdim=True)))
            chosen = take.nonzero()[:, -1].view(-1, k)  # row-major: ascending index within a row
            idx[tied], values[tied] = chosen, torch.gather(rows, -1, chosen)
    return sort_pairs(values, idx, n)


def sort_pairs(dist2: torch.Tensor, idx: torch.Tensor, n: int):
    """Each row's (distance, index) pairs in ascending order: by index first, then stably by distance.

    Args:
        dist2: Tensor (..., k); idx: LongTensor (..., k), -1 for none (placed after index n - 1).
    """
    order = torch.argsort(idx.masked_fill(idx < 0, n), dim=-1, stable=True)
    dist2, idx = torch.gather(dist2, -1, order), torch.gather(idx, -1, order)
    order = torch.argsort(dist2, dim=-1, stable=True)
    return torch.gather(dist2, -1, order), torch.gather(idx, -1, order)


def exact_dist2(query: torch.Tensor, points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Squared distances from each query to its chosen points, as the reference computes them.

    Args:
        query: Tensor (B, M, D); points: Tensor (B, N, D).
        idx: LongTensor (B, M, k) with values in [-1, N).

    Returns:
        Tensor (B, M, k): coordinates summed x, then y, then z, bit-identical
        to :func:`knn_torch`'s values and differentiable; inf where idx is -1.
    """
    batch, m, k = idx.shape
    dim = points.shape[-1]
    flat = idx.clamp_min(0).reshape(batch, m * k, 1).expand(-1, -1, dim)
    picked = torch.gather(points, 1, flat).reshape(batch, m, k, dim)
    diff = query[:, :, None, 0] - picked[..., 0]
    dist2 = diff * diff
    for d in range(1, dim):
        diff = query[:, :, None, d] - picked[..., d]
        dist2 = dist2 + diff * diff
    return dist2.masked_fill(idx < 0, float("inf"))


def knn_mm(
    query: torch.Tensor,
    points: torch.Tensor,
    k: int,
    query_lengths: torch.Tensor,
    point_lengths: torch.Tensor,
) -> KNNResult:
    """kNN by matrix products, exact at any extent: provable candidates, then exact distances.

    Queries are put in Z-order (a space-filling curve) and cut into tiles of
    ``_TILE``; each tile is centred on its own mean, so that the expansion
    ``|q|^2 - 2 q.p + |p|^2`` (one batched matmul per chunk of tiles) rounds
    in proportion to the tile's extent, not the set's. The expansion is shrunk
    by a bound on all its rounding errors (:func:`_expansion_margin`), so it is
    a lower bound on every reference distance; the ``2k + 8`` points with the
    smallest bounds are candidates, their distances are recomputed exactly as
    the reference does, and a row is accepted only when the k-th exact
    candidate distance is at most the smallest bound of every other point.
    Other rows (rare: the tile around them is spread out relative to their
    neighbours' gaps) get the reference's result. So the distances are always
    bit-identical to :func:`knn_torch`'s; indices differ only among equal
    distances. float16 / bfloat16 and coordinates near the float range go to
    the reference. CPU and CUDA.

    Args and returns as :func:`knn_torch`; dist2 is not differentiable (:func:`knn` makes it so).
    """
    if query.dtype not in (torch.float32, torch.float64) or not _expansion_is_finite(query, points):
        return knn_torch(query, points, k, query_lengths, point_lengths)
    batch, m, dim = query.shape
    n = points.shape[1]
    kk = min(k, n)
    n_cand = min(n, kk + 8)
    shrink, floor = _expansion_margin(query.dtype, query.device)
    with torch.no_grad():
        order = _curve_order(query, query_lengths)
        rows = -(-m // _TILE) * _TILE
        sorted_q = torch.gather(query.detach(), 1, order[..., None].expand(-1, -1, dim))
        sorted_q = torch.cat([sorted_q, sorted_q.new_zeros(batch, rows - m, dim)], 1)
        row_valid = torch.arange(rows, device=query.device)[None, :] < query_lengths[:, None]
        point_valid = torch.arange(n, device=points.device)[None, :] < point_lengths[:, None]
        step = _TILE * max(1, _MM_CHUNK_ELEMENTS // max(1, batch * _TILE * n))
        dists, idxs = [], []
        for s in range(0, rows, step):
            q, valid = sorted_q[:, s : s + step], row_valid[:, s : s + step]
            cand, bound = _candidates(q, valid, points.detach(), point_valid, n_cand, shrink, floor)
            d, i = exact_among_candidates(q, points.detach(), cand, bound, kk, valid, point_lengths)
            dists.append(d)
            idxs.append(i)
        where = order[..., None].expand(-1, -1, kk)
        idx = torch.empty_like(where).scatter_(1, where, torch.cat(idxs, 1)[:, :m])
        dist2 = torch.empty(batch, m, kk, dtype=query.dtype, device=query.device)
        dist2.scatter_(1, where, torch.cat(dists, 1)[:, :m])
    return _finish(dist2, idx, k, query_lengths, point_lengths)


def _expansion_is_finite(query: torch.Tensor, points: torch.Tensor) -> bool:
    """Whether every term of the centred expansion stays far from overflow."""
    limit = math.sqrt(torch.finfo(query.dtype).max) / 16
    return bool(torch.maximum(query.abs().amax(), points.abs().amax()) <= limit)


def _matmul_input_roundoff(dtype: torch.dtype, device: torch.device) -> float:
    """Relative error of a float32 matmul's inputs under the current precision settings.

    0 in full precision (``torch.get_float32_matmul_precision() == "highest"``
    and no TF32 / bfloat16 setting for the device's backend), ``2**-10`` for
    TF32, ``2**-7`` for bfloat16, and that worst case when the settings cannot
    be read. Float64 matmuls are always full precision.
    """
    if dtype == torch.float64:
        return 0.0
    reduced = {"highest": 0.0, "ieee": 0.0, "none": 0.0, "high": 2.0**-10, "tf32": 2.0**-10,
               "medium": 2.0**-7, "bf16": 2.0**-7}
    try:
        matmul = torch.backends.cuda.matmul if device.type == "cuda" else torch.backends.mkldnn.matmul
        settings = [torch.get_float32_matmul_precision(), getattr(matmul, "fp32_precision", "none")]
        return max(reduced[s] for s in settings)
    except (RuntimeError, KeyError, AttributeError):  # mixed legacy and new APIs, unknown setting, older torch
        return 2.0**-7


def _expansion_margin(dtype: torch.dtype, device: torch.device):
    """(shrink, floor) with ``shrink * (|q|^2 + |p|^2) - 2 q.p - floor <= reference dist2``, all as rounded.

    With u the unit roundoff and u_mm the matmul's input roundoff, the rounding
    of the centring (4u), of the reference's differences, squares and sums
    (10u), and of the expansion's norms, matmul, scaling and sums (10u + 2u_mm)
    are each at most that times ``|q|^2 + |p|^2`` (centred), for D <= 3. The
    shrink takes 64u + 4u_mm, over twice the total; ``floor`` covers underflow.
    """
    info = torch.finfo(dtype)
    alpha = 64 * (info.eps / 2) + 4 * _matmul_input_roundoff(dtype, device)
    return 1.0 - alpha, 64 * info.tiny


def _curve_order(query: torch.Tensor, query_lengths: torch.Tensor) -> torch.Tensor:
    """LongTensor (B, M): each set's valid queries in Z-order of their cells, padding last."""
    batch, m, dim = query.shape
    bits = 30 // dim
    valid = (torch.arange(m, device=query.device)[None, :] < query_lengths[:, None])[..., None]
    low = query.masked_fill(~valid, float("inf")).amin(1, keepdim=True)
    high = query.masked_fill(~valid, float("-inf")).amax(1, keepdim=True)
    # Cubic cells: the curve splits the longest axis first, so far-apart parts come out in few runs.
    extent = (high - low).amax(-1, keepdim=True).clamp_min(torch.finfo(query.dtype).tiny)
    scale = (2**bits - 1) / extent
    cell = ((query - low) * scale).clamp(0, 2**bits - 1).long()
    code = torch.zeros(batch, m, dtype=torch.long, device=query.device)
    for bit in range(bits):
        for d in range(dim):
            code |= ((cell[..., d] >> bit) & 1) << (bit * dim + d)
    return torch.argsort(code.masked_fill(~valid[..., 0], 1 << 62), dim=1, stable=True)


def _candidates(q, row_valid, points, point_valid, n_cand, shrink, floor):
    """The ``n_cand`` points with the smallest lower bounds per query, and the largest of those bounds.

    Args:
        q: Tensor (B, T * _TILE, D) of queries, T tiles each centred on its valid queries' mean.
        row_valid: BoolTensor (B, T * _TILE); points: Tensor (B, N, D); point_valid: BoolTensor (B, N).

    Returns:
        cand LongTensor (B, T * _TILE, n_cand); bound Tensor (B, T * _TILE): every point
        outside cand has a reference distance >= bound.
    """
    batch, rows, dim = q.shape
    n = points.shape[1]
    tiles = rows // _TILE
    tq = q.view(batch, tiles, _TILE, dim)
    weight = row_valid.view(batch, tiles, _TILE, 1).to(q.dtype)
    centre = (tq * weight).sum(2, keepdim=True) / weight.sum(2, keepdim=True).clamp_min(1)
    qc = (tq - centre).view(batch * tiles, _TILE, dim)
    pc = (points[:, None] - centre).view(batch * tiles, n, dim)
    base = ((pc * pc).sum(-1) * shrink - floor).view(batch, tiles, n)
    base = base.masked_fill(~point_valid[:, None, :], float("inf")).view(batch * tiles, 1, n)
    lower = torch.baddbmm(base, qc, pc.transpose(1, 2), alpha=-2)
    lower.add_(((qc * qc).sum(-1) * shrink)[..., None])
    bound, cand = torch.topk(lower, n_cand, dim=-1, largest=False, sorted=False)
    return cand.view(batch, rows, n_cand), bound.amax(-1).view(batch, rows)


def exact_among_candidates(query, points, cand, bound, k, query_valid, point_lengths) -> KNNResult:
    """The k nearest of each query, from candidates and a lower bound on every other point.

    Args:
        query: Tensor (B, M, D); points: Tensor (B, N, D).
        cand: LongTensor (B, M, C), C >= k, candidate indices (values >= point_lengths are ignored).
        bound: Tensor (B, M): every point not in cand has a reference squared distance >= bound.
        k: neighbours per query, k <= N.
        query_valid: BoolTensor (B, M), the rows to answer; point_lengths: LongTensor (B,).

    Returns:
        KNNResult (B, M, k) in (distance, index) order, bit-identical to :func:`knn_torch`'s.
        A row whose k-th exact candidate distance is not below its bound (and whose
        candidates do not cover its whole set) is recomputed by the reference.
    """
    n = points.shape[1]
    cand = cand.masked_fill((cand < 0) | (cand >= point_lengths[:, None, None]), n).sort(-1).values  # by index
    cand = cand.masked_fill(cand == n, -1)
    dist2, order = torch.sort(exact_dist2(query, points, cand), dim=-1, stable=True)  # ties keep index order
    dist2, idx = dist2[..., :k], torch.gather(cand, -1, order[..., :k])
    # Strictly: a point outside cand at the k-th distance might have a lower index (ties go to the lowest).
    proven = (bound > dist2[..., -1]) | (cand.shape[-1] >= point_lengths)[:, None]
    redo = query_valid & ~proven
    if bool(redo.any()):
        for b in redo.any(1).nonzero()[:, 0].tolist():
            rows = redo[b].nonzero()[:, 0]
            one = torch.ones(1, dtype=torch.long, device=query.device)
            ref = knn_torch(query[b : b + 1, rows], points[b : b + 1], k, one * len(rows), point_lengths[b : b + 1])
            dist2[b, rows], idx[b, rows] = ref.dist2[0], ref.idx[0]
    return KNNResult(dist2, idx)


def _finish(dist2, idx, k, query_lengths, point_lengths) -> KNNResult:
    """Pad to k columns and mark missing neighbours and padded queries (idx -1, dist2 inf)."""
    batch, m, kk = idx.shape
    if kk < k:
        dist2 = torch.cat([dist2, dist2.new_full((batch, m, k - kk), float("inf"))], -1)
        idx = torch.cat([idx, idx.new_full((batch, m, k - kk), -1)], -1)
    col = torch.arange(k, device=idx.device)[None, None, :]
    row = torch.arange(m, device=idx.device)[None, :, None]
    missing = (col >= point_lengths[:, None, None]) | (row >= query_lengths[:, None, None])
    return KNNResult(dist2.masked_fill(missing, float("inf")), idx.masked_fill(missing, -1))


backends.register("knn", "torch", knn_torch, devices=("cpu", "cuda"), priority=0)
backends.register("knn", "mm", knn_mm, devices=("cpu", "cuda"), priority=5)


def knn(
    query: torch.Tensor,
    points: torch.Tensor,
    k: int,
    query_lengths: Optional[torch.Tensor] = None,
    point_lengths: Optional[torch.Tensor] = None,
    backend: Optional[str] = None,
) -> KNNResult:
    """For each query point, its ``k`` nearest points of the same set.

    Args:
        query: FloatTensor (B, M, D) with D in {2, 3} giving query positions.
        points: FloatTensor (B, N, D) giving the positions searched.
        k: int in [1, max(N, 1024)], neighbours per query. k may exceed N (a
            model's fixed k on small sets): the surplus columns are padding.
            Larger values raise ValueError before anything is allocated
            (``pointcoc.ops.validation.MAX_PADDING``).
        query_lengths: LongTensor (B,) with values in [1, M], or None (all M valid).
        point_lengths: LongTensor (B,) with values in [1, N], or None (all N valid).
        backend: force an implementation for this call ("torch", ...).

    Returns:
        KNNResult(dist2, idx): dist2 FloatTensor (B, M, k) of squared distances
        sorted ascending, idx LongTensor (B, M, k) of indices into dim 1 of
        ``points``. Padded points are never returned. Where a set has fewer
        than k points the surplus entries are idx -1 and dist2 inf; rows of
        padded queries are all -1 / inf. Every backend returns the exact k
        nearest points at any coordinates (far-apart parts, large offsets,
        outliers), with distances bit-identical to the ``"torch"`` reference's
        (squared differences summed x, then y, then z) and the same indices:
        points at equal distance come in ascending index order, and a tie at
        the k-th distance keeps the lowest indices. So a trained model gives
        the same logits on every backend.
        dist2 is differentiable with respect to ``query`` and ``points``.

    Runs as the custom op ``torch.ops.pointcoc.knn`` (:mod:`pointcoc.ops.library`):
    one node under ``torch.compile``.
    """
    check_points("query", query, finite=False)  # the values are checked inside the op
    check_points("points", points, finite=False)
    check_same_batch("query", query, "points", points)
    if query.shape[-1] != points.shape[-1]:
        raise ValueError(
            f"query and points must have the same coordinate dimension D; "
            f"got {query.shape[-1]} and {points.shape[-1]}"
        )
    if query.dtype != points.dtype:
        raise ValueError(f"query and points must have the same dtype; got {query.dtype} and {points.dtype}")
    if query.device != points.device:
        raise ValueError(f"query and points must be on the same device; got {query.device} and {points.device}")
    batch, m, _ = query.shape
    n = points.shape[1]
    k = check_count("k", k, n)
    query_lengths = check_lengths("query_lengths", query_lengths, batch, m, device=query.device, values=False)
    point_lengths = check_lengths("point_lengths", point_lengths, batch, n, device=query.device, values=False)
    dist2, idx = knn_op(query.detach(), points.detach(), k, query_lengths, point_lengths, backend)
    if torch.is_grad_enabled() and (query.requires_grad or points.requires_grad):
        dist2 = exact_dist2(query, points, idx)  # the same values, differentiable
    return KNNResult(dist2, idx)
