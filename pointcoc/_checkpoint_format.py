"""The pointcoc checkpoint format (``last.pt`` / ``best.pt``): its tag, its required keys and the check.

The engine writes and resumes these files (:mod:`pointcoc.engine.checkpoint`); ``create_model(name,
pretrained=PATH)`` (:mod:`pointcoc.models.pretrained`) reads their weights. Both check a loaded object with
:func:`check_checkpoint`, kept here, below either of them.
"""
from __future__ import annotations

from typing import Any, Dict

__all__ = ["CHECKPOINT_FORMAT", "REQUIRED_KEYS", "CheckpointError", "check_checkpoint"]

CHECKPOINT_FORMAT = "pointcoc-checkpoint-v1"
REQUIRED_KEYS = ("format", "model", "optimizer", "scheduler", "epoch", "rng", "config", "metrics")


class CheckpointError(ValueError):
    """A checkpoint file is missing keys, unreadable, or does not fit the model it is loaded into."""


def check_checkpoint(state: Any, path) -> Dict[str, Any]:
    """``state`` (an object loaded from ``path``) when it is a pointcoc checkpoint with every required key;
    raises CheckpointError naming ``path`` otherwise."""
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a pointcoc checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks keys {missing}")
    record = state["metrics"].get("record") if isinstance(state["metrics"], dict) else None
    if not isinstance(state["config"], dict) or not isinstance(record, dict):
        raise CheckpointError(f"{path} is damaged: its config and metrics.record must be dicts")
    return state
