"""torch.distributed helpers: set-up from torchrun's environment, rank queries, sum reductions."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "all_reduce_sum", "broadcast_buffers", "barrier", "decide_on_rank0"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); nccl on CUDA, gloo on CPU.

    Returns a single-process DistInfo when not launched by torchrun.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over processes (a no-op in a single process); returns the reduced tensor."""
    if info.enabled:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process.

    DDP keeps parameters equal, but each process updates its own running statistics in its last
    training forward; without this, ranks would evaluate with different statistics than the checkpoint.
    """
    if info.enabled:
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def decide_on_rank0(info: DistInfo, check):
    """Call ``check()`` on rank 0 only and make every rank reach its verdict before training starts.

    Returns ``check()``'s result on rank 0 (None elsewhere). When it raises, rank 0 re-raises the exception and
    every other rank raises :class:`~pointcoc.engine.errors.StoppedOnAnotherRank` (exit code 2, no message of its
    own), instead of failing later in a collective with a "connection closed by peer" traceback.
    """
    from .errors import StoppedOnAnotherRank

    if not info.enabled:
        return check()
    result, error, verdict = None, None, [None]
    if info.is_main:
        try:
            result = check()
        except Exception as err:  # noqa: BLE001 - re-raised below, after the other ranks heard of it
            error = err
            verdict = [f"{type(err).__name__}: {err}"]
    dist.broadcast_object_list(verdict, src=0)
    if error is not None:
        raise error
    if verdict[0] is not None:
        raise StoppedOnAnotherRank(f"rank {info.rank}: rank 0 stopped the run before training ({verdict[0]})")
    return result


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
