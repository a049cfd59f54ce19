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
import os

import torch

from . import backends
from .fps import fps_torch, initial_min_dist2
from .knn import KNNResult, _finish, knn_torch

__all__ = ["WITH_TRITON", "fps_triton", "knn_triton"]

# triton is optional (it comes with CUDA builds of torch); imported on the first call, since
# importing it costs about a second and CPU-only runs never need it.
WITH_TRITON = importlib.util.find_spec("triton") is not None

_DTYPES = (torch.float32, torch.float64)
_MAX_K = 128  # the running top-k lives in registers: (queries per tile) x next_power_of_2(k)

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
    # Sort by (distance, index): by index first, then stably by distance.
    order = torch.argsort(idx.masked_fill(idx < 0, n), dim=-1, stable=True)
    dist2, idx = torch.gather(dist2, -1, order), torch.gather(idx, -1, order)
    order = torch.argsort(dist2, dim=-1, stable=True)
    dist2, idx = torch.gather(dist2, -1, order), torch.gather(idx, -1, order)
    return _finish(dist2, idx, k, query_lengths, point_lengths)


if WITH_TRITON:
    # CPU tensors only in the interpreter, and only when forced; elsewhere a forced "triton" on the CPU
    # falls back to the automatic choice, as any backend forced on a device it does not support.
    _forced = ("cpu",) if os.environ.get("TRITON_INTERPRET") == "1" else ()
    backends.register("fps", "triton", fps_triton, devices=("cuda",), priority=20, forced_devices=_forced)
    backends.register("knn", "triton", knn_triton, devices=("cuda",), priority=20, forced_devices=_forced)
else:  # pragma: no cover
    for _op in ("fps", "knn"):
        backends.note_unavailable(_op, "triton", "not importable")
