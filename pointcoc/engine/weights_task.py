"""``pointcoc export-weights``: a run's checkpoint as trained weights with a model card, measured on its test split.

    pointcoc export-weights runs/pixels/last.pt --tag my_digits          # into the local cache
    pointcoc export-weights runs/pixels/last.pt --tag digits --out pointcoc/weights   # the shipped ones

The checkpoint's model is evaluated on the test split its config names (the same code as ``pointcoc evaluate``:
one pass, no voting), and ``<model>.<tag>.pt`` (the weights) and ``<model>.<tag>.json`` (the card: data, recipe,
command, seed, measured accuracy, protocol, SHA-256) are written; ``create_model(model, pretrained=tag)`` then
loads them. Exit code 0, or 2 with a message for a bad checkpoint, tag or folder.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path
from typing import Dict

import torch
from torch.utils.data import DataLoader

from .. import __version__ as pointcoc_version
from ..models.pretrained import cache_dir, check_new_weights, file_sha256
from .checkpoint import atomic_write, load_checkpoint
from .cli import HelpFormatter, run_cli
from .config import TrainConfig
from .loop import build_model_from_checkpoint, evaluate
from .pointcloud_task import config_test_set
from .progress import add_progress_arg
from .rundir import writable_folder
from .threads import add_threads_arg, torch_threads

__all__ = ["build_export_parser", "export_main", "model_card", "write_pretrained", "run_cli"]

PROTOCOL = ("weights of the checkpoint's epoch as written by training (last.pt: the final epoch; nothing selected "
            "on the test set unless the run used --select-on-test); accuracy of one pass over the run's test "
            "split, no voting, no test-time augmentation")


# How each data set's test split is drawn (pointcoc.data.image_datasets, pointcoc.data.h5sets, docs/pixels.md).
TEST_SPLITS = {
    "digits": "stratified, 20 % of each class, numpy seed 0 (1,438 train / 359 test)",
    "mnist5k": "stratified, 20 % of each class, numpy seed 0 (4,000 train / 1,000 test)",
    "lfw_faces": "stratified, 25 %, numpy seed 0 (150 train / 50 test)",
    "modelnet_depth": "the first 5 official test shapes of each modelnet10 class, 8 views each (1,600 train / 400 "
                      "test)",
    "modelnet10": "the official ModelNet40 test shapes of the ten ModelNet10 classes (3,991 train / 908 test shapes)",
    "modelnet40": "the official ModelNet40 test split (2,468 shapes: modelnet40_1024_test.h5 or PointNet's "
                  "ply_data_test*.h5)",
    "scanobjectnn": "the authors' test_*.h5 file of the variant",
}


# Sampling and up axis of the point-cloud sets by the layout the data was read from (data/README.md): weights
# trained in one frame misread shapes given in another.
FRAMES = {
    "modelnet40_1024": "PCL surface sampling of the official ModelNet40 meshes (the modelnet40_1024 set), unit sphere, "
                       "z up",
    "modelnet10": "the first 512 points of the modelnet40_1024 shapes (PCL surface sampling), unit sphere, z up",
    "modelnet40_ply_hdf5_2048": "PointNet's modelnet40_ply_hdf5_2048 release, y up",
    "scanobjectnn": "the ScanObjectNN authors' h5 files (real scans)",
}


def data_frame(dataset: str, source: str) -> str:
    """The sampling and up axis of the data a run was measured on, from its name and the data set's ``source``
    line (which names the layout found); "" for pixel sets and unknown layouts."""
    for layout in ("modelnet40_ply_hdf5_2048", "modelnet40_1024"):
        if layout in (source or ""):
            return FRAMES[layout]
    return FRAMES.get(dataset, "")


def write_pretrained(model_name: str, tag: str, state: Dict[str, torch.Tensor], card: Dict, folder) -> Path:
    """Write ``<model>.<tag>.pt`` and its card (``card`` plus model, tag, file and SHA-256) to ``folder``;
    returns the card's path. Both files are written atomically."""
    if not tag or "." in tag or os.sep in tag:
        raise ValueError(f"a tag is a plain name without '.' or '/'; got {tag!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{model_name}.{tag}"
    weights = folder / f"{stem}.pt"
    atomic_write(weights, lambda f: torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, f))
    card = {"tag": stem, "model": model_name, **card, "file": weights.name, "sha256": file_sha256(weights)}
    card_path = folder / f"{stem}.json"
    atomic_write(card_path, lambda f: f.write((json.dumps(card, indent=2, sort_keys=True) + "\n").encode()))
    return card_path


