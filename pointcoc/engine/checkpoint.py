"""Checkpoints written atomically (temp file in the same folder + ``os.replace``) and loaded with checks.

The format itself (tag, required keys, :func:`check_checkpoint`, :class:`CheckpointError`) is
:mod:`pointcoc._checkpoint_format`, which ``create_model(name, pretrained=PATH)`` uses too.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Optional

import numpy as np
import torch

from .._atomic import atomic_write as base_atomic_write
from .._checkpoint_format import CHECKPOINT_FORMAT, CheckpointError, check_checkpoint
from .errors import DiskFullError, disk_full_cause

__all__ = ["CheckpointError", "atomic_write", "save_checkpoint", "load_checkpoint", "check_checkpoint",
           "capture_rng_state", "restore_rng_state", "CHECKPOINT_FORMAT"]


def atomic_write(path, write: Callable[[BinaryIO], None]) -> Path:
    """:func:`pointcoc._atomic.atomic_write` (temp file, fsync, rename: a crash leaves the old file or none)
    where a full disk raises DiskFullError saying whether the previous file is intact. Temp files of killed
    writes (``.NAME.*.tmp``) are removed by :func:`pointcoc.engine.rundir.prepare_output_dir`.
    """
    path = Path(path)
    try:
        return base_atomic_write(path, write)
    except BaseException as err:
        full = disk_full_cause(err)  # torch.save raises a RuntimeError with the OSError as its context
        if full is not None:
            kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
            raise DiskFullError(f"the disk is full: could not write {path} ({full.strerror}); {kept}. "
                                "Free some space and resume") from None
        raise


def save_checkpoint(state: Dict[str, Any], path) -> Path:
    """``torch.save(state)`` to ``path`` with :func:`atomic_write`."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path, map_location="cpu") -> Dict[str, Any]:
    """Load and check a checkpoint written by ``save_checkpoint`` (tensors and plain Python values only).

    Raises FileNotFoundError for a missing file, CheckpointError for anything else that is wrong.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file; give a file such as "
                              f"{path / 'last.pt'}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for corrupt/foreign files
        raise CheckpointError(f"{path} is not a readable pointcoc checkpoint ({type(err).__name__}: {err})") from None
    return check_checkpoint(state, path)


def capture_rng_state(loader_generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
    """RNG states of torch (CPU and CUDA), numpy, python and the DataLoader generator, as loadable values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
        "loader": loader_generator.get_state() if loader_generator is not None else None,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any], loader_generator: Optional[torch.Generator] = None) -> None:
    """Inverse of ``capture_rng_state``."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if loader_generator is not None and state.get("loader") is not None:
        loader_generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
