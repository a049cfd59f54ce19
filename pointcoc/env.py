"""The environment report for bug reports: ``pointcoc env`` (``python -m pointcoc env``) or ``pointcoc.env_report()``.

It lists the versions of pointcoc and the packages it uses, the devices torch sees, and for every
registered op on every device the backend that :func:`pointcoc.ops.backends.resolve` picks and why, with
the kernel failures that made an op fall back in this process. When CUDA is visible it points to
``pointcoc gpu-check --quick``.
"""
from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import List

import torch

from ._precision import cpu_bf16_support
from ._version import __version__

__all__ = ["env_report", "PACKAGES", "GPU_CHECK_HINT"]

GPU_CHECK_HINT = ("first run on this GPU (or a new driver, torch or triton): `pointcoc gpu-check --quick` checks every "
                  "backend and a training step of each model in under a minute; paste its output into a bug report")
# Packages whose versions matter for a bug report (import names are the distribution names here).
PACKAGES = ("torch", "numpy", "numba", "triton", "pytorch3d", "h5py", "matplotlib")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _allocator_line() -> str:
    from .allocator import ENV_VAR, keeps_freed_memory
    if keeps_freed_memory():
        return f"freed memory is kept for reuse (pointcoc.allocator; {ENV_VAR}=0 turns it off)"
    return f"the C library's default allocation (pointcoc.allocator not in effect; {ENV_VAR}=" \
           f"{os.environ.get(ENV_VAR, 'unset')})"


def _devices() -> List[str]:
    bf16, why = cpu_bf16_support()
    lines = [f"cpu: {os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads "
             f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})",
             f"cpu bfloat16: {'yes, --amp trains in bfloat16' if bf16 else 'no, --amp trains in float32'} ({why})",
             f"memory: {_allocator_line()}"]
    if not torch.cuda.is_available():
        built = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build of torch"
        return lines + [f"cuda: not available ({built})"]
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        lines.append(f"cuda:{i}: {p.name}, compute capability {p.major}.{p.minor}, "
                     f"{p.total_memory / 2**30:.1f} GiB (CUDA {torch.version.cuda})")
    lines.append(GPU_CHECK_HINT)
    return lines


def env_report() -> str:
    """Versions, devices and the backend chosen for each op on each device, as text for a bug report."""
    from pointcoc.ops import backends

    lines = [f"pointcoc {__version__} ({os.path.dirname(os.path.abspath(__file__))})",
             f"python {platform.python_version()} on {platform.platform()}"]
    lines += [f"{name} {_version(name)}" for name in PACKAGES]
    lines.append("devices:")
    lines += [f"  {d}" for d in _devices()]
    device_types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    try:
        forced = backends.get_backend()
    except ValueError as err:  # a bad $POINTCOC_BACKEND: that is the report
        return "\n".join(lines + [f"backends: {err}"])
    lines.append("backends" + (f" (forced: {forced!r})" if forced else " (automatic choice)") + ":")
    for op in sorted(backends.available_backends()):
        lines += [f"  {backends.explain(op, d)}" for d in device_types]
    return "\n".join(lines)
