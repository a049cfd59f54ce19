"""Measuring: paired timings, peak memory, the :class:`Row` every benchmark produces, the machine's name.

Every number is a ratio against a reference run in the same process,
interleaved, so that a shared and noisy machine slows both sides alike.
"""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["MIN_PAIRS", "synchronize", "timed", "timed_pairs", "time_pair", "median_speedup", "quiet_profile",
           "peak_cpu_memory", "peak_memory",
           "Row", "SectionUnavailable", "import_or_skip", "random_tensor", "machine_description"]


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on ``device`` (no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable, device="cpu"):
    """(result of ``fn()``, its wall time in seconds), synchronising ``device`` before and after."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


# Fewest timed pairs behind a ratio: one pair on a shared machine gave 8.3x, the same case repeated 1.1x.
MIN_PAIRS = 3


def timed_pairs(ours: Callable, reference: Callable, device="cpu", repeat: int = 5, warmup: int = 1):
    """Wall times of two callables run alternately ``repeat`` (at least :data:`MIN_PAIRS`) times, after ``warmup``
    untimed runs each.

    Returns:
        [(seconds_ours, seconds_reference)] * repeat, one pair per round, in order.
    """
    if repeat < MIN_PAIRS or warmup < 0:
        raise ValueError(f"repeat must be >= {MIN_PAIRS} (the median of fewer timed pairs is noise on a shared "
                         f"machine) and warmup >= 0; got repeat={repeat}, warmup={warmup}")
    for _ in range(warmup):
        ours()
        reference()
    return [(timed(ours, device)[1], timed(reference, device)[1]) for _ in range(repeat)]


def time_pair(ours: Callable, reference: Callable, device="cpu", repeat: int = 5, warmup: int = 1):
    """Median wall times of two callables run alternately (:func:`timed_pairs`).

    Returns:
        (seconds_ours, seconds_reference), medians over the repeats.
    """
    pairs = timed_pairs(ours, reference, device, repeat, warmup)
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def median_speedup(pairs) -> float:
    """Median over :func:`timed_pairs` rounds of reference time / our time (above 1: ours is faster)."""
    return statistics.median(ref / ours for ours, ref in pairs)


@contextlib.contextmanager
def _stderr_silenced():
    """Send file descriptor 2 to /dev/null meanwhile: torch's profiler logs each start and stop there, from C++
    (``USDT: ... profiler_start``), past ``sys.stderr`` and any environment setting."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def quiet_profile(**kwargs):
    """``torch.profiler.profile(**kwargs)`` without the lines it writes to stderr when it starts and stops; what
    the profiled code itself writes to stderr still shows. Yields the profiler."""
    from torch.profiler import profile

    prof = profile(**kwargs)
    with _stderr_silenced():
        prof.start()
    try:
        yield prof
    finally:
        with _stderr_silenced():
            prof.stop()


def peak_cpu_memory(fn: Callable) -> int:
    """Largest amount of CPU memory held by torch tensors while ``fn()`` runs, in bytes.

    Uses ``torch.profiler`` with ``profile_memory``: each event's own
    allocations minus frees, in time order; the peak of the running sum over the
    memory already held when ``fn`` starts. Memory that does not go through
    torch's allocator (numpy or numba arrays) is not seen.
    """
    from torch.profiler import ProfilerActivity

    with quiet_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
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

class SectionUnavailable(RuntimeError):
    """A benchmark section cannot run here (a module it measures is missing); the message says why."""


@dataclass
class Row:
    """One measured comparison. Times in seconds (medians), memory in bytes (None: not measured)."""

    group: str
    case: str
    ours: str
    reference: str
    ours_s: float
    ref_s: float
    ours_mem: Optional[int] = None
    ref_mem: Optional[int] = None
    note: str = ""

    @property
    def time_ratio(self) -> float:
        """ours / reference wall time: below 1 means ours is faster."""
        return self.ours_s / self.ref_s

    @property
    def mem_ratio(self) -> Optional[float]:
        if self.ours_mem is None or not self.ref_mem:
            return None
        return self.ours_mem / self.ref_mem


def import_or_skip(module: str, name: str):
    """``module.name``, or SectionUnavailable when it does not import."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise SectionUnavailable(f"{module}.{name} is not available ({err})") from err


def random_tensor(shape, device, seed):
    """Uniform [0, 1) tensor of ``shape`` from a fixed ``seed``, made on the CPU and moved to ``device``."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g).to(device)


def machine_description(device="cpu") -> str:
    """One line naming the machine, threads and torch version."""
    device = torch.device(device)
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                what = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        what += f", {os.cpu_count()} CPU cores"
    return f"{what}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"

