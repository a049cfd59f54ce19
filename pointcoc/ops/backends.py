"""Run-time choice of the implementation behind each op.

Every op (``"fps"``, ``"knn"``) has one public signature and several
implementations. ``"torch"`` always exists and is the reference; faster ones
register themselves with :func:`register` when their dependency imports.

The backend is chosen per call: a backend forced with :func:`set_backend` or the
environment variable ``POINTCOC_BACKEND`` (for example ``POINTCOC_BACKEND=torch``)
if it supports the tensors' device, otherwise the first available backend in
priority order that supports it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

__all__ = ["register", "set_backend", "get_backend", "available_backends", "resolve"]


@dataclass(frozen=True)
class Backend:
    name: str
    fn: Callable
    devices: tuple  # device types it runs on, e.g. ("cpu",) or ("cpu", "cuda")
    priority: int  # higher is tried first


_REGISTRY: Dict[str, Dict[str, Backend]] = {}
_forced: Optional[str] = None


def register(op: str, name: str, fn: Callable, devices=("cpu", "cuda"), priority: int = 0) -> None:
    """Register ``fn`` as implementation ``name`` of ``op``."""
    _REGISTRY.setdefault(op, {})[name] = Backend(name, fn, tuple(devices), priority)


def available_backends(op: Optional[str] = None):
    """Names of the registered backends of ``op`` (or a dict for every op)."""
    if op is None:
        return {o: sorted(b) for o, b in _REGISTRY.items()}
    return sorted(_REGISTRY.get(op, {}))


def set_backend(name: Optional[str]) -> None:
    """Force backend ``name`` for every op that has it (None: automatic choice).

    Raises:
        ValueError: if no op has a backend called ``name``.
    """
    global _forced
    if name is not None and not any(name in b for b in _REGISTRY.values()):
        known = sorted({n for b in _REGISTRY.values() for n in b})
        raise ValueError(f"unknown backend {name!r}; available: {known}")
    _forced = name


def get_backend() -> Optional[str]:
    """The forced backend name, or None when the choice is automatic."""
    if _forced is not None:
        return _forced
    return os.environ.get("POINTCOC_BACKEND") or None


def resolve(op: str, device: torch.device, backend: Optional[str] = None) -> Backend:
    """Pick the backend of ``op`` for tensors on ``device``.

    Args:
        op: the op name.
        device: device of the input tensors.
        backend: a backend name that overrides the global choice for this call.
    """
    table = _REGISTRY[op]
    wanted = backend or get_backend()
    if wanted is not None:
        if backend is not None and wanted not in table:
            raise ValueError(f"unknown backend {wanted!r} for {op}; available: {sorted(table)}")
        chosen = table.get(wanted)
        if chosen is not None and device.type in chosen.devices:
            return chosen
    candidates: List[Backend] = sorted(
        (b for b in table.values() if device.type in b.devices), key=lambda b: -b.priority
    )
    return candidates[0] if candidates else table["torch"]
