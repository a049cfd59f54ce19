"""Keep freed memory in the process instead of mapping every large tensor afresh (glibc's malloc, Linux).

glibc serves an allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and returns it to the
system on ``free``. A training step of these models allocates and frees grouped activations of 25-100 MiB
dozens of times, and the kernel zero-fills every page of each new mapping on first touch: on a 2-core CPU that
was about a third of a PointMLP-elite step (docs/benchmarks.md, "Memory that stays mapped"). With
:func:`keep_freed_memory` every allocation comes from malloc's heap and freed memory stays there for the next
step; the process keeps its peak memory instead of returning it between steps.

The ``pointcoc`` commands call it at start; research code may call it once at the top of a training script.
``POINTCOC_KEEP_FREED_MEMORY=0`` turns it off.
"""
from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["ENV_VAR", "keep_freed_memory", "keeps_freed_memory"]

ENV_VAR = "POINTCOC_KEEP_FREED_MEMORY"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters, <malloc.h>
_TRIM_THRESHOLD = 2 ** 31 - 1  # the largest int: free memory at the top of the heap is kept
_applied = False


def _glibc():
    """glibc as a ctypes library, or None on another C library or system."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # only glibc has it (musl has no mallopt parameters of this kind)
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve every allocation from its heap and keep freed memory for reuse.

    Returns whether the setting is in effect: False on systems without glibc and when
    ``POINTCOC_KEEP_FREED_MEMORY=0``. Calling it again does nothing. Results are unchanged (bitwise):
    only where tensors live in memory changes.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get(ENV_VAR, "1").strip() in ("0", "false", "no", "off"):
        return False
    libc = _glibc()
    if libc is None:
        return False
    # mallopt returns 1 on success; the order matters: a trim threshold also freezes the mmap threshold
    _applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _applied


def keeps_freed_memory() -> bool:
    """Whether :func:`keep_freed_memory` is in effect in this process."""
    return _applied
