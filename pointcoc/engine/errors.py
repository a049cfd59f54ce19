"""Why a run stopped, as exceptions the scripts turn into one line and an exit code (see ``cli.run_cli``)."""
from __future__ import annotations

__all__ = ["RunStopped", "TrainingDiverged", "DiskFullError", "TrainingInterrupted", "RunFolderBusy",
           "StoppedOnAnotherRank"]


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
