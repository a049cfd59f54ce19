"""Training configuration shared by every training script: ``TrainConfig`` and ``add_training_args``.

Defaults are the authors' ScanObjectNN recipe (ma-xu/pointMLP-pytorch
classification_ScanObjectNN/main.py for PointMLP and PointMLP-elite, ma-xu/Context-Cluster
pointcloud/main.py for PointMLP-CoC): SGD lr 0.01, momentum 0.9, weight decay 1e-4, cosine
annealing to lr/100, batch 32, label-smoothed cross-entropy (eps 0.2), and as many epochs as the
model's script: 200, or 250 for PointMLP-CoC (``AUTHORS_EPOCHS``). docs/training.md compares
every item with the authors' code.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from .._links import repository_link
from .progress import add_progress_arg

__all__ = ["TrainConfig", "add_training_args", "config_from_args", "check_before_data", "check_num_classes",
           "AUTHORS_EPOCHS", "recipe_epochs"]

# The only recipe item in which the authors' scripts differ between models (their --epoch default).
AUTHORS_EPOCHS = {"pointmlp": 200, "pointmlp_elite": 200, "pointmlp_coc": 250}
DEFAULT_EPOCHS = 200


def recipe_epochs(model: str) -> int:
    """Epochs of the authors' script for registered model ``model``; 200 for models they did not publish."""
    return AUTHORS_EPOCHS.get(model, DEFAULT_EPOCHS)


