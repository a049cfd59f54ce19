"""Pointwise MLP layers on channels-last tensors, with padding-aware BatchNorm.

Every layer here takes features of shape (..., C) (channels last, e.g.
(B, N, C) or (B, S, k, C)) and an optional boolean ``mask`` of shape (...)
that is True on real entries. A 1x1 Conv1d on (B, C, N) is the same map as a
Linear on (B, N, C); the channels-last form avoids transposes (see the
"pointwise layer" section of docs/benchmarks.md).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ["MaskedBatchNorm", "PointwiseLayer", "ResidualPointBlock", "get_activation", "none_if_all"]


def none_if_all(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``mask``, or None when it is None or all True (the layers then skip the masked paths). Under torch.export,
    which cannot branch on values, ``mask`` itself (the masked paths give the same results)."""
    if mask is None or torch.compiler.is_exporting():
        return mask
    return None if bool(mask.all()) else mask


def get_activation(name: str, inplace: bool = False) -> nn.Module:
    """An activation module by name: relu, gelu, silu or leakyrelu.

    ``inplace=True`` overwrites its input (relu, silu, leakyrelu; gelu has no
    in-place form): use it only on a fresh tensor that no one else keeps, such
    as a BatchNorm output (BatchNorm's backward needs its input, not its output).
    """
    table = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "leakyrelu": nn.LeakyReLU}
    key = str(name).lower()
    if key not in table:
        raise ValueError(f"activation must be one of {sorted(table)}; got {name!r}")
    return table[key]() if key == "gelu" else table[key](inplace=bool(inplace))


class MaskedBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over the last dimension of a (..., C) tensor; padding never enters the statistics.

    Args of forward:
        x: Tensor (..., C).
        mask: BoolTensor (...) that is True on real entries, or None (all real).

    Returns:
        Tensor (..., C). When batch statistics are used (training mode), entries
        where ``mask`` is False are 0 and only the real entries are normalised
        together; in eval mode the running statistics act on each entry alone.
    """

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        shape = x.shape
        uses_batch_stats = self.training or not self.track_running_stats
        if mask is not None and uses_batch_stats:
            normed = super().forward(x[mask])
            out = normed.new_zeros(shape)
            out[mask] = normed
            return out
        if x.dim() == 2:  # a fresh result, not a view: an in-place activation after it stays cheap
            return super().forward(x)
        return super().forward(x.reshape(-1, shape[-1])).reshape(shape)


def linear_norm_act(linear: nn.Module, norm: MaskedBatchNorm, act: nn.Module, x: torch.Tensor,
                    mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``act(norm(linear(x), mask))`` on (..., C_in) -> (..., C_out), computed on the flattened (M, C) rows.

    Flat, every intermediate is a fresh tensor rather than a view, so an
    in-place activation costs nothing in the backward pass (an in-place op on
    a view makes autograd copy the gradient of the whole base tensor).
    """
    shape = x.shape
    flat_mask = None if mask is None else mask.reshape(-1)
    out = act(norm(linear(x.reshape(-1, shape[-1])), flat_mask))
    return out if x.dim() == 2 else out.reshape(*shape[:-1], out.shape[-1])


class PointwiseLayer(nn.Module):
    """Linear -> MaskedBatchNorm -> activation on (..., C_in) -> (..., C_out); the published ConvBNReLU1D."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False, activation: Optional[str] = "relu"):
        super().__init__()
        self.linear = nn.Linear(in_channels, out_channels, bias=bias)
        self.norm = MaskedBatchNorm(out_channels)
        self.act = get_activation(activation, inplace=True) if activation else nn.Identity()

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (..., C_in), mask: (...) bool or None -> (..., C_out)."""
        return linear_norm_act(self.linear, self.norm, self.act, x, mask)


class ResidualPointBlock(nn.Module):
    """Residual pointwise MLP block (the published ConvBNReLURes1D with groups=1).

    ``act(BN(W2 act(BN(W1 x))) + x)`` with a hidden width of
    ``int(channels * res_expansion)``. Shapes: (..., C) -> (..., C).
    """

    def __init__(self, channels: int, res_expansion: float = 1.0, bias: bool = False, activation: str = "relu"):
        super().__init__()
        hidden = int(channels * res_expansion)
        if hidden < 1:
            raise ValueError(f"channels * res_expansion must be >= 1; got {channels} * {res_expansion}")
        self.net1 = PointwiseLayer(channels, hidden, bias=bias, activation=activation)
        self.net2 = PointwiseLayer(hidden, channels, bias=bias, activation=None)
        self.act = get_activation(activation, inplace=True)  # acts on the fresh sum below

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (..., C), mask: (...) bool or None -> (..., C)."""
        flat = x.reshape(-1, x.shape[-1])
        flat_mask = None if mask is None else mask.reshape(-1)
        h = self.net2(self.net1(flat, flat_mask), flat_mask)  # a fresh (M, C) tensor: the sum goes in place
        return self.act(h.add_(flat)).view(x.shape)
