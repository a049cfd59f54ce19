"""Gather per-point features by index."""
from __future__ import annotations

import torch

from .validation import check_index

__all__ = ["gather"]


def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Pick rows of ``x`` per set; index -1 gives zeros.

    Args:
        x: Tensor (B, N, C) of per-point values.
        idx: LongTensor (B, ...) with values in [-1, N), on the device of ``x``.

    Returns:
        Tensor (B, ..., C) with ``out[b, ...] = x[b, idx[b, ...]]`` and zeros
        where ``idx`` is -1. Differentiable with respect to ``x``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (B, N, C); got {got}")
    batch, n, c = x.shape
    if isinstance(idx, torch.Tensor) and idx.device != x.device:
        raise ValueError(f"idx must be on the device of x ({x.device}); got {idx.device}")
    check_index("idx", idx, batch, n)
    flat = idx.reshape(batch, -1)
    missing = flat < 0
    # Compiled: always the branch-free form (a data-dependent if would split the graph).
    has_missing = torch.compiler.is_compiling() or bool(missing.any())
    if has_missing:
        flat = flat.clamp_min(0)
    # One index_select over the flattened batch: about 3x faster than torch.gather
    # with an expanded (B, K, C) index, forward and backward, on the CPU.
    rows = (flat + torch.arange(batch, device=x.device)[:, None] * n).reshape(-1)
    picked = x.reshape(batch * n, c).index_select(0, rows).reshape(batch, -1, c)
    if has_missing:
        picked = picked.masked_fill(missing[..., None], 0)
    return picked.reshape(*idx.shape, c)
