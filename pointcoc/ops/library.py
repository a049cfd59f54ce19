"""FPS and kNN as ``torch.library`` custom ops: one opaque node each under ``torch.compile``.

The backends behind :func:`~pointcoc.ops.farthest_point_sample` and
:func:`~pointcoc.ops.knn` are Python loops, numba and Triton kernels. Dynamo
cannot trace them, and would split the graph at every call; as custom ops with
a fake (shape-only) implementation they stay inside one graph and run as they
do in eager mode. Their outputs are integer indices (and, for kNN, squared
distances that the public :func:`~pointcoc.ops.knn` recomputes
differentiably when autograd needs them), so the ops have no autograd formula
and take detached inputs.

Inside an op the inputs are real tensors even when the caller is compiled, so
this is where the checks that read values run (finite coordinates, lengths in
range) and where the backend is chosen and called (:func:`pointcoc.ops.backends.call`, which falls
back from a kernel that fails to compile or launch): forcing a backend with
:func:`~pointcoc.ops.set_backend` takes effect without recompiling. The
public functions check types and shapes before calling the op.

Ops: ``torch.ops.pointcoc.farthest_point_sample(xyz, n_samples, lengths,
random_start, backend, skip_near_origin) -> idx`` and ``torch.ops.pointcoc.knn(query, points,
k, query_lengths, point_lengths, backend) -> (dist2, idx)``; arguments as the
public functions, lengths already given as LongTensors (B,).

``torch.ops.pointcoc.check_point_inputs(xyz, features, lengths, min_points) -> xyz`` (a copy) runs the
value checks of a point model's input (finite coordinates and features, lengths in [1, N], every set at
least ``min_points`` points) where they cannot run in Python: inside a program made by ``torch.export``,
whose graph holds this op (the model uses its output, so the op is never dropped as dead code). It raises
the ValueErrors of eager mode.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import backends
from .validation import (check_coordinates, check_finite, check_length_values, rescaled, scale_exponents,
                         times_power_of_two)

__all__ = ["fps_op", "knn_op", "check_point_inputs_op"]


@torch.library.custom_op("pointcoc::farthest_point_sample", mutates_args=())
def fps_op(xyz: torch.Tensor, n_samples: int, lengths: torch.Tensor, random_start: bool,
           backend: Optional[str], skip_near_origin: bool) -> torch.Tensor:
    """FPS of ``xyz`` (B, N, D) with LongTensor ``lengths`` (B,) -> LongTensor (B, n_samples), -1 past lengths."""
    check_finite("xyz", xyz)
    batch, n, _ = xyz.shape
    check_length_values("lengths", lengths, n)
    if random_start:
        start = (torch.rand(batch, device=xyz.device) * lengths).long().clamp_max(lengths - 1)
    else:
        start = torch.zeros(batch, dtype=torch.long, device=xyz.device)
    exponents = None if skip_near_origin else scale_exponents([(xyz, lengths)])  # (the rule's 1e-3 is absolute)
    if exponents is not None:  # squared distances would overflow or be subnormal: an exact rescaling
        xyz = rescaled(xyz, exponents)
    return backends.call("fps", xyz.device, backend, xyz.contiguous(), n_samples, lengths, start, skip_near_origin)


@fps_op.register_fake
def _fps_fake(xyz, n_samples, lengths, random_start, backend, skip_near_origin):
    return xyz.new_empty((xyz.shape[0], n_samples), dtype=torch.long)


@torch.library.custom_op("pointcoc::knn", mutates_args=())
def knn_op(query: torch.Tensor, points: torch.Tensor, k: int, query_lengths: torch.Tensor,
           point_lengths: torch.Tensor, backend: Optional[str]) -> Tuple[torch.Tensor, torch.Tensor]:
    """kNN of ``query`` (B, M, D) in ``points`` (B, N, D) -> (dist2 (B, M, k), idx (B, M, k) long)."""
    check_finite("query", query)
    check_finite("points", points)
    check_length_values("query_lengths", query_lengths, query.shape[1])
    check_length_values("point_lengths", point_lengths, points.shape[1])
    exponents = scale_exponents([(query, query_lengths), (points, point_lengths)])
    if exponents is not None:  # squared distances would overflow or be subnormal: an exact rescaling
        query, points = rescaled(query, exponents), rescaled(points, exponents)
    dist2, idx = backends.call("knn", query.device, backend, query.contiguous(), points.contiguous(), k,
                               query_lengths, point_lengths)
    if exponents is not None:
        dist2 = times_power_of_two(dist2, 2 * exponents)
    return dist2, idx


@knn_op.register_fake
def _knn_fake(query, points, k, query_lengths, point_lengths, backend):
    batch, m, _ = query.shape
    return query.new_empty((batch, m, k)), query.new_empty((batch, m, k), dtype=torch.long)


@torch.library.custom_op("pointcoc::check_point_inputs", mutates_args=())
def check_point_inputs_op(xyz: torch.Tensor, features: Optional[torch.Tensor], lengths: Optional[torch.Tensor],
                          min_points: int) -> torch.Tensor:
    """Value checks of a point model's input ``xyz`` (B, N, D), ``features`` (B, N, C) or None, ``lengths`` (B,)
    or None -> a copy of ``xyz``; raises the ValueErrors of the model's eager checks."""
    check_coordinates("xyz", xyz)
    if features is not None:
        check_finite("features", features)
    n = xyz.shape[1]
    if lengths is not None:
        check_length_values("lengths", lengths, n)
    smallest = n if lengths is None else int(lengths.min())
    if smallest < min_points:
        raise ValueError(f"every set needs at least k_neighbors[0] = {min_points} points; got a set of {smallest}")
    return xyz.clone()


@check_point_inputs_op.register_fake
def _check_point_inputs_fake(xyz, features, lengths, min_points):
    return torch.empty_like(xyz)
