"""Why a run stopped, as exceptions the scripts turn into one line and an exit code (see ``cli.run_cli``)."""
from __future__ import annotations

import errno
from typing import Optional

__all__ = ["RunStopped", "TrainingDiverged", "DiskFullError", "TrainingInterrupted", "RunFolderBusy",
           "StoppedOnAnotherRank", "disk_full_cause"]

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full_cause(err: BaseException) -> Optional[OSError]:
    """The "no space left" (ENOSPC) or "quota exceeded" (EDQUOT) OSError in ``err``'s chain, or None.

    Walks ``__cause__`` and ``__context__``: torch's zip writer, for example, raises a RuntimeError
    ("unexpected pos ...") while it handles the OSError of the full disk.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return err
        err = err.__cause__ or err.__context__
    return None


class RunStopped(Exception):
    """A run stopped for a reason the user can act on (exit code 2); the message says what to do."""


class TrainingDiverged(RunStopped, FloatingPointError):
    """The training loss or a gradient or weight became NaN/inf; the last saved checkpoint is intact."""


class DiskFullError(RunStopped, OSError):
    """Writing an output file failed because the disk (or quota) is full; the previous file is intact."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``fit``; the message names the epoch, the step and the checkpoint to resume from (exit 130)."""


class RunFolderBusy(RunStopped):
    """Another live run holds the output folder's lock; the message names its pid."""


class StoppedOnAnotherRank(RunStopped):
    """Under torchrun: rank 0 stopped the run before training (its message, printed by rank 0 only, says why);
    the other ranks stop with the same exit code and print nothing."""

    quiet = True
