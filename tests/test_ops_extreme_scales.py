"""FPS and kNN of sets whose squared distances leave the dtype's normal range (issue 28 item 7): every CPU
backend computes them exactly by a per-set power-of-two rescaling, so a set scaled by 2**100 or 2**-70 gets the
picks of the unscaled set and its distances times 4**e exactly."""
import pytest
import torch

from pointcoc.ops import available_backends, farthest_point_sample, knn
from pointcoc.ops.validation import scale_exponents

FPS_BACKENDS = available_backends("fps", device="cpu", forced=True)
KNN_BACKENDS = available_backends("knn", device="cpu", forced=True)
SCALES = {torch.float32: (100, -70, 61, -45), torch.float64: (500, -530)}


def sets(dtype):
    """Two sets of 300 points, the second with 200 real points (padding holds a far point)."""
    x = torch.rand(2, 300, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    x[1, 200:] = 7.0
    return x, torch.tensor([300, 200])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", KNN_BACKENDS)
def test_knn_of_scaled_sets_is_the_unscaled_result_scaled_exactly(backend, dtype):
    x, lengths = sets(dtype)
    ref = knn(x, x, 8, lengths, lengths, backend="torch")
    for e in SCALES[dtype]:
        y = x * 2.0**e
        got = knn(y, y, 8, lengths, lengths, backend=backend)
        assert torch.equal(got.idx, ref.idx), (backend, e)
        want = (ref.dist2.double() * 4.0**e).to(dtype)  # exact (or the true value's overflow to inf)
        assert torch.equal(got.dist2, want), (backend, e)


def test_one_batch_mixing_scales_rescales_each_set_on_its_own():
    x, lengths = sets(torch.float32)
    ref = knn(x, x, 8, lengths, lengths, backend="torch")
    y = x.clone()
    y[0] *= 2.0**100
    y[1] *= 2.0**-70
    got = knn(y, y, 8, lengths, lengths, backend="torch")
    assert torch.equal(got.idx, ref.idx)
    assert torch.equal(got.dist2[1], ref.dist2[1] * 2.0**-140)
    assert scale_exponents([(x, lengths)]) is None  # ordinary sets are not touched


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", FPS_BACKENDS)
def test_fps_of_scaled_sets_picks_the_unscaled_sets_points(backend, dtype):
    x, lengths = sets(dtype)
    ref = farthest_point_sample(x, 64, lengths, backend="torch")
    for e in SCALES[dtype]:
        assert torch.equal(farthest_point_sample(x * 2.0**e, 64, lengths, backend=backend), ref), (backend, e)
