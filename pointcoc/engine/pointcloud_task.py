"""Point-cloud classification runs (ScanObjectNN, ModelNet40, modelnet10) behind ``pointcoc train`` and
``pointcoc evaluate``.

``pointcoc train`` = ``build_train_parser()`` + ``train_main(args)``;
``pointcoc evaluate`` = ``build_eval_parser()`` + ``evaluate_main(args)``. Both return a
process exit code:
0 on success, 2 when data, checkpoint or arguments are wrong (the message is printed, no traceback).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from torch.utils.data import DataLoader, Subset

from .._links import repository_link
from ..data.augment import PointCloudAugment
from ..data.h5sets import POINT_DATASETS, SCANOBJECTNN_VARIANTS, build_point_datasets, default_num_points
from ..data.pixels import collate_pixel_sets
from ..models.authors import AUTHORS_MODELS
from .checkpoint import load_checkpoint
from .cli import HelpFormatter, USAGE_ERRORS, check_output_file, json_dict, run_cli
from .config import TrainConfig, add_training_args, check_before_data, check_num_classes, config_from_args
from .loop import (build_model_from_checkpoint, collate_point_dicts, evaluate, fit, resolve_device,
                   seed_everything, stratified_split)
from .metrics import format_per_class_table, per_class_table
from .pixel_task import pixel_test_set
from .progress import add_progress_arg
from .rundir import RUN_FILES_TEXT, check_new_run_folder
from .seeds import summarize_seed_runs, write_seed_summary
from .threads import add_threads_arg, torch_threads

__all__ = ["build_train_parser", "train_main", "build_eval_parser", "evaluate_main", "config_test_set", "run_cli",
           "USAGE_ERRORS"]


class _DefaultNumPoints(int):
    """The value of ``--num-points`` when it is not given: 1024, which :func:`_resolve_num_points` replaces by the
    data set's default (512 for modelnet10, which holds no more; :func:`pointcoc.data.h5sets.default_num_points`).
    An int, so parsed arguments compare equal to a recipe's ``num_points = 1024``."""


def _resolve_num_points(args: argparse.Namespace) -> None:
    if isinstance(args.num_points, _DefaultNumPoints):
        args.num_points = default_num_points(args.dataset)


