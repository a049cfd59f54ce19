"""pytorch3d's FPS and kNN as pointcoc backends (``"pytorch3d"``), used when it imports.

pytorch3d pads kNN results with index 0 and distance 0; here they become -1
and inf like every other backend, and its kNN distances become the
reference's own values by an exact re-ranking of a few more candidates than
asked for. Its FPS always starts at index 0 (or at its own random pick) and
has no near-origin rule, so a random start drawn by pointcoc and
``skip_near_origin=True`` go to the reference.
"""
from __future__ import annotations

import torch

from .. import _optional
from . import backends
from .fps import fps_torch
from .knn import KNNResult, _finish, exact_among_candidates, knn_torch

__all__ = ["fps_pytorch3d", "knn_pytorch3d"]


def fps_pytorch3d(xyz: torch.Tensor, n_samples: int, lengths: torch.Tensor, start: torch.Tensor,
                  skip_near_origin: bool) -> torch.Tensor:
    """``pytorch3d.ops.sample_farthest_points`` with the signature of :func:`pointcoc.ops.fps.fps_torch`.

    pytorch3d has no near-origin rule: ``skip_near_origin=True`` goes to the reference. Its CPU kernel computes
    distances in float32 whatever the input dtype, which picks other points for float64 sets (digits below float32's)
    and float16 ones (distances that float16 rounds to ties): every dtype but float32 goes to the reference.

    Returns:
        LongTensor (B, n_samples); entries past lengths[b] are -1.
    """
    if xyz.dtype != torch.float32 or skip_near_origin or bool((start != 0).any()):
        return fps_torch(xyz, n_samples, lengths, start, skip_near_origin)
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
    """``pytorch3d.ops.knn_points`` with the signature, padding and distances of :func:`pointcoc.ops.knn.knn_torch`.

    pytorch3d's kernels (``knn.cu``, ``knn_cpu.cpp``) sum squared coordinate
    differences, possibly fused or reordered, so each of its distances is
    within ``2 (D + 2) u`` relative (u the unit roundoff) of the reference's.
    It is asked for k + 8 neighbours; their distances are recomputed exactly
    and re-sorted, and a query is accepted only when its k-th exact distance is
    at most pytorch3d's last distance shrunk by that error
    (:func:`pointcoc.ops.knn.exact_among_candidates`), otherwise the reference
    answers it. float16 / bfloat16, and float64 on the CPU (pytorch3d's CPU kernel rejects it), go to the
    reference. dist2 is not differentiable (:func:`pointcoc.ops.knn` recomputes it when autograd needs it).
    """
    if query.dtype not in (torch.float32, torch.float64) or (query.dtype == torch.float64
                                                             and query.device.type == "cpu"):
        return knn_torch(query, points, k, query_lengths, point_lengths)
    n = points.shape[1]
    kk = min(k, n)
    n_cand = min(n, kk + 8)
    with torch.no_grad():
        out = _optional.pytorch3d_ops.knn_points(
            query.detach(), points.detach(), lengths1=query_lengths, lengths2=point_lengths, K=n_cand,
            return_sorted=True,
        )
        col = torch.arange(n_cand, device=query.device)[None, None, :]
        cand = out.idx.long().masked_fill(col >= point_lengths[:, None, None], -1)  # pytorch3d pads with 0
        info = torch.finfo(query.dtype)
        bound = out.dists[..., -1] * (1 - 16 * info.eps) - 64 * info.tiny
        rows = torch.arange(query.shape[1], device=query.device)[None, :] < query_lengths[:, None]
        dist2, idx = exact_among_candidates(query, points, cand, bound, kk, rows, point_lengths)
    return _finish(dist2, idx, k, query_lengths, point_lengths)


if _optional.WITH_PYTORCH3D:
    backends.register("fps", "pytorch3d", fps_pytorch3d, devices=("cpu", "cuda"), priority=5)
    backends.register("knn", "pytorch3d", knn_pytorch3d, devices=("cpu", "cuda"), priority=7)
else:
    for _op in ("fps", "knn"):
        backends.note_unavailable(_op, "pytorch3d", "not importable")
