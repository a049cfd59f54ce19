"""Optional dependencies, imported once.

``WITH_PYTORCH3D`` tells whether pytorch3d imports. Where it does not,
``pytorch3d_ops`` is a placeholder whose use raises an ImportError that says
how to install it, so code may refer to it unconditionally.

Every "this needs package X" error is a :class:`MissingOptionalPackage`: the commands report it as a usage
error (one ``error:`` line, exit 2), since installing the package fixes it.
"""
from __future__ import annotations

__all__ = ["WITH_PYTORCH3D", "pytorch3d_ops", "MissingPackage", "MissingOptionalPackage"]


class MissingOptionalPackage(ImportError):
    """An optional package a feature needs is not installed; the message says how to install it."""


class MissingPackage:
    """Stand-in for a module that did not import; any attribute access raises ImportError."""

    def __init__(self, package: str, hint: str):
        self._package = package
        self._hint = hint

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise MissingOptionalPackage(f"'{name}' needs package {self._package} ({self._hint})")

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"MissingPackage({self._package!r})"


try:
    import pytorch3d.ops as pytorch3d_ops  # noqa: F401

    WITH_PYTORCH3D = True
except Exception:  # ImportError, or a build that does not match the installed torch
    pytorch3d_ops = MissingPackage(
        "pytorch3d",
        "conda install -c pytorch3d pytorch3d, or see "
        "https://github.com/facebookresearch/pytorch3d/blob/main/INSTALL.md",
    )
    WITH_PYTORCH3D = False
