"""farthest_point_sample: every backend against a brute-force numpy reference."""
import numpy as np
import pytest
import torch

from ops_reference import density_case, kernel_block_size, numpy_fps, numpy_fps_kernel, random_lengths
from pointcoc import _optional
from pointcoc.bench.ops_rows import DENSITY_KINDS
from pointcoc.ops import available_backends, farthest_point_sample, use_backend
from pointcoc.ops.fps import near_origin

# pytorch3d runs where installed (its own tests); triton runs on CPU only in its interpreter (tests/test_triton.py).
CPU_BACKENDS = [b for b in available_backends("fps") if b not in ("pytorch3d", "triton")]


def _case(seed, batch, n, dim, ragged, dtype=torch.float32, grid=False):
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(batch, n, dim, generator=g, dtype=torch.float64) * 2 - 1
    if grid:  # coarse coordinates: many equal distances, so tie-breaking matters
        xyz = (xyz * 3).round() / 3
    lengths = random_lengths(batch, n, g, ragged)
    return xyz.to(dtype), lengths


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("batch,n,n_samples", [(1, 1, 1), (3, 17, 5), (4, 64, 64), (2, 100, 130), (5, 300, 32)])
def test_matches_numpy_reference(backend, dim, ragged, batch, n, n_samples):
    xyz, lengths = _case(batch * n + dim, batch, n, dim, ragged)
    idx = farthest_point_sample(xyz, n_samples, lengths if ragged else None, backend=backend)
    expected = numpy_fps(xyz.numpy(), n_samples, lengths.numpy(), np.zeros(batch, dtype=np.int64))
    assert idx.dtype == torch.long and idx.shape == (batch, n_samples)
    np.testing.assert_array_equal(idx.numpy(), expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", DENSITY_KINDS)
def test_non_uniform_density(backend, kind):
    """Issue 30's sets (one far outlier, a dense blob in sparse surroundings, tight clusters), above the numba
    backend's cell-list crossover: the reference's picks on every backend."""
    xyz, lengths = density_case(kind, seed=3, n=2400)
    idx = farthest_point_sample(xyz, 300, lengths, backend=backend)
    np.testing.assert_array_equal(idx.numpy(), numpy_fps(xyz.numpy(), 300, lengths.numpy(), np.zeros(2, np.int64)))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_go_to_lowest_index(backend, dtype):
    xyz, lengths = _case(7, 6, 200, 3, ragged=True, dtype=dtype, grid=True)
    idx = farthest_point_sample(xyz, 150, lengths, backend=backend)
    expected = numpy_fps(xyz.numpy(), 150, lengths.numpy(), np.zeros(6, dtype=np.int64))
    np.testing.assert_array_equal(idx.numpy(), expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_ragged_picks_are_distinct_valid_and_padded_with_minus_one(backend):
    xyz, lengths = _case(3, 8, 50, 3, ragged=True)
    xyz[:, 40:] = 100.0  # padding far away: it would be picked at once if it were considered
    lengths = lengths.clamp_max(40)
    idx = farthest_point_sample(xyz, 45, lengths, backend=backend)
    for b in range(8):
        real = idx[b, : lengths[b]]
        assert len(set(real.tolist())) == int(lengths[b])
        assert bool((real >= 0).all()) and bool((real < lengths[b]).all())
        assert bool((idx[b, lengths[b] :] == -1).all())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_random_start_is_valid_and_backends_agree(backend):
    xyz, lengths = _case(11, 16, 40, 2, ragged=True)
    torch.manual_seed(0)
    idx = farthest_point_sample(xyz, 10, lengths, random_start=True, backend=backend)
    torch.manual_seed(0)
    ref = farthest_point_sample(xyz, 10, lengths, random_start=True, backend="torch")
    assert torch.equal(idx, ref)
    assert bool((idx[:, 0] < lengths).all())
    start = idx[:, 0].numpy()
    np.testing.assert_array_equal(idx.numpy(), numpy_fps(xyz.numpy(), 10, lengths.numpy(), start))
    torch.manual_seed(1)
    other = farthest_point_sample(xyz, 10, lengths, random_start=True, backend=backend)
    assert not torch.equal(other[:, 0], idx[:, 0])


def test_float16_falls_back_to_reference():
    xyz, _ = _case(5, 2, 30, 3, ragged=False)
    half = farthest_point_sample(xyz.half(), 8)
    ref = farthest_point_sample(xyz.half(), 8, backend="torch")
    assert torch.equal(half, ref)


def test_requires_grad_input_and_non_contiguous_input():
    xyz, _ = _case(9, 3, 60, 3, ragged=False)
    ref = farthest_point_sample(xyz, 20, backend="torch")
    assert torch.equal(farthest_point_sample(xyz.clone().requires_grad_(), 20), ref)
    strided = xyz.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(farthest_point_sample(strided, 20), ref)


def test_default_backend_is_the_fast_one_and_forcing_works():
    xyz, _ = _case(2, 2, 30, 3, ragged=False)
    ref = farthest_point_sample(xyz, 10, backend="torch")
    with use_backend("torch"):
        assert torch.equal(farthest_point_sample(xyz, 10), ref)
    if "numba" in CPU_BACKENDS:
        from pointcoc.ops.backends import resolve

        assert resolve("fps", xyz.device).name == "numba"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("skip", [False, True])
def test_cuda_matches_cpu(ragged, skip):
    xyz, lengths = _near_origin_case(4, 4, 500, 3, torch.float32) if skip else _case(4, 4, 500, 3, ragged)
    cpu = farthest_point_sample(xyz, 100, lengths, backend="torch", skip_near_origin=skip)
    for backend in available_backends("fps"):
        cuda = farthest_point_sample(xyz.cuda(), 100, lengths.cuda(), backend=backend, skip_near_origin=skip)
        assert cuda.device.type == "cuda"
        assert torch.equal(cuda.cpu(), cpu)


@pytest.mark.skipif(not _optional.WITH_PYTORCH3D, reason="needs pytorch3d")
@pytest.mark.parametrize("ragged", [False, True])
def test_pytorch3d_matches_reference(ragged):
    xyz, lengths = _case(6, 4, 300, 3, ragged)
    ref = farthest_point_sample(xyz, 64, lengths, backend="torch")
    assert torch.equal(farthest_point_sample(xyz, 64, lengths, backend="pytorch3d"), ref)
    xyz, lengths = _near_origin_case(6, 4, 300, 3, torch.float32)
    ref = farthest_point_sample(xyz, 64, lengths, backend="torch", skip_near_origin=True)
    assert torch.equal(farthest_point_sample(xyz, 64, lengths, backend="pytorch3d", skip_near_origin=True), ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_pytorch3d_wrapper_gives_the_reference_picks_for_every_dtype(monkeypatch, dtype):
    """Stand-in for pytorch3d (not installed here) that computes in float32 whatever the input dtype, as its CPU
    kernel does: the wrapper must still return the reference's picks for float16 and float64 sets."""
    from types import SimpleNamespace

    from pointcoc.ops import pytorch3d_backend
    from pointcoc.ops.fps import fps_torch

    def sample_farthest_points(xyz, lengths, K, random_start_point):
        start = torch.zeros(xyz.shape[0], dtype=torch.long)
        return None, fps_torch(xyz.float(), K, lengths, start, False)

    monkeypatch.setattr(pytorch3d_backend._optional, "pytorch3d_ops",
                        SimpleNamespace(sample_farthest_points=sample_farthest_points))
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, 1, 3, generator=g, dtype=torch.float64) * 1e3  # far-apart clusters of tiny ones
    xyz = (centres + torch.randn(4, 8, 64, 3, generator=g, dtype=torch.float64) * 1e-6).reshape(4, 512, 3)
    if dtype == torch.float16:
        xyz = torch.rand(4, 512, 3, generator=g, dtype=torch.float64) * 2 - 1  # float16 rounds distances to ties
    xyz = xyz.to(dtype)
    lengths = torch.tensor([512, 400, 512, 100])
    start = torch.zeros(4, dtype=torch.long)
    ref = fps_torch(xyz, 96, lengths, start, False)
    if dtype != torch.float32:  # the stand-in alone picks other points: the case tests something
        assert not torch.equal(sample_farthest_points(xyz, lengths, 96, False)[1], ref)
    assert torch.equal(pytorch3d_backend.fps_pytorch3d(xyz, 96, lengths, start, False), ref)


def _near_origin_case(seed, batch, n, dim, dtype, grid=False):
    """Sets where about a third of the points lie within the 1e-3 squared-norm ball, one set entirely;
    padding holds both points at the origin and far away ones."""
    xyz, lengths = _case(seed, batch, n, dim, ragged=True, dtype=torch.float64, grid=grid)
    g = torch.Generator().manual_seed(seed + 1)
    inside = torch.rand(batch, n, generator=g) < 0.35
    xyz[inside] *= 0.015
    xyz[min(1, batch - 1)] *= 0.015  # every point of this set near the origin
    padding = torch.arange(n)[None, :] >= lengths[:, None]
    xyz[padding] = torch.where(torch.rand(int(padding.sum()), 1, generator=g) < 0.5, 0.0, 50.0).to(xyz.dtype)
    return xyz.to(dtype), lengths


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("grid", [False, True])
def test_skip_near_origin_matches_the_kernel_rule(backend, dtype, dim, grid):
    xyz, lengths = _near_origin_case(20 + dim, 5, 90, dim, dtype, grid)
    idx = farthest_point_sample(xyz, 60, lengths, backend=backend, skip_near_origin=True)
    sequential = numpy_fps_kernel(xyz.numpy(), 60, lengths.numpy(), threads=1)
    np.testing.assert_array_equal(idx.numpy(), sequential)
    near = near_origin(xyz)
    if not grid:  # no exact ties until the candidates run out: the kernel's thread layout cannot matter
        threaded = numpy_fps_kernel(xyz.numpy(), 60, lengths.numpy())
        for b in range(5):
            distinct = int((~near[b, : lengths[b]]).sum()) + int(near[b, 0])
            np.testing.assert_array_equal(idx[b, :distinct].numpy(), threaded[b, :distinct])
    for b in range(5):
        picks = idx[b, 1 : lengths[b]]
        assert bool((picks < lengths[b]).all()) and bool((picks >= 0).all())
        assert not bool(near[b, picks[picks != 0]].any())  # only the default pick 0 may lie near the origin
    assert bool((idx[1, : lengths[1]] == 0).all())  # nothing to pick: index 0 every time
    plain = farthest_point_sample(xyz, 60, lengths, backend=backend)
    assert not torch.equal(plain, idx)


def test_near_origin_threshold_is_compared_in_double_as_the_kernel():
    # float32 x*x + y*y == float32(1e-3), which is above the double 1e-3 the kernel compares with
    on_edge = torch.tensor([[[0.5, 0.5, 0.5], [0.0316, 0.0012000554, 0.0]]], dtype=torch.float32)
    below = torch.tensor([[[0.5, 0.5, 0.5], [0.0316, 0.0011, 0.0]]], dtype=torch.float32)
    assert float((on_edge[0, 1] ** 2).sum()) == float(torch.tensor(1e-3, dtype=torch.float32))
    for backend in CPU_BACKENDS:
        assert farthest_point_sample(on_edge, 2, backend=backend, skip_near_origin=True).tolist() == [[0, 1]]
        assert farthest_point_sample(below, 2, backend=backend, skip_near_origin=True).tolist() == [[0, 0]]


def test_skip_near_origin_caps_distances_at_1e10_as_the_kernel():
    # squared distances 4e10 and 1.6e11 both become 1e10: a tie, so the lower index wins
    xyz = torch.tensor([[[0.0, 0.0, 1.0], [2e5, 0.0, 1.0], [1.0, 0.0, 1.0], [4e5, 0.0, 1.0]]], dtype=torch.float64)
    for backend in CPU_BACKENDS:
        assert farthest_point_sample(xyz, 2, backend=backend, skip_near_origin=True).tolist() == [[0, 1]]
        assert farthest_point_sample(xyz, 2, backend=backend).tolist() == [[0, 3]]
    np.testing.assert_array_equal(numpy_fps_kernel(xyz.numpy(), 2, np.array([4])), [[0, 1]])


def test_kernel_ties_follow_its_thread_reduction_not_the_lowest_index():
    """Documented difference: points 1 and 2 are equally far from point 0. pointcoc picks 1; the kernel
    (4 threads for 4 points) reduces thread 0 with 2 first, then with 1, and keeps 2."""
    xyz = torch.tensor([[[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [1.0, 2.0, 0.0], [1.0, 0.0, 1.0]]])
    assert kernel_block_size(4) == 4
    assert numpy_fps_kernel(xyz.numpy(), 2, np.array([4])).tolist() == [[0, 2]]
    for backend in CPU_BACKENDS:
        assert farthest_point_sample(xyz, 2, backend=backend, skip_near_origin=True).tolist() == [[0, 1]]


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(xyz=torch.rand(10, 3)), "xyz must have shape (B, N, D)"),
        (dict(xyz=torch.rand(2, 10, 4)), "D in {2, 3}; got shape (2, 10, 4)"),
        (dict(xyz=torch.rand(2, 10, 1)), "D in {2, 3}"),
        (dict(xyz=torch.ones(2, 10, 3, dtype=torch.long)), "xyz must be a floating-point tensor; got dtype torch.int64"),
        (dict(xyz=torch.rand(0, 10, 3)), "at least one set"),
        (dict(xyz=torch.rand(2, 0, 3)), "at least one point"),
        (dict(xyz=torch.tensor([[[0.0, float("nan"), 0.0]]])), "xyz must hold only finite values"),
        (dict(xyz=torch.tensor([[[0.0, float("inf"), 0.0]]])), "xyz must hold only finite values"),
        (dict(xyz=[[0.0, 0.0, 0.0]]), "xyz must be a torch.Tensor"),
        (dict(n_samples=0), "n_samples must be an int >= 1; got 0"),
        (dict(n_samples=-3), "n_samples must be an int >= 1; got -3"),
        (dict(n_samples=2.5), "n_samples must be an int >= 1; got 2.5"),
        (dict(n_samples=True), "n_samples must be an int >= 1; got True"),
        (dict(lengths=torch.tensor([10, 0])), "lengths must have values in [1, 10]"),
        (dict(lengths=torch.tensor([10, 11])), "lengths must have values in [1, 10]"),
        (dict(lengths=torch.tensor([10])), "lengths must have shape (B,) = (2,); got shape (1,)"),
        (dict(lengths=torch.tensor([10.0, 5.0])), "lengths must be an integer tensor"),
        (dict(lengths=[10, 5]), "lengths must be a LongTensor"),
        (dict(skip_near_origin=1), "skip_near_origin must be a bool; got 1"),
    ],
)
def test_bad_input_raises(kwargs, fragment):
    args = dict(xyz=torch.rand(2, 10, 3), n_samples=4, lengths=None)
    args.update(kwargs)
    with pytest.raises(ValueError) as err:
        farthest_point_sample(**args)
    assert fragment in str(err.value)


def _fps_in_child(queue, xyz):
    queue.put(farthest_point_sample(xyz, 10).tolist())


def test_works_in_a_forked_child_after_use_in_the_parent():
    """DataLoader workers are forked; the CPU kernels must not rely on a fork-unsafe thread pool."""
    import multiprocessing

    xyz, _ = _case(1, 4, 100, 3, ragged=False)
    parent = farthest_point_sample(xyz, 10).tolist()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_fps_in_child, args=(queue, xyz))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == parent


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_count_does_not_change_results(threads):
    xyz, lengths = _case(12, 7, 120, 3, ragged=True)
    ref = farthest_point_sample(xyz, 30, lengths, backend="torch")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert torch.equal(farthest_point_sample(xyz, 30, lengths), ref)
    finally:
        torch.set_num_threads(before)
