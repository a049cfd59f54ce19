"""Timing and memory helpers for ``scripts/benchmark.py``: every number is a ratio
against a reference run in the same process, interleaved, so that a shared and
noisy machine slows both sides alike.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import torch

__all__ = ["synchronize", "time_pair", "peak_cpu_memory", "peak_memory"]


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on ``device`` (no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_pair(ours: Callable, reference: Callable, device="cpu", repeat: int = 5, warmup: int = 1):
    """Median wall time of two callables, run alternately ``repeat`` times after ``warmup`` runs each.

    Returns:
        (seconds_ours, seconds_reference), medians over the repeats.
    """
    if repeat < 1 or warmup < 0:
        raise ValueError(f"repeat must be >= 1 and warmup >= 0; got repeat={repeat}, warmup={warmup}")
    for _ in range(warmup):
        ours()
        reference()
    synchronize(device)
    times = ([], [])
    for _ in range(repeat):
        for fn, out in ((ours, times[0]), (reference, times[1])):
            start = time.perf_counter()
            fn()
            synchronize(device)
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def peak_cpu_memory(fn: Callable) -> int:
    """Largest amount of CPU memory held by torch tensors while ``fn()`` runs, in bytes.

    Uses ``torch.profiler`` with ``profile_memory``: each event's own
    allocations minus frees, in time order; the peak of the running sum over the
    memory already held when ``fn`` starts. Memory that does not go through
    torch's allocator (numpy or numba arrays) is not seen.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    deltas = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events())
    held = peak = 0
    for _, delta in deltas:
        held += delta
        peak = max(peak, held)
    return peak


def peak_memory(fn: Callable, device="cpu") -> Optional[int]:
    """Peak extra memory of ``fn()`` on ``device`` in bytes: CUDA allocator statistics, or :func:`peak_cpu_memory`."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    return peak_cpu_memory(fn)
