"""Where pointcoc finds its data: the small real sets shipped inside the package, and the large sets users obtain.

Shipped sets (``SHIPPED_SETS``: ``modelnet40_mini``, ``mnist5k``, ``rgbd_frames``) are package data: in an
installed wheel they lie in ``pointcoc/_data/<name>`` (found with :mod:`importlib.resources`); in a source
checkout (an editable install) they are the repository's top-level ``data/<name>``, which the wheel build
copies into the package.

Large sets (ScanObjectNN, ModelNet40) are never downloaded. They are looked for, in this order, under

1. the ``data_root=`` argument (``--data-root``), when given;
2. ``$POINTCOC_DATA/<relative path>``, when the ``POINTCOC_DATA`` environment variable is set;
3. ``./data/<relative path>``, relative to the working folder (the layout of a checkout).
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import List

__all__ = ["DATA_ENV_VAR", "SHIPPED_SETS", "shipped_data_dir", "shipped_set_dir", "download_candidates"]

DATA_ENV_VAR = "POINTCOC_DATA"
SHIPPED_SETS = ("modelnet40_mini", "mnist5k", "rgbd_frames")
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


def download_candidates(relative: str) -> List[Path]:
    """Folders to try for a user-obtained data set stored at ``relative`` (e.g. ``ScanObjectNN/h5_files``):
    ``$POINTCOC_DATA/relative`` when the variable is set, then ``./data/relative``."""
    out = []
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        out.append(Path(env).expanduser() / relative)
    out.append(Path("data") / relative)
    return out
