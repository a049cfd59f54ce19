"""The cell-list FPS (backend "cells", numba's path for large sets) and the k-d tree leaves it uses for crowded
sets (backend "kdtree") pick exactly what brute force picks."""
import importlib

import pytest
import torch

from ops_reference import SPREAD_KINDS, density_case, spread_case
from pointcoc.bench.ops_rows import DENSITY_KINDS, pixel_set_batch
from pointcoc.ops import farthest_point_sample as fps
from pointcoc.ops.fps import fps_torch

nb = importlib.import_module("pointcoc.ops.numba_backend")
pytestmark = pytest.mark.skipif(not nb.WITH_NUMBA, reason="needs numba")


@pytest.fixture
def brute(monkeypatch):
    """FPS with backend "numba" forced to brute force at every size."""
    monkeypatch.setattr(nb, "FPS_CELLS_CROSSOVER", 10**12)
    return lambda xyz, s, lengths, **kw: fps(xyz, s, lengths, backend="numba", **kw)


@pytest.fixture(params=[256.0, 4.0])
def per_cell(request, monkeypatch):
    """The default cell (and tree leaf) size and a small one (many cells even on small test sets)."""
    monkeypatch.setattr(nb, "FPS_PER_CELL", request.param)
    monkeypatch.setattr(nb, "FPS_TREE_LEAF", int(request.param))


@pytest.fixture(params=["cells", "kdtree"])
def fast(request):
    """The backend under test: grid cells, or k-d tree leaves as cells."""
    return request.param


@pytest.mark.parametrize("fmt", ["regular", "discrete", "masked", "irregular"])
def test_pixel_formats(fmt, brute, per_cell, fast):
    """Pixel grids: equal distances at every step, so the lowest-index rule decides most picks."""
    xyz, lengths = pixel_set_batch(fmt, 24, 24, batch=3, keep=0.5, seed=1)
    out = fps(xyz, 200, lengths, backend=fast)
    assert torch.equal(out, brute(xyz, 200, lengths))
    assert torch.equal(out, fps_torch(xyz, 200, lengths, torch.zeros(3, dtype=torch.long), False))


@pytest.mark.parametrize("kind", SPREAD_KINDS)
def test_spread_sets(kind, brute, per_cell, fast):
    xyz, lengths = spread_case(kind, seed=2)
    assert torch.equal(fps(xyz, 150, lengths, backend=fast), brute(xyz, 150, lengths))


@pytest.mark.parametrize("kind", DENSITY_KINDS)
@pytest.mark.parametrize("crowding", [3.0, float("inf")])
def test_non_uniform_density(kind, crowding, brute, per_cell, monkeypatch):
    """Issue 30's sets, with the switch to tree leaves (default) and with the grid alone."""
    monkeypatch.setattr(nb, "CELLS_CROWDING", crowding)
    xyz, lengths = density_case(kind, seed=4)
    assert torch.equal(fps(xyz, 200, lengths, backend="cells"), brute(xyz, 200, lengths))


def test_crowded_sets_use_tree_leaves(monkeypatch):
    """fps_cells hands tree leaves exactly the sets whose cells are crowded."""
    seen = []
    original = nb._fps_tree
    monkeypatch.setattr(nb, "_fps_tree", lambda *a: seen.append(a[5].tolist()) or original(*a))
    uniform, _ = density_case("uniform", seed=0, n=3000)
    outlier, _ = density_case("outlier", seed=0, n=3000)
    xyz, lengths = torch.cat([outlier[:1], uniform[:1]]), torch.tensor([3000, 3000])
    out = fps(xyz, 100, lengths, backend="cells")
    assert seen == [[True, False]]
    assert torch.equal(out, fps(xyz, 100, lengths, backend="torch"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ragged_exhausted_random_start_near_origin(dtype, brute, per_cell, fast):
    """More picks than points (-1 past the length, repeats once exhausted), random start, the kernel rule."""
    g = torch.Generator().manual_seed(0)
    xyz = (torch.rand(3, 300, 3, generator=g, dtype=torch.float64) - 0.5).to(dtype)
    xyz[:, ::5] *= 0.01  # near the origin
    lengths = torch.tensor([300, 40, 7])
    for kwargs in (dict(), dict(skip_near_origin=True)):
        torch.manual_seed(1)
        out = fps(xyz, 60, lengths, backend=fast, random_start=True, **kwargs)
        torch.manual_seed(1)
        assert torch.equal(out, brute(xyz, 60, lengths, random_start=True, **kwargs))
    assert bool((out[2, 7:] == -1).all())


def test_duplicates_and_one_point(brute, per_cell, fast):
    xyz = (torch.rand(2, 500, 2) * 3).floor()  # 9 distinct points, each many times
    xyz[1] = xyz[1, :1]
    lengths = torch.tensor([500, 300])
    assert torch.equal(fps(xyz, 40, lengths, backend=fast), brute(xyz, 40, lengths))


def test_chosen_above_the_crossover(monkeypatch):
    calls = []
    original = nb.fps_cells
    monkeypatch.setattr(nb, "fps_cells", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setattr(nb, "FPS_CELLS_CROSSOVER", 200)
    fps(torch.rand(2, 199, 3), 100)
    assert not calls
    xyz = torch.rand(2, 200, 3)
    assert torch.equal(fps(xyz, 100), fps(xyz, 100, backend="torch")) and len(calls) == 1
    fps(xyz, nb.FPS_CELLS_MIN_SAMPLES - 1)
    assert len(calls) == 1
