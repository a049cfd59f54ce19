"""Farthest point sampling (FPS)."""
from __future__ import annotations

from typing import Optional

import torch

from . import backends
from .validation import check_lengths, check_points, check_positive_int

__all__ = ["farthest_point_sample", "fps_torch", "squared_distance_to"]


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


def fps_torch(xyz: torch.Tensor, n_samples: int, lengths: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Reference FPS: a plain loop over samples, vectorised over the batch.

    Args:
        xyz: Tensor (B, N, D) of point positions.
        n_samples: number of points to pick per set.
        lengths: LongTensor (B,) with values in [1, N].
        start: LongTensor (B,) giving the first pick of each set.

    Returns:
        LongTensor (B, n_samples); entries past lengths[b] are -1.
    """
    batch, n, _ = xyz.shape
    arange_b = torch.arange(batch, device=xyz.device)
    padded = torch.arange(n, device=xyz.device)[None, :] >= lengths[:, None]
    min_dist2 = torch.full((batch, n), float("inf"), dtype=xyz.dtype, device=xyz.device)
    min_dist2 = min_dist2.masked_fill(padded, -1.0)
    idx = torch.full((batch, n_samples), -1, dtype=torch.long, device=xyz.device)
    farthest = start.clone()
    for i in range(n_samples):
        idx[:, i] = torch.where(lengths > i, farthest, torch.full_like(farthest, -1))
        dist2 = squared_distance_to(xyz, xyz[arange_b, farthest])
        min_dist2 = torch.minimum(min_dist2, dist2)
        farthest = torch.argmax(min_dist2, dim=1)
    return idx


backends.register("fps", "torch", fps_torch, devices=("cpu", "cuda"), priority=0)


def farthest_point_sample(
    xyz: torch.Tensor,
    n_samples: int,
    lengths: Optional[torch.Tensor] = None,
    random_start: bool = False,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Pick ``n_samples`` points per set that are spread out in space.

    The first pick is index 0 (or a uniformly random valid index when
    ``random_start``); each next pick is the point farthest from those already
    picked, ties going to the lowest index. Once a set's own points are exhausted
    the same rule may pick a point again (all distances are 0).

    Args:
        xyz: FloatTensor (B, N, D) with D in {2, 3} giving point positions.
        n_samples: int >= 1, the number of points to pick per set.
        lengths: LongTensor (B,) with values in [1, N] giving the size of each
            set; points at index >= lengths[b] are padding and never picked.
            None means every set has N points.
        random_start: draw the first pick from torch's global RNG instead of 0.
        backend: force an implementation for this call ("torch", ...).

    Returns:
        LongTensor (B, n_samples) of indices into dim 1 of ``xyz``; entries
        ``idx[b, i]`` with ``i >= lengths[b]`` are -1.
    """
    check_points("xyz", xyz)
    n_samples = check_positive_int("n_samples", n_samples)
    batch, n, _ = xyz.shape
    lengths = check_lengths("lengths", lengths, batch, n, device=xyz.device)
    if random_start:
        start = (torch.rand(batch, device=xyz.device) * lengths).long().clamp_max(lengths - 1)
    else:
        start = torch.zeros(batch, dtype=torch.long, device=xyz.device)
    impl = backends.resolve("fps", xyz.device, backend)
    return impl.fn(xyz.contiguous(), n_samples, lengths, start)
