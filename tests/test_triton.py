"""Triton FPS and kNN against the torch references and brute force.

Compiled on CUDA when a GPU is present. On the CPU the same tests run in Triton's
interpreter, in a subprocess (``test_kernels_in_the_interpreter``), since
``TRITON_INTERPRET=1`` must be set before triton is first imported. The
interpreter runs every tile op in numpy, so the default cases are small.
"""
import os
import re

import numpy as np
import pytest
import torch

from ops_reference import check_against_float64, numpy_fps, random_lengths, spread_case
from pointcoc.bench.ops_rows import pixel_set_batch
from pointcoc.ops import farthest_point_sample, knn, triton_backend
from pointcoc.ops.fps import fps_torch, near_origin
from script_checks import run_python

pytestmark = pytest.mark.skipif(not triton_backend.WITH_TRITON, reason="needs triton")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETED else "cuda"


@pytest.fixture(autouse=True)
def _kernels_can_run(request):
    if request.node.name.startswith(("test_kernels_in_the_interpreter", "test_kernels_compile")):
        return  # they need no device
    if not INTERPRETED and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device, or TRITON_INTERPRET=1 (see test_kernels_in_the_interpreter)")


def _interpreted(marker):
    """Run this file's tests selected by ``marker`` in the interpreter; the number that passed."""
    env_before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        out = run_python(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", f"({marker}) and not cuda", __file__],
                         timeout=1200)
    finally:
        if env_before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = env_before
    assert out.returncode == 0, out.stdout + out.stderr
    return int(re.search(r"(\d+) passed", out.stdout).group(1))


@pytest.mark.skipif(INTERPRETED, reason="this is the interpreted run")
def test_kernels_in_the_interpreter():
    assert _interpreted("not slow") == 10


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED, reason="this is the interpreted run")
def test_kernels_in_the_interpreter_slow():
    assert _interpreted("slow") == 17


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED, reason="compiles for a GPU")
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_kernels_compile_for_cuda_without_fused_multiply_adds(dtype):
    """Compiled for sm_90 (no GPU needed): a fused multiply-add would round differently from the reference."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    from pointcoc.ops import _triton_kernels as kernels

    fps = {"coords_ptr": f"*{dtype}", "lengths_ptr": "*i64", "start_ptr": "*i64", "min_ptr": f"*{dtype}",
           "out_ptr": "*i64", "n": "i32", "n_samples": "i32", "DIM": "constexpr", "BLOCK": "constexpr"}
    knn_ = {"q_ptr": f"*{dtype}", "p_ptr": f"*{dtype}", "qlen_ptr": "*i64", "plen_ptr": "*i64",
            "out_d_ptr": f"*{dtype}", "out_i_ptr": "*i64", "m": "i32", "n": "i32", "k": "i32", "DIM": "constexpr",
            "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "K_PAD": "constexpr"}
    knn_constants = {"DIM": 3, "BLOCK_M": 32, "BLOCK_N": 64, "K_PAD": 32}
    cells = {"q_ptr": f"*{dtype}", "order_ptr": "*i64", "n_rows": "i32", "m": "i32", "origin_ptr": "*fp64",
             "inv_ptr": "*fp64", "dims_ptr": "*i64", "offset_ptr": "*i64", "starts_ptr": "*i64",
             "coords_ptr": f"*{dtype}", "index_ptr": "*i64", "steps_ptr": "*i64", "gap_ptr": "*fp64", "n_steps": "i32",
             "max_per_cell": "i32", "shrink": "fp64", "floor": "fp64", "out_d_ptr": f"*{dtype}", "out_i_ptr": "*i64",
             "settled_ptr": "*i8", "k": "i32", "DIM": "constexpr", "BLOCK_M": "constexpr", "K_PAD": "constexpr"}
    for kernel, signature, constants in ((kernels.fps_kernel, fps, {"DIM": 3, "BLOCK": 1024}),
                                         (kernels.knn_kernel, knn_, knn_constants),
                                         (kernels.knn_cells_kernel, cells, {"DIM": 2, "BLOCK_M": 32, "K_PAD": 16})):
        compiled = compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": 4, "enable_fp_fusion": False})
        assert "cubin" in compiled.asm and "fma." not in compiled.asm["ptx"]


def _points(seed, batch, n, dim, dtype=torch.float32, grid=False):
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(batch, n, dim, generator=g, dtype=torch.float64) * 2 - 1
    if grid:  # coarse coordinates: many equal distances, so tie-breaking matters
        xyz = (xyz * 2).round() / 2
    return xyz.to(dtype), random_lengths(batch, n, g, ragged=True)


def _lexicographic_knn(query, points, k, query_lengths, point_lengths):
    """Brute force: the k smallest (distance, index) pairs, distances summed x, then y, then z."""
    diff = query[:, :, None, :] - points[:, None, :, :]
    dist2 = diff[..., 0] * diff[..., 0]
    for d in range(1, query.shape[-1]):
        dist2 = dist2 + diff[..., d] * diff[..., d]
    padded = torch.arange(points.shape[1])[None, None, :] >= point_lengths[:, None, None]
    dist2 = dist2.masked_fill(padded, float("inf"))
    dist2, idx = torch.sort(dist2, dim=-1, stable=True)  # stable: equal distances keep index order
    dist2, idx = dist2[..., :k], idx[..., :k]
    pad = max(0, k - dist2.shape[-1])
    dist2 = torch.cat([dist2, dist2.new_full(dist2.shape[:2] + (pad,), float("inf"))], -1)
    idx = torch.cat([idx, idx.new_full(idx.shape[:2] + (pad,), -1)], -1)
    missing = torch.isinf(dist2) | (torch.arange(query.shape[1])[None, :, None] >= query_lengths[:, None, None])
    return dist2.masked_fill(missing, float("inf")), idx.masked_fill(missing, -1)


SLOW = pytest.mark.slow


@pytest.mark.parametrize("dim,dtype,grid", [(3, torch.float64, True), pytest.param(2, torch.float64, True, marks=SLOW),
                                            pytest.param(3, torch.float32, False, marks=SLOW),
                                            pytest.param(2, torch.float32, False, marks=SLOW)])
def test_fps_same_indices_as_reference(dim, dtype, grid):
    xyz, lengths = _points(dim, 3, 37, dim, dtype, grid)
    lengths[0] = 6  # fewer points than samples: -1 past the length
    idx = farthest_point_sample(xyz.to(DEVICE), 12, lengths.to(DEVICE), backend="triton").cpu()
    assert torch.equal(idx, farthest_point_sample(xyz, 12, lengths, backend="torch"))
    np.testing.assert_array_equal(idx.numpy(), numpy_fps(xyz.numpy(), 12, lengths.numpy(), np.zeros(3, np.int64)))


def test_fps_random_start():
    xyz, lengths = _points(5, 4, 30, 3)
    torch.manual_seed(0)
    idx = farthest_point_sample(xyz.to(DEVICE), 8, lengths.to(DEVICE), random_start=True, backend="triton").cpu()
    assert bool((idx[:, 0] < lengths).all())
    assert torch.equal(idx, fps_torch(xyz, 8, lengths, idx[:, 0], False))


def test_fps_skip_near_origin():
    """The authors' kernel rule: points near the origin are never picked after the first pick."""
    xyz, lengths = _points(8, 3, 40, 3)
    xyz[:, ::3] *= 0.01  # squared norm <= 3e-4: near the origin
    xyz[2, 1:] *= 1e-3  # nothing left to pick after the first: index 0, as the reference
    start = torch.zeros(3, dtype=torch.long)
    idx = farthest_point_sample(xyz.to(DEVICE), 12, lengths.to(DEVICE), backend="triton", skip_near_origin=True)
    assert torch.equal(idx.cpu(), fps_torch(xyz, 12, lengths, start, True))
    picked = idx.cpu()[:, 1:].clamp_min(0)
    assert not bool(near_origin(xyz).gather(1, picked)[idx.cpu()[:, 1:] > 0].any())


