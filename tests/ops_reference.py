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


def kernel_block_size(n: int) -> int:
    """Threads per block that pointnet2_ops launches its FPS kernel with for n points (a power of 2, at most 512)."""
    return max(min(1 << int(np.log2(n)), 512), 1)


def numpy_fps_kernel(xyz: np.ndarray, n_samples: int, lengths: np.ndarray, threads=None) -> np.ndarray:
    """pointnet2_ops' ``furthest_point_sampling_kernel``, transcribed for one set (its valid points) at a time.

    The rule: the first pick is index 0; the distance buffer starts at 1e10;
    every step skips each point with ``x*x + y*y + z*z <= 1e-3`` (float sum,
    double comparison); thread t scans points t, t + threads, ... keeping the
    first strict maximum (``best`` starts at -1, ``besti`` at 0); a tree
    reduction over the threads keeps the upper half's entry only when strictly
    greater. ``threads=None`` uses the kernel's block size for the set's size;
    ``threads=1`` is the sequential scan (ties to the lowest index).
    Entries past lengths[b] are -1.
    """
    batch = xyz.shape[0]
    out = np.full((batch, n_samples), -1, dtype=np.int64)
    for b in range(batch):
        pts = xyz[b, : lengths[b]]
        n = len(pts)
        t_count = kernel_block_size(n) if threads is None else threads
        mag = pts[:, 0] * pts[:, 0]
        for d in range(1, pts.shape[1]):
            mag = mag + pts[:, d] * pts[:, d]
        skip = mag.astype(np.float64) <= 1e-3
        temp = np.full(n, 1e10, dtype=pts.dtype)
        old = 0
        out[b, 0] = old
        rows = -(-n // t_count)
        for j in range(1, min(n_samples, n)):
            diff = pts - pts[old]
            dist = diff[:, 0] * diff[:, 0]
            for d in range(1, pts.shape[1]):
                dist = dist + diff[:, d] * diff[:, d]
            temp = np.where(skip, temp, np.minimum(dist, temp))
            # a skipped point or an empty slot never beats best = -1
            vals = np.full(rows * t_count, -1.0)
            vals[:n] = np.where(skip, -1.0, temp.astype(np.float64))
            vals = vals.reshape(rows, t_count)  # column t: the points thread t scans, in order
            best = vals.max(0)
            besti = np.where(best > -1, vals.argmax(0) * t_count + np.arange(t_count), 0)
            s = t_count // 2
            while s >= 1:
                upper = best[s : 2 * s] > best[:s]
                besti[:s] = np.where(upper, besti[s : 2 * s], besti[:s])
                best[:s] = np.maximum(best[:s], best[s : 2 * s])
                s //= 2
            old = int(besti[0])
            out[b, j] = old
    return out


SPREAD_KINDS = ["clusters 500", "clusters 1e4", "offset 1e5", "outliers", "pixels", "lattice"]


def spread_case(kind, seed):
    """Sets whose extent dwarfs their neighbours' distances: where |q|^2 - 2 q.p + |p|^2 cancels."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    if kind in ("clusters 500", "clusters 1e4"):  # two unit cubes far apart along a random axis, per set
        shift = torch.zeros(2, 1, 3, dtype=torch.float64)
        shift[0, 0, 0], shift[1, 0, 2] = (500.0, 1e4) if kind == "clusters 500" else (1e4, 500.0)
        xyz = torch.cat([rand(2, 200, 3) - shift, rand(2, 200, 3) + shift], 1)
        xyz = xyz[:, torch.randperm(400, generator=g)]
    elif kind == "offset 1e5":
        xyz = rand(2, 400, 3) + 1e5
    elif kind == "outliers":
        xyz = rand(2, 400, 3)
        xyz[:, :8] *= 1e4
    elif kind == "pixels":  # pixel coordinates in pixels: many equal distances
        cells = torch.stack([torch.randperm(224 * 224, generator=g)[:400] for _ in range(2)])
        xyz = torch.stack([cells // 224, cells % 224], -1).double()
    else:  # "lattice": a 3-D integer grid, ties at every shell
        axis = torch.arange(8.0, dtype=torch.float64)
        xyz = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(1, 512, 3).repeat(2, 1, 1)
    n = xyz.shape[1]
    return xyz.float(), torch.tensor([n - 37, n])  # ragged: the first set ends early


def check_against_float64(points, k, lengths, result):
    """Self-kNN: the chosen points' float64 distances are the k smallest of a float64 brute force (vectorised)."""
    p = points.double()
    dist2 = torch.cdist(p, p, compute_mode="donot_use_mm_for_euclid_dist") ** 2
    rows = torch.arange(p.shape[1])
    dist2 = dist2.masked_fill(rows[None, None, :] >= lengths[:, None, None], float("inf"))
    expected = dist2.sort(-1).values[..., :k]
    own = torch.gather(dist2, -1, result.idx.clamp_min(0)).masked_fill(result.idx < 0, float("inf"))
    valid = (rows[None, :] < lengths[:, None])[..., None]
    torch.testing.assert_close(own.sort(-1).values[valid.expand_as(own)], expected[valid.expand_as(own)],
                               rtol=1e-6, atol=1e-9)
    assert bool((result.idx < lengths[:, None, None]).all()) and bool((result.idx[~valid[..., 0]] == -1).all())
    distinct = result.idx.sort(-1).values
    assert bool(((distinct[..., 1:] != distinct[..., :-1]) | (distinct[..., 1:] < 0)).all())


def density_case(kind, seed, n=1200, dim=3):
    """Two sets of one of issue 30's distributions (:func:`pointcoc.bench.ops_rows.density_set`), the second
    300 points shorter (ragged, zero padding), first ``dim`` coordinates: (xyz (2, n, dim), lengths (2,))."""
    from pointcoc.bench.ops_rows import density_set

    xyz = torch.zeros(2, n, dim)
    xyz[0] = density_set(kind, n, seed)[0][0, :, :dim]
    xyz[1, : n - 300] = density_set(kind, n - 300, seed + 1)[0][0, :, :dim]
    return xyz, torch.tensor([n, n - 300])
