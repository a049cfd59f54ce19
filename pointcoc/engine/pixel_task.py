"""Image classification on pixel sets behind ``pointcoc train-pixels``.

``pointcoc train-pixels`` = ``run_cli(train_main, build_train_parser())``: the engine of the point-cloud
script (:func:`pointcoc.engine.fit`: progress bars, checkpoints, resume, metrics, seed, device, torchrun)
on a :class:`~pointcoc.data.pixels.PixelSetDataset` of a real image set. Exit code 0 on success, 2 when
data, checkpoint or arguments are wrong (message, no traceback).

The checkpoint config stores everything needed to rebuild the test set (:func:`pixel_test_set`):
``dataset``, ``data_root`` and ``extra = {"task": "pixels", "format", "keep", "mask_seed", "image_shape"}``.
"""
from __future__ import annotations

import argparse
import copy
from typing import Dict, Optional, Tuple, Union

from torch.utils.data import Subset

from ..data.image_datasets import IMAGE_DATASETS, load_image_dataset
from ..data.pixels import PIXEL_FORMATS, PixelSetDataset, collate_pixel_sets
from .checkpoint import load_checkpoint
from .cli import HelpFormatter, json_dict, run_cli
from .config import TrainConfig, add_training_args, check_before_data, check_num_classes, config_from_args
from .loop import fit, resolve_device, seed_everything, stratified_split
from .rundir import RUN_FILES_TEXT
from .threads import add_threads_arg, torch_threads

__all__ = ["build_train_parser", "train_main", "pixel_datasets", "pixel_test_set", "default_model", "run_cli",
           "collate_pixel_sets", "split_validation", "PIXEL_DEFAULTS", "TEST_MASK_SEED_OFFSET"]

# Defaults of train_pixels.py: sized so that `--dataset digits --format discrete --keep 0.5` trains on two
# CPU cores in a few minutes. Other data sets usually want more epochs (see docs/pixels.md).
PIXEL_DEFAULTS = TrainConfig(model="auto", dataset="digits", variant=None, epochs=30, batch_size=32, lr=0.05,
                             min_lr_ratio=0.01, weight_decay=1e-4, label_smoothing=0.1, workers=0)

# The test set's masks are drawn with mask_seed + this, so test items never share a train item's draw.
TEST_MASK_SEED_OFFSET = 1_000_003


def default_model(dataset: str) -> str:
    """``--model auto``: the small CoC pixel model for 8x8 digits, the 28x28-sized one otherwise."""
    return "pointmlp_coc_pixels_small" if dataset == "digits" else "pointmlp_coc_pixels"


