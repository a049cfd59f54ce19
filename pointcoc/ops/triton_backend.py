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

Versions. The kernels are written against Triton 3.x (``tl.debug_barrier``, the
``enable_fp_fusion`` launch option, int64 program ids): the oldest supported is
``MIN_TRITON`` (3.0, the Triton of torch 2.4, pointcoc's oldest torch); they have
run in the interpreter of Triton 3.9 and compiled for sm_90 with it. An older
Triton is not tried: the backends are not registered and
:func:`pointcoc.ops.backends.explain` says why. They need no GPU feature newer
than compute capability ``MIN_CAPABILITY`` (7.0, Volta: no tensor cores, no
TMA; float64 and int64 arithmetic, as every CUDA GPU has); on an older GPU a
call raises :class:`~pointcoc.ops.backends.KernelError`.

Failures. Every launch goes through :func:`_launch`: an exception while importing
triton, compiling a kernel (on the first launch of each specialization) or
launching it becomes a :class:`~pointcoc.ops.backends.KernelError`, on which the
automatic backend choice falls back once, with one warning
(:func:`pointcoc.ops.backends.call`). CUDA reports some launch errors only at the
next synchronisation; those surface as torch errors later, not here.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
import re
from importlib import metadata
from typing import Optional

import torch

from . import backends
from .fps import fps_torch, initial_min_dist2
from .cells import build_cells, cell_order, cell_steps, distance_margin
from .knn import KNNResult, _finish, knn_torch, sort_pairs

__all__ = ["WITH_TRITON", "MIN_TRITON", "MIN_CAPABILITY", "fps_triton", "knn_triton", "knn_triton_cells",
           "CELLS_CROSSOVER", "triton_version", "version_problem", "register_backends"]

# triton is optional (it comes with CUDA builds of torch); imported on the first call, since
# importing it costs about a second and CPU-only runs never need it.
WITH_TRITON = importlib.util.find_spec("triton") is not None

_DTYPES = (torch.float32, torch.float64)
_MAX_K = 128  # the running top-k lives in registers: (queries per tile) x next_power_of_2(k)
# knn_triton hands 2-D sets of at least this many points to the cell list (knn_triton_cells). Not yet
# measured on a GPU (no GPU in the session that wrote it): `make gpu-check` times both at 224 x 224.
CELLS_CROSSOVER = 8192
CELLS_PER_CELL = 2.0  # average points per cell, as the numba cell list in 2-D

MIN_TRITON = (3, 0)  # the oldest Triton the kernels are written for; an older one is not tried
MIN_CAPABILITY = (7, 0)  # the oldest CUDA compute capability they are meant for (Volta)
# Distributions that install the module ``triton`` (nightly builds of torch bring "pytorch-triton").
_DISTRIBUTIONS = ("triton", "pytorch-triton", "pytorch-triton-rocm")


def triton_version() -> Optional[str]:
    """The installed Triton's version from its package metadata (triton is not imported), or None."""
    for name in _DISTRIBUTIONS:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def version_problem(version: Optional[str]) -> Optional[str]:
    """Why Triton ``version`` is not used (older than :data:`MIN_TRITON`), or None (also for an unknown version)."""
    found = re.match(r"(\d+)\.(\d+)", version or "")
    if found and (int(found.group(1)), int(found.group(2))) < MIN_TRITON:
        oldest = ".".join(map(str, MIN_TRITON))
        return (f"not used: triton {version} is older than {oldest}, the oldest the kernels are written for "
                f"(pointcoc/ops/triton_backend.py); install triton>={oldest}")
    return None


@functools.lru_cache(maxsize=None)
def _capability(device: torch.device):
    return torch.cuda.get_device_capability(device)


def _check_device(t: torch.Tensor) -> None:
    if t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            "backend 'triton' runs on CPU tensors only in Triton's interpreter: "
            "set TRITON_INTERPRET=1 before triton is first imported"
        )


