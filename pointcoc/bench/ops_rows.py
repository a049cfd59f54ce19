"""Benchmark rows for single ops and layers: each compares pointcoc's form with a reference form."""
from __future__ import annotations

from typing import List

import torch

from .. import ops
from ..ops import backends
from ..ops.fps import fps_torch
from .measure import MIN_PAIRS, Row, SectionUnavailable, import_or_skip, peak_memory, random_tensor, time_pair

__all__ = ["pixel_set_batch", "DENSITY_KINDS", "density_set", "bench_fps", "bench_fps_large", "bench_knn",
           "bench_knn_large", "bench_knn_crossover", "bench_knn_density", "bench_gather", "bench_pointwise",
           "bench_transfer", "bench_masked_norm", "bench_context_cluster"]


def pixel_set_batch(fmt: str, height: int, width: int, batch: int, keep: float = 1.0, seed: int = 0):
    """A batch of pixel sets as the data sets make them, for benchmarks and tests.

    Args:
        fmt: a pixel format of :data:`pointcoc.data.pixels.PIXEL_FORMATS` without depth
            ("regular", "discrete", "masked", "irregular").
        height, width: image size; batch: number of sets; keep: fraction of pixels kept.

    Returns:
        (xyz FloatTensor (B, N, 2) of pixel coordinates ``(i / w - 0.5, j / h - 0.5)``, the kept
        pixels of each set first in raster order and padding (zeros) after; lengths LongTensor (B,)),
        with N the largest set.
    """
    from ..data.pixels import keep_mask, pixel_coordinates

    grid = pixel_coordinates(height, width).reshape(-1, 2)
    g = torch.Generator().manual_seed(seed)
    sets = [grid[keep_mask(fmt, height, width, keep, generator=g).reshape(-1)] for _ in range(batch)]
    lengths = torch.tensor([len(s) for s in sets])
    xyz = torch.zeros(batch, int(lengths.max()), 2)
    for b, s in enumerate(sets):
        xyz[b, : len(s)] = s
    return xyz, lengths


DENSITY_KINDS = ("uniform", "outlier", "blob + sparse", "gaussian clusters")


def density_set(kind: str, n: int, seed: int = 0):
    """One 3-D set of ``n`` points whose density is uniform or far from it (issue 30), for benchmarks and tests.

    Args:
        kind: one of :data:`DENSITY_KINDS`: "uniform" (in [0, 1)^3); "outlier" (``n - 1`` uniform points
            and one at (100, 100, 100)); "blob + sparse" (90 % uniform in a 0.01 cube, 10 % uniform in
            [-100, 100)^3); "gaussian clusters" (10 clusters of sigma 0.01 around uniform centres).
        n: number of points (>= 10); seed: the generator's seed.

    Returns:
        (xyz FloatTensor (1, n, 3), lengths LongTensor (1,) holding n). The points come in random order.
    """
    g = torch.Generator().manual_seed(seed)
    if kind == "uniform":
        xyz = torch.rand(n, 3, generator=g)
    elif kind == "outlier":
        xyz = torch.cat([torch.rand(n - 1, 3, generator=g), torch.full((1, 3), 100.0)])
    elif kind == "blob + sparse":
        dense = n * 9 // 10
        xyz = torch.cat([torch.rand(dense, 3, generator=g) * 0.01, torch.rand(n - dense, 3, generator=g) * 200 - 100])
    elif kind == "gaussian clusters":
        centres = torch.rand(10, 3, generator=g)
        xyz = centres[torch.arange(n) % 10] + 0.01 * torch.randn(n, 3, generator=g)
    else:
        raise ValueError(f"kind must be one of {DENSITY_KINDS}; got {kind!r}")
    xyz = xyz[torch.randperm(n, generator=g)]
    return xyz[None].contiguous(), torch.tensor([n])


