"""The output folder of a training run: checked before training, never silently reused, metrics kept exact.

* :func:`prepare_output_dir` creates ``--output`` (exit-2 errors for a file, a path below a file, an
  unwritable folder), removes temp files of interrupted saves, and refuses a folder that holds a run unless
  the run is resumed or ``overwrite`` is given.
* :func:`rewind_metrics` brings ``metrics.jsonl`` back to a checkpoint's epoch on resume, so the file always
  equals an uninterrupted run's (a crash between logging an epoch and saving its checkpoint repeats that epoch).
* :func:`check_resume_config` refuses a resume whose settings contradict the checkpoint's.
* :class:`RunFolderLock` holds an exclusive OS lock on the folder for a run's lifetime, so a second run into
  the same folder is refused while the first lives (the lock dies with its process: no stale locks).
"""
from __future__ import annotations

import errno
import json
import os
import uuid
from pathlib import Path
from typing import Dict, Iterable, Optional

from .checkpoint import CheckpointError, atomic_write
from .errors import DiskFullError, RunFolderBusy

try:
    import fcntl
except ImportError:  # not POSIX (Windows): runs are not locked
    fcntl = None

__all__ = ["RUN_MARKERS", "RUN_OUTPUTS", "RUN_FILES_TEXT", "RESUMABLE_CHANGES", "LOCK_NAME", "writable_folder", "create_output_dir",
           "check_new_run_folder",
           "prepare_output_dir", "rewind_metrics", "check_resume_config", "RunFolderLock"]

# Files whose presence means the folder holds a run (config.json alone does not: nothing was trained yet).
RUN_MARKERS = ("metrics.jsonl", "last.pt", "best.pt", "results.json")
# Of those, the ones a run leaves once it has saved something to continue from (or finished). metrics.jsonl
# without any of them holds epochs of a run stopped before its first checkpoint: nothing can resume it.
SAVED_MARKERS = ("last.pt", "best.pt", "results.json")
LOCK_NAME = ".pointcoc.lock"
# What a training run writes to its folder, for the training commands' --help (fit's docstring lists the same).
RUN_FILES_TEXT = ("config.json, metrics.jsonl, curves.png, last.pt, results.json and confusion_matrix.png, and best.pt "
                  "when an epoch is selected (--val-fraction, --select-on-test)")
# What ``overwrite`` removes before a new run (the others are rewritten anyway).
RUN_OUTPUTS = RUN_MARKERS
# TrainConfig fields a resumed run may change: they do not change what is trained (compile: the same function,
# compiled; workers: augmentation is seeded per sample, see loop.SeededItems; recipe: only the name of the file
# the values came from, the values themselves are compared).
RESUMABLE_CHANGES = ("epochs", "workers", "device", "data_root", "eval_batch_size", "compile", "dist_timeout_s",
                     "recipe")


def writable_folder(folder, flag: str = "--output") -> Path:
    """Check that files can be created in the existing ``folder`` (by creating and removing one).

    Raises ValueError naming ``flag`` when not, DiskFullError when the disk is full.
    """
    folder = Path(folder)
    probe = folder / f".pointcoc-write-test-{uuid.uuid4().hex[:8]}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"the disk holding {flag} {folder} is full") from None
        raise ValueError(f"{flag} {folder} is not writable ({err.strerror})") from None
    return folder


