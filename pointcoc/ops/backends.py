"""Run-time choice of the implementation behind each op.

Every op (``"fps"``, ``"knn"``) has one public signature and several
implementations. ``"torch"`` always exists and is the reference; faster ones
register themselves with :func:`register` when their dependency imports.

The backend is chosen per call: a backend forced with :func:`set_backend`,
:func:`use_backend` or the environment variable ``POINTCOC_BACKEND`` (for
example ``POINTCOC_BACKEND=torch``) if the op has it and it supports the
tensors' device, otherwise the first available backend in priority order that
supports it.

Backends: ``"torch"`` (reference, CPU and CUDA), ``"numba"`` (compiled CPU
kernels, FPS and kNN; when numba imports), ``"mm"`` (kNN by chunked matrix
products that provably keep every true neighbour among their candidates, then
exact distances, CPU and CUDA), ``"cells"`` (numba FPS and kNN through a uniform
cell list, exact; only when forced: ``"numba"`` itself uses them above measured
sizes), ``"kdtree"`` (numba FPS and kNN through balanced k-d trees, exact; only
when forced: ``"cells"`` hands them the sets whose density is far from uniform),
``"triton"`` (FPS and kNN kernels, CUDA; on
CPU tensors only when forced, in Triton's interpreter), ``"triton-cells"`` (the
Triton cell-list kNN; only when forced: ``"triton"`` uses it for large 2-D
sets), ``"pytorch3d"`` (FPS and
kNN; when pytorch3d imports; its kNN re-ranked exactly). Every backend returns the reference's FPS
indices and kNN distances and indices (ties in ascending index order, a tie at
the k-th distance keeping the lowest indices), at any extent of the
coordinates, so a trained model's logits do not depend on the backend; the
tests compare them. Backends take and return plain (detached) tensors: the public
:func:`~pointcoc.ops.knn` recomputes the chosen distances differentiably.

Kernel failures. The ops call their backend through :func:`call`. A backend whose
compiled kernel fails to compile or launch raises :class:`KernelError` (the Triton
backend wraps every kernel launch in it). When the backend was chosen
automatically, :func:`call` answers with the next backend in priority order,
warns once (:class:`BackendFallbackWarning`: the kernel, the device, the kernel
library's version, the first line of the error) and remembers the failure for
the process per (op, backend, device, dtype): later calls go straight to the
next backend, :func:`explain` (and so ``pointcoc env``) reports it and
:func:`failures` lists it. A forced backend (:func:`set_backend`,
:func:`use_backend`, ``$POINTCOC_BACKEND``, ``backend=`` of the op) is never
replaced: its error is raised. Every backend returns the reference's results,
so a fallback changes the time a call takes, never its result.
"""
from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

__all__ = ["register", "note_unavailable", "set_backend", "get_backend", "use_backend", "available_backends",
           "resolve", "explain", "call", "KernelError", "BackendFallbackWarning", "Failure", "failures",
           "clear_failures"]

ENV_VAR = "POINTCOC_BACKEND"


@dataclass(frozen=True)
class Backend:
    name: str
    fn: Callable
    devices: tuple  # device types it runs on, e.g. ("cpu",) or ("cpu", "cuda")
    priority: int  # higher is tried first
    forced_devices: tuple = ()  # device types it runs on only when forced (never chosen automatically)


_REGISTRY: Dict[str, Dict[str, Backend]] = {}
_UNAVAILABLE: Dict[str, Dict[str, str]] = {}  # op -> backend name -> why it did not register (for explain)
_forced: Optional[str] = None


class KernelError(RuntimeError):
    """A backend's compiled kernel failed to compile or launch; :func:`call` falls back unless it was forced.

    Attributes:
        kernel: the kernel's name (``"knn_kernel"``).
        device: the device it was launched for (``"cuda:0"``).
        library: the kernel library and its version (``"triton 3.6.0"``).
        cause: the exception the library raised (also ``__cause__``).
        first_line: ``"<type of cause>: <first line of its message>"``.
    """

    def __init__(self, kernel: str, device, library: str, cause: BaseException):
        self.kernel, self.device, self.library, self.cause = kernel, str(device), library, cause
        # Triton's CompilationError begins with "at LINE:COL:" and the source; its error_message says what failed.
        lines = str(getattr(cause, "error_message", None) or cause).strip().splitlines()
        self.first_line = type(cause).__name__ + (f": {lines[0].strip()}" if lines else "")
        super().__init__(f"kernel {kernel} ({library}) failed on {self.device}: {self.first_line}")