def bench_fps(device="cpu", quick=False, cases=((32, 1024, 512), (8, 8192, 2048))) -> List[Row]:
    """FPS: the default backend vs the plain torch loop (and pytorch3d when importable).

    ``cases``: (B, N, n_samples) triples.
    """
    repeat = MIN_PAIRS if quick else 7
    rows = []
    for batch, n, n_samples in cases:
        xyz = random_tensor((batch, n, 3), device, 0)
        lengths = torch.full((batch,), n, dtype=torch.long, device=device)
        start = torch.zeros(batch, dtype=torch.long, device=device)
        ours_name = backends.resolve("fps", xyz.device).name
        ours = lambda: ops.farthest_point_sample(xyz, n_samples)  # noqa: E731
        ref = lambda: fps_torch(xyz, n_samples, lengths, start, False)  # noqa: E731
        same = bool(torch.equal(ours(), ref()))
        t_ours, t_ref = time_pair(ours, ref, device, repeat=repeat)
        case = f"B={batch}, N={n} -> {n_samples}"
        note = "same indices" if same else "INDICES DIFFER"
        rows.append(Row("FPS", case, ours_name, "torch loop", t_ours, t_ref, note=note))
        if "pytorch3d" in ops.available_backends("fps") and ours_name != "pytorch3d":
            p3d = lambda: ops.farthest_point_sample(xyz, n_samples, backend="pytorch3d")  # noqa: E731
            t_ours, t_p3d = time_pair(ours, p3d, device, repeat=repeat)
            rows.append(Row("FPS", case, ours_name, "pytorch3d", t_ours, t_p3d))
    return rows