def build_export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Turn a run's checkpoint into trained weights with a model card, "
                                            "measured on its test split.", formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="last.pt / best.pt of a pointcoc run")
    p.add_argument("--tag", required=True, help="name of the weights: create_model(model, pretrained=TAG)")
    p.add_argument("--out", default=None, help="folder to write to (default: the local weights cache, "
                                               "$POINTCOC_WEIGHTS or ~/.cache/pointcoc/weights)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace weights of the same model and tag already in the folder (refused without it)")
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size")
    add_threads_arg(p, default=1)
    add_progress_arg(p, epochs=False)
    return p


def _train_command(cfg: TrainConfig) -> str:
    command = "train-pixels" if (cfg.extra or {}).get("task") == "pixels" else "train"
    if cfg.recipe:
        return f"pointcoc {command} --config {cfg.recipe}"
    return f"pointcoc {command} (flags as in the card's config)"


def model_card(state: dict, metrics: dict, names, full_tag: str, source: str = "") -> dict:
    """The card of a checkpoint's weights (without file name and SHA-256, which ``write_pretrained`` adds);
    ``source`` is the test set's description of where it was read from (its layout: the frame)."""
    cfg = TrainConfig.from_dict(state["config"])
    extra = cfg.extra or {}
    pixels = extra.get("task") == "pixels"
    return {
        "model_kwargs": dict(cfg.model_kwargs),
        "class_names": list(names),
        "data": {
            "dataset": cfg.dataset,
            "format": extra.get("format", "points") if pixels else "points",
            "keep": extra.get("keep", 1.0),
            "redraw_masks": extra.get("redraw_masks"),
            "mask_seed": extra.get("mask_seed"),
            "image_shape": extra.get("image_shape"),
            "num_points": cfg.num_points,
            "test_split": TEST_SPLITS.get(cfg.dataset, "the data set's own test split"),
            "test_samples": metrics["count"],
            "frame": "" if pixels else data_frame(cfg.dataset, source),
        },
        "recipe": cfg.recipe,
        "config": cfg.to_dict(),
        "train_command": _train_command(cfg),
        "seed": cfg.seed,
        "epochs_trained": int(state["epoch"]),
        "metrics": {"oa": metrics["oa"], "macc": metrics["macc"], "loss": metrics["loss"]},
        "protocol": PROTOCOL,
        "evaluate_command": f"pointcoc evaluate --pretrained {full_tag}",
        "measured_with": {"pointcoc": pointcoc_version, "torch": torch.__version__, "python": platform.python_version(),
                          "threads": torch.get_num_threads(),
                          "machine": platform.machine(),
                          "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")},
    }


def _check_out_folder(folder: Path) -> None:
    """Before the evaluation: ``folder`` is a writable folder, or can be created below its nearest existing
    ancestor (ValueError naming ``--out`` otherwise)."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--out {folder}: {existing} is a file, not a folder")
    writable_folder(existing, "--out")


def export_main(args: argparse.Namespace) -> int:
    with torch_threads(args.threads):
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1; got {args.batch_size}")
        if not args.tag or any(c in args.tag for c in "./\\"):
            raise ValueError(f"--tag is a plain name without '.', '/' or '\\'; got {args.tag!r}")
        state = load_checkpoint(args.checkpoint)
        cfg = TrainConfig.from_dict(state["config"])
        full_tag = f"{cfg.model}.{args.tag}"
        folder = Path(args.out).expanduser() if args.out else cache_dir()
        _check_out_folder(folder)
        check_new_weights(full_tag, folder, args.overwrite)
        test_ds, names, collate = config_test_set(cfg)
        model = build_model_from_checkpoint(state)
        loader = DataLoader(test_ds, batch_size=args.batch_size, shuffle=False, collate_fn=collate)
        metrics = evaluate(model, loader, len(names), "cpu", class_names=names, progress=args.progress)
        card = model_card(state, metrics, names, full_tag, getattr(test_ds, "source", "") or "")
        path = write_pretrained(cfg.model, args.tag, state["model"], card, folder)
    print(f"{full_tag}: OA {metrics['oa']:.2f}%  mAcc {metrics['macc']:.2f}%  ({metrics['count']} test samples); "
          f"wrote {path} and {path.with_suffix('.pt')}")
    return 0

