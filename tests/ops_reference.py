"""Brute-force numpy references for the point-set ops (shared by tests/test_ops_*.py)."""
from __future__ import annotations

import numpy as np
import torch


def numpy_fps(xyz: np.ndarray, n_samples: int, lengths: np.ndarray, start: np.ndarray) -> np.ndarray:
    """FPS one set at a time: float ops in the input's precision, summed x then y then z."""
    batch = xyz.shape[0]
    out = np.full((batch, n_samples), -1, dtype=np.int64)
    for b in range(batch):
        pts = xyz[b, : lengths[b]]
        min_dist2 = np.full(len(pts), np.inf, dtype=pts.dtype)
        current = int(start[b])
        for i in range(min(n_samples, len(pts))):
            out[b, i] = current
            diff = pts - pts[current]
            dist2 = diff[:, 0] * diff[:, 0]
            for d in range(1, pts.shape[1]):
                dist2 = dist2 + diff[:, d] * diff[:, d]
            min_dist2 = np.minimum(min_dist2, dist2)
            current = int(np.argmax(min_dist2))  # first maximum: ties go to the lowest index
    return out


def numpy_knn_dist2(query: np.ndarray, points: np.ndarray, k: int, query_lengths, point_lengths) -> np.ndarray:
    """The k smallest squared distances per query (float64), inf past the lengths."""
    batch, m, _ = query.shape
    out = np.full((batch, m, k), np.inf)
    for b in range(batch):
        q = query[b, : query_lengths[b]].astype(np.float64)
        p = points[b, : point_lengths[b]].astype(np.float64)
        dist2 = ((q[:, None, :] - p[None, :, :]) ** 2).sum(-1)
        kk = min(k, len(p))
        out[b, : len(q), :kk] = np.sort(dist2, axis=1)[:, :kk]
    return out


def random_lengths(batch: int, n: int, generator: torch.Generator, ragged: bool) -> torch.Tensor:
    """Lengths in [1, n] with the last set full (so N is the true maximum), or all n."""
    if not ragged:
        return torch.full((batch,), n, dtype=torch.long)
    lengths = torch.randint(1, n + 1, (batch,), generator=generator)
    lengths[-1] = n
    return lengths
