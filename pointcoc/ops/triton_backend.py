"""Triton kernels for FPS and kNN, registered as backend ``"triton"`` (the first choice on CUDA).

- FPS: one program per set runs the whole iterative selection; the running
  minimum distances live in a (B, N) scratch tensor, swept in blocks.
- kNN: one program per (set, tile of queries) sweeps the set's points in
  tiles, computes exact squared differences (no ``|q|^2 - 2 q.p + |p|^2``
  expansion) and keeps a running top-k per query in registers: memory is the
  (B, M, k) output, never a (B, M, N) matrix.

Both repeat the torch references' float operations in the same order (squared
differences summed x, then y, then z; launched with ``enable_fp_fusion=False``
so that no multiply-add is fused), so FPS returns :func:`pointcoc.ops.fps.fps_torch`'s
indices (ties to the lowest index, padding never picked, -1 past the lengths,
``skip_near_origin`` as the reference) and kNN its distances bit for bit. Among equal distances kNN keeps the lowest
indices, as the numba kernel does. float16 / bfloat16 and k > 128 go to the
references.

On CPU tensors the kernels run only in Triton's interpreter: ``TRITON_INTERPRET=1``
must be set before pointcoc and triton are first imported, and the backend must be
forced (``backend="triton"``); the tests do that in a subprocess. Without triton
the backend is simply not registered.
"""
from __future__ import annotations

import importlib.util
import math
import os

import torch

from . import backends
from .fps import fps_torch, initial_min_dist2
from .cells import build_cells, cell_order, cell_steps, distance_margin
from .knn import KNNResult, _finish, knn_torch, sort_pairs

__all__ = ["WITH_TRITON", "fps_triton", "knn_triton", "knn_triton_cells", "CELLS_CROSSOVER"]

# triton is optional (it comes with CUDA builds of torch); imported on the first call, since
# importing it costs about a second and CPU-only runs never need it.
WITH_TRITON = importlib.util.find_spec("triton") is not None

_DTYPES = (torch.float32, torch.float64)
_MAX_K = 128  # the running top-k lives in registers: (queries per tile) x next_power_of_2(k)
# knn_triton hands 2-D sets of at least this many points to the cell list (knn_triton_cells). Not yet
# measured on a GPU (no GPU in the session that wrote it): `make gpu-check` times both at 224 x 224.
CELLS_CROSSOVER = 8192
CELLS_PER_CELL = 2.0  # average points per cell, as the numba cell list in 2-D

def _kernels(t: torch.Tensor):
    """The kernels module, after checking that it can run on ``t``'s device."""
    if t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            "backend 'triton' runs on CPU tensors only in Triton's interpreter: "
            "set TRITON_INTERPRET=1 before triton is first imported"
        )
    from . import _triton_kernels

    return _triton_kernels


def fps_triton(xyz: torch.Tensor, n_samples: int, lengths: torch.Tensor, start: torch.Tensor,
               skip_near_origin: bool) -> torch.Tensor:
    """Triton FPS with the signature, shapes and results of :func:`pointcoc.ops.fps.fps_torch`.

    xyz (B, N, D) on CUDA (or on the CPU in the interpreter); one program per set.
    The kernel starts from the reference's running minimum
    (:func:`pointcoc.ops.fps.initial_min_dist2`), so ``skip_near_origin`` is the
    reference's own rule.
    """
    if xyz.dtype not in _DTYPES:
        return fps_torch(xyz, n_samples, lengths, start, skip_near_origin)
    kernels = _kernels(xyz)
    batch, n, dim = xyz.shape
    coords = xyz.detach().transpose(1, 2).contiguous()
    mins = initial_min_dist2(xyz.detach(), lengths, skip_near_origin)  # -1 on points never picked
    out = torch.empty(batch, n_samples, dtype=torch.long, device=xyz.device)
    block = min(1024, 1 << (n - 1).bit_length())
    kernels.fps_kernel[(batch,)](coords, lengths.contiguous(), start.contiguous(), mins, out, n, n_samples,
                          DIM=dim, BLOCK=block, num_warps=4 if block <= 256 else 8, enable_fp_fusion=False)
    return out


