"""k nearest neighbours between two point sets."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from . import backends
from .validation import check_lengths, check_points, check_positive_int, check_same_batch

__all__ = ["knn", "KNNResult", "knn_torch", "knn_mm", "exact_dist2"]

# Upper bound on the number of elements of one (B, m, N) distance chunk: the
# reference holds about five such temporaries (8 MiB each in float32).
_CHUNK_ELEMENTS = 1 << 21
# The matmul path keeps one (B, m, N) chunk (16 MiB in float32): few enough chunks that
# a loaded machine does not pay many parallel-region start-ups, small enough to bound memory.
_MM_CHUNK_ELEMENTS = 1 << 22


class KNNResult(NamedTuple):
    """dist2: (B, M, k) squared distances, ascending; idx: (B, M, k) long indices."""

    dist2: torch.Tensor
    idx: torch.Tensor


def _pairwise_dist2(query: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B, m, D), (B, N, D) -> (B, m, N) squared distances, summed x then y then z."""
    diff = query[:, :, None, 0] - points[:, None, :, 0]
    dist2 = diff * diff
    for d in range(1, query.shape[-1]):
        diff = query[:, :, None, d] - points[:, None, :, d]
        dist2 = dist2 + diff * diff
    return dist2


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
    chunk = max(1, _CHUNK_ELEMENTS // max(1, batch * n))
    dists, idxs = [], []
    for s in range(0, m, chunk):
        dist2 = _pairwise_dist2(query[:, s : s + chunk], points)
        dist2 = dist2.masked_fill(padded_points, float("inf"))
        d, i = torch.topk(dist2, kk, dim=-1, largest=False, sorted=True)
        dists.append(d)
        idxs.append(i)
    return _finish(torch.cat(dists, 1), torch.cat(idxs, 1), k, query_lengths, point_lengths)


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
    """kNN by matrix products in chunks of queries, then exact distances.

    Candidates come from ``|q|^2 - 2 q.p + |p|^2`` (one batched matmul per
    chunk, coordinates centred on each set's mean to limit cancellation), then
    the distances of the k chosen points are recomputed exactly as the
    reference does and re-sorted. The result matches :func:`knn_torch` to
    float rounding: a neighbour may differ only where two candidates' distances
    are within the rounding error of the expansion. CPU and CUDA.

    Args and returns as :func:`knn_torch`.
    """
    batch, m, _ = query.shape
    n = points.shape[1]
    kk = min(k, n)
    valid = torch.arange(n, device=points.device)[None, :] < point_lengths[:, None]
    weights = valid.to(points.dtype)[..., None]
    centre = (points * weights).sum(1, keepdim=True) / point_lengths[:, None, None].to(points.dtype)
    q = (query - centre).detach()
    p = (points - centre).detach()
    q2 = (q * q).sum(-1)
    p2 = (p * p).sum(-1).masked_fill(~valid, float("inf"))
    pt = p.transpose(1, 2)
    chunk = max(1, _MM_CHUNK_ELEMENTS // max(1, batch * n))
    idxs = []
    for s in range(0, m, chunk):
        dist2 = torch.baddbmm(p2[:, None, :], q[:, s : s + chunk], pt, alpha=-2)
        dist2.add_(q2[:, s : s + chunk, None])
        idxs.append(torch.topk(dist2, kk, dim=-1, largest=False, sorted=False).indices)
    idx = torch.cat(idxs, 1)
    idx = idx.masked_fill(idx >= point_lengths[:, None, None], -1)
    dist2 = exact_dist2(query, points, idx)
    dist2, order = torch.sort(dist2, dim=-1, stable=True)
    return _finish(dist2, torch.gather(idx, -1, order), k, query_lengths, point_lengths)


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
        k: int >= 1, neighbours per query.
        query_lengths: LongTensor (B,) with values in [1, M], or None (all M valid).
        point_lengths: LongTensor (B,) with values in [1, N], or None (all N valid).
        backend: force an implementation for this call ("torch", ...).

    Returns:
        KNNResult(dist2, idx): dist2 FloatTensor (B, M, k) of squared distances
        sorted ascending, idx LongTensor (B, M, k) of indices into dim 1 of
        ``points``. Padded points are never returned. Where a set has fewer
        than k points the surplus entries are idx -1 and dist2 inf; rows of
        padded queries are all -1 / inf. Ties in distance may come in any order.
    """
    check_points("query", query)
    check_points("points", points)
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
    k = check_positive_int("k", k)
    batch, m, _ = query.shape
    n = points.shape[1]
    query_lengths = check_lengths("query_lengths", query_lengths, batch, m, device=query.device)
    point_lengths = check_lengths("point_lengths", point_lengths, batch, n, device=query.device)
    impl = backends.resolve("knn", query.device, backend)
    return impl.fn(query.contiguous(), points.contiguous(), k, query_lengths, point_lengths)
