"""Reducers: max-pooling over neighbours or points that skips padding."""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["masked_max"]


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
        return x.max(dim).values
    filled = x.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    out = filled.max(dim).values
    return out.masked_fill(~mask.any(dim).unsqueeze(-1), 0.0)