def _launch(t: torch.Tensor, name: str, grid, *args, **kwargs) -> None:
    """Launch kernel ``name`` of :mod:`pointcoc.ops._triton_kernels` on ``grid`` for tensors on ``t``'s device.

    Raises:
        ValueError: ``t`` on the CPU outside Triton's interpreter.
        KernelError: importing triton, compiling or launching the kernel raised, or the GPU is older than
            :data:`MIN_CAPABILITY` (the cause is chained).
    """
    _check_device(t)
    library = "triton"
    try:
        if t.device.type == "cuda" and torch.version.hip is None and _capability(t.device) < MIN_CAPABILITY:
            major, minor = _capability(t.device)
            raise RuntimeError(f"compute capability {major}.{minor} is older than "
                               f"{'.'.join(map(str, MIN_CAPABILITY))}, the oldest the kernels are meant for")
        from . import _triton_kernels

        library = f"triton {_triton_kernels.triton.__version__}"
        getattr(_triton_kernels, name)[grid](*args, **kwargs)
    except Exception as err:
        if library == "triton":  # triton itself did not import
            library = f"triton {triton_version() or '(version unknown)'}"
        raise backends.KernelError(name, t.device, library, err) from err


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
    batch, n, dim = xyz.shape
    coords = xyz.detach().transpose(1, 2).contiguous()
    mins = initial_min_dist2(xyz.detach(), lengths, skip_near_origin)  # -1 on points never picked
    out = torch.empty(batch, n_samples, dtype=torch.long, device=xyz.device)
    block = min(1024, 1 << (n - 1).bit_length())
    _launch(xyz, "fps_kernel", (batch,), coords, lengths.contiguous(), start.contiguous(), mins, out, n, n_samples,
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
    batch, m, dim = query.shape
    n = points.shape[1]
    dist2 = torch.full((batch, m, k), float("inf"), dtype=query.dtype, device=query.device)
    idx = torch.full((batch, m, k), -1, dtype=torch.long, device=query.device)
    block_m = 32
    grid = (-(-m // block_m), batch)
    _launch(query, "knn_kernel", grid, query.detach().transpose(1, 2).contiguous(),
            points.detach().transpose(1, 2).contiguous(), query_lengths.contiguous(), point_lengths.contiguous(),
            dist2, idx, m, n, k, DIM=dim, BLOCK_M=block_m, BLOCK_N=64, K_PAD=max(16, 1 << (k - 1).bit_length()),
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
    _check_device(query)
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
    _launch(
        query, "knn_cells_kernel", (max(1, -(-n_rows // block_m)),), query.detach().contiguous(), order, n_rows, m, grid.origin, grid.inv, grid.dims, grid.offset, grid.starts,
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


def register_backends(version: Optional[str] = None) -> bool:
    """Register ``"triton"`` (FPS, kNN) and ``"triton-cells"`` (kNN) when triton is importable and not older than
    :data:`MIN_TRITON` (``version``: default :func:`triton_version`); else record why not. True when registered."""
    names = (("fps", "triton"), ("knn", "triton"), ("knn", "triton-cells"))
    if not WITH_TRITON:
        for op, name in names:
            backends.note_unavailable(op, name, "not importable" if name == "triton" else "needs triton (not importable)")
        return False
    problem = version_problem(version if version is not None else triton_version())
    if problem:
        for op, name in names:
            backends.note_unavailable(op, name, problem)
        return False
    # CPU tensors only in the interpreter, and only when forced; elsewhere a forced "triton" on the CPU
    # falls back to the automatic choice, as any backend forced on a device it does not support.
    forced = ("cpu",) if os.environ.get("TRITON_INTERPRET") == "1" else ()
    backends.register("fps", "triton", fps_triton, devices=("cuda",), priority=20, forced_devices=forced)
    backends.register("knn", "triton", knn_triton, devices=("cuda",), priority=20, forced_devices=forced)
    # The cell list at every size: forced only (tests, gpu-check); knn_triton uses it for large 2-D sets.
    backends.register("knn", "triton-cells", knn_triton_cells, devices=(), priority=19,
                      forced_devices=("cuda",) + forced)
    return True


register_backends()