def create_output_dir(output_dir, flag: str = "--output") -> Path:
    """Create the folder ``output_dir`` (and its parents) and check that files can be written in it.

    Raises ValueError (naming ``flag``): it is a file, lies below a file, cannot be created or is not writable.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out} is a file, not a folder; choose a folder for the run's outputs")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {out} lies below {parent}, which is a file, not a folder")
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{flag} {out} cannot be created ({err.strerror})") from None
    return writable_folder(out, flag)


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _logs_record(metrics: Path, record: Dict) -> bool:
    """Whether the metrics file logs ``record`` (the line of its epoch equals it): the file is of its run."""
    for line in metrics.read_text(errors="replace").splitlines():  # undecodable bytes: lines of no record
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("epoch") == record.get("epoch"):
            return rec == json.loads(json.dumps(record))
    return False


def check_new_run_folder(output_dir, overwrite: bool, flag: str = "--output") -> None:
    """Refuse (ValueError), before any work, a folder that holds a saved run when a new run without
    ``overwrite`` is to be written there (what :func:`prepare_output_dir` refuses later)."""
    out = Path(output_dir)
    found = [name for name in SAVED_MARKERS if (out / name).exists()]
    if found and not overwrite:
        raise ValueError(f"{flag} {out} already holds a run ({', '.join(found)}); continue it with "
                         f"--resume {out / 'last.pt'}, replace it with --overwrite, or choose another {flag}")


def prepare_output_dir(output_dir, resuming: bool, overwrite: bool = False, flag: str = "--output",
                       resume_from=None, resume_record: Optional[Dict] = None) -> Path:
    """Create ``output_dir`` and make it ready for a run; returns it as a Path.

    Removes ``.*.tmp`` files left by saves that were killed (call it while holding the folder's
    :class:`RunFolderLock`, or a live run's temp file may go). A folder holding a run (any of RUN_MARKERS) is
    refused unless ``resuming`` (its metrics are then rewound by :func:`rewind_metrics`) or ``overwrite``
    (its RUN_OUTPUTS are deleted first). ``resume_from``, the checkpoint a resumed run continues, must then lie
    in ``output_dir`` unless ``output_dir`` holds no run: resuming A/last.pt into a folder B that holds
    another run would mix the two runs. A ``metrics.jsonl`` without a checkpoint or results (a run stopped in
    its first epoch, after logging it) is not a run to keep: a new run removes it and reuses the folder; a
    resume keeps it when it logs ``resume_record`` (the checkpoint's own metrics line), else it is another run.

    Raises ValueError: ``output_dir`` is a file, lies below a file, is not writable, holds a run, or holds
    another run than the one resumed.
    """
    out = create_output_dir(output_dir, flag)
    for tmp in out.glob(".*.pt.*.tmp"):
        tmp.unlink(missing_ok=True)
    found = [name for name in RUN_MARKERS if (out / name).exists()]
    if found and not any(name in found for name in SAVED_MARKERS):  # only a metrics.jsonl: no checkpoint
        if not resuming:
            (out / "metrics.jsonl").unlink(missing_ok=True)  # nothing to resume: the epochs are trained again
            found = []
        elif resume_record is None or _logs_record(out / "metrics.jsonl", resume_record):
            found = []  # the resumed run's own log (e.g. copied here with the checkpoint's folder's config)
    if found and resuming and resume_from is not None and not _same_folder(Path(resume_from).parent, out):
        raise ValueError(f"--resume {resume_from} continues the run in {Path(resume_from).parent}, but {flag} {out} "
                         f"holds another run ({', '.join(found)}); resuming there would mix the two runs. Resume "
                         f"into the run's own folder ({flag} {Path(resume_from).parent}) or into an empty folder")
    if found and not resuming:
        if not overwrite:
            raise ValueError(f"{flag} {out} already holds a run ({', '.join(found)}); continue it with "
                             f"--resume {out / 'last.pt'}, replace it with --overwrite, or choose another {flag}")
        for name in RUN_OUTPUTS:
            (out / name).unlink(missing_ok=True)
    return out


class RunFolderLock:
    """An exclusive lock on a run folder (``fcntl.flock`` on ``FOLDER/.pointcoc.lock``) while a run writes it.

    The OS drops the lock when its process ends, however it ends (kill -9 included), so a lock is never left
    stale; the file itself stays (it holds the pid of the last holder). Without fcntl (not POSIX) nothing is
    locked. Use as a context manager or call :meth:`release`.

    Raises RunFolderBusy (exit code 2 from the scripts) naming the holder's pid when another process holds it.
    """

    def __init__(self, folder, flag: str = "--output"):
        self.path = Path(folder) / LOCK_NAME
        self._fd = None
        if fcntl is None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            who = f"pid {holder}" if holder.isdigit() else "another process"
            raise RunFolderBusy(f"{flag} {Path(folder)} is in use by another run ({who}, which holds "
                                f"{self.path}); wait for it to end, stop it, or choose another {flag}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunFolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def rewind_metrics(path, epoch: int, record: Dict) -> None:
    """Make the metrics file ``path`` hold epochs 1..``epoch`` once each, the last being ``record``.

    Lines of later epochs (logged before a crash, before their checkpoint was saved) and repeated lines are
    dropped; the checkpoint's own ``record`` replaces its epoch's line. The file is replaced atomically.
    A missing file stays missing (a resume into a fresh folder logs only the epochs it trains).
    """
    path = Path(path)
    if not path.is_file():
        return
    kept = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash (or damaged bytes)
            continue
        e = rec.get("epoch") if isinstance(rec, dict) else None
        if isinstance(e, int) and 1 <= e < epoch and e not in kept:
            kept[e] = rec
    kept[epoch] = record
    text = "".join(json.dumps(kept[e]) + "\n" for e in sorted(kept))
    atomic_write(path, lambda f: f.write(text.encode()))


def _flatten(config: Dict, keys: Iterable[str]) -> Dict:
    """One level of nested dicts spelled out (``model_kwargs.embed_dim``), so a difference names its key."""
    flat = {}
    for key in keys:
        value = config.get(key)
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
            if not value:
                flat[key] = {}
        else:
            flat[key] = value
    return flat


def check_resume_config(old: Dict, new: Dict, allowed: Iterable[str] = RESUMABLE_CHANGES) -> None:
    """Raise CheckpointError naming every setting of ``new`` that contradicts the checkpoint's ``old``.

    Both are ``TrainConfig.to_dict()`` dicts, compared as JSON (a tuple equals a list); fields in ``allowed``
    may change.
    """
    keys = sorted((set(old) | set(new)) - set(allowed))
    a, b = (_flatten(json.loads(json.dumps(c)), keys) for c in (old, new))
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]
    if diff:
        what = "; ".join(f"{k}: checkpoint {a.get(k, '<absent>')!r}, now {b.get(k, '<absent>')!r}" for k in diff)
        raise CheckpointError(f"--resume: these settings contradict the checkpoint's ({what}). A resumed run "
                              "continues the checkpoint's run: give the same flags as the run that wrote it "
                              f"(only {', '.join(allowed)} may change), or start a new run without --resume")
