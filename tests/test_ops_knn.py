"""knn: every backend against a brute-force numpy reference and the torch reference."""
import importlib

import numpy as np
import pytest
import torch

from ops_reference import (SPREAD_KINDS, check_against_float64, density_case, numpy_knn_dist2, random_lengths,
                           spread_case)
from pointcoc import _optional
from pointcoc.bench import peak_cpu_memory
from pointcoc.bench.ops_rows import DENSITY_KINDS, pixel_set_batch
from pointcoc.ops import available_backends, knn, use_backend

knn_impl = importlib.import_module("pointcoc.ops.knn")
BACKENDS = available_backends("knn")
# pytorch3d runs where installed (its own tests); triton and triton-cells run on CPU only in its interpreter
# (tests/test_triton.py).
CPU_BACKENDS = [b for b in BACKENDS if b not in ("pytorch3d", "triton", "triton-cells")]


def _case(seed, batch, m, n, dim, ragged, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    query = (torch.rand(batch, m, dim, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    points = (torch.rand(batch, n, dim, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    return query, points, random_lengths(batch, m, g, ragged), random_lengths(batch, n, g, ragged)


def _check_against_numpy(query, points, k, ql, pl, result):
    """Distances equal the brute-force k smallest; each index is a distinct valid point at that distance."""
    dist2, idx = result
    batch, m, _ = query.shape
    assert dist2.shape == idx.shape == (batch, m, k) and idx.dtype == torch.long
    expected = numpy_knn_dist2(query.numpy(), points.numpy(), k, ql.numpy(), pl.numpy())
    np.testing.assert_allclose(dist2.double().numpy(), expected, rtol=1e-5, atol=1e-6)
    for b in range(batch):
        for i in range(m):
            row = idx[b, i]
            found = row[row >= 0]
            assert len(found) == (min(k, int(pl[b])) if i < ql[b] else 0)
            assert len(set(found.tolist())) == len(found) and bool((found < pl[b]).all())
            if len(found):
                own = ((query[b, i].double() - points[b, found].double()) ** 2).sum(-1).numpy()
                np.testing.assert_allclose(own, expected[b, i, : len(found)], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("batch,m,n,k", [(1, 1, 1, 1), (2, 7, 5, 8), (3, 20, 50, 4), (2, 64, 200, 16), (4, 33, 97, 97)])
def test_matches_numpy_reference(backend, dim, ragged, batch, m, n, k):
    query, points, ql, pl = _case(batch + m + n + dim, batch, m, n, dim, ragged)
    result = knn(query, points, k, ql if ragged else None, pl if ragged else None, backend=backend)
    _check_against_numpy(query, points, k, ql, pl, result)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ragged", [False, True])
def test_backends_match_torch_reference(backend, dtype, ragged):
    query, points, ql, pl = _case(3, 4, 120, 300, 3, ragged, dtype)
    ref = knn(query, points, 24, ql, pl, backend="torch")
    out = knn(query, points, 24, ql, pl, backend=backend)
    assert out.dist2.dtype == dtype
    # Same float operations: the distances agree to the last bit; random points have no ties.
    assert torch.equal(out.dist2, ref.dist2)
    assert torch.equal(out.idx, ref.idx)


def _tie_case(kind, dim):
    """Sets where most distances are shared: a lattice, a pixel format at 50 %, or heavy duplicates."""
    g = torch.Generator().manual_seed(dim)
    if kind == "lattice":
        points = torch.randint(0, 5, (3, 150, dim), generator=g).float() / 4
    elif kind == "duplicates":
        points = torch.randint(0, 3, (3, 150, dim), generator=g).float()
    else:
        points, lengths = pixel_set_batch(kind, 12, 12, batch=3, keep=0.5, seed=dim)
        if dim == 3:
            points = torch.cat([points, torch.zeros_like(points[..., :1])], -1)
        return points, lengths
    return points, torch.tensor([150, 97, 40])


def _lexicographic_knn(query, points, k, ql, pl):
    """By definition: every point's reference distance, sorted stably, so equal distances keep index order."""
    batch, m, _ = query.shape
    n = points.shape[1]
    every = torch.arange(n).expand(batch, m, n)
    dist2 = knn_impl.exact_dist2(query, points, every.masked_fill(every >= pl[:, None, None], -1))
    dist2, idx = torch.sort(dist2, dim=-1, stable=True)
    return knn_impl._finish(dist2[..., :k], idx[..., :k], k, ql, pl)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", ["lattice", "duplicates", "regular", "irregular", "masked"])
@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("k", [1, 5, 16])
def test_ties_go_to_the_lowest_indices_on_every_backend(backend, kind, dim, k):
    """Same indices as the definition, not only the same distances: a model's logits then match across backends."""
    points, lengths = _tie_case(kind, dim)
    out = knn(points, points, k, lengths, lengths, backend=backend)
    ref = _lexicographic_knn(points, points, k, lengths, lengths)
    assert torch.equal(out.dist2, ref.dist2)
    assert torch.equal(out.idx, ref.idx)


def test_mm_candidates_cut_inside_a_tie_fall_back_to_the_reference():
    """400 points at exactly distance 1 from the query: any candidate set cuts the tie; the lowest indices win."""
    unit = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    points = unit[torch.randint(0, 4, (400,), generator=torch.Generator().manual_seed(0))]
    points = torch.cat([points, torch.zeros(1, 2)])[None]  # the query itself last
    out = knn(points[:, -1:], points, 6, backend="mm")
    ref = _lexicographic_knn(points[:, -1:], points, 6, torch.tensor([1]), torch.tensor([401]))
    assert torch.equal(out.idx, ref.idx) and torch.equal(out.dist2, ref.dist2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_large_coordinates_far_from_origin(backend):
    """An offset cloud loses no precision."""
    query, points, ql, pl = _case(5, 2, 50, 400, 3, ragged=True)
    query, points = query + 1000.0, points + 1000.0
    ref = knn(query, points, 8, ql, pl, backend="torch")
    out = knn(query, points, 8, ql, pl, backend=backend)
    torch.testing.assert_close(out.dist2, ref.dist2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", SPREAD_KINDS)
def test_exact_at_any_extent(backend, kind):
    """Every backend returns the k smallest distances of a float64 brute force, and the reference's own values."""
    xyz, lengths = spread_case(kind, seed=len(kind))
    out = knn(xyz, xyz, 16, lengths, lengths, backend=backend)
    check_against_float64(xyz, 16, lengths, out)
    assert torch.equal(out.dist2, knn(xyz, xyz, 16, lengths, lengths, backend="torch").dist2)
    assert bool((out.dist2[..., 0][out.idx[..., 0] >= 0] == 0).all())  # each point is its own nearest


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", DENSITY_KINDS)
@pytest.mark.parametrize("dim", [2, 3])
def test_exact_on_non_uniform_density(backend, kind, dim):
    """Issue 30's sets (one far outlier, a dense blob in sparse surroundings, tight clusters), small: the
    reference's distances and indices on every backend."""
    xyz, lengths = density_case(kind, seed=dim, dim=dim)
    ref = knn(xyz, xyz, 16, lengths, lengths, backend="torch")
    out = knn(xyz, xyz, 16, lengths, lengths, backend=backend)
    assert torch.equal(out.dist2, ref.dist2) and torch.equal(out.idx, ref.idx)
    check_against_float64(xyz, 16, lengths, out)


@pytest.mark.parametrize("precision", ["high", "medium"])
def test_mm_exact_with_reduced_precision_matmuls(precision):
    """TF32 / bfloat16 matmuls widen the margin of the candidates; the result stays exact."""
    xyz, lengths = spread_case("clusters 500", seed=3)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        out = knn(xyz, xyz, 16, lengths, lengths, backend="mm")
    finally:
        torch.set_float32_matmul_precision(before)
    assert torch.equal(out.dist2, knn(xyz, xyz, 16, lengths, lengths, backend="torch").dist2)


def test_pytorch3d_wrapper_is_exact(monkeypatch):
    """Stand-in for pytorch3d (not installed here): distances summed in another order, padding idx 0 / dist 0."""
    from types import SimpleNamespace

    from pointcoc.ops import pytorch3d_backend

    def knn_points(p1, p2, lengths1, lengths2, K, return_sorted):
        diff = p1[:, :, None, :] - p2[:, None, :, :]
        dist2 = diff[..., 2] * diff[..., 2] + diff[..., 1] * diff[..., 1] + diff[..., 0] * diff[..., 0]
        dist2 = dist2.masked_fill(torch.arange(p2.shape[1])[None, None, :] >= lengths2[:, None, None], float("inf"))
        dists, idx = torch.topk(dist2, K, dim=-1, largest=False)
        missing = (torch.arange(K)[None, None, :] >= lengths2[:, None, None]) | (
            torch.arange(p1.shape[1])[None, :, None] >= lengths1[:, None, None]
        )
        return SimpleNamespace(dists=dists.masked_fill(missing, 0.0), idx=idx.masked_fill(missing, 0))

    monkeypatch.setattr(pytorch3d_backend._optional, "pytorch3d_ops", SimpleNamespace(knn_points=knn_points))
    for kind in ("clusters 1e4", "lattice"):
        xyz, lengths = spread_case(kind, seed=1)
        lengths[0] = 20  # fewer points than k + 8 candidates
        out = pytorch3d_backend.knn_pytorch3d(xyz, xyz, 16, lengths, lengths)
        ref = knn(xyz, xyz, 16, lengths, lengths, backend="torch")
        assert torch.equal(out.dist2, ref.dist2) and torch.equal(out.idx < 0, ref.idx < 0)
        check_against_float64(xyz, 16, lengths, out)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_chunked_equals_unchunked(backend, monkeypatch):
    query, points, ql, pl = _case(8, 3, 100, 150, 3, ragged=True)
    whole = knn(query, points, 10, ql, pl, backend=backend)
    monkeypatch.setattr(knn_impl, "_CHUNK_ELEMENTS", 3 * 150 * 7)  # 7 queries per chunk
    monkeypatch.setattr(knn_impl, "_MM_CHUNK_ELEMENTS", 3 * 150 * 7)
    parts = knn(query, points, 10, ql, pl, backend=backend)
    assert torch.equal(parts.idx, whole.idx) and torch.equal(parts.dist2, whole.dist2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_memory_is_bounded_on_large_input(backend):
    """B=2, M=2048, N=8192: the full distance matrix would take 128 MiB."""
    query, points, _, _ = _case(1, 2, 2048, 8192, 3, ragged=False)
    full_matrix = 2 * 2048 * 8192 * 4
    knn(query, points, 16, backend=backend)  # compile / warm up outside the measurement
    peak = peak_cpu_memory(lambda: knn(query, points, 16, backend=backend))
    assert peak < full_matrix / 2, f"peak {peak / 2**20:.1f} MiB"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradient_of_distances(backend):
    query, points, ql, pl = _case(2, 2, 10, 30, 3, ragged=True, dtype=torch.float64)
    query.requires_grad_(True)
    points.requires_grad_(True)
    out = knn(query, points, 5, ql, pl, backend=backend)
    weights = torch.rand(out.dist2.shape, dtype=torch.float64)
    loss = (out.dist2.masked_fill(out.idx < 0, 0) * weights).sum()
    gq, gp = torch.autograd.grad(loss, (query, points))
    # Analytic gradient: d|q - p|^2 / dq = 2 (q - p), accumulated over the chosen pairs.
    eq, ep = torch.zeros_like(query), torch.zeros_like(points)
    for b, i, j in (out.idx >= 0).nonzero().tolist():
        p = int(out.idx[b, i, j])
        g = 2 * (query[b, i] - points[b, p]).detach() * weights[b, i, j]
        eq[b, i] += g
        ep[b, p] -= g
    torch.testing.assert_close(gq, eq)
    torch.testing.assert_close(gp, ep)


def test_forcing_a_backend(monkeypatch):
    query, points, _, _ = _case(4, 2, 10, 20, 2, ragged=False)
    calls = []
    original = knn_impl.knn_torch

    def spy(*args):
        calls.append(1)
        return original(*args)

    from pointcoc.ops import backends

    monkeypatch.setitem(backends._REGISTRY["knn"], "torch", backends.Backend("torch", spy, ("cpu", "cuda"), 0))
    knn(query, points, 3)
    assert not calls  # the default is a faster backend
    with use_backend("torch"):
        knn(query, points, 3)
    assert len(calls) == 1
    monkeypatch.setenv("POINTCOC_BACKEND", "torch")
    knn(query, points, 3)
    assert len(calls) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("ragged", [False, True])
def test_cuda_matches_cpu(ragged):
    query, points, ql, pl = _case(4, 3, 500, 2000, 3, ragged)
    ref = knn(query, points, 16, ql, pl, backend="torch")
    for backend in BACKENDS:
        out = knn(query.cuda(), points.cuda(), 16, ql.cuda(), pl.cuda(), backend=backend)
        assert out.idx.device.type == "cuda"
        torch.testing.assert_close(out.dist2.cpu(), ref.dist2, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not _optional.WITH_PYTORCH3D, reason="needs pytorch3d")
@pytest.mark.parametrize("ragged", [False, True])
def test_pytorch3d_matches_reference(ragged):
    query, points, ql, pl = _case(6, 3, 100, 40, 3, ragged)
    ref = knn(query, points, 50, ql, pl, backend="torch")
    out = knn(query, points, 50, ql, pl, backend="pytorch3d")
    torch.testing.assert_close(out.dist2, ref.dist2, rtol=1e-5, atol=1e-6)
    assert torch.equal(out.idx < 0, ref.idx < 0)


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(query=torch.rand(10, 3)), "query must have shape (B, N, D)"),
        (dict(points=torch.rand(2, 10, 3, 1)), "points must have shape (B, N, D)"),
        (dict(points=torch.rand(3, 10, 3)), "query and points must have the same batch dimension; got 2 and 3"),
        (dict(query=torch.rand(2, 5, 4)), "query must have shape (B, N, D) with D in {2, 3}"),
        (dict(points=torch.rand(2, 10, 2)), "same coordinate dimension D; got 3 and 2"),
        (dict(points=torch.rand(2, 10, 3, dtype=torch.float64)), "same dtype"),
        (dict(query=torch.ones(2, 5, 3, dtype=torch.int32)), "query must be a floating-point tensor"),
        (dict(points=torch.full((2, 10, 3), float("nan"))), "points must hold only finite values"),
        (dict(k=0), "k must be an int >= 1; got 0"),
        (dict(k=2.0), "k must be an int >= 1; got 2.0"),
        (dict(query_lengths=torch.tensor([5, 6])), "query_lengths must have values in [1, 5]"),
        (dict(point_lengths=torch.tensor([0, 3])), "point_lengths must have values in [1, 10]"),
        (dict(point_lengths=torch.tensor([[3, 3]])), "point_lengths must have shape (B,) = (2,)"),
        (dict(backend="nope"), "unknown backend 'nope' for knn"),
    ],
)
def test_bad_input_raises(kwargs, fragment):
    args = dict(query=torch.rand(2, 5, 3), points=torch.rand(2, 10, 3), k=3)
    args.update(kwargs)
    with pytest.raises(ValueError) as err:
        knn(**args)
    assert fragment in str(err.value)


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_count_does_not_change_results(threads):
    query, points, ql, pl = _case(12, 3, 41, 90, 3, ragged=True)
    ref = knn(query, points, 6, ql, pl, backend="torch")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = knn(query, points, 6, ql, pl)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out.idx, ref.idx) and torch.equal(out.dist2, ref.dist2)


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_count_does_not_change_results_on_mixed_density(threads):
    """A batch of a uniform set (searched in the grid) and a crowded one (in a k-d tree), split over threads."""
    uniform, _ = density_case("uniform", seed=1)
    outlier, _ = density_case("outlier", seed=1)
    xyz, lengths = torch.cat([outlier[:1], uniform[:1], outlier[1:]]), torch.tensor([1200, 1200, 900])
    ref = knn(xyz, xyz, 12, lengths, lengths, backend="torch")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = knn(xyz, xyz, 12, lengths, lengths)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out.idx, ref.idx) and torch.equal(out.dist2, ref.dist2)
