"""Where pointcoc finds its data: the small real sets shipped inside the package, and the large sets users obtain.

Shipped sets (``SHIPPED_SETS``: ``modelnet10``, ``mnist5k``, ``rgbd_frames``) are package data: in an
installed wheel they lie in ``pointcoc/_data/<name>`` (found with :mod:`importlib.resources`); in a source
checkout (an editable install) they are the repository's top-level ``data/<name>``, which the wheel build
copies into the package.

Large sets (ScanObjectNN, ModelNet40) are never downloaded. They are looked for, in this order, under

1. the ``data_root=`` argument (``--data-root``), when given (then only there);
2. ``$POINTCOC_DATA/<relative path>``, when the ``POINTCOC_DATA`` environment variable is set;
3. ``./data/<relative path>``, relative to the working folder (the layout of a checkout);
4. ``<checkout>/data/<relative path>``: the ``data/`` folder of the source checkout pointcoc runs from (an
   editable install), whatever the working folder; absent in an installed wheel (:func:`checkout_data_dir`).
   The checkout holds ``data/modelnet40_1024`` (the full ModelNet40, in git but not in the wheel).
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import List, Optional

__all__ = ["DATA_ENV_VAR", "SHIPPED_SETS", "shipped_data_dir", "shipped_set_dir", "checkout_data_dir",
           "data_root_candidates", "download_candidates"]

DATA_ENV_VAR = "POINTCOC_DATA"
SHIPPED_SETS = ("modelnet10", "mnist5k", "rgbd_frames")
_CHECKOUT_DATA = Path(__file__).resolve().parents[2] / "data"


def shipped_data_dir() -> Path:
    """The folder holding the shipped data sets: the package's ``_data`` when it has one (a wheel), else the
    source checkout's ``data/`` (an editable install)."""
    packaged = Path(str(resources.files("pointcoc"))) / "_data"
    if packaged.is_dir():
        return packaged
    return _CHECKOUT_DATA if _CHECKOUT_DATA.is_dir() else packaged


def shipped_set_dir(name: str) -> Path:
    """The folder of shipped data set ``name`` (one of ``SHIPPED_SETS``); it may be missing if the install is
    damaged, which the loaders report with every path they tried."""
    if name not in SHIPPED_SETS:
        raise ValueError(f"{name!r} is not a shipped data set; shipped: {list(SHIPPED_SETS)}")
    return shipped_data_dir() / name


def checkout_data_dir() -> Optional[Path]:
    """The top-level ``data/`` folder of the source checkout this pointcoc was imported from (an editable
    install or a run from the checkout), or None for an installed wheel (no ``pyproject.toml`` beside it)."""
    if _CHECKOUT_DATA.is_dir() and (_CHECKOUT_DATA.parent / "pyproject.toml").is_file():
        return _CHECKOUT_DATA
    return None


def data_root_candidates() -> List[Path]:
    """The default data folders, in search order, without duplicates: ``$POINTCOC_DATA`` when set, ``./data``,
    then the checkout's ``data/`` when pointcoc runs from a checkout (:func:`checkout_data_dir`). Absolute."""
    roots = []
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        roots.append(Path(env).expanduser())
    roots.append(Path("data"))
    checkout = checkout_data_dir()
    if checkout is not None:
        roots.append(checkout)
    out: List[Path] = []
    for r in roots:
        r = r.absolute()
        if r not in out:
            out.append(r)
    return out


def download_candidates(relative: str) -> List[Path]:
    """Folders to try for a user-obtained data set stored at ``relative`` (e.g. ``ScanObjectNN/h5_files``):
    ``$POINTCOC_DATA/relative`` when the variable is set, then ``./data/relative``."""
    out = []
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        out.append(Path(env).expanduser() / relative)
    out.append(Path("data") / relative)
    return out
