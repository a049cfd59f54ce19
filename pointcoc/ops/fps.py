"""Farthest point sampling (FPS)."""
from __future__ import annotations

from typing import Optional

import torch

from . import backends
from .library import fps_op
from .validation import check_count, check_lengths, check_points

__all__ = ["farthest_point_sample", "fps_torch", "squared_distance_to", "near_origin", "initial_min_dist2"]

# The rule of pointnet2_ops' CUDA kernel (furthest_point_sampling_kernel), which the authors' models call:
# a point with x*x + y*y + z*z <= 1e-3 is never considered after the first pick, and the running
# distance buffer starts at 1e10 instead of infinity.
NEAR_ORIGIN_SQUARED_NORM = 1e-3
KERNEL_START_DIST2 = 1e10


def squared_distance_to(xyz: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """Squared distances from every point of a set to one point per set.

    The coordinates are summed in a fixed order (x, then y, then z) so that every
    backend can reproduce the values bit for bit.

    Args:
        xyz: Tensor (B, N, D) of point positions.
        point: Tensor (B, D) of one position per set.

    Returns:
        Tensor (B, N) of squared distances.
    """
    diff = xyz - point[:, None, :]
    dist2 = diff[..., 0] * diff[..., 0]
    for d in range(1, xyz.shape[-1]):
        dist2 = dist2 + diff[..., d] * diff[..., d]
    return dist2


def near_origin(xyz: torch.Tensor) -> torch.Tensor:
    """BoolTensor (B, N): True where ``x*x + y*y (+ z*z) <= 1e-3``, as pointnet2_ops' CUDA FPS tests it.

    The squared norm is summed in the input's precision (x, then y, then z)
    and compared in float64, as the kernel compares its float ``mag`` with the
    double literal ``1e-3``.
    """
    zero = torch.zeros(xyz.shape[0], xyz.shape[-1], dtype=xyz.dtype, device=xyz.device)
    return squared_distance_to(xyz, zero).double() <= NEAR_ORIGIN_SQUARED_NORM


def initial_min_dist2(xyz: torch.Tensor, lengths: torch.Tensor, skip_near_origin: bool) -> torch.Tensor:
    """The running minimum distance every FPS backend starts from: Tensor (B, N) in xyz's dtype.

    Candidates start at inf (at 1e10 with ``skip_near_origin``, as the CUDA
    kernel); padding (and, with ``skip_near_origin``, points near the origin)
    hold -1 and so are never picked while any candidate is left. When none is
    left, the pick is index 0 (the kernel's default ``besti = 0``).
    """
    batch, n, _ = xyz.shape
    excluded = torch.arange(n, device=xyz.device)[None, :] >= lengths[:, None]
    if skip_near_origin:
        excluded = excluded | near_origin(xyz)
    start = KERNEL_START_DIST2 if skip_near_origin else float("inf")
    out = torch.full((batch, n), start, dtype=xyz.dtype, device=xyz.device)
    return out.masked_fill(excluded, -1.0)


def fps_torch(xyz: torch.Tensor, n_samples: int, lengths: torch.Tensor, start: torch.Tensor,
              skip_near_origin: bool) -> torch.Tensor:
    """Reference FPS: a plain loop over samples, vectorised over the batch.

    Every backend has this signature (``backends.register("fps", ...)``).

    Args:
        xyz: Tensor (B, N, D) of point positions.
        n_samples: number of points to pick per set.
        lengths: LongTensor (B,) with values in [1, N].
        start: LongTensor (B,) giving the first pick of each set.
        skip_near_origin: the CUDA kernel's rule (see :func:`farthest_point_sample`).

    Returns:
        LongTensor (B, n_samples); entries past lengths[b] are -1.
    """
    arange_b = torch.arange(xyz.shape[0], device=xyz.device)
    min_dist2 = initial_min_dist2(xyz, lengths, skip_near_origin)
    idx = torch.full((xyz.shape[0], n_samples), -1, dtype=torch.long, device=xyz.device)
    farthest = start.clone()
    for i in range(n_samples):
        idx[:, i] = torch.where(lengths > i, farthest, torch.full_like(farthest, -1))
        dist2 = squared_distance_to(xyz, xyz[arange_b, farthest])
        min_dist2 = torch.minimum(min_dist2, dist2)  # excluded points keep -1
        farthest = torch.argmax(min_dist2, dim=1)  # first maximum; all -1 gives index 0
    return idx


backends.register("fps", "torch", fps_torch, devices=("cpu", "cuda"), priority=0)


def farthest_point_sample(
    xyz: torch.Tensor,
    n_samples: int,
    lengths: Optional[torch.Tensor] = None,
    random_start: bool = False,
    backend: Optional[str] = None,
    skip_near_origin: bool = False,
) -> torch.Tensor:
    """Pick ``n_samples`` points per set that are spread out in space.

    The first pick is index 0 (or a uniformly random valid index when
    ``random_start``); each next pick is the point farthest from those already
    picked, ties going to the lowest index. Once a set's own points are exhausted
    the same rule may pick a point again (all distances are 0).

    ``skip_near_origin=True`` reproduces the rule of pointnet2_ops' CUDA
    ``furthest_point_sample``, which the authors of PointMLP and PointMLP-CoC
    trained with: after the first pick, a point with ``x*x + y*y + z*z <= 1e-3``
    (summed in the input's precision) is never picked, the running distance
    starts at 1e10 instead of infinity (it caps squared distances above 1e10),
    and when no point is left to pick (every valid point near the origin) the
    pick is index 0. The first pick itself may be near the origin. One
    difference remains: among points at exactly the same distance the kernel
    keeps the winner of its thread reduction (thread t scans points t, t + T,
    ...; each step of the tree keeps the lower thread's candidate unless the
    upper one's is strictly farther), which is not always the lowest index;
    here it always is. Exact ties are rare on real scans until every
    candidate has been picked (all distances 0). nvcc may also contract the
    kernel's distance into fused multiply-adds (a last-bit difference).

    Args:
        xyz: FloatTensor (B, N, D) with D in {2, 3} giving point positions.
        n_samples: int in [1, max(N, 1024)], the number of points to pick per
            set. Beyond a set's size the entries are -1 (below); larger values
            raise ValueError before anything is allocated
            (``pointcoc.ops.validation.MAX_PADDING``).
        lengths: LongTensor (B,) with values in [1, N] giving the size of each
            set; points at index >= lengths[b] are padding and never picked.
            None means every set has N points.
        random_start: draw the first pick from torch's global RNG instead of 0.
        backend: force an implementation for this call ("torch", ...).
        skip_near_origin: the CUDA kernel's rule above (default False).

    Returns:
        LongTensor (B, n_samples) of indices into dim 1 of ``xyz``; entries
        ``idx[b, i]`` with ``i >= lengths[b]`` are -1.

    Runs as the custom op ``torch.ops.pointcoc.farthest_point_sample``
    (:mod:`pointcoc.ops.library`): one node under ``torch.compile``.
    """
    check_points("xyz", xyz, finite=False)  # the values are checked inside the op
    batch, n, _ = xyz.shape
    n_samples = check_count("n_samples", n_samples, n)
    if not isinstance(skip_near_origin, bool):
        raise ValueError(f"skip_near_origin must be a bool; got {skip_near_origin!r}")
    lengths = check_lengths("lengths", lengths, batch, n, device=xyz.device, values=False)
    return fps_op(xyz.detach(), n_samples, lengths, bool(random_start), backend, skip_near_origin)
