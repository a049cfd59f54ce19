"""torch.distributed helpers: set-up from torchrun's environment, rank queries, sum reductions."""
from __future__ import annotations

import datetime
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from .errors import RunStopped

__all__ = ["DistInfo", "init_distributed", "all_reduce_sum", "broadcast_buffers", "barrier", "decide_on_rank0",
           "leave_process_group", "DEFAULT_TIMEOUT_S", "watch_launcher", "collective_failure"]

DEFAULT_TIMEOUT_S = 600.0  # TrainConfig.dist_timeout_s, --dist-timeout


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


def init_distributed(device: torch.device, timeout_s: Optional[float] = None) -> DistInfo:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); nccl on CUDA, gloo on CPU.

    ``timeout_s`` (default ``DEFAULT_TIMEOUT_S``) bounds the wait for the other processes to join and every
    collective afterwards: a process then stops with torch's timeout error instead of sleeping. Under torchrun a
    process also stops (exit code 2, one line) as soon as its launcher is gone (:func:`watch_launcher`): a
    ``kill -9`` of torchrun no longer leaves its ranks asleep.

    Returns a single-process DistInfo when not launched by torchrun.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun, which is our parent process
        watch_launcher(info.rank)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return info


_watching = []


def watch_launcher(rank: int, interval_s: float = 0.5) -> None:
    """Stop this process (``os._exit(2)`` after one line on stderr) when its parent, the launcher, is gone.

    A daemon thread compares ``os.getppid()`` with the parent seen now every ``interval_s`` seconds (an
    orphan is re-parented, to pid 1 or a subreaper). A process whose parent is already pid 1 is taken to be
    an orphan at once. Started once per process; POSIX only (does nothing elsewhere).
    """
    if _watching or not hasattr(os, "getppid") or sys.platform == "win32":
        return
    parent = os.getppid()

    def gone() -> None:
        sys.stderr.write(f"error: rank {rank}: its launcher (torchrun, pid {parent}) is gone; stopping this "
                         "process\n")
        sys.stderr.flush()
        os._exit(2)

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                gone()
            time.sleep(interval_s)

    if parent == 1:
        gone()
    _watching.append(threading.Thread(target=watch, name="pointcoc-launcher-watch", daemon=True))
    _watching[0].start()


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
    own), instead of failing later in a collective with a "connection closed by peer" traceback. (torchrun
    may still end a rank with SIGTERM when rank 0 exits first: it stops the others once one rank fails.)
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
    if verdict[0] is not None:
        dist.barrier()  # rank 0 exits only once every rank knows: none of them meets a closed connection
    if error is not None:
        raise error
    if verdict[0] is not None:
        raise StoppedOnAnotherRank(f"rank {info.rank}: rank 0 stopped the run before training ({verdict[0]})")
    return result


def collective_failure(err: BaseException, timeout_s: float) -> Optional[RunStopped]:
    """Under torchrun, the one-line RunStopped for an error of torch.distributed (a collective or the join that
    waited longer than ``--dist-timeout``, or a peer that went away); None for any other error or run."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not isinstance(err, RuntimeError):
        return None
    text = str(err).strip()
    lowered = text.lower()
    dist_error = getattr(dist, "DistError", ())
    if not (isinstance(err, dist_error) or "gloo" in lowered or "nccl" in lowered or "timed out" in lowered):
        return None
    first = text.splitlines()[0] if text else type(err).__name__
    rank = os.environ.get("RANK", "?")
    if "timed out" in lowered or "timeout" in lowered:
        return RunStopped(f"rank {rank}: waited longer than --dist-timeout {timeout_s:g} s for the other processes "
                          f"({first}); another rank may be writing a checkpoint, evaluating or compiling "
                          "meanwhile: raise --dist-timeout")
    return RunStopped(f"rank {rank}: the connection to another process of the run broke ({first}); that "
                      "process's own message says why it stopped")


def leave_process_group() -> None:
    """Destroy the process group, if this process joined one, while the interpreter is fully alive.

    Without it the group is destroyed during interpreter shutdown, where gloo's worker threads may still hold
    work that touches Python objects: the process then aborts (SIGABRT, "terminate called without an active
    exception") instead of exiting with its code. Local to this process: no collective, no wait for the others.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
