"""The cell-list kNN (backend "cells", numba's path for large sets) and the k-d tree it hands crowded sets
(backend "kdtree") against brute force, ties included.

The brute-force numba kernel keeps, among equal distances, the lowest indices; the cell list and the
tree visit points in another order but keep candidates in (distance, index) order and stop only
when no unvisited point can come first, so all return the same distances and the same indices.
"""
import importlib

import pytest
import torch

from ops_reference import SPREAD_KINDS, check_against_float64, density_case, spread_case
from pointcoc.bench.ops_rows import DENSITY_KINDS, pixel_set_batch
from pointcoc.ops import backends, knn
from pointcoc.ops.cells import build_cells, cell_steps

nb = importlib.import_module("pointcoc.ops.numba_backend")
pytestmark = pytest.mark.skipif(not nb.WITH_NUMBA, reason="needs numba")


@pytest.fixture
def brute(monkeypatch):
    """knn with backend "numba" forced to brute force at every size."""
    monkeypatch.setattr(nb, "CELLS_CROSSOVER", {2: 10**12, 3: 10**12})

    def run(query, points, k, ql=None, pl=None):
        return knn(query, points, k, ql, pl, backend="numba")

    return run


@pytest.fixture(params=["cells", "kdtree", "kdtree, leaves of 2"])
def fast(request, monkeypatch):
    """The backend under test: the cell list, the k-d tree, the k-d tree with tiny leaves (deep trees)."""
    if request.param.endswith("leaves of 2"):
        monkeypatch.setattr(nb, "TREE_LEAF", 2)
    return request.param.split(",")[0]


def _same(out, ref):
    assert torch.equal(out.dist2, ref.dist2)
    assert torch.equal(out.idx, ref.idx)


@pytest.mark.parametrize("fmt", ["regular", "discrete", "masked", "irregular"])
@pytest.mark.parametrize("k", [1, 9, 24])
def test_pixel_formats_same_as_brute_force(fmt, k, brute, fast):
    """Pixel grids: equal distances everywhere (every shell of the lattice is a tie)."""
    xyz, lengths = pixel_set_batch(fmt, 28, 28, batch=3, keep=0.5, seed=k)
    out = knn(xyz, xyz, k, lengths, lengths, backend=fast)
    _same(out, brute(xyz, xyz, k, lengths, lengths))
    assert torch.equal(out.dist2, knn(xyz, xyz, k, lengths, lengths, backend="torch").dist2)


