"""Input checks shared by every public op and module.

Each check raises ``ValueError`` with a message that names the argument, what
was expected and what came, before any kernel runs.

Under ``torch.compile`` the checks that read tensor values (finite
coordinates, ranges of lengths and indices) are skipped while Dynamo traces:
a data-dependent ``if`` would split the graph. They still run where the data
is at hand: inside the FPS and kNN custom ops (:mod:`pointcoc.ops.library`)
and in a model's input check, which runs outside the graph. Shape, dtype and
type checks are static and run while tracing as in eager mode.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = [
    "check_points",
    "check_finite",
    "check_coordinates",
    "check_length_values",
    "values_checked",
    "check_lengths",
    "check_same_batch",
    "check_positive_int",
    "check_count",
    "MAX_PADDING",
    "check_index",
]

# kNN's k and FPS's n_samples may exceed the set size N: the surplus columns are padding (idx -1, dist2 inf), so
# that a model's fixed k (24 neighbours) runs on sets smaller than k. Beyond max(N, MAX_PADDING) a value is refused
# before anything is allocated: it can only be a mistake (k = 10**9 would allocate gigabytes of padding).
MAX_PADDING = 1024


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def values_checked() -> bool:
    """Whether checks that read tensor values run here: always, except while torch.compile traces."""
    return not torch.compiler.is_compiling()


def check_finite(name: str, x: torch.Tensor) -> None:
    """Check that every value of ``x`` is finite (skipped while torch.compile traces).

    On the CPU the check runs in numpy (one thread): a torch parallel region here would leave torch's
    OpenMP threads spinning while the numba kernels that follow run on their own threads, which
    halved the numba kNN's speed at two threads (docs/benchmarks.md, issue 21).
    """
    if not values_checked():
        return
    if x.device.type == "cpu" and x.dtype in (torch.float16, torch.float32, torch.float64):
        finite = bool(np.isfinite(x.detach().numpy()).all())
    else:
        finite = bool(torch.isfinite(x).all())
    if not finite:
        raise ValueError(f"{name} must hold only finite values; it contains NaN or inf")


def coordinate_bound(dtype: torch.dtype, dim: int) -> float:
    """The largest coordinate magnitude whose squared distances stay finite in ``dtype``: two points with
    coordinates in [-M, M]^D are at most 4 D M**2 apart squared, so M = sqrt(max / (4 D))."""
    return math.sqrt(torch.finfo(dtype).max / (4 * max(dim, 1)))


def scale_exponents(sets: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> Optional[torch.Tensor]:
    """Per-set power-of-two exponents that bring coordinates whose squared distances would leave the dtype's
    normal range back into it, or None when no set needs one (the common case: nothing changes).

    ``sets``: pairs (x (B, N_i, D), lengths (B,)) of the same B sets (kNN's queries and points); only the first
    ``lengths[b]`` rows of set b count. A set whose largest |coordinate| m lies above :func:`coordinate_bound`
    (squared distances overflow) or in (0, 2 sqrt(tiny) / eps) (squared distances of points one ulp apart are
    subnormal) gets e with m / 2**e in [0.5, 1); the others get 0. Multiplying by 2**-e is exact, and so are the
    differences, squares and sums computed from the result when they stay normal: the order of squared distances,
    hence FPS's and kNN's picks, is that of exact arithmetic (kNN's distances are multiplied back by 4**e).
    Only float32 and float64 (in float16 even a unit-sized set has subnormal squared distances at its ulp, which
    no scale fixes). Computed in numpy on the CPU (no torch parallel region before a numba kernel, see
    :func:`check_finite`); None while torch.compile traces.
    """
    x0 = sets[0][0]
    if not values_checked() or x0.dtype not in (torch.float32, torch.float64) or x0.numel() == 0:
        return None
    info = torch.finfo(x0.dtype)
    high, low = coordinate_bound(x0.dtype, x0.shape[-1]), 2 * math.sqrt(info.tiny) / info.eps
    biggest = torch.zeros(x0.shape[0], dtype=torch.float64)
    for x, lengths in sets:
        if x.device.type == "cpu":
            a = np.abs(x.detach().numpy())
            if bool((lengths == x.shape[1]).all()):  # full sets (the common case): one reduction
                per_set = torch.from_numpy(a.max(axis=(1, 2)).astype(np.float64))
            else:
                per_set = torch.tensor([float(a[b, :n].max()) for b, n in enumerate(lengths.tolist())],
                                       dtype=torch.float64)
        else:
            valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
            per_set = x.detach().abs().masked_fill(~valid[..., None], 0).amax(dim=(1, 2)).double().cpu()
        biggest = torch.maximum(biggest, per_set.double())
    outside = (biggest > high) | ((biggest > 0) & (biggest < low))
    if not bool(outside.any()):
        return None
    return torch.where(outside, torch.frexp(biggest).exponent.long(), 0).to(x0.device)


def times_power_of_two(x: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """``x`` (B, ...) times 2**exponents[b] per set, in steps of at most 2**60 (each factor, and each product
    that stays in range, is exact; a single factor 2**200 would itself overflow, and 0 * inf is NaN)."""
    left = exponents.view(-1, *([1] * (x.dim() - 1))).long()
    while bool((left != 0).any()):
        step = left.clamp(-60, 60)
        x = x * torch.pow(2.0, step.double()).to(x.dtype)
        left = left - step
    return x


def rescaled(x: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """``x`` (B, N, D) times 2**-exponents[b] per set (exact: powers of two)."""
    return times_power_of_two(x, -exponents)


def check_coordinates(name: str, x: torch.Tensor) -> None:
    """Check that the coordinates ``x`` (..., D) are finite and small enough that squared distances between
    them do not overflow ``x.dtype`` (:func:`coordinate_bound`: about 5.3e18 for float32 in 3-D); one reduction,
    skipped while torch.compile traces."""
    if not values_checked() or x.numel() == 0:
        return
    biggest = float(x.detach().abs().amax())
    if not math.isfinite(biggest):
        raise ValueError(f"{name} must hold only finite values; it contains NaN or inf")
    bound = coordinate_bound(x.dtype, x.shape[-1])
    if biggest > bound:
        raise ValueError(f"{name} holds coordinates up to {biggest:.3g} in magnitude; squared distances overflow "
                         f"{x.dtype} above {bound:.3g}: rescale the coordinates (e.g. to the unit sphere)")


def check_length_values(name: str, lengths: torch.Tensor, n: int) -> None:
    """Check that ``lengths`` (B,) holds values in [1, n] (skipped while torch.compile traces)."""
    if values_checked() and (bool((lengths < 1).any()) or bool((lengths > n).any())):
        raise ValueError(
            f"{name} must have values in [1, {n}] (empty sets are not allowed); "
            f"got min {int(lengths.min())}, max {int(lengths.max())}"
        )


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
    if finite:
        check_finite(name, x)


def check_lengths(name: str, lengths: Optional[torch.Tensor], batch: int, n: int, device=None,
                  values: bool = True) -> torch.Tensor:
    """Check a ragged ``lengths`` tensor and return it as a long tensor.

    Args:
        lengths: LongTensor (B,) with values in [1, N], or None (every set full).
        batch: expected B.
        n: the padded set size N.
        device: device of the returned tensor.
        values: also check the values (:func:`check_length_values`); False
            checks type, dtype and shape only.

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
    if values:
        check_length_values(name, lengths, n)
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


def check_count(name: str, value, n: int) -> int:
    """Check that ``value`` is an int in [1, max(n, MAX_PADDING)] (a number of neighbours or samples from sets of
    ``n`` points, padding included) and return it."""
    value = check_positive_int(name, value)
    if value > MAX_PADDING and value > n:  # no comparison with n below the cap: n may be symbolic when compiled
        raise ValueError(f"{name} must be at most max(N, {MAX_PADDING}) = {max(n, MAX_PADDING)} for sets of N = {n} "
                         f"points (beyond N the results are only padding); got {name} = {value}")
    return value


def check_index(name: str, idx: torch.Tensor, batch: int, n: int) -> None:
    """Check an index tensor of shape (B, ...) with values in [-1, n) (the values: not while torch.compile traces)."""
    if not isinstance(idx, torch.Tensor):
        raise ValueError(f"{name} must be a LongTensor of shape (B, ...); got {type(idx).__name__}")
    if idx.dtype != torch.long:
        raise ValueError(f"{name} must be a LongTensor (int64); got dtype {idx.dtype}")
    if idx.dim() < 1 or idx.shape[0] != batch:
        raise ValueError(f"{name} must have shape (B, ...) with B = {batch}; got shape {_shape(idx)}")
    if idx.numel() and values_checked() and (bool((idx < -1).any()) or bool((idx >= n).any())):
        raise ValueError(
            f"{name} must have values in [-1, {n - 1}] (-1 marks padding); "
            f"got min {int(idx.min())}, max {int(idx.max())}"
        )
