"""Point-cloud augmentation of the published PointMLP ScanObjectNN / ModelNet40 recipe.

Every function takes one point cloud ``points`` as a tensor of shape (N, D) and an
optional ``torch.Generator``; without a generator torch's global RNG is used, which
:func:`pointcoc.engine.fit` seeds from (seed, epoch, index) for each training sample it loads
(reproducible runs, the same for any number of DataLoader workers).
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["random_scale_translate", "shuffle_points", "PointCloudAugment"]


def _check_cloud(name: str, points: torch.Tensor) -> None:
    if not isinstance(points, torch.Tensor) or points.dim() != 2 or not points.is_floating_point():
        got = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ValueError(f"{name} must be a float tensor of shape (N, D); got {got}")


def random_scale_translate(
    points: torch.Tensor,
    scale_range: tuple = (2.0 / 3.0, 3.0 / 2.0),
    shift_range: tuple = (-0.2, 0.2),
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Anisotropic scaling then translation: ``points * s + t`` with s ~ U(scale_range)^D, t ~ U(shift_range)^D.

    Args:
        points: (N, D) float tensor.
    Returns:
        (N, D) float tensor (a new tensor; the input is not modified).
    """
    _check_cloud("points", points)
    lo_s, hi_s = scale_range
    lo_t, hi_t = shift_range
    if not (0 < lo_s <= hi_s):
        raise ValueError(f"scale_range must be (low, high) with 0 < low <= high; got {scale_range}")
    if not lo_t <= hi_t:
        raise ValueError(f"shift_range must be (low, high) with low <= high; got {shift_range}")
    d = points.shape[1]
    scale = torch.empty(d).uniform_(lo_s, hi_s, generator=generator).to(points)
    shift = torch.empty(d).uniform_(lo_t, hi_t, generator=generator).to(points)
    return points * scale + shift


def shuffle_points(points: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random permutation of the N points of a (N, D) tensor (the models are order invariant)."""
    _check_cloud("points", points)
    return points[torch.randperm(points.shape[0], generator=generator)]


class PointCloudAugment:
    """Training augmentation of the authors' recipe: scale U(2/3, 3/2) per axis, shift U(-0.2, 0.2), shuffle.

    Call with a (N, D) tensor; returns a (N, D) tensor.
    """

    def __init__(self, scale_range=(2.0 / 3.0, 3.0 / 2.0), shift_range=(-0.2, 0.2), shuffle: bool = True):
        self.scale_range = tuple(scale_range)
        self.shift_range = tuple(shift_range)
        self.shuffle = shuffle

    def __call__(self, points: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        points = random_scale_translate(points, self.scale_range, self.shift_range, generator)
        return shuffle_points(points, generator) if self.shuffle else points

    def __repr__(self) -> str:
        return (f"PointCloudAugment(scale_range={self.scale_range}, shift_range={self.shift_range}, "
                f"shuffle={self.shuffle})")