@pytest.mark.slow
@pytest.mark.parametrize("n,block_sweeps", [(1500, 2), (3000, 3)])
def test_fps_several_blocks(n, block_sweeps):
    """Sets longer than the kernel's block (1024): the sweep over blocks keeps the first maximum."""
    xyz, lengths = _points(n, 2, n, 3, grid=True)
    idx = farthest_point_sample(xyz.to(DEVICE), 40, lengths.to(DEVICE), backend="triton").cpu()
    assert torch.equal(idx, farthest_point_sample(xyz, 40, lengths, backend="torch"))


@pytest.mark.parametrize("dim,dtype,grid,k", [(2, torch.float64, True, 5),
                                              pytest.param(3, torch.float64, True, 40, marks=SLOW),
                                              pytest.param(3, torch.float32, False, 5, marks=SLOW),
                                              pytest.param(2, torch.float32, False, 40, marks=SLOW)])
def test_knn_same_distances_and_lowest_indices_among_ties(dim, dtype, grid, k):
    """k=40 > the shortest set: -1 / inf past it; grid coordinates: ties go to the lowest indices."""
    points, point_lengths = _points(dim + k, 3, 36, dim, dtype, grid)
    query, query_lengths = _points(dim + k + 1, 3, 40, dim, dtype, grid)
    out = knn(query.to(DEVICE), points.to(DEVICE), k, query_lengths.to(DEVICE), point_lengths.to(DEVICE),
              backend="triton")
    dist2, idx = _lexicographic_knn(query, points, k, query_lengths, point_lengths)
    assert torch.equal(out.dist2.cpu(), dist2) and torch.equal(out.idx.cpu(), idx)
    ref = knn(query, points, k, query_lengths, point_lengths, backend="torch")
    assert torch.equal(out.dist2.cpu(), ref.dist2)


