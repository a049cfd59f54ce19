"""Training and evaluation loop: ``fit`` and ``evaluate`` for any model with the pointcoc interface.

A model is called as ``model(xyz, features, lengths) -> logits (B, num_classes)`` on batch dicts
``{"xyz": (B, N, D), "label": (B,), optional "features": (B, N, C), "lengths": (B,)}``.

Reproducibility: at the start of every epoch the global RNGs (torch, numpy, python) and the training
DataLoader's generator are re-seeded from ``(seed, epoch, rank)``; the loader's generator draws the data
order. Each training sample is loaded with the global RNGs seeded from ``(seed, epoch, index)`` alone
(:func:`item_seed`) and restored afterwards, so its augmentation is the same whichever process loads it:
the main process or any of ``workers`` DataLoader workers. The data order and the augmentation of an epoch
therefore depend only on the seed and the epoch number, the same seed gives the same run for any
``workers``, and a resumed run repeats an uninterrupted one exactly. The RNG states are also stored in every
checkpoint.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import shlex
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .._links import repository_link
from .._precision import amp_dtype
from ..viz.curves import plot_curves, read_metrics
from .checkpoint import (CHECKPOINT_FORMAT, CheckpointError, atomic_write, capture_rng_state, load_checkpoint,
                         restore_rng_state, save_checkpoint)
from .config import TrainConfig
from .distributed import (DistInfo, all_reduce_sum, barrier, broadcast_buffers, collective_failure, decide_on_rank0,
                          init_distributed)
from .errors import TrainingDiverged, TrainingInterrupted
from .metrics import confusion_matrix, plot_confusion_matrix, summarize_confusion
from .progress import format_epoch, progress_bar, resolve_progress
from .resume_checks import check_data, check_threads, data_fingerprints
from .rundir import RunFolderLock, check_resume_config, create_output_dir, prepare_output_dir, rewind_metrics

__all__ = ["fit", "evaluate", "collate_point_dicts", "smoothed_cross_entropy", "resolve_device",
           "seed_everything", "stratified_split", "build_model_from_checkpoint", "random_scale_votes", "item_seed",
           "SeededItems"]


# Said once when --compile runs on a CPU: what it costs, and what the warnings torch prints while compiling mean.
COMPILE_ON_CPU = ("--compile on a CPU: the first steps of training and of evaluation compile for minutes (322 s for "
                  "the first epoch of a 64-point PointMLP-elite run on 2 cores), for no measured speed-up; the "
                  "warnings torch's inductor / dynamo may print meanwhile (an operator without an inductor lowering "
                  "runs as its eager kernel, a function hit the recompile limit and runs eagerly) are about speed "
                  f"only: the results are the eager model's ({repository_link('docs/training.md')})")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 9_973 + rank * 101) % 2**63


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed (in [0, 2**63)) of training sample ``index`` in ``epoch`` (0-based) of a run with ``seed``.

    A hash of the three numbers: the same for every process that loads the sample.
    """
    digest = hashlib.blake2b(f"pointcoc-item {seed} {epoch} {index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextlib.contextmanager
def _seeded_global_rngs(seed: int):
    """Seed torch's CPU, numpy's and python's global RNGs from ``seed`` inside the block; restore them after."""
    saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.manual_seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF])
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])


class SeededItems(Dataset):
    """A map-style ``dataset`` whose item ``i`` is loaded with the global RNGs seeded from
    ``item_seed(seed, epoch, i)`` (torch CPU, numpy, python; restored afterwards).

    Random augmentation drawn from the global RNGs (:class:`pointcoc.data.PointCloudAugment`, pixel masks
    drawn with ``redraw``) then depends on (seed, epoch, index) only: not on which process or DataLoader
    worker loads the item, nor on what the main process drew before. Set ``epoch`` before each epoch.
    """

    def __init__(self, dataset: Dataset, seed: int, epoch: int = 0):
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        with _seeded_global_rngs(item_seed(self.seed, self.epoch, int(index))):
            return self.dataset[index]


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; otherwise ``torch.device(name)``, checked to exist on this machine.

    Raises ValueError for a malformed name and for a cuda/mps device this machine does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got {name!r}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name!r} requested but CUDA is not available on this machine "
                             "(use --device cpu or auto)")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"--device {name!r} requested but this machine has {count} CUDA device(s): "
                             f"cuda:0..cuda:{count - 1}")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {name!r} requested but MPS (Apple GPU) is not available on this machine "
                             "(use --device cpu or auto)")
    elif dev.type != "cpu":
        raise ValueError(f"--device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got {name!r}")
    return dev