@pytest.mark.parametrize("kind", SPREAD_KINDS)
def test_spread_sets_same_as_brute_force(kind, brute, fast):
    """Far-apart clusters, offsets, outliers, lattices: exact, and the brute force's indices."""
    xyz, lengths = spread_case(kind, seed=7)
    out = knn(xyz, xyz, 16, lengths, lengths, backend=fast)
    _same(out, brute(xyz, xyz, 16, lengths, lengths))
    check_against_float64(xyz, 16, lengths, out)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_queries_elsewhere_and_ragged(dim, dtype, brute, fast):
    """Queries outside the points' box, ragged sets, k above some set sizes (-1 / inf past them)."""
    g = torch.Generator().manual_seed(dim)
    points = (torch.rand(3, 900, dim, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    query = (torch.rand(3, 300, dim, generator=g, dtype=torch.float64) * 6 - 3).to(dtype)
    pl, ql = torch.tensor([900, 5, 417]), torch.tensor([300, 300, 17])
    out = knn(query, points, 12, ql, pl, backend=fast)
    _same(out, brute(query, points, 12, ql, pl))
    assert bool((out.idx[1, :, 5:] == -1).all()) and bool(torch.isinf(out.dist2[2, 17:]).all())


def test_padding_never_influences(brute, fast):
    """Padding far away (or right on top of the points) changes nothing."""
    xyz, lengths = pixel_set_batch("irregular", 20, 20, batch=2, keep=0.5, seed=3)
    ref = knn(xyz, xyz, 8, lengths, lengths, backend=fast)
    for fill in (1e6, 0.0, -0.5):
        padded = xyz.clone()
        padded[0, int(lengths[0]) :] = fill
        _same(knn(padded, padded, 8, lengths, lengths, backend=fast), ref)
    _same(ref, brute(xyz, xyz, 8, lengths, lengths))


@pytest.mark.parametrize("case", ["duplicates", "flat", "thin", "line", "one point", "sparse outlier"])
def test_degenerate_sets(case, brute, fast):
    g = torch.Generator().manual_seed(0)
    xyz = torch.rand(2, 600, 3, generator=g)
    if case == "duplicates":  # many identical points: ties at distance 0
        xyz = (xyz * 4).floor() / 4
    elif case == "flat":  # an RGB-D set with constant depth: one cell along z
        xyz[..., 2] = 0.25
    elif case == "thin":
        xyz[..., 2] *= 1e-6
    elif case == "line":
        xyz[..., 1:] = 0.0
    elif case == "one point":
        xyz[:] = xyz[:, :1]
    else:  # a lone point far from a dense cube: its neighbours lie past the offsets the search tables hold
        xyz[:, 0] = 50.0
    lengths = torch.tensor([600, 321])
    out = knn(xyz, xyz, 10, lengths, lengths, backend=fast)
    _same(out, brute(xyz, xyz, 10, lengths, lengths))


@pytest.mark.parametrize("kind", DENSITY_KINDS)
@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("crowding", [3.0, float("inf")])
def test_non_uniform_density(kind, dim, crowding, brute, monkeypatch):
    """Issue 30's sets, with the switch to the tree (default) and with the grid alone (slow there, still exact)."""
    monkeypatch.setattr(nb, "CELLS_CROWDING", crowding)
    xyz, lengths = density_case(kind, seed=dim, dim=dim)
    _same(knn(xyz, xyz, 16, lengths, lengths, backend="cells"), brute(xyz, xyz, 16, lengths, lengths))
    query = xyz[:, torch.randperm(xyz.shape[1], generator=torch.Generator().manual_seed(0))[:200]] * 1.5
    ql = torch.tensor([200, 150])
    _same(knn(query, xyz, 40, ql, lengths, backend="cells"), brute(query, xyz, 40, ql, lengths))


def test_crowded_sets_go_to_the_tree(monkeypatch):
    """knn_cells hands the tree exactly the sets whose cells are crowded, and searches the others in the grid."""
    seen = []
    original = nb._knn_tree_sets
    monkeypatch.setattr(nb, "_knn_tree_sets", lambda *a: seen.append(a[4].tolist()) or original(*a))
    uniform, uniform_lengths = density_case("uniform", seed=0)
    outlier, _ = density_case("outlier", seed=0)
    xyz, lengths = torch.cat([uniform[:1], outlier[:1], uniform[1:]]), torch.tensor([1200, 1200, 900])
    out = knn(xyz, xyz, 16, lengths, lengths, backend="cells")
    assert seen == [[False, True, False]]
    _same(out, knn(xyz, xyz, 16, lengths, lengths, backend="torch"))
    knn(uniform, uniform, 16, uniform_lengths, uniform_lengths, backend="cells")
    assert len(seen) == 1


def test_chosen_above_the_crossover(monkeypatch):
    """knn_numba hands sets of at least CELLS_CROSSOVER[D] points to the cell list, and smaller ones not."""
    calls = []
    original = nb.knn_cells
    monkeypatch.setattr(nb, "knn_cells", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setattr(nb, "CELLS_CROSSOVER", {2: 100, 3: 100})
    xyz = torch.rand(2, 99, 3)
    knn(xyz, xyz, 4)
    assert not calls
    xyz = torch.rand(2, 100, 3)
    ref = knn(xyz, xyz, 4, backend="torch")
    out = knn(xyz, xyz, 4)
    assert len(calls) == 1 and torch.equal(out.dist2, ref.dist2)
    assert backends.resolve("knn", torch.device("cpu")).name == "numba"


def test_grid_holds_every_valid_point_once():
    xyz, lengths = pixel_set_batch("masked", 16, 24, batch=3, keep=0.5, seed=1)
    grid = build_cells(xyz, lengths, 2.0)
    assert grid.coords.shape == (int(lengths.sum()), 2) and int(grid.starts[-1]) == int(lengths.sum())
    cells = grid.dims.prod(-1)
    assert bool((cells <= lengths / 2 * 2.5**2 + 1).all())
    for b in range(3):
        lo, hi = int(grid.starts[grid.offset[b]]), int(grid.starts[grid.offset[b] + cells[b]])
        assert sorted(grid.index[lo:hi].tolist()) == list(range(int(lengths[b])))
        assert torch.equal(grid.coords[lo:hi], xyz[b, grid.index[lo:hi]])


def test_steps_are_sorted_lower_bounds():
    for dim, radius in ((2, 3), (3, 2)):
        steps, gap = cell_steps(dim, radius)
        assert bool((gap[1:] >= gap[:-1]).all()) and float(gap[-1]) < radius**2
        if dim == 2:
            assert bool((steps[:, 2] == 0).all())
        outside = ((steps.abs() - 1).clamp_min(0) ** 2).sum(-1)
        assert bool((outside.double() >= gap[:-1]).all())


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["regular", "discrete", "masked", "irregular"])
def test_full_size_pixel_sets(fmt, brute):
    """224 x 224 pixel sets, queries as a model's FPS centres would be (every 49th pixel)."""
    xyz, lengths = pixel_set_batch(fmt, 224, 224, batch=2, keep=0.5, seed=5)
    query, ql = xyz[:, ::49].contiguous(), (lengths + 48) // 49
    out = knn(query, xyz, 24, ql, lengths, backend="cells")
    _same(out, brute(query, xyz, 24, ql, lengths))


@pytest.mark.parametrize("case", ["pixels", "uniform 3-D", "flat 3-D"])
def test_numba_grid_is_the_torch_grid(case):
    """The numba build (CPU backend) and the torch build (Triton backend) make the same cells."""
    if case == "pixels":
        xyz, lengths = pixel_set_batch("irregular", 20, 30, batch=3, keep=0.5, seed=4)
    else:
        xyz, lengths = torch.rand(3, 500, 3), torch.tensor([500, 77, 1])
        if case == "flat 3-D":
            xyz[..., 1] = 0.5
    want = build_cells(xyz, lengths, 2.0)
    got = nb._build_cells(xyz.numpy(), lengths.numpy(), 2.0)
    for name, value in zip(want._fields, got):
        assert torch.equal(torch.from_numpy(value), getattr(want, name)), name
