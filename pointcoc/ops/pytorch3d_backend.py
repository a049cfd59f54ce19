"""pytorch3d's FPS and kNN as pointcoc backends (``"pytorch3d"``), used when it imports.

pytorch3d pads kNN results with index 0 and distance 0; here they become -1
and inf like every other backend. Its FPS always starts at index 0 (or at its
own random pick), so a random start drawn by pointcoc goes to the reference.
"""
from __future__ import annotations

import torch

from .. import _optional
from . import backends
from .fps import fps_torch
from .knn import KNNResult, _finish

__all__ = ["fps_pytorch3d", "knn_pytorch3d"]


def fps_pytorch3d(xyz: torch.Tensor, n_samples: int, lengths: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """``pytorch3d.ops.sample_farthest_points`` with the signature of :func:`pointcoc.ops.fps.fps_torch`.

    Returns:
        LongTensor (B, n_samples); entries past lengths[b] are -1.
    """
    if bool((start != 0).any()):
        return fps_torch(xyz, n_samples, lengths, start)
    _, idx = _optional.pytorch3d_ops.sample_farthest_points(
        xyz, lengths=lengths, K=n_samples, random_start_point=False
    )
    return idx.long()


def knn_pytorch3d(
    query: torch.Tensor,
    points: torch.Tensor,
    k: int,
    query_lengths: torch.Tensor,
    point_lengths: torch.Tensor,
) -> KNNResult:
    """``pytorch3d.ops.knn_points`` with the signature and padding of :func:`pointcoc.ops.knn.knn_torch`."""
    kk = min(k, points.shape[1])
    out = _optional.pytorch3d_ops.knn_points(
        query, points, lengths1=query_lengths, lengths2=point_lengths, K=kk, return_sorted=True
    )
    return _finish(out.dists, out.idx.long(), k, query_lengths, point_lengths)


if _optional.WITH_PYTORCH3D:
    backends.register("fps", "pytorch3d", fps_pytorch3d, devices=("cpu", "cuda"), priority=5)
    backends.register("knn", "pytorch3d", knn_pytorch3d, devices=("cpu", "cuda"), priority=7)
else:
    for _op in ("fps", "knn"):
        backends.note_unavailable(_op, "pytorch3d", "not importable")