class BackendFallbackWarning(RuntimeWarning):
    """Issued once per (op, backend, device, dtype) when a kernel failure makes :func:`call` fall back."""


@dataclass(frozen=True)
class Failure:
    """A kernel failure that :func:`call` remembers: ``backend`` of ``op`` is not tried again on ``device``
    for ``dtype`` tensors in this process; ``fallback`` answers instead."""

    op: str
    backend: str
    device: str
    dtype: str
    kernel: str
    library: str
    error: str  # KernelError.first_line
    fallback: str

    def describe(self) -> str:
        return (f"{self.backend} failed on {self.device} for {self.dtype} and is not tried again in this process "
                f"(kernel {self.kernel}, {self.library}: {self.error}); those calls use {self.fallback}")


_FAILED: Dict[Tuple[str, str, str, str], Failure] = {}  # (op, backend, device, dtype) -> Failure


def failures() -> List[Failure]:
    """The kernel failures recorded in this process (each made :func:`call` fall back), oldest first."""
    return list(_FAILED.values())


def clear_failures() -> None:
    """Forget the recorded kernel failures: the failed backends are tried again (after a driver fix, in tests)."""
    _FAILED.clear()


def register(op: str, name: str, fn: Callable, devices=("cpu", "cuda"), priority: int = 0,
             forced_devices=()) -> None:
    """Register ``fn`` as implementation ``name`` of ``op`` (``forced_devices``: only when forced there)."""
    _REGISTRY.setdefault(op, {})[name] = Backend(name, fn, tuple(devices), priority, tuple(forced_devices))


def note_unavailable(op: str, name: str, reason: str) -> None:
    """Record that optional backend ``name`` of ``op`` did not register and why (:func:`explain` says so)."""
    _UNAVAILABLE.setdefault(op, {})[name] = reason


def available_backends(op: Optional[str] = None, device=None, forced: bool = False):
    """Names of the registered backends of ``op`` (or a dict for every op); with ``device``, those that run there
    (``forced``: also those that run there only when forced)."""
    if op is None:
        return {o: available_backends(o, device, forced) for o in _REGISTRY}
    kind = None if device is None else torch.device(device).type
    return sorted(n for n, b in _REGISTRY.get(op, {}).items()
                  if kind is None or kind in b.devices + (b.forced_devices if forced else ()))


def set_backend(name: Optional[str]) -> None:
    """Force backend ``name`` for every op that has it (None: automatic choice).

    Raises:
        ValueError: if no op has a backend called ``name``.
    """
    global _forced
    _check_known("name", name)
    _forced = name


def _check_known(what: str, name: Optional[str]) -> None:
    if name is not None and not any(name in b for b in _REGISTRY.values()):
        known = sorted({n for b in _REGISTRY.values() for n in b})
        raise ValueError(f"{what} must name a registered backend {known} or be None; got {name!r}")


@contextmanager
def use_backend(name: Optional[str]):
    """Context manager: force backend ``name`` inside the block, then restore the previous choice."""
    global _forced
    previous = _forced
    set_backend(name)
    try:
        yield
    finally:
        _forced = previous


def get_backend() -> Optional[str]:
    """The forced backend name (set_backend, else ``$POINTCOC_BACKEND``), or None when automatic.

    Raises:
        ValueError: if ``$POINTCOC_BACKEND`` names no registered backend.
    """
    if _forced is not None:
        return _forced
    name = os.environ.get(ENV_VAR) or None
    _check_known(f"environment variable {ENV_VAR}", name)
    return name


def resolve(op: str, device: torch.device, backend: Optional[str] = None,
            dtype: Optional[torch.dtype] = None) -> Backend:
    """Pick the backend of ``op`` for tensors on ``device``.

    Args:
        op: the op name.
        device: device of the input tensors.
        backend: a backend name that overrides the global choice for this call.
        dtype: the tensors' dtype: an automatic choice then skips the backends whose kernel failed on
            ``device`` for that dtype (:func:`failures`), as :func:`call` does.
    """
    chosen, _, candidates = _select(op, device, backend)
    if dtype is None or not candidates:
        return chosen
    device = torch.device(device)
    return next((b for b in candidates if _key(op, b.name, device, dtype) not in _FAILED), _REGISTRY[op]["torch"])


