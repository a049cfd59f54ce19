"""What a checkpoint records about the circumstances of its run, and the checks a resume makes against them.

Besides its config (:func:`pointcoc.engine.rundir.check_resume_config`) and world size, a checkpoint records

* ``num_threads``: torch's CPU thread count. CPU reductions are split over threads, so a run resumed under
  another count differs from the uninterrupted one in its last bits: :func:`check_threads` warns once.
* ``data``: a fingerprint per split (:func:`dataset_fingerprint`: sample count and a hash of the labels in
  dataset order). A resume on other data (another ``--data-root`` holding other files) is refused by
  :func:`check_data` unless the user accepts it (``--allow-data-change``). Checkpoints written before these
  were recorded are not checked.
"""
from __future__ import annotations

import hashlib
import warnings
from typing import Dict, Optional

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from .._checkpoint_format import CheckpointError

__all__ = ["dataset_fingerprint", "data_fingerprints", "check_data", "check_threads"]


def _labels(dataset: Dataset) -> Optional[np.ndarray]:
    """The labels of ``dataset`` in its order (a ``labels`` attribute, through Subsets), or None when unknown."""
    if isinstance(dataset, Subset):
        base = _labels(dataset.dataset)
        return None if base is None else base[np.asarray(dataset.indices, dtype=np.int64)]
    labels = getattr(dataset, "labels", None)
    if labels is None:
        return None
    labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return labels.astype(np.int64).reshape(-1)


def dataset_fingerprint(dataset: Optional[Dataset]) -> Optional[Dict]:
    """``{"count": n, "labels_sha256": hex}`` of a dataset with a ``labels`` attribute (or a Subset of one);
    ``{"count": n}`` for another dataset; None for None."""
    if dataset is None:
        return None
    labels = _labels(dataset)
    if labels is None or len(labels) != len(dataset):
        return {"count": len(dataset)}
    return {"count": len(dataset), "labels_sha256": hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest()}


def data_fingerprints(train: Dataset, test: Dataset, val: Optional[Dataset]) -> Dict:
    """The fingerprints of a run's splits, as a checkpoint records them."""
    return {"train": dataset_fingerprint(train), "test": dataset_fingerprint(test), "val": dataset_fingerprint(val)}


def _describe(fp: Optional[Dict]) -> str:
    if fp is None:
        return "none"
    return f"{fp['count']} samples" + (f", labels {fp['labels_sha256'][:12]}" if "labels_sha256" in fp else "")


def check_data(state: Dict, now: Dict, allow: bool, data_root) -> None:
    """Refuse (CheckpointError) a resume whose data fingerprints ``now`` differ from the checkpoint's, unless
    ``allow`` (then warn). ``data_root`` (the run's ``--data-root``) is named in the message."""
    old = state.get("data")
    if not old:
        return
    changed = [split for split in ("train", "test", "val") if old.get(split) != now.get(split)]
    if not changed:
        return
    what = "; ".join(f"{split}: checkpoint {_describe(old.get(split))}, now {_describe(now.get(split))}"
                     for split in changed)
    where = f"--data-root {data_root}" if data_root else "the data set's default folder"
    message = (f"--resume: the data in {where} is not the data the checkpoint trained on ({what}); the resumed "
               "run would train on other samples or labels")
    if not allow:
        raise CheckpointError(f"{message}. Resume with the --data-root of the original run, or pass "
                              "--allow-data-change to continue on this data anyway")
    warnings.warn(f"--allow-data-change: {message}", stacklevel=4)  # fit's caller (fit -> _fit -> here)


def check_threads(state: Dict, threads: int, device_type: str) -> None:
    """Warn once when a CPU run resumes under another torch thread count than its checkpoint recorded."""
    old = state.get("num_threads")
    if old is None or int(old) == threads or device_type != "cpu":
        return
    warnings.warn(f"--resume: the checkpoint was trained with {old} torch threads, this run has {threads}: the "
                  "resumed run differs from an uninterrupted one in its last bits (CPU reductions are split over "
                  f"threads). Resume with --threads {old} to continue it bitwise", stacklevel=4)
