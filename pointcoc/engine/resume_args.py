"""``--resume PATH`` on its own: the checkpoint's recorded settings become the command's defaults.

A checkpoint holds the resolved values of its run (``config``, ``TrainConfig.to_dict()``), the torch thread
count it trained with (``num_threads``) and, by its path, its run folder. :func:`apply_checkpoint_defaults` sets
those as the parser's defaults before the command line is parsed, so ``pointcoc train --resume RUN/last.pt``
continues the run with no other flag; a recipe (``--config``) and typed flags still override them and are then
checked against the checkpoint by ``fit`` (:func:`pointcoc.engine.rundir.check_resume_config`), as before.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Optional

from .checkpoint import load_checkpoint

__all__ = ["checkpoint_command", "apply_checkpoint_defaults", "resume_path_in"]

# Settings a pixel-set run keeps in ``config.extra`` (key there -> long flag of `pointcoc train-pixels`).
_PIXEL_EXTRA_FLAGS = {"format": "format", "keep": "keep", "mask_seed": "mask_seed", "redraw_masks": "redraw_masks"}


def checkpoint_command(config: Dict) -> str:
    """The subcommand that wrote a checkpoint with ``config``: ``train-pixels`` for a pixel-set run, else
    ``train``."""
    return "train-pixels" if (config.get("extra") or {}).get("task") == "pixels" else "train"


def resume_path_in(argv) -> Optional[str]:
    """The value of ``--resume`` in ``argv`` (``--resume X`` or ``--resume=X``; the last one wins), or None."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--resume", default=None)
    known, _ = pre.parse_known_args(argv)
    return known.resume


def _actions_by_flag(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    """Long flag name without ``--`` (``-`` as ``_``) -> action."""
    out = {}
    for action in parser._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and not flag.startswith("--no-"):
                out[flag[2:].replace("-", "_")] = action
    return out


def apply_checkpoint_defaults(parser: argparse.ArgumentParser, path: str, command: str) -> None:
    """Make the settings recorded in checkpoint ``path`` the defaults of ``parser`` (a ``command`` parser).

    Sets every TrainConfig field that is one of the parser's options (the data set, model and its arguments,
    optimisation, seed, ``--config`` name ...), a pixel-set run's format / keep / mask flags, ``--output`` (the
    checkpoint's folder) and ``--threads`` (the count the run trained with, when recorded).

    Raises FileNotFoundError / CheckpointError for a missing or unreadable checkpoint, ValueError when the
    checkpoint was written by the other training command (naming the command that resumes it).
    """
    state = load_checkpoint(path)
    config = state["config"]
    wrote = checkpoint_command(config)
    if wrote != command:
        raise ValueError(f"--resume {path} is a checkpoint of `pointcoc {wrote}`; resume it with "
                         f"`pointcoc {wrote} --resume {path}`")
    actions = _actions_by_flag(parser)
    defaults = {}
    for name, value in config.items():
        if name in actions and name != "output":
            defaults[actions[name].dest] = value
    if config.get("recipe") and "config" in actions:  # --config NAME|PATH is kept as TrainConfig.recipe
        defaults[actions["config"].dest] = config["recipe"]  # the name only: the recorded values came above
    for key, flag in _PIXEL_EXTRA_FLAGS.items():
        if key in (config.get("extra") or {}) and flag in actions:
            defaults[actions[flag].dest] = config["extra"][key]
    defaults[actions["output"].dest] = str(Path(path).parent)
    if state.get("num_threads") and "threads" in actions:
        defaults[actions["threads"].dest] = int(state["num_threads"])
    parser.set_defaults(**defaults)
