"""Gather per-point features by index."""
from __future__ import annotations

import torch

from .validation import check_index

__all__ = ["gather"]


def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Pick rows of ``x`` per set; index -1 gives zeros.

    Args:
        x: Tensor (B, N, C) of per-point values.
        idx: LongTensor (B, ...) with values in [-1, N).

    Returns:
        Tensor (B, ..., C) with ``out[b, ...] = x[b, idx[b, ...]]`` and zeros
        where ``idx`` is -1. Differentiable with respect to ``x``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (B, N, C); got {got}")
    batch, n, c = x.shape
    check_index("idx", idx, batch, n)
    flat = idx.reshape(batch, -1)
    missing = flat < 0
    picked = torch.gather(x, 1, flat.clamp_min(0)[..., None].expand(-1, -1, c))
    picked = picked.masked_fill(missing[..., None], 0)
    return picked.reshape(*idx.shape, c)