def knn_triton(
    query: torch.Tensor,
    points: torch.Tensor,
    k: int,
    query_lengths: torch.Tensor,
    point_lengths: torch.Tensor,
) -> KNNResult:
    """Triton kNN with the signature and distances of :func:`pointcoc.ops.knn.knn_torch`.

    Among equal distances the lowest indices are kept and listed first. Memory
    is O(B * M * k). dist2 is not differentiable (:func:`pointcoc.ops.knn`
    recomputes it when autograd needs it).
    """
    if query.dtype not in _DTYPES or k > _MAX_K:
        return knn_torch(query, points, k, query_lengths, point_lengths)
    if query.shape[-1] == 2 and points.shape[1] >= CELLS_CROSSOVER:
        return knn_triton_cells(query, points, k, query_lengths, point_lengths)
    kernels = _kernels(query)
    batch, m, dim = query.shape
    n = points.shape[1]
    dist2 = torch.full((batch, m, k), float("inf"), dtype=query.dtype, device=query.device)
    idx = torch.full((batch, m, k), -1, dtype=torch.long, device=query.device)
    block_m = 32
    grid = (-(-m // block_m), batch)
    kernels.knn_kernel[grid](query.detach().transpose(1, 2).contiguous(), points.detach().transpose(1, 2).contiguous(),
                      query_lengths.contiguous(), point_lengths.contiguous(), dist2, idx, m, n, k,
                      DIM=dim, BLOCK_M=block_m, BLOCK_N=64, K_PAD=max(16, 1 << (k - 1).bit_length()),
                      num_warps=4, enable_fp_fusion=False)
    dist2, idx = sort_pairs(dist2, idx, n)
    return _finish(dist2, idx, k, query_lengths, point_lengths)


def knn_triton_cells(
    query: torch.Tensor,
    points: torch.Tensor,
    k: int,
    query_lengths: torch.Tensor,
    point_lengths: torch.Tensor,
) -> KNNResult:
    """Triton kNN through a uniform cell list (:mod:`pointcoc.ops.cells`): no O(N^2) per set.

    The grid is built with torch (:func:`pointcoc.ops.cells.build_cells`, on the device);
    queries, ordered by cell, search the cells around theirs nearest first and stop once no
    unvisited cell can hold a nearer point. Queries that the search table does not settle
    (an outlier far from every point; k above its set's size) are redone by the brute-force
    :func:`knn_triton`. Same distances and indices as :func:`knn_triton` (ties to the lowest
    indices). :func:`knn_triton` calls it for 2-D sets of at least ``CELLS_CROSSOVER`` points:
    pixel sets, whose grid the cells follow.
    """
    if query.dtype not in _DTYPES or k > _MAX_K:
        return knn_torch(query, points, k, query_lengths, point_lengths)
    kernels = _kernels(query)
    batch, m, dim = query.shape
    grid = build_cells(points, point_lengths, CELLS_PER_CELL)
    order = cell_order(query, query_lengths, grid)
    reach = (k / (CELLS_PER_CELL * (math.pi if dim == 2 else 4 * math.pi / 3))) ** (1 / dim)
    steps, step_gap = cell_steps(dim, int(math.ceil(reach)) + 2)
    shrink, floor = distance_margin(query.dtype)
    n_rows = int(query_lengths.sum())
    max_per_cell = int((grid.starts[1:] - grid.starts[:-1]).max())
    dist2 = torch.full((batch, m, k), float("inf"), dtype=query.dtype, device=query.device)
    idx = torch.full((batch, m, k), -1, dtype=torch.long, device=query.device)
    settled = torch.ones(batch * m, dtype=torch.int8, device=query.device)
    block_m = 32
    kernels.knn_cells_kernel[(max(1, -(-n_rows // block_m)),)](
        query.detach().contiguous(), order, n_rows, m, grid.origin, grid.inv, grid.dims, grid.offset, grid.starts,
        grid.coords, grid.index, steps.to(query.device), step_gap.to(query.device), steps.shape[0], max_per_cell,
        shrink, floor, dist2, idx, settled, k, DIM=dim, BLOCK_M=block_m, K_PAD=max(16, 1 << (k - 1).bit_length()),
        num_warps=4, enable_fp_fusion=False)
    dist2, idx = sort_pairs(dist2, idx, points.shape[1])
    redo = (settled == 0).view(batch, m)
    if bool(redo.any()):
        counts = redo.sum(1)
        rank = torch.cumsum(redo.long(), 1) - 1
        width = int(counts.max())
        sub = query.new_zeros(batch, width, dim)
        b_at, i_at = redo.nonzero(as_tuple=True)
        sub[b_at, rank[b_at, i_at]] = query[b_at, i_at]
        again = knn_triton(sub, points, k, counts, point_lengths)
        dist2[b_at, i_at], idx[b_at, i_at] = again.dist2[b_at, rank[b_at, i_at]], again.idx[b_at, rank[b_at, i_at]]
    return _finish(dist2, idx, k, query_lengths, point_lengths)


if WITH_TRITON:
    # CPU tensors only in the interpreter, and only when forced; elsewhere a forced "triton" on the CPU
    # falls back to the automatic choice, as any backend forced on a device it does not support.
    _forced = ("cpu",) if os.environ.get("TRITON_INTERPRET") == "1" else ()
    backends.register("fps", "triton", fps_triton, devices=("cuda",), priority=20, forced_devices=_forced)
    backends.register("knn", "triton", knn_triton, devices=("cuda",), priority=20, forced_devices=_forced)
    # The cell list at every size: forced only (tests, gpu-check); knn_triton uses it for large 2-D sets.
    backends.register("knn", "triton-cells", knn_triton_cells, devices=(), priority=19,
                      forced_devices=("cuda",) + _forced)
else:  # pragma: no cover
    for _op in ("fps", "knn"):
        backends.note_unavailable(_op, "triton", "not importable")
    backends.note_unavailable("knn", "triton-cells", "needs triton (not importable)")