FPS_LARGE_CASES = (("uniform 3-D", 100_000, 4096), ("pixels regular", 224, 224 * 224 // 4),
                   ("pixels discrete", 224, 224 * 224 // 8))


def bench_fps_large(device="cpu", quick=False, cases=FPS_LARGE_CASES, brute=True) -> List[Row]:
    """FPS of one large set: the default CPU backend vs fpsample (exact ``fps_sampling`` and the inexact
    bucketed ``bucket_fps_kdline_sampling``, h=7), and today's brute force.

    ``cases``: (kind, size, samples) with kind "uniform 3-D" (``size`` random points) or "pixels FMT"
    (a ``size`` x ``size`` pixel set, 50 % kept unless regular); the pixel rows pick as many points as
    ``pointmlp_coc_pixels``' first stage (a quarter of the set). fpsample starts at index 0, as ours.
    """
    if torch.device(device).type != "cpu":
        raise SectionUnavailable("fps_large compares CPU implementations")
    fps_sampling = import_or_skip("fpsample", "fps_sampling")
    bucket_fps = import_or_skip("fpsample", "bucket_fps_kdline_sampling")
    repeat = MIN_PAIRS if quick else 5
    rows = []
    for kind, size, samples in cases:
        if kind.startswith("pixels"):
            fmt = kind.split()[1]
            xyz, lengths = pixel_set_batch(fmt, size, size, batch=1, keep=0.5, seed=0)
            case = f"{size}x{size} pixels, {fmt}" + ("" if fmt == "regular" else " 50%")
        else:
            xyz, lengths = _uniform_sets(1, size, 3, 5)
            case = f"{size:,} uniform 3-D points"
        samples = min(samples, int(lengths[0]))
        case += f" ({int(lengths[0]):,}) -> {samples:,}"
        ours_name = backends.resolve("fps", xyz.device).name
        ours = lambda: ops.farthest_point_sample(xyz, samples, lengths)  # noqa: E731
        pts = xyz[0, : int(lengths[0])].numpy()
        exact = lambda: fps_sampling(pts, samples, start_idx=0)  # noqa: E731
        bucket = lambda: bucket_fps(pts, samples, h=7, start_idx=0)  # noqa: E731
        picked = ours()[0]
        same = torch.equal(picked, torch.from_numpy(exact().astype("int64")))
        t_ours, t_ref = time_pair(ours, exact, device, repeat=repeat)
        rows.append(Row("FPS large", case, ours_name, "fpsample fps_sampling (exact)", t_ours, t_ref,
                        note="same indices" if same else "indices differ (ties broken otherwise)"))
        t_ours, t_ref = time_pair(ours, bucket, device, repeat=repeat)
        rows.append(Row("FPS large", case, ours_name, "fpsample bucket kd-line h=7 (not exact)", t_ours, t_ref))
        if brute:
            slow = lambda: fps_without_cells(xyz, samples, lengths)  # noqa: E731

            same = torch.equal(slow(), ours())
            t_ours, t_slow = time_pair(ours, slow, device, repeat=MIN_PAIRS, warmup=0)
            rows.append(Row("FPS large", case, ours_name, "numba brute force (before)", t_ours, t_slow,
                            note="same indices" if same else "INDICES DIFFER"))
    return rows


def _knn_note(dist2: torch.Tensor, exact: torch.Tensor) -> str:
    """Every kNN backend returns the torch reference's distances bit for bit (see :func:`pointcoc.ops.knn`)."""
    if torch.equal(dist2, exact):
        return "same distances as the torch reference (bit-identical)"
    return "DISTANCES DIFFER from the torch reference"


def bench_knn(device="cpu", quick=False, cases=((32, 512, 1024, 24), (8, 2048, 8192, 24))) -> List[Row]:
    """kNN: the default backend vs brute force ``torch.cdist`` + ``topk`` (and pytorch3d when importable).

    ``cases``: (B, M, N, k) tuples. Peak memory of both sides is measured. The notes say whether
    the distances equal the torch reference's exactly.
    """
    repeat = MIN_PAIRS if quick else 7
    rows = []
    for batch, m, n, k in cases:
        query, points = random_tensor((batch, m, 3), device, 1), random_tensor((batch, n, 3), device, 2)
        ours_name = backends.resolve("knn", query.device).name
        ours = lambda: ops.knn(query, points, k)  # noqa: E731
        brute = lambda: torch.topk(torch.cdist(query, points), k, dim=-1, largest=False)  # noqa: E731
        exact = ops.knn(query, points, k, backend="torch").dist2
        t_ours, t_ref = time_pair(ours, brute, device, repeat=repeat)
        mem_ours, mem_ref = peak_memory(ours, device), peak_memory(brute, device)
        note = _knn_note(ours().dist2, exact)
        case = f"B={batch}, M={m}, N={n}, k={k}"
        rows.append(Row("kNN", case, ours_name, "cdist + topk", t_ours, t_ref, mem_ours, mem_ref, note))
        if ours_name != "mm":  # the torch-only fast path (the default on CUDA without triton or pytorch3d)
            mm = lambda: ops.knn(query, points, k, backend="mm")  # noqa: E731
            t_mm, t_ref = time_pair(mm, brute, device, repeat=repeat)
            rows.append(Row("kNN", case, "mm", "cdist + topk", t_mm, t_ref, peak_memory(mm, device), mem_ref,
                            _knn_note(mm().dist2, exact)))
        if "pytorch3d" in ops.available_backends("knn") and ours_name != "pytorch3d":
            p3d = lambda: ops.knn(query, points, k, backend="pytorch3d")  # noqa: E731
            t_ours, t_p3d = time_pair(ours, p3d, device, repeat=repeat)
            rows.append(Row("kNN", case, ours_name, "pytorch3d", t_ours, t_p3d))
    return rows


def _uniform_sets(batch, n, dim, seed):
    return random_tensor((batch, n, dim), "cpu", seed), torch.full((batch,), n, dtype=torch.long)


def fps_without_cells(xyz, n_samples, lengths):
    """``ops.farthest_point_sample`` with the numba backend's brute-force kernel at any size (no cell list)."""
    from ..ops import numba_backend

    saved = numba_backend.FPS_CELLS_CROSSOVER
    numba_backend.FPS_CELLS_CROSSOVER = 1 << 62
    try:
        return ops.farthest_point_sample(xyz, n_samples, lengths, backend="numba")
    finally:
        numba_backend.FPS_CELLS_CROSSOVER = saved


def _brute_numba():
    """A callable (query, points, k, ql, pl) -> KNNResult running today's brute-force numba kernel at any size."""
    from ..ops import numba_backend

    def run(query, points, k, ql, pl):
        saved = dict(numba_backend.CELLS_CROSSOVER)
        numba_backend.CELLS_CROSSOVER.update({2: 1 << 62, 3: 1 << 62})
        try:
            return ops.knn(query, points, k, ql, pl, backend="numba")
        finally:
            numba_backend.CELLS_CROSSOVER.update(saved)

    return run


KNN_LARGE_CASES = (("uniform 3-D", 50_000, 1.0), ("pixels regular", 224, 1.0), ("pixels discrete", 224, 0.5),
                   ("pixels masked", 224, 0.5), ("pixels irregular", 224, 0.5))


def bench_knn_large(device="cpu", quick=False, k=16, cases=KNN_LARGE_CASES, brute=True) -> List[Row]:
    """Self-kNN of one image-sized set: the default CPU backend vs scipy's cKDTree (and today's brute force).

    ``cases``: (kind, size, keep): "uniform 3-D" with ``size`` uniform random points, or "pixels FMT"
    for a ``size`` x ``size`` pixel set of format FMT keeping ``keep`` of the pixels. cKDTree is built
    and queried on each call (``workers`` = torch's thread count), as a kNN of a fresh set needs.
    ``brute``: also time the brute-force numba kernel (seconds per call at these sizes).
    """
    if torch.device(device).type != "cpu":
        raise SectionUnavailable("knn_large compares CPU backends")
    ckdtree = import_or_skip("scipy.spatial", "cKDTree")
    repeat = MIN_PAIRS if quick else 7
    workers = torch.get_num_threads()
    rows = []
    for kind, size, keep in cases:
        if kind.startswith("pixels"):
            xyz, lengths = pixel_set_batch(kind.split()[1], size, size, batch=1, keep=keep, seed=0)
            case = f"{size}x{size} pixels, {kind.split()[1]}" + (f" {keep:.0%}" if keep < 1 else "")
        else:
            xyz, lengths = _uniform_sets(1, size, 3, 7)
            case = f"{size:,} uniform 3-D points"
        case += f" ({int(lengths[0]):,} points), k={k}"
        ours_name = backends.resolve("knn", xyz.device).name
        ours = lambda: ops.knn(xyz, xyz, k, lengths, lengths)  # noqa: E731
        pts = xyz[0, : int(lengths[0])].numpy()
        tree = lambda: ckdtree(pts).query(pts, k, workers=workers)  # noqa: E731
        out, (tree_d, _) = ours(), tree()
        # cKDTree computes in float64: compare in float64 against the float32 reference's distances.
        same = torch.allclose(out.dist2[0].double(), torch.from_numpy(tree_d) ** 2, rtol=1e-5, atol=1e-9)
        exact = torch.equal(out.dist2, ops.knn(xyz, xyz, k, lengths, lengths, backend="torch").dist2) \
            if int(lengths[0]) <= 4096 else None
        note = "same distances as cKDTree (float64, rtol 1e-5)" if same else "DISTANCES DIFFER from cKDTree"
        t_ours, t_tree = time_pair(ours, tree, device, repeat=repeat)
        rows.append(Row("kNN large", case, ours_name, f"cKDTree (workers={workers})", t_ours, t_tree,
                        note=note if exact is None else note + ("; = torch reference" if exact else "; DIFFERS")))
        if brute:
            slow = lambda: _brute_numba()(xyz, xyz, k, lengths, lengths)  # noqa: E731
            same_brute = torch.equal(slow().idx, out.idx)
            t_ours, t_slow = time_pair(ours, slow, device, repeat=MIN_PAIRS, warmup=0)
            rows.append(Row("kNN large", case, ours_name, "numba brute force (before)", t_ours, t_slow,
                            note="same indices" if same_brute else "INDICES DIFFER"))
    return rows


KNN_DENSITY_SIZES = {"uniform": (10_000, 50_000, 200_000, 1_000_000), "outlier": (10_000, 50_000, 200_000),
                     "blob + sparse": (10_000, 50_000, 200_000), "gaussian clusters": (10_000, 50_000, 200_000)}


def bench_knn_density(device="cpu", quick=False, k=16, sizes=None, grid=224, fps_case=(50_000, 4096),
                      before_up_to=50_000) -> List[Row]:
    """Self-kNN on sets of uniform and far from uniform density (issue 30): the default CPU backend vs cKDTree,
    the time's growth with N, and FPS on the same sets.

    ``sizes``: {kind of :func:`density_set`: set sizes} (default ``KNN_DENSITY_SIZES``); ``grid``: also a
    ``grid`` x ``grid`` regular pixel set (0: none). cKDTree is built and queried in each call with ``workers``
    = torch's thread count; timings interleave the two (medians of 5, 3 at 1M points). Each case's note
    says whether 256 random rows equal the torch reference's (distances and indices). Per kind, a
    "scaling" row gives the exponents a of time ~ N^a fitted (least squares on logs) over its sizes.
    Sets of at most ``before_up_to`` points are also timed with the grid alone (the cell list before
    issue 30, ``CELLS_CROWDING`` = inf; medians of 3). ``fps_case`` (N, picks): FPS of each kind against the
    brute-force numba kernel.
    """
    if torch.device(device).type != "cpu":
        raise SectionUnavailable("knn_density compares CPU backends")
    ckdtree = import_or_skip("scipy.spatial", "cKDTree")

    if sizes is None:
        sizes = {kind: (2000, 8000) for kind in DENSITY_KINDS} if quick else KNN_DENSITY_SIZES
    workers = torch.get_num_threads()
    tree_name = f"cKDTree (workers={workers})"
    rows = []
    for kind, ns in sizes.items():
        times = []
        for n in ns:
            xyz, lengths = density_set(kind, n, seed=7)
            row, before = _knn_density_row(xyz, lengths, k, f"{kind}, {n:,} points, k={k}", ckdtree, workers,
                                           repeat=3 if n >= 1_000_000 or quick else 5,
                                           before=n <= before_up_to and not quick)
            rows.append(row)
            times.append((n, row.ours_s, row.ref_s))
            if before is not None:
                rows.append(before)
        if len(ns) > 1:
            a_ours, a_tree = (_growth_exponent([t[0] for t in times], [t[j] for t in times]) for j in (1, 2))
            rows.append(Row("kNN density scaling", f"{kind}, N = {ns[0]:,} .. {ns[-1]:,}", rows[-1].ours, tree_name,
                            times[-1][1], times[-1][2], note=f"time ~ N^{a_ours:.2f} (cKDTree: N^{a_tree:.2f})"))
    if grid:
        xyz, lengths = pixel_set_batch("regular", grid, grid, batch=1, keep=1.0, seed=0)
        rows.append(_knn_density_row(xyz, lengths, k, f"{grid}x{grid} pixels, regular, k={k}", ckdtree, workers,
                                     repeat=5, before=False)[0])
    if fps_case and not quick:
        n, picks = fps_case
        for kind in sizes:
            xyz, lengths = density_set(kind, n, seed=7)
            ours = lambda: ops.farthest_point_sample(xyz, picks, lengths)  # noqa: E731
            brute = lambda: fps_without_cells(xyz, picks, lengths)  # noqa: E731

            same = torch.equal(ours(), brute())
            t_ours, t_brute = time_pair(ours, brute, device, repeat=5)
            rows.append(Row("FPS density", f"{kind}, {n:,} points -> {picks:,}",
                            backends.resolve("fps", xyz.device).name, "numba brute force", t_ours, t_brute,
                            note="same indices" if same else "INDICES DIFFER"))
    return rows


def _knn_density_row(xyz, lengths, k, case, ckdtree, workers, repeat, before):
    """(Row of the default backend vs cKDTree on one set, Row of it vs the grid alone or None)."""
    from ..ops import numba_backend

    ours_name = backends.resolve("knn", xyz.device).name
    ours = lambda: ops.knn(xyz, xyz, k, lengths, lengths)  # noqa: E731
    pts = xyz[0, : int(lengths[0])].numpy()
    tree = lambda: ckdtree(pts).query(pts, k, workers=workers)  # noqa: E731
    out = ours()
    rows = torch.randperm(int(lengths[0]), generator=torch.Generator().manual_seed(0))[:256]
    ref = ops.knn(xyz[:, rows], xyz, k, torch.tensor([len(rows)]), lengths, backend="torch")
    exact = torch.equal(out.dist2[:, rows], ref.dist2) and torch.equal(out.idx[:, rows], ref.idx)
    t_ours, t_tree = time_pair(ours, tree, "cpu", repeat=repeat)
    note = "256 random rows = torch reference (distances and indices)" if exact else "ROWS DIFFER from the reference"
    row = Row("kNN density", case, ours_name, f"cKDTree (workers={workers})", t_ours, t_tree, note=note)
    if not before:
        return row, None

    def grid_alone():
        saved = numba_backend.CELLS_CROWDING
        numba_backend.CELLS_CROWDING = float("inf")
        try:
            return ops.knn(xyz, xyz, k, lengths, lengths)
        finally:
            numba_backend.CELLS_CROWDING = saved

    same = torch.equal(grid_alone().idx, out.idx)
    t_ours, t_grid = time_pair(ours, grid_alone, "cpu", repeat=3, warmup=0)
    return row, Row("kNN density", case, ours_name, "grid alone (before)", t_ours, t_grid,
                    note="same indices" if same else "INDICES DIFFER")


def _growth_exponent(ns, seconds) -> float:
    """The exponent a of the least-squares fit seconds ~ c * N^a on logarithms."""
    x = torch.tensor(ns, dtype=torch.float64).log()
    y = torch.tensor(seconds, dtype=torch.float64).log()
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def bench_knn_crossover(device="cpu", quick=False, k=24, sizes=(256, 512, 1024, 2048, 4096), batch=32) -> List[Row]:
    """The cell list vs the brute-force numba kernel at the models' sizes: where the automatic switch goes.

    Per size N: B=``batch`` sets of N points, queries the first N / 2 of them (the models' kNN of FPS
    centres), in 3-D (uniform random) and 2-D (a sqrt(N) x sqrt(N)-ish pixel set with 50 % discrete).
    """
    if torch.device(device).type != "cpu":
        raise SectionUnavailable("knn_crossover compares CPU backends")
    import_or_skip("pointcoc.ops.numba_backend", "knn_cells")
    repeat = MIN_PAIRS if quick else 5
    brute = _brute_numba()
    rows = []
    for n in (sizes[:2] if quick else sizes):
        side = max(2, int(round((2 * n) ** 0.5)))
        for label, (xyz, lengths) in (("3-D uniform", _uniform_sets(batch, n, 3, 3)),
                                      (f"2-D {side}x{side} pixels, discrete 50 %",
                                       pixel_set_batch("discrete", side, side, batch, keep=0.5, seed=1))):
            query, ql = xyz[:, : xyz.shape[1] // 2].contiguous(), (lengths // 2).clamp_min(1)
            cells = lambda: ops.knn(query, xyz, k, ql, lengths, backend="cells")  # noqa: E731
            slow = lambda: brute(query, xyz, k, ql, lengths)  # noqa: E731
            same = torch.equal(cells().idx, slow().idx) and torch.equal(cells().dist2, slow().dist2)
            t_cells, t_brute = time_pair(cells, slow, device, repeat=repeat)
            case = f"B={batch}, N={int(lengths.max())}, M=N/2, k={k}, {label}"
            rows.append(Row("kNN crossover", case, "cells", "numba brute force", t_cells, t_brute,
                            note="same distances and indices" if same else "RESULTS DIFFER"))
    return rows


def bench_gather(device="cpu", quick=False, cases=((32, 1024, 64, 512, 24), (32, 512, 128, 256, 24))) -> List[Row]:
    """gather, forward + backward: ours vs advanced indexing ``x[batch_index, idx]`` (the published PointMLP code).

    ``cases``: (B, N, C, S, K) for x (B, N, C) and idx (B, S, K), as in a PointMLP grouping stage.
    """
    repeat = MIN_PAIRS if quick else 7
    rows = []
    for batch, n, c, s, k in cases:
        x = random_tensor((batch, n, c), device, 4).requires_grad_(True)
        idx = (random_tensor((batch, s, k), device, 5) * n).long()
        weights = random_tensor((batch, s, k, c), device, 6)

        def ours():
            (ops.gather(x, idx) * weights).sum().backward()

        batch_index = torch.arange(batch, device=device)[:, None, None]

        def plain():
            (x[batch_index, idx] * weights).sum().backward()

        t_ours, t_ref = time_pair(ours, plain, device, repeat=repeat)
        case = f"x ({batch}, {n}, {c}), idx ({batch}, {s}, {k}), fwd+bwd"
        rows.append(Row("gather", case, "index_select", "x[batch, idx]", t_ours, t_ref))
    return rows


def bench_pointwise(device="cpu", quick=False, cases=((16, 128, 512 * 24), (16, 256, 256 * 24),
                                                      (16, 512, 128 * 24), (16, 1024, 64 * 24))) -> List[Row]:
    """One pointwise layer of a PointMLP block (C -> C, BatchNorm, ReLU), forward + backward, two layouts.

    Ours: ``nn.Linear`` on channels-last (B, L, C) with BatchNorm over the
    flattened rows; reference: ``nn.Conv1d(kernel_size=1)`` on (B, C, L) with
    ``BatchNorm1d``, as the published code writes it. Same maths, same weights;
    ``cases``: (B, C, L) with L = groups x neighbours of PointMLP's four stages
    at batch 16. This row measures a proposal for the model code (see docs/benchmarks.md).
    """
    repeat = MIN_PAIRS if quick else 5
    rows = []
    for batch, c, length in (cases[:2] if quick else cases):
        conv = torch.nn.Conv1d(c, c, 1).to(device)
        linear = torch.nn.Linear(c, c).to(device)
        with torch.no_grad():
            linear.weight.copy_(conv.weight[:, :, 0])
            linear.bias.copy_(conv.bias)
        norm_first, norm_last = torch.nn.BatchNorm1d(c).to(device), torch.nn.BatchNorm1d(c).to(device)
        x_first = (random_tensor((batch, c, length), device, 12) - 0.5).requires_grad_(True)
        x_last = x_first.detach().transpose(1, 2).contiguous().requires_grad_(True)
        # A dense upstream gradient, as the next layer gives (out.sum() would pass a stride-0 one).
        grad_first = random_tensor((batch, c, length), device, 15)
        grad_last = grad_first.transpose(1, 2).contiguous()

        def channels_first():
            out = torch.relu(norm_first(conv(x_first)))
            out.backward(grad_first)
            return out

        def channels_last():
            out = torch.relu(norm_last(linear(x_last).reshape(-1, c))).reshape(batch, length, c)
            out.backward(grad_last)
            return out

        same = torch.allclose(channels_last().transpose(1, 2), channels_first(), rtol=1e-3, atol=1e-4)
        t_ours, t_ref = time_pair(channels_last, channels_first, device, repeat=repeat)
        case = f"C={c}, (B, L)=({batch}, {length}), fwd+bwd"
        rows.append(Row("pointwise layer", case, "Linear (B, L, C)", "Conv1d (B, C, L)", t_ours, t_ref,
                        note="same outputs" if same else "OUTPUTS DIFFER"))
    return rows


def bench_transfer(device="cpu", quick=False, cases=((16, 512, 24, 64), (16, 256, 24, 128),
                                                    (16, 128, 24, 256), (16, 64, 24, 512))) -> List[Row]:
    """The first layer after grouping, forward + backward: split anchor term vs concatenated input.

    The published grouper concatenates each neighbour's normalised features
    and xyz (C + 3) with its group's anchor features repeated k times (C), then
    applies one pointwise layer to 2C + 3 channels. The anchor part of that
    product is the same for the k neighbours of a group: ours computes it once
    per group and broadcasts it (same maths). ``cases``: (B, S groups, k, C),
    output 2C channels, channels-last Linear layers on both sides.
    """
    repeat = MIN_PAIRS if quick else 5
    rows = []
    for batch, groups, k, c in (cases[:2] if quick else cases):
        full = torch.nn.Linear(2 * c + 3, 2 * c).to(device)
        neighbour = torch.nn.Linear(c + 3, 2 * c).to(device)
        anchor_part = torch.nn.Linear(c, 2 * c, bias=False).to(device)
        with torch.no_grad():
            neighbour.weight.copy_(full.weight[:, : c + 3])
            neighbour.bias.copy_(full.bias)
            anchor_part.weight.copy_(full.weight[:, c + 3 :])
        grouped = (random_tensor((batch, groups, k, c + 3), device, 13) - 0.5).requires_grad_(True)
        anchor = (random_tensor((batch, groups, c), device, 14) - 0.5).requires_grad_(True)
        grad = random_tensor((batch, groups, k, 2 * c), device, 16)

        def concatenated():
            out = full(torch.cat([grouped, anchor[:, :, None, :].expand(-1, -1, k, -1)], -1))
            out.backward(grad)
            return out

        def split():
            out = neighbour(grouped) + anchor_part(anchor)[:, :, None, :]
            out.backward(grad)
            return out

        same = torch.allclose(split(), concatenated(), rtol=1e-4, atol=1e-4)
        t_ours, t_ref = time_pair(split, concatenated, device, repeat=repeat)
        case = f"(B, S, k, C)=({batch}, {groups}, {k}, {c}), fwd+bwd"
        rows.append(Row("transfer layer", case, "anchor term per group", "concat anchor x k", t_ours, t_ref,
                        note="same outputs" if same else "OUTPUTS DIFFER"))
    return rows


def bench_masked_norm(device="cpu", quick=False, cases=((16, 512, 24, 128), (16, 256, 24, 256))) -> List[Row]:
    """BatchNorm over the real entries of a (B, S, k, C) tensor with no padding, forward + backward.

    Reference: the boolean-mask form ``out[mask] = bn(x[mask])`` (two copies
    of the tensor each way); ours: check ``mask.all()`` and normalise the
    flattened tensor directly (same statistics, same result).
    """
    repeat = MIN_PAIRS if quick else 5
    rows = []
    for batch, groups, k, c in (cases[:1] if quick else cases):
        norm = torch.nn.BatchNorm1d(c).to(device)
        x = (random_tensor((batch, groups, k, c), device, 17) - 0.5).requires_grad_(True)
        mask = torch.ones(batch, groups, k, dtype=torch.bool, device=device)
        grad = random_tensor((batch, groups, k, c), device, 18)

        def boolean_index():
            out = x.new_zeros(x.shape)
            out[mask] = norm(x[mask])
            out.backward(grad)
            return out

        def direct_when_full():
            if bool(mask.all()):
                out = norm(x.reshape(-1, c)).reshape(x.shape)
            else:
                out = x.new_zeros(x.shape)
                out[mask] = norm(x[mask])
            out.backward(grad)
            return out

        same = torch.allclose(direct_when_full(), boolean_index(), rtol=1e-4, atol=1e-5)
        t_ours, t_ref = time_pair(direct_when_full, boolean_index, device, repeat=repeat)
        case = f"(B, S, k, C)=({batch}, {groups}, {k}, {c}), no padding, fwd+bwd"
        rows.append(Row("masked BatchNorm", case, "skip mask when all real", "x[mask] copy", t_ours, t_ref,
                        note="same outputs" if same else "OUTPUTS DIFFER"))
    return rows


def _context_cluster_functions():
    """(context_cluster, context_cluster_dense) from pointcoc.layers, or SectionUnavailable."""
    try:
        return (import_or_skip("pointcoc.layers", "context_cluster"),
                import_or_skip("pointcoc.layers", "context_cluster_dense"))
    except SectionUnavailable:
        return (import_or_skip("pointcoc.layers.context_cluster", "context_cluster"),
                import_or_skip("pointcoc.layers.context_cluster", "context_cluster_dense"))


def bench_context_cluster(device="cpu", quick=False, cases=((1, 3136, 196, 64), (1, 12544, 196, 64)),
                          functions=None) -> List[Row]:
    """Set-level context cluster, forward + backward: segment sums (ours) vs the dense-mask reference.

    ``cases``: (B, N points, M centers, channels), with similarity and value
    spaces of ``channels`` each. Time and peak memory of both. ``functions``:
    (ours, reference) with the signature of ``pointcoc.layers.context_cluster``;
    default: ``context_cluster`` and ``context_cluster_dense`` from pointcoc.layers.
    """
    ours_fn, dense_fn = functions or _context_cluster_functions()
    repeat = MIN_PAIRS if quick else 5
    rows = []
    for batch, n, m, c in cases:
        inputs = [
            random_tensor((batch, n, c), device, 7) - 0.5,
            random_tensor((batch, n, c), device, 8) - 0.5,
            random_tensor((batch, m, c), device, 9) - 0.5,
            random_tensor((batch, m, c), device, 10) - 0.5,
        ]
        inputs = [t.requires_grad_(True) for t in inputs]
        alpha = torch.ones((), device=device, requires_grad=True)
        beta = torch.zeros((), device=device, requires_grad=True)
        weights = random_tensor((batch, n, c), device, 11)

        def run(fn):
            def fwd_bwd():
                out, _ = fn(*inputs, alpha, beta)
                grads = torch.autograd.grad((out * weights).sum(), inputs + [alpha, beta], allow_unused=True)
                return out, grads

            return fwd_bwd

        (out_o, grads_o), (out_d, grads_d) = run(ours_fn)(), run(dense_fn)()
        same = torch.allclose(out_o, out_d, rtol=1e-4, atol=1e-5) and all(
            (a is None and b is None) or (a is not None and b is not None and torch.allclose(a, b, rtol=1e-3, atol=1e-4))
            for a, b in zip(grads_o, grads_d)
        )
        del out_o, grads_o, out_d, grads_d
        t_ours, t_ref = time_pair(run(ours_fn), run(dense_fn), device, repeat=repeat)
        mem_ours, mem_ref = peak_memory(run(ours_fn), device), peak_memory(run(dense_fn), device)
        case = f"B={batch}, N={n}, {m} centers, {c} channels, fwd+bwd"
        note = "same values and gradients" if same else "RESULTS DIFFER"
        rows.append(Row("context cluster", case, "segment sums", "dense mask", t_ours, t_ref, mem_ours, mem_ref, note))
    return rows

