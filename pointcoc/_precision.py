"""Mixed precision (``--amp``): the autocast dtype of each device, and whether this CPU has bfloat16 arithmetic.

On CUDA ``--amp`` is float16 autocast with a gradient scaler. On the CPU it is bfloat16 autocast, used only where
the CPU computes bfloat16 products in hardware (AVX512_BF16 or AMX on x86; oneDNN then runs bf16 matrix products
at about twice the float32 rate). Elsewhere bf16 would be emulated and slower than float32, so ``--amp`` keeps
float32 there and says why.
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Optional, Tuple

import torch

__all__ = ["CPU_BF16_FLAGS", "amp_dtype", "cpu_bf16_support"]

# /proc/cpuinfo flags of x86 CPUs whose bfloat16 dot products oneDNN uses.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16_support(cpuinfo: Optional[str] = None) -> Tuple[bool, str]:
    """(whether this CPU has bfloat16 dot products in hardware, the reason in words).

    ``cpuinfo``: the text of /proc/cpuinfo (read from the machine when None); only Linux exposes the flags,
    so other systems report no support.
    """
    if cpuinfo is None:
        cpuinfo = _machine_cpuinfo()
        if cpuinfo is None:
            return False, f"bfloat16 support is detected from /proc/cpuinfo on Linux only ({platform.system()})"
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    found = [f for f in CPU_BF16_FLAGS if f in flags]
    if found:
        return True, f"the CPU has {' and '.join(found)}"
    return False, f"the CPU has none of {', '.join(CPU_BF16_FLAGS)} (bfloat16 would be emulated, slower than float32)"


@functools.lru_cache(maxsize=None)
def _machine_cpuinfo() -> Optional[str]:
    """The text of /proc/cpuinfo, read once per process (autocast asks on every training step); None off Linux."""
    path = Path("/proc/cpuinfo")
    if platform.system() != "Linux" or not path.is_file():
        return None
    return path.read_text(errors="replace")


def amp_dtype(device_type: str) -> Tuple[Optional[torch.dtype], str]:
    """The autocast dtype ``--amp`` uses on ``device_type`` ("cuda": float16, "cpu": bfloat16 where the CPU has
    it), or None with the reason when ``--amp`` must fall back to float32."""
    if device_type == "cuda":
        return torch.float16, "float16 autocast with a gradient scaler"
    if device_type == "cpu":
        supported, why = cpu_bf16_support()
        return (torch.bfloat16, f"bfloat16 autocast ({why})") if supported else (None, why)
    return None, f"no mixed precision on {device_type!r} devices"
