"""Input checks shared by every public op and module.

Each check raises ``ValueError`` with a message that names the argument, what
was expected and what came, before any kernel runs.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = [
    "check_points",
    "check_lengths",
    "check_same_batch",
    "check_positive_int",
    "check_index",
]


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def check_points(
    name: str,
    x: torch.Tensor,
    dims: Optional[Sequence[int]] = (2, 3),
    finite: bool = True,
) -> None:
    """Check that ``x`` is a floating tensor of shape (B, N, D).

    Args:
        name: argument name used in the error message.
        x: the tensor to check.
        dims: allowed sizes of the last dimension, or None for any size.
        finite: also require every value to be finite.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, N, D); got {type(x).__name__}")
    if x.dim() != 3:
        want = "D in {" + ", ".join(map(str, dims)) + "}" if dims else "any D"
        raise ValueError(f"{name} must have shape (B, N, D) with {want}; got shape {_shape(x)}")
    if dims is not None and x.shape[-1] not in dims:
        raise ValueError(
            f"{name} must have shape (B, N, D) with D in {{{', '.join(map(str, dims))}}}; "
            f"got shape {_shape(x)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one set (B >= 1); got shape {_shape(x)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one point per set (N >= 1); got shape {_shape(x)}")
    if finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must hold only finite values; it contains NaN or inf")


def check_lengths(name: str, lengths: Optional[torch.Tensor], batch: int, n: int, device=None) -> torch.Tensor:
    """Check a ragged ``lengths`` tensor and return it as a long tensor.

    Args:
        lengths: LongTensor (B,) with values in [1, N], or None (every set full).
        batch: expected B.
        n: the padded set size N.
        device: device of the returned tensor.

    Returns:
        LongTensor (B,) on ``device``; ``torch.full((B,), n)`` when ``lengths`` is None.
    """
    if lengths is None:
        return torch.full((batch,), n, dtype=torch.long, device=device)
    if not isinstance(lengths, torch.Tensor):
        raise ValueError(f"{name} must be a LongTensor of shape (B,); got {type(lengths).__name__}")
    if lengths.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"{name} must be an integer tensor of shape (B,); got dtype {lengths.dtype}")
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"{name} must have shape (B,) = ({batch},); got shape {_shape(lengths)}")
    if bool((lengths < 1).any()) or bool((lengths > n).any()):
        raise ValueError(
            f"{name} must have values in [1, {n}] (empty sets are not allowed); "
            f"got min {int(lengths.min())}, max {int(lengths.max())}"
        )
    return lengths.to(device=device, dtype=torch.long)


def check_same_batch(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Check that two tensors share the batch dimension (dim 0)."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same batch dimension; "
            f"got {a.shape[0]} and {b.shape[0]}"
        )


def check_positive_int(name: str, value) -> int:
    """Check that ``value`` is an int >= 1 and return it."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an int >= 1; got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1; got {value}")
    return value


def check_index(name: str, idx: torch.Tensor, batch: int, n: int) -> None:
    """Check an index tensor of shape (B, ...) with values in [-1, n)."""
    if not isinstance(idx, torch.Tensor):
        raise ValueError(f"{name} must be a LongTensor of shape (B, ...); got {type(idx).__name__}")
    if idx.dtype != torch.long:
        raise ValueError(f"{name} must be a LongTensor (int64); got dtype {idx.dtype}")
    if idx.dim() < 1 or idx.shape[0] != batch:
        raise ValueError(f"{name} must have shape (B, ...) with B = {batch}; got shape {_shape(idx)}")
    if idx.numel() and (bool((idx < -1).any()) or bool((idx >= n).any())):
        raise ValueError(
            f"{name} must have values in [-1, {n - 1}] (-1 marks padding); "
            f"got min {int(idx.min())}, max {int(idx.max())}"
        )