def _keep(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
    return v


def build_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train PointMLP / PointMLP-CoC on images as pixel sets (regular, discrete, masked, irregular "
                    f"or RGB-D). Writes {RUN_FILES_TEXT} to --output.",
        formatter_class=HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=IMAGE_DATASETS, default="digits",
                   help="digits (sklearn 8x8), mnist5k (28x28, shipped), lfw_faces (scikit-image's 25x25, face "
                        "vs non-face; needs the images extra: pip install 'pointcoc[images]'), modelnet_depth (28x28 "
                        "renderings of shapes of the shipped modelnet10 with depth) "
                        "(default: %(default)s)")
    g.add_argument("--data-root", default=None,
                   help="folder of the data set's files (default: the copy shipped in the package, or the one "
                        "scikit-learn / scikit-image bundle)")
    g.add_argument("--format", dest="fmt", choices=PIXEL_FORMATS, default="regular",
                   help="regular: every pixel; discrete: a random --keep fraction; masked: random blocks removed "
                        "down to --keep; irregular: a random ellipse/polygon region of --keep; rgbd: pixels with "
                        "valid depth, depth as 3rd coordinate and extra feature (modelnet_depth only) "
                        "(default: %(default)s)")
    g.add_argument("--keep", type=_keep, default=None,
                   help="fraction of pixels kept by discrete/masked/irregular (default 0.5; must be 1 for "
                        "regular/rgbd)")
    g.add_argument("--mask-seed", type=int, default=0,
                   help="seed of the pixel masks: the test masks (mask_seed + "
                        f"{TEST_MASK_SEED_OFFSET}, one fixed mask per image) and, with --no-redraw-masks, the one "
                        "fixed training mask per image (default: %(default)s)")
    g.add_argument("--redraw-masks", action=argparse.BooleanOptionalAction, default=True,
                   help="draw new training masks every epoch (augmentation; reproducible from --seed and the "
                        "epoch); --no-redraw-masks keeps one mask per image. Test masks are always fixed "
                        "(default: --redraw-masks)")
    add_threads_arg(p, default=1)  # one thread is fastest for these small models on a shared CPU
    d = PIXEL_DEFAULTS
    add_training_args(p, d, command="train-pixels",
                      defaults_text=f"defaults = pointcoc's pixel-set recipe, sized for a CPU: lr {d.lr:g}, "
                                    f"{d.epochs} epochs, label smoothing {d.label_smoothing:g}, "
                                    f"{d.workers or 'no'} workers; `pointcoc recipes` lists other recipes",
                      model_help=f"registered model name, see pointcoc.list_models(), or auto: "
                                 f"{default_model('digits')} for digits, {default_model('other')} otherwise "
                                 f"(default: %(default)s)")
    p.set_defaults(output="runs/pixels")
    p.add_argument("--model-kwargs", type=json_dict, default={},
                   help='JSON object of model constructor overrides, e.g. \'{"k_neighbors": [4, 4]}\'')
    return p


def _resolve_keep(fmt: str, keep: Optional[float]) -> float:
    if fmt in ("regular", "rgbd"):
        if keep not in (None, 1.0):
            raise ValueError(f"--keep applies to discrete, masked and irregular; format {fmt!r} keeps every "
                             f"pixel (got --keep {keep})")
        return 1.0
    return 0.5 if keep is None else keep


def pixel_datasets(dataset: str, fmt: str, keep: float, mask_seed: int = 0, root=None, redraw: bool = False):
    """(train PixelSetDataset, test PixelSetDataset, class_names) of a named image set in a format.

    ``redraw`` makes the training set draw new masks at every access (the test set's stay fixed).

    Raises ValueError when the format needs depth the set does not have.
    """
    splits = load_image_dataset(dataset, root)
    if fmt == "rgbd" and splits.train_depth is None:
        with_depth = [n for n in IMAGE_DATASETS if n == "modelnet_depth"]
        raise ValueError(f"format 'rgbd' needs a data set with depth ({with_depth}); {dataset!r} has none")
    depth = (splits.train_depth, splits.test_depth) if fmt == "rgbd" else (None, None)
    names = splits.class_names
    train = PixelSetDataset(splits.train_images, splits.train_labels, fmt, keep, mask_seed, depth[0], names,
                            redraw=redraw)
    test = PixelSetDataset(splits.test_images, splits.test_labels, fmt, keep, mask_seed + TEST_MASK_SEED_OFFSET,
                           depth[1], names)
    return train, test, names


def pixel_test_set(config: Union[TrainConfig, Dict], root=None) -> Tuple[PixelSetDataset, list]:
    """Rebuild the test set (and class names) of a ``pointcoc train-pixels`` run from its config or checkpoint config."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    extra = cfg.extra or {}
    if extra.get("task") != "pixels":
        raise ValueError(f"config is not from `pointcoc train-pixels` (extra.task = {extra.get('task')!r}, expected 'pixels')")
    _, test, names = pixel_datasets(cfg.dataset, extra["format"], extra["keep"], extra["mask_seed"],
                                    root if root is not None else cfg.data_root)
    return test, names


def split_validation(train: PixelSetDataset, fraction: float, seed: int) -> Tuple[Subset, Subset]:
    """Stratified (train, validation) subsets; validation items keep one fixed mask even when ``train.redraw``."""
    tr_idx, val_idx = stratified_split(train.labels, fraction, seed)
    fixed = copy.copy(train)
    fixed.redraw = False
    return Subset(train, tr_idx), Subset(fixed, val_idx)


def _check_set_sizes(model, train: PixelSetDataset, test: PixelSetDataset, model_name: str) -> None:
    smallest = min(train.smallest_set_size(), test.smallest_set_size())
    need = getattr(model, "min_points", 1)
    if smallest < need:
        raise ValueError(
            f"format {train.fmt!r} with keep {train.keep} gives sets of {smallest} pixels, but model {model_name!r} "
            f"needs at least k_neighbors[0] = {need} points per set; raise --keep or pass a smaller first k, e.g. "
            f"--model-kwargs '{{\"k_neighbors\": [{smallest}, {smallest}]}}' (one entry per stage)")


def train_main(args: argparse.Namespace) -> int:
    """Build data, model and config from parsed args, then ``fit``. Returns 0 (or raises a usage error).

    ``--threads`` applies to this call only; torch's previous thread count is restored afterwards.
    """
    with torch_threads(args.threads):
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    from pointcoc.models import create_model

    resolve_device(args.device)  # an unavailable device stops the run before the data is read
    keep = _resolve_keep(args.fmt, args.keep)
    model_name = default_model(args.dataset) if args.model == "auto" else args.model
    if args.resume:
        load_checkpoint(args.resume)  # a missing or foreign checkpoint stops the run before the data is read
    rgbd = args.fmt == "rgbd"  # placeholders for what the data decides: classes, feature channels, coordinates
    check_before_data(args, model_name, {"num_classes": 2, "in_channels": 2 if rgbd else 1,
                                         "coord_dim": 3 if rgbd else 2, **args.model_kwargs})
    train_ds, test_ds, names = pixel_datasets(args.dataset, args.fmt, keep, args.mask_seed, args.data_root,
                                              redraw=args.redraw_masks)
    check_num_classes(args.model_kwargs, len(names), args.dataset)
    model_kwargs = {"num_classes": len(names), "in_channels": train_ds.feature_dim,
                    "coord_dim": train_ds.point_dim, **args.model_kwargs}
    extra = {"task": "pixels", "format": args.fmt, "keep": keep, "mask_seed": args.mask_seed,
             "redraw_masks": bool(args.redraw_masks),
             "image_shape": [int(s) for s in train_ds.images.shape[1:]]}
    config = config_from_args(args, model=model_name, model_kwargs=model_kwargs, variant=None,
                              num_points=train_ds.height * train_ds.width, extra=extra)
    seed_everything(config.seed)
    model = create_model(model_name, **model_kwargs)
    _check_set_sizes(model, train_ds, test_ds, model_name)
    val_ds = None
    if config.val_fraction > 0:
        train_ds, val_ds = split_validation(train_ds, config.val_fraction, config.seed)
    fit(model, train_ds, test_ds, config, args.output, names, collate_fn=collate_pixel_sets, val_dataset=val_ds,
        resume=args.resume, stop_after_epoch=args.stop_after_epoch, overwrite=args.overwrite,
        progress=args.progress,
        allow_world_size_change=getattr(args, "allow_world_size_change", False),
        allow_data_change=getattr(args, "allow_data_change", False), command=getattr(args, "command", None))
    return 0