def _key(op: str, name: str, device: torch.device, dtype: torch.dtype) -> Tuple[str, str, str, str]:
    return op, name, str(device), str(dtype).replace("torch.", "")


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside pointcoc.ops and torch: the warning names the caller's line."""
    inside = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.abspath(torch.__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


def call(op: str, device: torch.device, backend: Optional[str], *args):
    """Run ``op`` on ``args`` (the first a tensor on ``device``) with the backend :func:`resolve` picks.

    A forced backend (``backend`` here, or the global choice) runs or raises. An automatic one that
    raises :class:`KernelError` is replaced by the next backend in priority order, with one
    :class:`BackendFallbackWarning`, and is skipped for this (op, device, dtype) from then on.
    """
    chosen, _, candidates = _select(op, device, backend)
    if not candidates:  # forced: what the user asked for runs, or says why not
        return chosen.fn(*args)
    dtype = args[0].dtype
    for i, impl in enumerate(candidates):
        key = _key(op, impl.name, device, dtype)
        if key in _FAILED:
            continue
        try:
            return impl.fn(*args)
        except KernelError as err:
            fallback = next((b.name for b in candidates[i + 1:] if _key(op, b.name, device, dtype) not in _FAILED),
                            "torch")
            _FAILED[key] = failure = Failure(op, impl.name, key[2], key[3], err.kernel, err.library, err.first_line,
                                             fallback)
            warnings.warn(f"pointcoc: {err.library.split()[0].capitalize()} kernel {err.kernel} failed on "
                          f"{failure.device} ({failure.dtype}, {err.library}): {err.first_line.rstrip('.')}. {op} "
                          f"uses backend {fallback!r} instead for {failure.dtype} tensors on {failure.device} for "
                          f"the rest of this process (same results, slower); force backend={impl.name!r} to see the "
                          f"full error", BackendFallbackWarning, stacklevel=_caller_level())
    return _REGISTRY[op]["torch"].fn(*args)  # pragma: no cover  (torch raises no KernelError)


def _select(op: str, device: torch.device, backend: Optional[str]):
    """(chosen Backend, the forced name or None, the candidates on ``device`` by priority)."""
    table = _REGISTRY[op]
    wanted = backend or get_backend()
    if wanted is not None:
        if backend is not None and wanted not in table:
            raise ValueError(f"unknown backend {wanted!r} for {op}; available: {sorted(table)}")
        chosen = table.get(wanted)
        if chosen is not None and device.type in chosen.devices + chosen.forced_devices:
            return chosen, wanted, []
        if backend is not None and chosen is not None:  # asked for in this call: it must run, or say why not
            hint = (" (Triton runs on CPU tensors only in its interpreter: set TRITON_INTERPRET=1 before triton is "
                    "first imported)" if wanted == "triton" and device.type == "cpu" else "")
            raise ValueError(f"backend {wanted!r} of {op} cannot run on {device.type} tensors{hint}; backends "
                             f"there: {available_backends(op, device)}")
    candidates: List[Backend] = sorted(
        (b for b in table.values() if device.type in b.devices), key=lambda b: -b.priority
    )
    return (candidates[0] if candidates else table["torch"]), wanted, candidates


def explain(op: str, device, backend: Optional[str] = None) -> str:
    """One line saying which backend :func:`resolve` picks for ``op`` on ``device`` and why.

    For example ``"knn on cpu: numba (priority 10 > mm 5 > torch 0; pytorch3d not importable)"``.

    Raises:
        ValueError: if ``op`` is not a registered op.
    """
    if op not in _REGISTRY:
        raise ValueError(f"op must be one of {sorted(_REGISTRY)}; got {op!r}")
    device = torch.device(device)
    chosen, wanted, candidates = _select(op, device, backend)
    if backend:
        source = f"backend={wanted!r}"
    else:
        source = f"set_backend({wanted!r})" if _forced is not None else f"${ENV_VAR}={wanted}"
    if not candidates:
        why = [f"forced by {source}"]
    else:
        why = [f"priority {chosen.priority}" + "".join(f" > {b.name} {b.priority}" for b in candidates[1:])]
        if wanted is not None:
            why.insert(0, f"{source} ignored: {op} has no such backend on {device.type}")
    table = _REGISTRY[op].values()
    forced_only = sorted(b.name for b in table if device.type not in b.devices and device.type in b.forced_devices)
    elsewhere = sorted(b.name for b in table if device.type not in b.devices + b.forced_devices)
    if forced_only:
        why.append(f"only when forced on {device.type}: {', '.join(forced_only)}")
    if elsewhere:
        why.append(f"not on {device.type}: {', '.join(elsewhere)}")
    why += [f"{name} {reason}" for name, reason in sorted(_UNAVAILABLE.get(op, {}).items())
            if name not in _REGISTRY[op]]
    why += [f.describe() for f in _FAILED.values() if f.op == op and torch.device(f.device).type == device.type]
    return f"{op} on {device.type}: {chosen.name} ({'; '.join(why)})"