def add_point_data_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Data flags of the point-cloud scripts: --dataset, --data-root, --variant, --num-points."""
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", choices=POINT_DATASETS, default="scanobjectnn",
                   help="scanobjectnn (authors' h5 files), modelnet40 (the full ModelNet40: the repository's "
                        f"{repository_link('data/modelnet40_1024/')}, or PointNet's modelnet40_ply_hdf5_2048) or "
                        "modelnet10 (its ten "
                        "ModelNet10 classes, 512 points, shipped inside the package) (default: %(default)s)")
    g.add_argument("--data-root", default=None,
                   help="folder of the data set. Default: $POINTCOC_DATA/ScanObjectNN/h5_files, then "
                        "./data/ScanObjectNN/h5_files; for modelnet40 $POINTCOC_DATA, ./data (then, run from a "
                        "source checkout, its data/ folder), each with modelnet40_ply_hdf5_2048/ or modelnet40_1024/; "
                        "the copy shipped in the package for modelnet10. For ScanObjectNN the authors' h5_files "
                        "folder or its parent")
    g.add_argument("--variant", default="PB_T50_RS", type=lambda s: s.upper().replace("-", "_"),
                   choices=sorted(SCANOBJECTNN_VARIANTS),
                   help="ScanObjectNN variant (default: %(default)s, the hardest split, "
                        "main_split/*_objectdataset_augmentedrot_scale75.h5)")
    g.add_argument("--num-points", type=int, default=_DefaultNumPoints(1024),
                   help="use the first this many points of each cloud (default: 1024; 512, all it holds, for "
                        "modelnet10)")
    return parser


def build_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train PointMLP / PointMLP-elite / PointMLP-CoC on ScanObjectNN (default), ModelNet40 or the "
                    f"shipped modelnet10. Writes {RUN_FILES_TEXT} to --output. Multi-GPU: torchrun "
                    "--nproc_per_node N -m pointcoc train ...",
        formatter_class=HelpFormatter)
    add_point_data_args(p)
    add_training_args(p)
    add_threads_arg(p)
    p.add_argument("--model-kwargs", type=json_dict, default={},
                   help='JSON object of model constructor overrides, e.g. \'{"embed_dim": 32}\'')
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="train the same configuration once per seed, run s in OUTPUT/seed<s>/, and write the mean "
                        "± std of OA and mAcc to OUTPUT/summary.json and summary.md (replaces --seed)")
    p.add_argument("--memory-efficient", action="store_true",
                   help="build the model with memory_efficient=True: backward recomputes the pre-extraction "
                        "activations instead of storing them; the same results in a fraction of the memory, "
                        f"a slower step ({repository_link('docs/benchmarks.md')})")
    return p


def train_main(args: argparse.Namespace) -> int:
    """Build data, model and config from parsed args, then ``fit`` (once per seed with ``--seeds``) on
    ``--threads`` torch threads.

    Returns 0 (or raises USAGE_ERRORS).
    """
    with torch_threads(args.threads):
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    _resolve_num_points(args)
    if not getattr(args, "seeds", None):
        _train_run(args)
        return 0
    if args.resume or args.stop_after_epoch:
        raise ValueError("--seeds cannot be combined with --resume or --stop-after-epoch; resume one run "
                         "(OUTPUT/seed<s>) with --seed s instead")
    repeated = sorted({s for s in args.seeds if args.seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"--seeds must name each seed once; {repeated} given more than once (a seed gives the same "
                         "run every time)")
    for seed in args.seeds:  # every seed and run folder checked before the first run trains
        config_from_args(argparse.Namespace(**{**vars(args), "seed": seed}),
                         model_kwargs={"num_classes": 2, **args.model_kwargs})
        check_new_run_folder(Path(args.output) / f"seed{seed}", args.overwrite)
    runs = []
    for seed in args.seeds:
        out = str(Path(args.output) / f"seed{seed}")
        results = _train_run(argparse.Namespace(**{**vars(args), "seed": seed, "output": out}))
        runs.append({"seed": seed, "output": out, **results})
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 writes files
        summary = summarize_seed_runs(runs)
        title = f"{args.model} on {args.dataset}, seeds {' '.join(map(str, args.seeds))}"
        write_seed_summary(summary, args.output, title)
        oa, macc = summary["oa"], summary["macc"]
        print(f"SUMMARY over seeds {args.seeds}: OA {oa['mean']:.2f} ± {oa['std']:.2f} %  "
              f"mAcc {macc['mean']:.2f} ± {macc['std']:.2f} %  ({summary['protocol']}; {args.output}/summary.md)")
    return 0


def _train_run(args: argparse.Namespace) -> dict:
    """One training run (``args.seed``, ``args.output``); returns its results dict."""
    from pointcoc.models import create_model

    resolve_device(args.device)  # an unavailable device stops the run before the data is read
    if args.resume:
        load_checkpoint(args.resume)  # a missing or foreign checkpoint stops the run before the data is read
    check_before_data(args, args.model, {"num_classes": 2, "in_channels": 0, "coord_dim": 3, **args.model_kwargs,
                                         **({"memory_efficient": True} if args.memory_efficient else {})})
    train_ds, test_ds, names = build_point_datasets(args.dataset, args.data_root, args.variant, args.num_points,
                                                    augment=PointCloudAugment())
    check_num_classes(args.model_kwargs, len(names), args.dataset)
    if train_ds.source and int(os.environ.get("RANK", "0")) == 0:
        print(f"data: {train_ds.source}", flush=True)
    model_kwargs = {"num_classes": len(names), "in_channels": 0, "coord_dim": 3, **args.model_kwargs}
    if args.memory_efficient:
        model_kwargs["memory_efficient"] = True
    config = config_from_args(args, model_kwargs=model_kwargs)
    val_ds = None
    if config.val_fraction > 0:
        tr_idx, val_idx = stratified_split(train_ds.labels, config.val_fraction, config.seed)
        val_base = build_point_datasets(args.dataset, args.data_root, args.variant, args.num_points)[0]
        train_ds, val_ds = Subset(train_ds, tr_idx), Subset(val_base, val_idx)
    seed_everything(config.seed)
    model = create_model(config.model, **model_kwargs)
    return fit(model, train_ds, test_ds, config, args.output, names, collate_fn=collate_point_dicts,
               val_dataset=val_ds, resume=args.resume, stop_after_epoch=args.stop_after_epoch, overwrite=args.overwrite,
               progress=args.progress,
               allow_world_size_change=getattr(args, "allow_world_size_change", False),
        allow_data_change=getattr(args, "allow_data_change", False), command=getattr(args, "command", None))


def build_eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Re-evaluate a checkpoint written by `pointcoc train` or `pointcoc train-pixels` on its test set, "
                    "or (--authors-checkpoint) one written by the authors' PointMLP / Context-Cluster scripts; "
                    "prints OA, mAcc and a per-class accuracy table.",
        formatter_class=HelpFormatter)
    p.add_argument("checkpoint", nargs="?", default=None, help="last.pt or best.pt of a pointcoc run")
    p.add_argument("--pretrained", default=None, metavar="MODEL.TAG",
                   help="evaluate shipped or cached trained weights instead (`pointcoc weights` lists them) on the "
                        "test split their model card names")
    a = p.add_argument_group("the authors' checkpoints (their main.py's last_checkpoint.pth / best_checkpoint.pth)")
    a.add_argument("--authors-checkpoint", default=None, metavar="PATH",
                   help="evaluate this checkpoint of the authors' scripts instead (see pointcoc.load_authors_checkpoint)")
    a.add_argument("--model", default="pointmlp_coc", choices=AUTHORS_MODELS,
                   help="the model the authors' checkpoint holds")
    a.add_argument("--model-kwargs", type=json_dict, default={},
                   help="JSON object of configuration overrides for a non-published width, e.g. '{\"embed_dim\": 32}'")
    a.add_argument("--dataset", choices=POINT_DATASETS, default="scanobjectnn", help="test set")
    a.add_argument("--variant", default="PB_T50_RS", type=lambda s: s.upper().replace("-", "_"),
                   choices=sorted(SCANOBJECTNN_VARIANTS), help="ScanObjectNN variant")
    a.add_argument("--num-points", type=int, default=_DefaultNumPoints(1024),
                   help="first this many points of each test cloud (default: 1024; 512 for modelnet10)")
    p.add_argument("--votes", type=int, default=1,
                   help="test-time voting: average softmax over the plain pass and votes-1 passes with random "
                        "anisotropic scaling U(0.85, 1.15)")
    p.add_argument("--data-root", default=None, help="data folder (default: the one stored in the checkpoint)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument("--batch-size", type=int, default=32, help="evaluation batch size")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--limit-val-batches", type=int, default=None, help="evaluate at most this many batches")
    p.add_argument("--seed", type=int, default=0, help="seed of the voting transforms")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the metrics as JSON here")
    add_progress_arg(p, epochs=False)
    add_threads_arg(p)
    return p


def evaluate_main(args: argparse.Namespace) -> int:
    """Rebuild model and test set from a checkpoint, evaluate on ``--threads`` torch threads, print OA / mAcc
    and the per-class table. Returns 0."""
    with torch_threads(args.threads):
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    if args.votes < 1 or args.batch_size < 1:
        raise ValueError(f"--votes and --batch-size must be >= 1; got {args.votes}, {args.batch_size}")
    if isinstance(args.seed, bool) or not 0 <= args.seed < 2**63:
        raise ValueError(f"--seed must be an int in [0, 2**63 - 1]; got {args.seed}")
    if (args.limit_val_batches is not None and args.limit_val_batches < 1) or args.workers < 0:
        raise ValueError(f"--limit-val-batches must be >= 1 and --workers >= 0; got {args.limit_val_batches}, "
                         f"{args.workers}")
    if args.json:
        check_output_file(args.json, "--json")
    device = resolve_device(args.device)
    given = [x for x in (args.checkpoint, args.authors_checkpoint, args.pretrained) if x is not None]
    if len(given) != 1:
        raise ValueError("give one of: a pointcoc run's last.pt / best.pt, --authors-checkpoint PATH, "
                         "--pretrained MODEL.TAG")
    if args.authors_checkpoint is not None:
        return _evaluate_authors_checkpoint(args, device)
    if args.pretrained is not None:
        return _evaluate_pretrained(args, device)
    state = load_checkpoint(args.checkpoint)
    cfg = TrainConfig.from_dict(state["config"])
    test_ds, names, collate = config_test_set(cfg, args.data_root)
    model = build_model_from_checkpoint(state)
    what = f"checkpoint {args.checkpoint} (epoch {state['epoch']}, model {cfg.model}, {cfg.dataset})"
    return _evaluate_and_report(args, device, model, test_ds, names, collate, what, {"epoch": state["epoch"]})


def config_test_set(cfg: TrainConfig, data_root=None):
    """(test dataset, class names, collate_fn) of the run ``cfg`` describes: a pixel-set run's same pixel sets
    and masks, or a point-cloud run's test clouds. ``data_root`` overrides the config's."""
    if (cfg.extra or {}).get("task") == "pixels":
        test_ds, names = pixel_test_set(cfg, data_root)
        return test_ds, names, collate_pixel_sets
    if cfg.dataset not in POINT_DATASETS:
        raise ValueError(f"the run was trained on {cfg.dataset!r}; `pointcoc evaluate` evaluates "
                         f"{list(POINT_DATASETS)} and pixel-set runs")
    _, test_ds, names = build_point_datasets(cfg.dataset, data_root or cfg.data_root, cfg.variant or "PB_T50_RS",
                                             cfg.num_points)
    return test_ds, names, collate_point_dicts


def _evaluate_pretrained(args: argparse.Namespace, device) -> int:
    """``--pretrained MODEL.TAG``: the weights through create_model, the test split of their model card."""
    from pointcoc.models import create_model

    if "." not in args.pretrained:
        raise ValueError(f"--pretrained takes MODEL.TAG (`pointcoc weights` lists them); got {args.pretrained!r}")
    model = create_model(args.pretrained, pretrained=True)
    card = model.pretrained_cfg["card"]
    test_ds, names, collate = config_test_set(TrainConfig.from_dict(card["config"]), args.data_root)
    what = f"weights {args.pretrained} ({card['data']['dataset']}, {card['data']['format']})"
    return _evaluate_and_report(args, device, model, test_ds, names, collate, what, {"pretrained": args.pretrained})


def _evaluate_authors_checkpoint(args: argparse.Namespace, device) -> int:
    """``--authors-checkpoint``: load it with ``load_authors_checkpoint``, evaluate on ``--dataset``."""
    from pointcoc.models import load_authors_checkpoint

    _resolve_num_points(args)
    _, test_ds, names = build_point_datasets(args.dataset, args.data_root, args.variant, args.num_points)
    model = load_authors_checkpoint(args.authors_checkpoint, args.model, **args.model_kwargs)
    if model.num_classes != len(names):
        raise ValueError(f"the authors' checkpoint has {model.num_classes} classes; {args.dataset} has {len(names)}")
    what = f"authors' checkpoint {args.authors_checkpoint} (model {args.model}, {args.dataset})"
    return _evaluate_and_report(args, device, model.float(), test_ds, names, collate_point_dicts, what,
                                {"model": args.model, "dataset": args.dataset})


def _evaluate_and_report(args, device, model, test_ds, names, collate, what: str, extra: dict) -> int:
    if args.votes > 1 and collate is collate_pixel_sets:
        raise ValueError(f"--votes {args.votes}: test-time voting rescales each axis of a point cloud by U(0.85, 1.15); "
                         "a pixel set's coordinates are its fixed pixel grid, which that vote distorts (it lowered "
                         "the shipped digits weights from 98.3 to 92.8 % OA). Evaluate pixel-set models with --votes 1")
    model = model.to(device)
    loader = DataLoader(test_ds, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                        collate_fn=collate)
    m = evaluate(model, loader, len(names), device, votes=args.votes, limit_batches=args.limit_val_batches,
                 class_names=names, vote_seed=args.seed, progress=args.progress)
    print(f"{what}: OA {m['oa']:.2f}%  mAcc {m['macc']:.2f}%  loss {m['loss']:.4f}  votes {args.votes}  "
          f"({m['count']} samples)")
    rows = per_class_table(m)
    print(format_per_class_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**m, "per_class": rows, "votes": args.votes, **extra,
                       "checkpoint": str(args.checkpoint or args.authors_checkpoint or args.pretrained)}, f)
    return 0
