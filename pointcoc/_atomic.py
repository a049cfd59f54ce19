"""Files written atomically: a temp file beside the target, fsynced, then renamed over it (``os.replace``).

A crash leaves the old file (or none), never a partial one; a full disk leaves no 0-byte file. Used for
checkpoints (:mod:`pointcoc.engine.checkpoint` adds its own message for a full disk), run files and figures.
"""
from __future__ import annotations

import errno
import io
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "save_png", "check_output_file"]


def check_output_file(path, name: str) -> Path:
    """Check before any work that a file can be written at ``path`` (given as ``name``, e.g. ``--json``):
    not a folder, in an existing folder where a file can be created (a probe file is created and removed).
    Returns ``path`` as a Path; raises ValueError naming ``name`` otherwise."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{name} {path} is a folder; give a file name (e.g. {path / 'out'})")
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ValueError(f"{name} {path}: its folder {folder} {what}")
    probe = folder / f".pointcoc-write-test-{uuid.uuid4().hex[:8]}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise ValueError(f"{name} {path}: its folder {folder} is not writable ({err.strerror})") from None
    return path


def atomic_write(path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, fsync, then ``os.replace`` it onto ``path``; returns it.

    An interrupted write removes its temp file (a killed process leaves ``.NAME.*.tmp``). The file gets mode
    0666 minus the umask, like any other output. Whatever ``write`` raises propagates, the temp file removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return path


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; a full disk raises OSError(ENOSPC) naming ``path``."""
    try:
        return atomic_write(path, lambda f: f.write(data))
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(err.errno, f"{err.strerror}: could not write {path}") from None
        raise


def save_png(fig, path, dpi: int) -> Path:
    """Render a matplotlib figure as PNG in memory, write it atomically to ``path`` and close the figure."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
