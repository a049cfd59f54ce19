"""What training and evaluation print while they run: tqdm bars on a terminal, one line per epoch in logs.

Modes (``--progress``): ``bar`` (tqdm bars on stderr during an epoch, then one line per epoch on stdout),
``line`` (only the line per epoch: what CI logs, ``nohup`` and ``> log`` want), ``none`` (neither; the final
RESULT line is still printed) and ``auto`` (``bar`` when stderr is a terminal, else ``line``).
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, Iterable, Optional, Union

# tqdm.std, not tqdm.auto: auto's (asyncio) tqdm calls iter() on the iterable when it is created, which for a
# DataLoader is an extra iterator per epoch: it starts the workers once more for nothing and, with workers, draws
# the data order from the loader's generator, so the order depended on the number of workers.
from tqdm.std import tqdm

__all__ = ["PROGRESS_MODES", "resolve_progress", "add_progress_arg", "progress_bar", "format_epoch"]

PROGRESS_MODES = ("auto", "bar", "line", "none")


def resolve_progress(mode: Union[str, bool], stream=None) -> str:
    """``bar``, ``line`` or ``none`` for a mode of :data:`PROGRESS_MODES` (True means auto, False none).

    ``auto`` is ``bar`` when ``stream`` (default ``sys.stderr``, where the bars go) is a terminal, else ``line``.

    Raises:
        ValueError: if ``mode`` is not one of PROGRESS_MODES.
    """
    if isinstance(mode, bool):
        mode = "auto" if mode else "none"
    if mode not in PROGRESS_MODES:
        raise ValueError(f"progress must be one of {PROGRESS_MODES}; got {mode!r}")
    if mode != "auto":
        return mode
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "line"


def add_progress_arg(parser, epochs: bool = True) -> None:
    """Add ``--progress {auto,bar,line,none}`` to an argparse parser or argument group; ``epochs=False`` for a
    command that only evaluates (no epoch lines: ``line`` then prints what ``none`` does)."""
    if epochs:
        text = ("bar: progress bars (and a line per epoch); line: one line per epoch, for logs; none: only the "
                "result; auto: bar on a terminal, else line")
    else:
        text = ("bar: a progress bar over the test batches; line or none: only the result; auto: bar on a "
                "terminal, else line")
    parser.add_argument("--progress", choices=PROGRESS_MODES, default="auto", help=text + " (default: %(default)s)")


def progress_bar(iterable: Iterable, mode: str, total: Optional[int] = None, desc: str = "", show: bool = True):
    """``iterable`` wrapped in a tqdm bar on stderr when ``mode`` resolves to ``bar`` and ``show``.

    Otherwise a disabled tqdm, which iterates the same and ignores ``set_postfix``.
    """
    on = show and resolve_progress(mode) == "bar"
    return tqdm(iterable, total=total, desc=desc, leave=False, disable=not on, file=sys.stderr)


def format_epoch(record: Dict, epochs: int) -> str:
    """One line for an epoch's metrics record (as in metrics.jsonl): loss, OA, mAcc per split, lr, time.

    For example ``epoch 3/20 | train loss 3.740 OA 8.9% mAcc 5.2% | test loss 8.040 OA 3.4% mAcc 5.0% |
    lr 0.0488  6.9 s``.
    """
    parts = [f"epoch {record['epoch']}/{epochs}"]
    for split in ("train", "val", "test"):
        if f"{split}_loss" in record:
            parts.append(f"{split} loss {record[f'{split}_loss']:.3f} OA {record[f'{split}_oa']:.1f}% "
                         f"mAcc {record[f'{split}_macc']:.1f}%")
    parts.append(f"lr {record['lr']:.4g}  {record.get('epoch_time_s', float('nan')):.1f} s")
    return " | ".join(parts)