@dataclass
class TrainConfig:
    """Everything a run needs besides the model and data objects; saved as ``config.json`` and in checkpoints.

    ``batch_size`` is the global batch: under torchrun each of the W processes takes ``batch_size / W`` (W must
    divide it); ``sync_bn`` makes BatchNorm use the statistics of the global batch (CUDA only).
    Every numeric field is checked (finite, in range) with a ValueError naming its flag.
    ``model`` / ``model_kwargs`` and the data fields let ``scripts/evaluate.py`` rebuild model and test set.
    ``extra`` holds script-specific settings (JSON-serialisable values only).
    ``epochs=None`` takes the authors' number for ``model`` (:func:`recipe_epochs`).
    ``recipe`` is the ``--config`` name or path the run was started with (None: flags only); the other fields
    hold the resolved values.
    """

    model: str = "pointmlp"
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    dataset: str = "scanobjectnn"
    data_root: Optional[str] = None
    variant: Optional[str] = "PB_T50_RS"
    num_points: int = 1024
    epochs: Optional[int] = None
    batch_size: int = 32
    eval_batch_size: Optional[int] = None
    lr: float = 0.01
    min_lr_ratio: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    label_smoothing: float = 0.2
    clip_grad_norm: float = 0.0
    workers: int = 4
    device: str = "auto"
    seed: int = 0
    amp: bool = False
    sync_bn: bool = False
    compile: bool = False
    limit_train_batches: Optional[int] = None
    limit_val_batches: Optional[int] = None
    select_on_test: bool = False
    val_fraction: float = 0.0
    dist_timeout_s: float = 600.0
    recipe: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.epochs is None:
            self.epochs = recipe_epochs(self.model)

        def positive(name):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int; got {v!r}")

        for name in ("epochs", "batch_size", "num_points"):
            positive(name)
        for name in ("eval_batch_size", "limit_train_batches", "limit_val_batches"):
            if getattr(self, name) is not None:
                positive(name)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed (--seed / --seeds) must be an int in [0, 2**63 - 1]; got {self.seed!r}")
        if self.val_fraction > 0 and self.select_on_test:
            raise ValueError("--val-fraction and --select-on-test exclude each other: a validation split selects "
                             "best.pt by validation OA, --select-on-test by test OA (the paper protocol); give one")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers must be an int >= 0; got {self.workers!r}")
        for name, ok, text in (("lr", lambda v: v > 0, "> 0"), ("min_lr_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"),
                               ("momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
                               ("weight_decay", lambda v: 0 <= v < 1, "in [0, 1)"),
                               ("label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)"),
                               ("clip_grad_norm", lambda v: v >= 0, ">= 0 (0: no clipping)"),
                               ("val_fraction", lambda v: 0 <= v < 1, "in [0, 1)"),
                               ("dist_timeout_s", lambda v: v > 0, "> 0")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
                flag = "--dist-timeout" if name == "dist_timeout_s" else f"--{name.replace('_', '-')}"
                raise ValueError(f"{name} ({flag}) must be finite and {text}; got {v!r}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """Inverse of ``to_dict``; unknown keys raise ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known: {sorted(names)}")
        return cls(**d)

    @classmethod
    def saved_with_defaults(cls, saved: Dict[str, Any]) -> Dict[str, Any]:
        """A checkpoint's config dict with the fields added since it was written at their defaults (every added
        field's default reproduces the behaviour from before it existed, e.g. ``clip_grad_norm`` 0: no clipping)."""
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        return {**defaults, **saved}

    def save_json(self, path) -> None:
        from .._atomic import atomic_write_bytes
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode())


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def add_training_args(parser: argparse.ArgumentParser, defaults: Optional[TrainConfig] = None,
                      command: str = "train", defaults_text: Optional[str] = None,
                      model_help: Optional[str] = None) -> argparse.ArgumentParser:
    """Add the flags every training command shares (recipe file, model, optimisation, run control) to ``parser``.

    Data flags (``--dataset``, ``--data-root``, ``--num-points`` ...) belong to each command.
    ``defaults`` overrides the recipe defaults shown in ``--help`` and ``defaults_text`` says where they come
    from; ``command`` is the subcommand name a ``--config`` recipe must be written for
    (:mod:`pointcoc.engine.recipes`); ``model_help`` replaces the help of ``--model`` (a command whose default
    is not a registered name says what it means). Returns the parser.
    """
    d = defaults or TrainConfig()
    parser.recipe_command = command
    title = defaults_text or "defaults = the authors' ScanObjectNN recipe for the model"
    g = parser.add_argument_group(f"training ({title})")
    g.add_argument("--config", dest="recipe", default=None, metavar="NAME|PATH",
                   help="a recipe file (TOML): a shipped recipe's name (`pointcoc recipes` lists them) or a path; "
                        "flags given on the command line override its values")
    g.add_argument("--model", default=d.model,
                   help=model_help or "registered model name, see pointcoc.list_models() (default: %(default)s)")
    if defaults is None:
        g.add_argument("--epochs", type=_positive_int, default=None,
                       help="number of epochs (default: the authors' script's for --model: "
                            f"{', '.join(f'{m} {e}' for m, e in AUTHORS_EPOCHS.items())}; others {DEFAULT_EPOCHS})")
    else:
        g.add_argument("--epochs", type=_positive_int, default=d.epochs, help="number of epochs (default: %(default)s)")
    g.add_argument("--batch-size", type=_positive_int, default=d.batch_size,
                   help="global training batch size, split over torchrun processes (default: %(default)s)")
    g.add_argument("--eval-batch-size", type=_positive_int, default=d.eval_batch_size,
                   help="evaluation batch size (default: the training batch size)")
    g.add_argument("--lr", type=float, default=d.lr, help="initial SGD learning rate (default: %(default)s)")
    g.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio,
                   help="cosine schedule ends at lr * this (default: %(default)s, i.e. lr/100)")
    g.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="SGD weight decay (default: %(default)s)")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing,
                   help="label smoothing eps of the cross-entropy, authors' form: true class 1-eps, "
                        "others eps/(C-1) (default: %(default)s)")
    g.add_argument("--clip-grad-norm", type=float, default=d.clip_grad_norm, metavar="MAX",
                   help="before each step, scale the gradients so that their global L2 norm is at most MAX, as the "
                        "authors' ModelNet40 script does with 1 (default: %(default)s, no clipping)")
    g.add_argument("--workers", type=int, default=d.workers,
                   help="DataLoader worker processes; the run is the same for any number (augmentation is seeded "
                        "per sample), so it may also change on --resume (default: %(default)s)")
    g.add_argument("--device", default=d.device,
                   help="'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N' (default: %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed; the same seed gives the same run (default: %(default)s)")
    g.add_argument("--output", default="runs/train", help="output folder for config, metrics, checkpoints, plots (default: %(default)s)")
    g.add_argument("--resume", default=None, metavar="PATH",
                   help="continue exactly from a checkpoint (last.pt): the checkpoint's recorded settings (data, "
                        "model, recipe, output folder, thread count) are the defaults, so no other flag is needed; "
                        "flags given beside it must agree with the checkpoint")
    g.add_argument("--stop-after-epoch", type=_positive_int, default=None, metavar="N",
                   help="stop after epoch N as if interrupted (time-boxed jobs); continue later with --resume")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --output (without it, and without --resume, such a folder is refused)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                   help="mixed precision: float16 autocast on CUDA; bfloat16 autocast on a CPU with AVX512_BF16 or AMX "
                        "(`pointcoc env` says whether this one has them; elsewhere float32, with a warning). On the "
                        "CPU the test metrics stay float32, as `pointcoc evaluate` computes them. --no-amp turns off "
                        "a recipe's amp = true (default: off)")
    g.add_argument("--sync-bn", action="store_true",
                   help="under torchrun, BatchNorm statistics over the global batch instead of each process's share "
                        f"(CUDA only); see {repository_link('docs/training.md')} for what a multi-process run equals")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model for training and evaluation: the same results, but on a CPU (which "
                        "needs a C++ compiler) the first epoch compiles for minutes (322 s for a 64-point "
                        "PointMLP-elite epoch on 2 cores) and recompiles for the last, smaller batch and for "
                        f"evaluation, for no measured speed-up ({repository_link('docs/benchmarks.md')}); "
                        f"inductor/dynamo may log warnings meanwhile ({repository_link('docs/training.md')}). Worth it on a GPU. Checkpoints hold the plain "
                        "model's weights")
    g.add_argument("--limit-train-batches", type=_positive_int, default=d.limit_train_batches,
                   help="train on at most this many batches per epoch (smoke runs)")
    g.add_argument("--limit-val-batches", type=_positive_int, default=d.limit_val_batches,
                   help="evaluate on at most this many batches (smoke runs)")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="hold out this fraction of the training set (stratified) as a validation split that selects "
                        "best.pt; 0 = no validation, the final epoch is the result (default: %(default)s)")
    g.add_argument("--select-on-test", action="store_true",
                   help="PAPER PROTOCOL (optimistic): pick best.pt by test accuracy; results are labelled as such")
    d_ = parser.add_argument_group("several processes (torchrun)")
    d_.add_argument("--dist-timeout", dest="dist_timeout_s", type=float, default=d.dist_timeout_s, metavar="SECONDS",
                    help="how long a process waits for the others to join the group (init_process_group) and in "
                         "any collective before it stops with an error; a process whose torchrun died stops at "
                         "once (default: %(default)s; raise it when one rank may lag far behind, e.g. --compile "
                         "on a slow CPU)")
    d_.add_argument("--allow-world-size-change", action="store_true",
                    help="with --resume: accept a checkpoint written by another number of processes (the data "
                         "order, per-process batch and BatchNorm statistics then change, so the resumed run is "
                         "not the run the checkpoint started); refused with exit 2 without this flag")
    g.add_argument("--allow-data-change", action="store_true",
                   help="with --resume: accept data other than the checkpoint's (checkpoints record each split's "
                        "sample count and a hash of its labels; another --data-root holding other files is "
                        "refused with exit 2 without this flag)")
    add_progress_arg(g)
    return parser


def check_before_data(args: argparse.Namespace, model_name: str, model_kwargs: Dict[str, Any]) -> None:
    """Check every flag and model argument of a training command before any data is read: ValueError naming the
    flag. ``model_kwargs`` are the model's arguments with placeholders for what the data decides (the number
    of classes, channels); the model is built once with them and dropped."""
    from ..models import create_model

    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in its folder and --overwrite replaces a run; give one")
    config_from_args(args, model=model_name, model_kwargs=model_kwargs)
    create_model(model_name, **model_kwargs)


def check_num_classes(model_kwargs: Dict[str, Any], num_classes: int, dataset: str) -> None:
    """A ``num_classes`` in ``--model-kwargs`` must be the data's (ValueError naming both otherwise)."""
    given = model_kwargs.get("num_classes")
    if given is not None and given != num_classes:
        raise ValueError(f"--model-kwargs num_classes {given!r} contradicts the {num_classes} classes of {dataset}; "
                         "leave num_classes out: it is set from the data")


def config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    """Build a TrainConfig from parsed arguments (fields matched by name) plus keyword overrides."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(overrides)
    return TrainConfig(**values)