def collate_point_dicts(samples: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Stack per-sample dicts (``xyz`` (N, D), ``label`` (), optional ``features`` (N, C)) into a batch dict.

    All samples must have the same keys and shapes (use a ragged collate with ``lengths`` otherwise).
    """
    if not samples:
        raise ValueError("collate_point_dicts needs at least one sample")
    keys = set(samples[0])
    for s in samples:
        if set(s) != keys:
            raise ValueError(f"all samples must have the same keys; got {sorted(keys)} and {sorted(s)}")
    out = {}
    for k in samples[0]:
        shapes = {tuple(torch.as_tensor(s[k]).shape) for s in samples}
        if len(shapes) != 1:
            raise ValueError(f"samples have different shapes for {k!r}: {sorted(shapes)}; "
                             f"pad them and pass 'lengths' with a ragged collate_fn")
        out[k] = torch.stack([torch.as_tensor(s[k]) for s in samples])
    return out


def smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, eps: float = 0.2) -> torch.Tensor:
    """Cross-entropy against smoothed targets of the PointMLP/DGCNN code: true class 1-eps, others eps/(C-1).

    (torch's ``label_smoothing`` spreads eps over all C classes instead.) Returns the batch mean.
    """
    if eps == 0:
        return F.cross_entropy(logits, labels)
    n = logits.shape[1]
    target = torch.full_like(logits, eps / (n - 1))
    target.scatter_(1, labels[:, None], 1.0 - eps)
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def stratified_split(labels: torch.Tensor, fraction: float, seed: int):
    """Indices (train, val) with ~``fraction`` of every class (at least one sample of classes with >= 2) in val.

    Raises ValueError naming the class counts when no class has 2 samples (the validation split would be empty).
    """
    g = torch.Generator().manual_seed(seed)
    train_idx: List[int] = []
    val_idx: List[int] = []
    counts = {}
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        counts[c] = len(idx)
        idx = idx[torch.randperm(len(idx), generator=g)].tolist()
        k = int(round(fraction * len(idx)))
        k = max(k, 1) if len(idx) >= 2 else 0
        val_idx += idx[:k]
        train_idx += idx[k:]
    if not val_idx:
        raise ValueError(f"--val-fraction {fraction}: the validation split would be empty: it takes samples only from "
                         f"classes with at least 2, and no class has 2 (samples per class: {counts}); use more data "
                         "or --val-fraction 0")
    return sorted(train_idx), sorted(val_idx)


def _to_device(batch: Dict, device: torch.device) -> Dict:
    if not isinstance(batch, dict) or "xyz" not in batch or "label" not in batch:
        got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"a batch must be a dict with keys 'xyz' and 'label' (optional 'features', 'lengths'); got {got}")
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def autocast(device: torch.device, amp: bool):
    """The ``--amp`` autocast context of ``device`` (float16 on CUDA, bfloat16 on a CPU that has it); a no-op
    context when ``amp`` is False."""
    dtype = amp_dtype(device.type)[0] if amp else None
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def _forward(model: nn.Module, batch: Dict) -> torch.Tensor:
    return model(batch["xyz"], batch.get("features"), batch.get("lengths"))


def random_scale_votes(xyz: torch.Tensor, generator: torch.Generator, low: float = 0.85, high: float = 1.15):
    """Test-time vote transform: one anisotropic scale U(low, high)^D per set of a (B, N, D) batch."""
    scale = torch.empty(xyz.shape[0], 1, xyz.shape[2]).uniform_(low, high, generator=generator)
    return xyz * scale.to(xyz)


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, device: Union[str, torch.device] = "cpu",
             amp: bool = False, votes: int = 1, limit_batches: Optional[int] = None,
             class_names: Optional[Sequence[str]] = None, dist_info: Optional[DistInfo] = None,
             vote_transform: Callable = random_scale_votes, vote_seed: int = 0,
             progress: Union[str, bool] = "auto") -> Dict:
    """Evaluate ``model`` on every batch of ``loader`` (at most ``limit_batches``).

    With ``votes`` > 1 the softmax of the plain pass and of ``votes - 1`` passes with
    ``vote_transform(xyz, generator)`` (default: anisotropic scale U(0.85, 1.15)) are averaged.
    Under torch.distributed each process evaluates its own shard and the confusion matrices and loss
    sums are summed over processes. ``progress``: a mode of :mod:`pointcoc.engine.progress` (a bar only in
    mode ``bar``, or ``auto`` on a terminal).

    Returns ``summarize_confusion`` keys (``oa``, ``macc`` in %, ``per_class_acc``, ``confusion_matrix``,
    ``count``) plus ``loss`` (mean unsmoothed cross-entropy of the averaged prediction).
    """
    if votes < 1:
        raise ValueError(f"votes must be >= 1; got {votes}")
    device = torch.device(device)
    info = dist_info or DistInfo()
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    gen = torch.Generator().manual_seed(vote_seed)
    total = len(loader) if limit_batches is None else min(limit_batches, len(loader))
    bar = progress_bar(loader, progress, total, "eval", show=info.is_main)
    for i, batch in enumerate(bar):
        if limit_batches is not None and i >= limit_batches:
            break
        batch = _to_device(batch, device)
        log_probs = []
        for v in range(votes):
            b = batch if v == 0 else {**batch, "xyz": vote_transform(batch["xyz"], gen)}
            with autocast(device, amp):
                logits = _forward(model, b)
            if logits.dim() != 2 or logits.shape != (batch["label"].shape[0], num_classes):
                raise ValueError(f"the model must return logits of shape (B, {num_classes}); got {tuple(logits.shape)}")
            log_probs.append(F.log_softmax(logits.float(), dim=1))
        # log of the mean softmax over votes, computed stably
        log_mean = torch.logsumexp(torch.stack(log_probs), 0) - math.log(votes)
        labels = batch["label"].long()
        loss_sum += F.nll_loss(log_mean, labels, reduction="sum").double()
        cm += confusion_matrix(log_mean.argmax(1), labels, num_classes)
    cm = all_reduce_sum(cm, info)
    loss_sum = all_reduce_sum(loss_sum, info)
    out = summarize_confusion(cm, class_names)
    out["loss"] = float(loss_sum) / max(out["count"], 1)
    return out


def build_model_from_checkpoint(state: Dict, create: Optional[Callable] = None) -> nn.Module:
    """Rebuild the model of a checkpoint: ``create(config.model, **config.model_kwargs)`` then load weights.

    ``create`` defaults to ``pointcoc.models.create_model``. Raises CheckpointError when weights do not fit.
    """
    if create is None:
        from pointcoc.models import create_model as create
    cfg = state["config"]
    model = create(cfg["model"], **cfg.get("model_kwargs", {}))
    _load_weights(model, state["model"])
    return model


def _load_weights(model: nn.Module, weights: Dict) -> None:
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint weights do not fit the model: {err}") from None


def _per_process_batch(batch_size: int, world_size: int) -> int:
    """The batch of each of ``world_size`` processes for a global ``batch_size``; raises ValueError unless it
    divides evenly and leaves every process at least 2 samples (BatchNorm needs 2 values per channel)."""
    if batch_size % world_size:
        raise ValueError(f"--batch-size {batch_size} is the global batch and must divide evenly over the "
                         f"{world_size} processes; use a multiple of {world_size}, e.g. "
                         f"{max(2, batch_size // world_size) * world_size}")
    per_proc = batch_size // world_size
    if per_proc < 2:
        where = "" if world_size == 1 else f" per process ({batch_size} over {world_size} processes)"
        raise ValueError(f"--batch-size must give at least 2 samples{where} in training: BatchNorm cannot "
                         f"normalise a batch of 1; got --batch-size {batch_size}")
    return per_proc


def _check_world_size(state: Dict, world_size: int, per_proc_batch: int, allow: bool) -> None:
    """Refuse (CheckpointError) to resume a checkpoint of ``state["world_size"]`` processes in ``world_size``
    unless ``allow``; then warn. Checkpoints written before they recorded it (no key) are not checked."""
    old = state.get("world_size")
    if old is None or int(old) == world_size:
        return

    def procs(n):
        return f"{n} process{'es' if n > 1 else ''}"

    old_batch = state.get("per_process_batch", "?")
    what = (f"the checkpoint was written by {procs(int(old))} ({old_batch} samples each per step); this run has "
            f"{procs(world_size)} ({per_proc_batch} samples each). Continuing with another number of processes "
            "changes which samples form each step (the DistributedSampler's shards), the per-process batch that "
            "BatchNorm normalises (unless --sync-bn) and the random streams of each rank, so the resumed run is "
            "not the run the checkpoint started")
    if not allow:
        raise CheckpointError(f"--resume: {what}. Resume with {procs(int(old))} (torchrun --nproc_per_node "
                              f"{old}), or pass --allow-world-size-change to accept the change")
    warnings.warn(f"--allow-world-size-change: {what}", stacklevel=4)  # fit's caller


class _Run:
    """Bookkeeping of one ``fit`` call (files, where training is: ``epoch`` and ``step``, both 1-based)."""

    def __init__(self, output_dir: Path, info: Optional[DistInfo] = None, progress: str = "none",
                 command: Optional[str] = None):
        self.dir = output_dir
        self.command = command  # the command that started the run ("pointcoc train"), for the resume line
        self.terminated = False  # SIGTERM (not Ctrl-C) stopped the run
        self.info = info or DistInfo()
        self.progress = progress  # bar, line or none (resolved)
        self.epoch = 0
        self.step = 0
        self.checkpoint: Optional[Path] = None  # the newest complete checkpoint of the run (last.pt once saved)
        self.saved_epoch: Optional[int] = None  # its epoch
        self.lock: Optional[RunFolderLock] = None  # the output folder's lock (rank 0), released when fit returns

    def saved(self, epoch: int) -> None:
        self.checkpoint, self.saved_epoch = self.dir / "last.pt", epoch

    def interrupted(self) -> TrainingInterrupted:
        """The exception that ends a run stopped by Ctrl-C (exit code 130) or SIGTERM (143): where it stopped and
        a command that continues it."""
        stopped = "terminated (SIGTERM)" if self.terminated else "interrupted"
        where = f"{stopped} at epoch {self.epoch}, step {self.step}" if self.epoch else f"{stopped} before training"
        if self.checkpoint is None:
            err = TrainingInterrupted(f"{where}; no checkpoint was saved yet: start the run again")
        else:
            err = TrainingInterrupted(f"{where}; {self.checkpoint.name} holds epoch {self.saved_epoch}. Resume "
                                      f"with: {self.resume_command()}")
        err.exit_code = 143 if self.terminated else 130  # 128 + the signal, as a shell reports it
        return err

    def resume_command(self) -> str:
        """A command line that continues the run from its checkpoint (a call of ``fit`` for API runs)."""
        path = shlex.quote(str(self.checkpoint))
        if self.command is None:
            return f"fit(..., resume={str(self.checkpoint)!r})"
        command = self.command
        if self.info.world_size > 1:
            command = f"torchrun --nproc_per_node {self.info.world_size} -m {command}"
        return f"{command} --resume {path}"

    def diverged(self, what: str, config: TrainConfig, amp: bool) -> TrainingDiverged:
        kept = (f"{self.checkpoint} (epoch {self.saved_epoch}) is intact" if self.checkpoint is not None
                else "No checkpoint was saved")
        likely = f"--lr {config.lr} is too high for this model and batch size; try a smaller --lr"
        if config.weight_decay > 0.01:
            likely += f" or --weight-decay (now {config.weight_decay})"
        if amp:
            likely += ", or train without --amp"
        return TrainingDiverged(f"training diverged: {what} at epoch {self.epoch}, step {self.step}; likely "
                                f"{likely}. {kept}")

    def log(self, record: Dict, config: TrainConfig) -> None:
        """Append ``record`` to metrics.jsonl, redraw curves.png from the whole file, print the epoch line
        (unless progress is none)."""
        if not self.info.is_main:
            return
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        plot_curves({self.dir.name: read_metrics(self.dir)}, self.dir / "curves.png",
                    f"{config.model} on {config.dataset}, seed {config.seed} ({self.dir.name})")
        if self.progress != "none":
            print(format_epoch(record, config.epochs), flush=True)


def _make_loader(dataset, batch_size, shuffle, workers, collate_fn, generator, sampler=None, drop_last=False):
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=workers, collate_fn=collate_fn, generator=generator, drop_last=drop_last,
                      pin_memory=False, persistent_workers=False)


def fit(model: nn.Module, train_dataset: Dataset, test_dataset: Dataset, config: TrainConfig, output_dir,
        class_names: Sequence[str], collate_fn: Optional[Callable] = None, val_dataset: Optional[Dataset] = None,
        resume: Union[None, str, Path, Dict] = None, stop_after_epoch: Optional[int] = None,
        overwrite: bool = False, progress: str = "auto", allow_world_size_change: bool = False,
        allow_data_change: bool = False, command: Optional[str] = None) -> Dict:
    """Train ``model`` with SGD + cosine schedule + smoothed cross-entropy; evaluate, checkpoint, log.

    Args:
        model: any module called as ``model(xyz, features, lengths) -> (B, num_classes)``.
        train_dataset / test_dataset / val_dataset: map-style datasets yielding per-sample dicts.
        config: TrainConfig (saved to ``output_dir/config.json`` and into checkpoints).
        output_dir: folder for ``config.json``, ``metrics.jsonl`` (one JSON line per epoch), ``curves.png``,
            ``last.pt``, ``best.pt`` (only when something selects it: ``val_dataset`` or
            ``config.select_on_test``), ``results.json`` and ``confusion_matrix.png``.
        class_names: one name per class; ``len(class_names)`` is the number of classes.
        collate_fn: batches samples into dicts; default ``collate_point_dicts``.
        resume: a checkpoint path (or loaded dict) to continue from; ``config.epochs`` is the total. Its
            config must equal ``config`` except for ``rundir.RESUMABLE_CHANGES`` (CheckpointError otherwise);
            ``output_dir/metrics.jsonl`` is brought back to the checkpoint's epoch. A path must lie in
            ``output_dir`` unless ``output_dir`` holds no run (ValueError: that would mix two runs); a loaded
            dict is taken to be of ``output_dir``'s run.
        stop_after_epoch: stop once this epoch is done, as if interrupted (time-boxed jobs, tests);
            results are then those of the last epoch trained.
        overwrite: replace the run in ``output_dir``; without it (and without ``resume``) a folder that
            holds a run is refused with a ValueError. While ``fit`` runs it holds an exclusive lock on
            ``output_dir`` (:class:`~pointcoc.engine.rundir.RunFolderLock`): a second ``fit`` into the same
            folder, in any process, is refused (RunFolderBusy) instead of mixing the two runs.
        progress: ``auto``, ``bar``, ``line`` or ``none`` (:mod:`pointcoc.engine.progress`): bars during an
            epoch and/or one line per epoch on stdout.
        allow_world_size_change: resume a checkpoint written by another number of processes (checkpoints
            record ``world_size`` and ``per_process_batch``); without it such a resume raises CheckpointError
            saying what would change.
        allow_data_change: resume on data whose fingerprint (sample count and labels of each split, recorded in
            checkpoints) differs from the checkpoint's; without it such a resume raises CheckpointError.
        command: the command line that started the run without its flags (``"pointcoc train"``), for the
            line that says how to resume an interrupted run (default: a call of ``fit``).

    Under torchrun (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel, training uses a
    DistributedSampler (``config.batch_size`` is global), evaluation metrics are reduced over processes
    and only rank 0 writes files.

    Protocol: with ``val_dataset`` the epoch with the best validation OA is selected (best.pt) and its
    test metrics are the result; else the final epoch is the result; ``config.select_on_test`` picks
    the best test epoch instead (the paper protocol, labelled as such in results.json).

    Stops with TrainingDiverged (the last checkpoint intact) when the loss, a gradient or a weight becomes
    NaN/inf, and with TrainingInterrupted (a KeyboardInterrupt naming epoch, step, checkpoint and the command
    that resumes; ``exit_code`` 130) on Ctrl-C, or on SIGTERM (``exit_code`` 143) when called in the main thread.
    A checkpoint records the torch thread count and the data's fingerprint besides the config: a resume under
    another thread count warns, one on other data is refused (``allow_data_change``).

    Returns the results dict that is also written to ``results.json``.
    """
    run = _Run(Path(output_dir), progress=resolve_progress(progress), command=command)
    try:
        with _sigterm_as_interrupt(run):
            return _fit(run, model, train_dataset, test_dataset, config, class_names, collate_fn, val_dataset,
                        resume, stop_after_epoch, overwrite, allow_world_size_change, allow_data_change)
    except KeyboardInterrupt:
        raise run.interrupted() from None
    except Exception as err:
        if run.terminated:  # e.g. a DataLoader worker killed by the same SIGTERM, noticed before the handler ran
            raise run.interrupted() from None
        stopped = collective_failure(err, config.dist_timeout_s)  # torchrun: one line naming --dist-timeout
        if stopped is not None:
            raise stopped from None
        raise
    finally:
        if run.lock is not None:
            run.lock.release()


@contextlib.contextmanager
def _sigterm_as_interrupt(run: _Run):
    """While the block runs, SIGTERM (docker stop, Slurm preemption, ``kill``) stops training as Ctrl-C does
    (checkpoints are written atomically, so the last one stays intact). Only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        run.terminated = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fit(run: "_Run", model, train_dataset, test_dataset, config, class_names, collate_fn, val_dataset, resume,
         stop_after_epoch, overwrite, allow_world_size_change=False, allow_data_change=False) -> Dict:
    num_classes = len(class_names)
    if num_classes < 2:
        raise ValueError(f"class_names must name at least 2 classes; got {list(class_names)}")
    collate_fn = collate_fn or collate_point_dicts
    device = resolve_device(config.device)
    info = init_distributed(device, config.dist_timeout_s)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    amp_type, amp_why = amp_dtype(device.type)
    amp = config.amp and amp_type is not None
    if config.amp and not amp:
        warnings.warn(f"--amp has no effect here, training in float32: {amp_why}", stacklevel=3)
    if config.compile and device.type == "cpu" and info.is_main:
        warnings.warn(COMPILE_ON_CPU, stacklevel=3)
    per_proc_batch = _per_process_batch(config.batch_size, info.world_size)
    if config.sync_bn and info.enabled and device.type != "cuda":
        raise ValueError("--sync-bn needs CUDA devices (torch's SyncBatchNorm has no CPU implementation)")
    if config.sync_bn and not info.enabled:
        warnings.warn("--sync-bn has no effect in a single process (BatchNorm already sees the whole batch)",
                      stacklevel=3)  # _fit's warnings name the line that called fit
    if len(train_dataset) < config.batch_size:
        raise ValueError(f"the training set ({len(train_dataset)} samples) is smaller than one batch "
                         f"(batch_size {config.batch_size}); lower --batch-size")
    fingerprints = data_fingerprints(train_dataset, test_dataset, val_dataset)
    state = None
    if resume is not None:
        state = resume if isinstance(resume, dict) else load_checkpoint(resume)
        check_resume_config(TrainConfig.saved_with_defaults(state["config"]), config.to_dict())
        _check_world_size(state, info.world_size, per_proc_batch, allow_world_size_change)
        check_data(state, fingerprints, allow_data_change, config.data_root)
        if info.is_main:
            check_threads(state, torch.get_num_threads(), device.type)
        if not isinstance(resume, dict):
            run.checkpoint, run.saved_epoch = Path(resume), int(state["epoch"])
    output_dir = run.dir
    resume_from = None if resume is None or isinstance(resume, dict) else Path(resume)

    def take_output_dir():  # rank 0 (the only rank that writes files); every rank learns its verdict
        create_output_dir(output_dir)
        run.lock = RunFolderLock(output_dir)  # held until fit returns: a second run into the folder is refused
        prepare_output_dir(output_dir, resuming=state is not None, overwrite=overwrite, resume_from=resume_from,
                           resume_record=None if state is None else state["metrics"]["record"])
        config.save_json(output_dir / "config.json")
        if state is not None:
            rewind_metrics(output_dir / "metrics.jsonl", int(state["epoch"]), state["metrics"]["record"])

    decide_on_rank0(info, take_output_dir)
    run.info = info

    model = model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs,
                                                           eta_min=config.lr * config.min_lr_ratio)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")  # bfloat16 needs no scaling
    loader_gen = torch.Generator()
    start_epoch = 0
    selection = {"metric": None, "best_value": None, "best_epoch": None}
    if val_dataset is not None:
        selection["metric"] = "val_oa"
    elif config.select_on_test:
        selection["metric"] = "test_oa"
    if state is not None:
        _load_weights(model, state["model"])
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"optimizer/scheduler state in the checkpoint does not fit: {err}") from None
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch = int(state["epoch"])
        selection = dict(state.get("selection", selection))
        restore_rng_state(state["rng"], loader_gen)
        if state["config"].get("epochs") != config.epochs:
            warnings.warn(f"checkpoint was trained with epochs={state['config'].get('epochs')}; its cosine schedule "
                          f"is kept, now running to epochs={config.epochs}", stacklevel=3)
        if start_epoch >= config.epochs:
            warnings.warn(f"checkpoint is at epoch {start_epoch} >= epochs {config.epochs}; nothing to train",
                          stacklevel=3)
    net = model
    if config.sync_bn and info.enabled:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    # Evaluation runs the unwrapped model (ranks may see different numbers of eval batches).
    eval_net = model
    if config.compile:  # checkpoints save model.state_dict(): the plain module's keys, no "_orig_mod." prefix
        net = torch.compile(net)
        eval_net = torch.compile(model) if info.enabled else net

    train_items = SeededItems(train_dataset, config.seed)  # augmentation from (seed, epoch, index) only
    sampler = None
    if info.enabled:
        sampler = DistributedSampler(train_items, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                     seed=config.seed, drop_last=True)
    train_loader = _make_loader(train_items, per_proc_batch, True, config.workers, collate_fn, loader_gen,
                                sampler=sampler, drop_last=True)

    def eval_loader(ds):
        if info.enabled:  # disjoint shards without padding, so reduced metrics count every sample once
            ds = Subset(ds, list(range(info.rank, len(ds), info.world_size)))
        return _make_loader(ds, config.eval_batch_size or per_proc_batch, False, config.workers, collate_fn, None)

    test_loader = eval_loader(test_dataset)
    val_loader = eval_loader(val_dataset) if val_dataset is not None else None

    def evaluate_on(loader):
        # CPU test metrics in float32, as `pointcoc evaluate` gives them (and a model card states them)
        return evaluate(eval_net, loader, num_classes, device, amp=amp and device.type == "cuda",
                        limit_batches=config.limit_val_batches, class_names=class_names, dist_info=info,
                        progress=run.progress)

    last = None
    end_epoch = config.epochs if stop_after_epoch is None else min(config.epochs, stop_after_epoch)
    for epoch in range(start_epoch, end_epoch):
        run.epoch, run.step = epoch + 1, 0
        seed = _epoch_seed(config.seed, epoch, info.rank)
        seed_everything(seed)
        loader_gen.manual_seed(seed ^ 0x5EED)  # data order and worker seeds: a stream apart from the globals
        train_items.epoch = epoch  # read by the workers the loader starts for this epoch (not persistent)
        if sampler is not None:
            sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        train = _train_one_epoch(net, train_loader, optimizer, scaler, config, num_classes, device, amp, run,
                                 desc=f"epoch {epoch + 1}/{config.epochs}")
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        broadcast_buffers(model, info)  # evaluate (and save) rank 0's BatchNorm statistics on every rank
        train_time = time.perf_counter() - t0
        test = evaluate_on(test_loader)
        val = evaluate_on(val_loader) if val_loader is not None else None
        if any(m is not None and math.isnan(m["loss"]) for m in (test, val)):  # finite but huge weights
            raise run.diverged("the model outputs NaN on the evaluation data", config, amp)
        record = {"epoch": epoch + 1, "lr": lr, "train_loss": train["loss"], "train_oa": train["oa"],
                  "train_macc": train["macc"], "test_loss": test["loss"], "test_oa": test["oa"],
                  "test_macc": test["macc"]}
        if val is not None:
            record.update(val_loss=val["loss"], val_oa=val["oa"], val_macc=val["macc"])
        record.update(train_time_s=train_time, epoch_time_s=time.perf_counter() - t0)
        is_best = False
        if selection["metric"] is not None:
            value = record[selection["metric"]]
            if selection["best_value"] is None or value > selection["best_value"]:
                selection.update(best_value=value, best_epoch=epoch + 1)
                is_best = True
        run.log(record, config)
        last = {"record": record, "test": test, "val": val}
        state = {
            "format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "epoch": epoch + 1, "rng": capture_rng_state(loader_gen), "config": config.to_dict(),
            "metrics": {"record": record, "test": _compact(test), "val": _compact(val)},
            "selection": selection, "class_names": list(class_names),
            "world_size": info.world_size, "per_process_batch": per_proc_batch,
            "num_threads": torch.get_num_threads(), "data": fingerprints,
        }
        if info.is_main:
            save_checkpoint(state, output_dir / "last.pt")
            run.saved(epoch + 1)  # at once: a Ctrl-C from here on must name this epoch
            if is_best:
                save_checkpoint(state, output_dir / "best.pt")
        barrier(info)
        run.saved(epoch + 1)

    results = _final_results(output_dir, selection, last, class_names, info)
    if info.enabled:
        barrier(info)
    return results


def _compact(m: Optional[Dict]) -> Optional[Dict]:
    return None if m is None else {k: m[k] for k in ("oa", "macc", "loss", "count", "per_class_acc", "confusion_matrix")}


def _final_results(output_dir: Path, selection: Dict, last: Optional[Dict], class_names, info: DistInfo) -> Dict:
    """Pick the result checkpoint by the protocol, write results.json and the confusion-matrix PNG (rank 0)."""
    metric = selection["metric"]
    if metric is None:
        protocol = "final epoch (no validation split)"
        source = output_dir / "last.pt"
    elif metric == "val_oa":
        protocol = "epoch selected by validation OA; test metrics of that epoch"
        source = output_dir / "best.pt"
    else:
        protocol = "PAPER PROTOCOL: best test epoch (selected on the test set, optimistic)"
        source = output_dir / "best.pt"
    if last is None and not source.is_file():
        raise ValueError(f"nothing was trained and {source} does not exist")
    if info.is_main and source.is_file():
        state = load_checkpoint(source)
        epoch, test = int(state["epoch"]), state["metrics"]["test"]
    else:
        epoch, test = last["record"]["epoch"], _compact(last["test"])
    results = {"protocol": protocol, "epoch": epoch, "test_oa": test["oa"], "test_macc": test["macc"],
               "test_loss": test["loss"], "count": test["count"], "class_names": list(class_names),
               "per_class_acc": test["per_class_acc"], "confusion_matrix": test["confusion_matrix"],
               "checkpoint": str(source)}
    if info.is_main:
        atomic_write(output_dir / "results.json", lambda f: f.write((json.dumps(results, indent=1) + "\n").encode()))
        plot_confusion_matrix(torch.tensor(test["confusion_matrix"]), output_dir / "confusion_matrix.png",
                              class_names, title=f"test OA {test['oa']:.2f}%  mAcc {test['macc']:.2f}%  "
                                                 f"(epoch {epoch}; {protocol})")
        print(f"RESULT [{protocol}] epoch {epoch}: OA {test['oa']:.2f}%  mAcc {test['macc']:.2f}%  "
              f"({test['count']} test samples)", flush=True)
    return results


def _train_one_epoch(net, loader, optimizer, scaler, config: TrainConfig, num_classes, device, amp, run: _Run, desc):
    """One epoch of SGD steps; ``run.step`` follows the step. Raises TrainingDiverged on a NaN/inf loss, gradient
    or (after the last step) weight; under AMP the GradScaler skips steps with inf gradients instead."""
    info = run.info
    net.train()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    total = len(loader) if config.limit_train_batches is None else min(config.limit_train_batches, len(loader))
    bar = progress_bar(loader, run.progress, total, desc, show=info.is_main)
    for i, batch in enumerate(bar):
        if config.limit_train_batches is not None and i >= config.limit_train_batches:
            break
        run.step = i + 1
        batch = _to_device(batch, device)
        labels = batch["label"].long()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            logits = _forward(net, batch)
        if logits.shape != (labels.shape[0], num_classes):
            raise ValueError(f"the model must return logits of shape (B, {num_classes}); got {tuple(logits.shape)}")
        loss = smoothed_cross_entropy(logits.float(), labels, config.label_smoothing)
        scaler.scale(loss).backward()  # first: under DDP every process must join the gradient all-reduce
        if not bool(torch.isfinite(loss.detach())):
            raise run.diverged(f"the loss is {loss.item()}", config, amp)
        if not scaler.is_enabled() and not _all_finite(p.grad for p in net.parameters()):
            raise run.diverged("a gradient is NaN/inf", config, amp)
        if config.clip_grad_norm > 0:
            scaler.unscale_(optimizer)  # a no-op without loss scaling
            nn.utils.clip_grad_norm_(net.parameters(), config.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach().double() * labels.shape[0]
        cm += confusion_matrix(logits.detach().argmax(1), labels, num_classes)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    if not _all_finite(net.parameters()):
        raise run.diverged("a weight is NaN/inf after the step", config, amp)
    cm = all_reduce_sum(cm, info)
    loss_sum = all_reduce_sum(loss_sum, info)
    out = summarize_confusion(cm)
    out["loss"] = float(loss_sum) / max(out["count"], 1)
    return out


def _all_finite(tensors) -> bool:
    """Whether every element of the given tensors (None entries skipped) is finite; one device sync."""
    flags = [torch.isfinite(t).all() for t in tensors if t is not None]
    return bool(torch.stack(flags).all()) if flags else True
