"""Fast CPU kernels compiled with numba, parallel over sets (FPS) or queries (kNN).

Both return exactly what the torch references return: the same float
operations in the same order (squared distances summed x, then y, then z, in
the input's own precision), ties going to the lowest index, padding never
picked, -1 / inf past the lengths. Registered as backend ``"numba"`` on the
CPU when numba imports; dtypes other than float32 / float64 go to the
reference. Kernels are compiled once per dtype and cached on disk
(``cache=True``), so only the first run on a machine pays the compile time.
"""
from __future__ import annotations

import torch

from . import backends
from .fps import fps_torch
from .knn import KNNResult, exact_dist2, knn_torch

__all__ = ["WITH_NUMBA", "fps_numba", "knn_numba"]

try:  # numba is optional: without it the torch backends do the work.
    import numba
    import numpy as np

    WITH_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    WITH_NUMBA = False

_DTYPES = (torch.float32, torch.float64)

if WITH_NUMBA:

    @numba.njit(cache=True, nogil=True)
    def _fps_one(xyz, n_valid, start, n_samples, out, min_dist2):
        """FPS of one set: xyz (N, D), writes out (n_samples,); min_dist2 (N,) is scratch."""
        dim = xyz.shape[1]
        for j in range(n_valid):
            min_dist2[j] = np.inf
        farthest = start
        for i in range(n_samples):
            if i >= n_valid:
                out[i] = -1
                continue
            out[i] = farthest
            best = -1.0
            best_j = 0
            for j in range(n_valid):
                diff = xyz[j, 0] - xyz[farthest, 0]
                d = diff * diff
                for c in range(1, dim):
                    diff = xyz[j, c] - xyz[farthest, c]
                    d = d + diff * diff
                if d < min_dist2[j]:
                    min_dist2[j] = d
                if min_dist2[j] > best:  # strict: ties keep the lowest index
                    best = min_dist2[j]
                    best_j = j
            farthest = best_j

    @numba.njit(parallel=True, cache=True, nogil=True)
    def _fps_batch(xyz, lengths, start, n_samples):
        """xyz (B, N, D), lengths (B,), start (B,) -> (B, n_samples) int64."""
        batch, n, _ = xyz.shape
        out = np.empty((batch, n_samples), dtype=np.int64)
        for b in numba.prange(batch):
            scratch = np.empty(n, dtype=xyz.dtype)
            _fps_one(xyz[b], lengths[b], start[b], n_samples, out[b], scratch)
        return out

    @numba.njit(parallel=True, cache=True, nogil=True)
    def _knn_batch(query, points, k, query_lengths, point_lengths):
        """query (B, M, D), points (B, N, D) -> dist2 (B, M, k), idx (B, M, k).

        Each query keeps its best k in a sorted list (insertion); equal
        distances keep the lower index first.
        """
        batch, m, dim = query.shape
        out_d = np.full((batch, m, k), np.inf, dtype=query.dtype)
        out_i = np.full((batch, m, k), -1, dtype=np.int64)
        for t in numba.prange(batch * m):
            b = t // m
            i = t - b * m
            if i >= query_lengths[b]:
                continue
            best_d = out_d[b, i]
            best_i = out_i[b, i]
            worst = best_d[k - 1]
            for j in range(point_lengths[b]):
                diff = query[b, i, 0] - points[b, j, 0]
                d = diff * diff
                for c in range(1, dim):
                    diff = query[b, i, c] - points[b, j, c]
                    d = d + diff * diff
                if d < worst:
                    pos = k - 1
                    while pos > 0 and best_d[pos - 1] > d:
                        best_d[pos] = best_d[pos - 1]
                        best_i[pos] = best_i[pos - 1]
                        pos -= 1
                    best_d[pos] = d
                    best_i[pos] = j
                    worst = best_d[k - 1]
        return out_d, out_i


def fps_numba(xyz: torch.Tensor, n_samples: int, lengths: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Numba FPS with the signature and results of :func:`pointcoc.ops.fps.fps_torch`.

    Args:
        xyz: Tensor (B, N, D) on the CPU.
        n_samples: number of points to pick per set.
        lengths: LongTensor (B,) with values in [1, N].
        start: LongTensor (B,) giving the first pick of each set.

    Returns:
        LongTensor (B, n_samples); entries past lengths[b] are -1.
    """
    if xyz.dtype not in _DTYPES:
        return fps_torch(xyz, n_samples, lengths, start)
    idx = _fps_batch(xyz.detach().contiguous().numpy(), lengths.numpy(), start.numpy(), n_samples)
    return torch.from_numpy(idx)


def knn_numba(
    query: torch.Tensor,
    points: torch.Tensor,
    k: int,
    query_lengths: torch.Tensor,
    point_lengths: torch.Tensor,
) -> KNNResult:
    """Numba kNN with the signature and results of :func:`pointcoc.ops.knn.knn_torch`.

    Memory is O(B * M * k). When autograd needs them, the distances of the
    chosen points are recomputed with torch (same values, differentiable).
    """
    if query.dtype not in _DTYPES:
        return knn_torch(query, points, k, query_lengths, point_lengths)
    dist2, idx = _knn_batch(
        query.detach().contiguous().numpy(),
        points.detach().contiguous().numpy(),
        k,
        query_lengths.numpy(),
        point_lengths.numpy(),
    )
    idx = torch.from_numpy(idx)
    if torch.is_grad_enabled() and (query.requires_grad or points.requires_grad):
        return KNNResult(exact_dist2(query, points, idx), idx)
    return KNNResult(torch.from_numpy(dist2), idx)


if WITH_NUMBA:
    backends.register("fps", "numba", fps_numba, devices=("cpu",), priority=10)
    backends.register("knn", "numba", knn_numba, devices=("cpu",), priority=10)
