"""Reducers: max-pooling over neighbours or points that skips padding."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["masked_max"]


class _MaxOverRows(torch.autograd.Function):
    """``x.max(1)`` of a (M, K, C) tensor on the CPU, values and gradient, computed as a max-pool over K.

    torch's ``max(dim)`` over a middle dimension runs about ten times slower on the CPU than ``max_pool1d``
    over the same entries (channels vectorised), and its backward copies a zero tensor of the input's size
    before scattering; here the gradient goes into the zeros in place. The same index wins ties (the first).
    """

    @staticmethod
    def forward(ctx, x):
        values, indices = F.max_pool1d(x.transpose(1, 2), x.shape[1], return_indices=True)  # (M, C, 1)
        ctx.save_for_backward(indices)
        ctx.input_shape = x.shape
        return values.squeeze(-1)

    @staticmethod
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        rows, size, channels = ctx.input_shape
        # flat positions (row * K + index) * C + channel; index_put_ instead of scatter_, whose bfloat16 path
        # round-trips the whole output through float32
        flat = indices.view(rows, channels) * channels + torch.arange(channels, device=grad.device)
        flat = flat + torch.arange(rows, device=grad.device).unsqueeze(1) * (size * channels)
        out = grad.new_zeros(rows * size * channels)
        return out.index_put_((flat.view(-1),), grad.reshape(-1)).view(ctx.input_shape)


def _max(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x.max(dim).values`` (dim not the last), through :class:`_MaxOverRows` on the CPU for the dimension before
    the channels (neighbours of a group, points of a set)."""
    if dim != x.dim() - 2 or x.device.type != "cpu" or torch.compiler.is_compiling() or x.shape[dim] == 0:
        return x.max(dim).values
    out = _MaxOverRows.apply(x.reshape(-1, *x.shape[-2:]))
    return out.view(*x.shape[:-2], x.shape[-1])


def masked_max(x: torch.Tensor, mask: Optional[torch.Tensor], dim: int) -> torch.Tensor:
    """Maximum over one dimension of ``x`` counting only the real entries.

    Args:
        x: Tensor (..., K, ..., C) of features, channels last.
        mask: BoolTensor of ``x.shape[:-1]``, True on real entries, or None (all real).
        dim: the dimension to reduce (must not be the channel dimension).

    Returns:
        Tensor with ``dim`` removed; rows without any real entry are 0. The
        gradient goes to one maximal entry (``torch.max`` with indices, as the
        published ``adaptive_max_pool1d``), not shared among ties as
        ``amax`` would: one pass in backward instead of a comparison, a count
        and a division over the whole input.
    """
    dim = dim % x.dim()
    if dim == x.dim() - 1:
        raise ValueError("dim must not be the channel (last) dimension of x")
    if mask is None:
        return _max(x, dim)
    filled = x.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    out = _max(filled, dim)
    return out.masked_fill(~mask.any(dim).unsqueeze(-1), 0.0)