def test_knn_exact_at_any_extent():
    xyz, lengths = spread_case("clusters 1e4", seed=2)
    xyz, lengths = xyz[:, :64], torch.tensor([50, 64])  # the interpreter is slow
    out = knn(xyz.to(DEVICE), xyz.to(DEVICE), 8, lengths.to(DEVICE), lengths.to(DEVICE), backend="triton")
    out = type(out)(out.dist2.cpu(), out.idx.cpu())
    check_against_float64(xyz, 8, lengths, out)
    assert torch.equal(out.dist2, knn(xyz, xyz, 8, lengths, lengths, backend="torch").dist2)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["clusters 500", "offset 1e5", "outliers", "pixels", "lattice"])
def test_knn_exact_at_any_extent_more(kind):
    xyz, lengths = spread_case(kind, seed=3)
    out = knn(xyz.to(DEVICE), xyz.to(DEVICE), 16, lengths.to(DEVICE), lengths.to(DEVICE), backend="triton")
    out = type(out)(out.dist2.cpu(), out.idx.cpu())
    check_against_float64(xyz, 16, lengths, out)
    assert torch.equal(out.dist2, knn(xyz, xyz, 16, lengths, lengths, backend="torch").dist2)


def test_knn_gradient_flows_through_exact_distances():
    query, ql = _points(1, 2, 9, 3, torch.float64)
    points, pl = _points(2, 2, 20, 3, torch.float64)
    query, points = query.to(DEVICE).requires_grad_(True), points.to(DEVICE).requires_grad_(True)
    out = knn(query, points, 4, ql.to(DEVICE), pl.to(DEVICE), backend="triton")
    ref = knn(query, points, 4, ql.to(DEVICE), pl.to(DEVICE), backend="torch")
    mask = out.idx >= 0
    g = torch.autograd.grad(out.dist2[mask].sum(), (query, points))
    g_ref = torch.autograd.grad(ref.dist2[mask].sum(), (query, points))
    torch.testing.assert_close(g, g_ref)


@pytest.mark.cuda
def test_chosen_automatically_on_cuda():
    from pointcoc.ops import backends

    assert backends.resolve("fps", torch.device("cuda")).name == "triton"
    assert backends.resolve("knn", torch.device("cuda")).name == "triton"


@pytest.mark.cuda
@pytest.mark.parametrize("batch,m,n,k", [(32, 512, 1024, 24), (4, 2048, 8192, 16)])
def test_cuda_matches_reference_at_model_sizes(batch, m, n, k):
    points, pl = _points(n, batch, n, 3)
    query, ql = _points(m, batch, m, 3)
    out = knn(query.cuda(), points.cuda(), k, ql.cuda(), pl.cuda(), backend="triton")
    ref = knn(query.cuda(), points.cuda(), k, ql.cuda(), pl.cuda(), backend="torch")
    assert torch.equal(out.dist2, ref.dist2)
    idx = farthest_point_sample(points.cuda(), m, pl.cuda(), backend="triton")
    assert torch.equal(idx, farthest_point_sample(points.cuda(), m, pl.cuda(), backend="torch"))


def test_knn_lowest_indices_among_ties_across_tiles():
    """Sets longer than the kernel's tile of 64 points: ties across tiles still go to the lowest indices."""
    points, point_lengths = _points(11, 2, 150, 2, torch.float64, grid=True)
    query, query_lengths = _points(12, 2, 20, 2, torch.float64, grid=True)
    out = knn(query.to(DEVICE), points.to(DEVICE), 7, query_lengths.to(DEVICE), point_lengths.to(DEVICE),
              backend="triton")
    dist2, idx = _lexicographic_knn(query, points, 7, query_lengths, point_lengths)
    assert torch.equal(out.dist2.cpu(), dist2) and torch.equal(out.idx.cpu(), idx)


def _cells_case(query, points, k, ql, pl):
    out = knn(query.to(DEVICE), points.to(DEVICE), k, ql.to(DEVICE), pl.to(DEVICE), backend="triton-cells")
    dist2, idx = _lexicographic_knn(query, points, k, ql, pl)
    assert torch.equal(out.dist2.cpu(), dist2) and torch.equal(out.idx.cpu(), idx)


@pytest.mark.parametrize("fmt", ["discrete", pytest.param("regular", marks=SLOW), pytest.param("masked", marks=SLOW),
                                 "irregular"])
def test_knn_cells_pixel_formats(fmt):
    """The cell-list kernel on small pixel sets: the brute force's distances and indices, ties included."""
    xyz, lengths = pixel_set_batch(fmt, 10, 10, batch=2, keep=0.5, seed=2)
    _cells_case(xyz, xyz, 6, lengths, lengths)


def test_knn_cells_unsettled_rows_redone():
    """A query far from its set and k above a set's size: the table does not settle them; brute force does."""
    points, pl = _points(3, 2, 60, 2)
    query, ql = _points(4, 2, 9, 2)
    query[0, 0] = 40.0
    pl[0] = 4  # k = 6 > 4: -1 / inf past it
    _cells_case(query, points, 6, ql, pl)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_knn_cells_three_dims(dtype):
    points, pl = _points(5, 2, 120, 3, dtype, grid=True)
    query, ql = _points(6, 2, 16, 3, dtype)
    _cells_case(query, points, 5, ql, pl)
