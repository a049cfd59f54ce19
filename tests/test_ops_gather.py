"""gather: against numpy indexing, -1 gives zeros, gradients accumulate."""
import numpy as np
import pytest
import torch

from pointcoc.ops import gather


def _numpy_gather(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    out = np.zeros(idx.shape + (x.shape[-1],), dtype=x.dtype)
    for b in range(x.shape[0]):
        for pos in np.ndindex(idx.shape[1:]):
            j = idx[(b,) + pos]
            if j >= 0:
                out[(b,) + pos] = x[b, j]
    return out


@pytest.mark.parametrize("idx_shape", [(3, 1), (3, 7), (3, 5, 4), (3, 2, 3, 2)])
@pytest.mark.parametrize("channels", [1, 6])
def test_matches_numpy(idx_shape, channels):
    g = torch.Generator().manual_seed(sum(idx_shape) + channels)
    x = torch.randn(3, 9, channels, generator=g)
    idx = torch.randint(-1, 9, idx_shape, generator=g)
    out = gather(x, idx)
    assert out.shape == idx_shape + (channels,)
    np.testing.assert_array_equal(out.numpy(), _numpy_gather(x.numpy(), idx.numpy()))


def test_minus_one_gives_zeros_and_empty_index():
    x = torch.randn(2, 4, 3) + 10
    out = gather(x, torch.full((2, 5), -1))
    assert torch.equal(out, torch.zeros(2, 5, 3))
    assert gather(x, torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0, 3)


def test_gradient_accumulates_over_repeated_indices_and_ignores_minus_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    idx = torch.tensor([[[0, 0, 5], [-1, 2, 0]], [[1, -1, -1], [3, 3, 3]]])
    weights = torch.randn(2, 2, 3, 4, dtype=torch.float64, generator=g)
    (grad,) = torch.autograd.grad((gather(x, idx) * weights).sum(), x)
    expected = torch.zeros_like(x)
    for b, i, j in np.ndindex(*idx.shape):
        if idx[b, i, j] >= 0:
            expected[b, idx[b, i, j]] += weights[b, i, j]
    torch.testing.assert_close(grad, expected)
    assert torch.autograd.gradcheck(lambda t: gather(t, idx), (x,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x = torch.randn(2, 50, 8)
    idx = torch.randint(-1, 50, (2, 30, 5))
    assert torch.equal(gather(x.cuda(), idx.cuda()).cpu(), gather(x, idx))


@pytest.mark.parametrize(
    "x,idx,fragment",
    [
        (torch.randn(4, 3), torch.zeros(4, 2, dtype=torch.long), "x must be a tensor of shape (B, N, C); got (4, 3)"),
        ("x", torch.zeros(2, 2, dtype=torch.long), "x must be a tensor of shape (B, N, C); got str"),
        (torch.randn(2, 4, 3), torch.zeros(2, 2), "idx must be a LongTensor (int64); got dtype torch.float32"),
        (torch.randn(2, 4, 3), torch.zeros(3, 2, dtype=torch.long), "idx must have shape (B, ...) with B = 2; got shape (3, 2)"),
        (torch.randn(2, 4, 3), torch.tensor([[0, 4], [0, 1]]), "idx must have values in [-1, 3]"),
        (torch.randn(2, 4, 3), torch.tensor([[0, -2], [0, 1]]), "idx must have values in [-1, 3]"),
        (torch.randn(2, 4, 3), [[0, 1], [0, 1]], "idx must be a LongTensor"),
    ],
)
def test_bad_input_raises(x, idx, fragment):
    with pytest.raises(ValueError) as err:
        gather(x, idx)
    assert fragment in str(err.value)


def test_matches_torch_gather_forward_and_backward():
    """The flattened index_select equals the plain torch.gather formulation, gradients included."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 50, 16, generator=g, requires_grad=True)
    idx = torch.randint(-1, 50, (4, 20, 7), generator=g)
    weights = torch.randn(4, 20, 7, 16, generator=g)
    plain = torch.gather(x, 1, idx.clamp_min(0).reshape(4, -1, 1).expand(-1, -1, 16)).reshape(4, 20, 7, 16)
    plain = plain * (idx >= 0)[..., None]
    (g_plain,) = torch.autograd.grad((plain * weights).sum(), x)
    ours = gather(x, idx)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    assert torch.equal(ours, plain)
    torch.testing.assert_close(g_ours, g_plain)


def test_idx_on_another_device_raises():
    x = torch.randn(2, 4, 3)
    idx = torch.zeros(2, 2, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match="idx must be on the device of x"):
        gather(x, idx)
