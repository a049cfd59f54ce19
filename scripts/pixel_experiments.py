#!/usr/bin/env python
"""The pixel-set experiment: PointMLP-CoC vs PointMLP vs a ConvNet on images with missing pixels.

Every cell (data set x format x model x seed) is one ``scripts/train_pixels.py`` run through the same
package code (:func:`pointcoc.engine.pixel_task.train_main`, i.e. :func:`pointcoc.engine.fit`) with the
same epochs, optimiser and data; the ConvNet gets the same pixel sets rasterised with zeros where pixels
are missing. The seed sets both the training seed and the pixel-mask seed.

    python scripts/pixel_experiments.py --plan digits              # run (or finish) a plan
    python scripts/pixel_experiments.py --plan rgbd --plan mnist5k
    python scripts/pixel_experiments.py --report                   # table + JSON + bar chart only

Resumable: a finished cell (``results.json`` and its last epoch in ``metrics.jsonl``) is skipped, an
interrupted one continues from its ``last.pt``. ``--report`` (also run after every plan) collects every finished cell under ``--runs``
into ``--json`` (all cells), prints the markdown table (mean ± std over seeds) and writes it to
``--table`` and the bar chart to ``--png``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from tqdm.auto import tqdm

from pointcoc.engine.pixel_task import build_train_parser, train_main

SMALL = ("pointmlp_coc_pixels_small", "pointmlp_pixels_small", "convnet_pixels_small")
FULL = ("pointmlp_coc_pixels", "pointmlp_pixels", "convnet_pixels")
MODEL_LABELS = {"pointmlp_coc": "PointMLP-CoC", "pointmlp": "PointMLP", "convnet": "ConvNet (zeros)"}

# Budgeted for a 2-core shared CPU (see docs/results.md for the timings that set them).
PLANS: Dict[str, dict] = {
    "digits": dict(dataset="digits", models=SMALL, seeds=(0, 1, 2), epochs=8,
                   formats=(("regular", 1.0), ("discrete", 0.5), ("discrete", 0.25), ("masked", 0.5),
                            ("irregular", 0.5))),
    "rgbd": dict(dataset="modelnet_depth", models=FULL, seeds=(0,), epochs=5,
                 formats=(("regular", 1.0), ("rgbd", 1.0))),
    "mnist5k": dict(dataset="mnist5k", models=FULL, seeds=(0,), epochs=3, formats=(("discrete", 0.1),)),
    # the same digits cells with a longer budget (run with --runs runs/pixel_experiments_e30)
    "digits_long": dict(dataset="digits", models=SMALL, seeds=(0,), epochs=30,
                        formats=(("regular", 1.0), ("discrete", 0.5))),
    # Full-resolution mnist5k (issue 21): every pixel or half of them, 5 epochs, seed 0; PointMLP-CoC and the
    # ConvNet in two plans so that they can run side by side (runs/pixel_experiments_full)
    "mnist5k_full_coc": dict(dataset="mnist5k", models=("pointmlp_coc_pixels",), seeds=(0,), epochs=5,
                             formats=(("regular", 1.0), ("discrete", 0.5), ("masked", 0.5), ("irregular", 0.5))),
    "mnist5k_full_convnet": dict(dataset="mnist5k", models=("convnet_pixels",), seeds=(0,), epochs=5,
                                 formats=(("regular", 1.0), ("discrete", 0.5), ("masked", 0.5), ("irregular", 0.5))),
    # 30 epochs with a new training mask every epoch (train_pixels.py's own default; runs/pixel_experiments_redraw)
    "digits_redraw": dict(dataset="digits", models=SMALL, seeds=(0,), epochs=30, formats=(("discrete", 0.5),),
                          train_args=("--redraw-masks",)),
}


def cell_name(dataset: str, model: str, fmt: str, keep: float, seed: int) -> str:
    return f"{dataset}/{fmt}{int(round(keep * 100))}/{model}/seed{seed}"


def plan_cells(plan: dict) -> List[dict]:
    """Every (dataset, format, keep, model, seed, epochs) of a plan, formats outermost."""
    train_args = list(plan.get("train_args", ()))
    return [dict(dataset=plan["dataset"], fmt=fmt, keep=keep, model=model, seed=seed, epochs=plan["epochs"],
                 train_args=train_args)
            for fmt, keep in plan["formats"] for seed in plan["seeds"] for model in plan["models"]]


# The recipe of every cell, pinned here so later changes of train_pixels.py defaults do not mix into a grid:
# SGD lr 0.05 with cosine decay to lr/100, weight decay 1e-4, label smoothing 0.1, batch 32, one fixed
# pixel mask per image (no redraw), the final epoch as the result (no validation split).
RECIPE = ["--lr", "0.05", "--min-lr-ratio", "0.01", "--weight-decay", "1e-4", "--momentum", "0.9",
          "--label-smoothing", "0.1", "--batch-size", "32", "--no-redraw-masks", "--val-fraction", "0"]


def train_argv(cell: dict, output: Path, extra: List[str]) -> List[str]:
    """Command-line arguments of scripts/train_pixels.py for one cell: the cell, RECIPE, then ``extra``."""
    argv = RECIPE + ["--dataset", cell["dataset"], "--format", cell["fmt"], "--model", cell["model"],
            "--epochs", str(cell["epochs"]), "--seed", str(cell["seed"]), "--mask-seed", str(cell["seed"]),
            "--device", "cpu", "--workers", "0", "--output", str(output)]
    if cell["fmt"] not in ("regular", "rgbd"):
        argv += ["--keep", str(cell["keep"])]
    if (output / "last.pt").is_file():
        argv += ["--resume", str(output / "last.pt")]
    else:  # a cell killed before its first checkpoint starts again
        argv += ["--overwrite"]
    return argv + list(cell.get("train_args", ())) + extra


def finished(out: Path, epochs: int) -> bool:
    """A cell is done when it has results.json and metrics.jsonl logged its last epoch."""
    metrics = out / "metrics.jsonl"
    if not (out / "results.json").is_file() or not metrics.is_file():
        return False
    lines = [line for line in metrics.read_text().splitlines() if line.strip()]
    return bool(lines) and json.loads(lines[-1])["epoch"] >= epochs


def run_cells(cells: List[dict], runs: Path, extra: List[str] = ()) -> None:
    """Train every unfinished cell (continuing from its last.pt where one exists)."""
    todo = [c for c in cells if not finished(runs / cell_name(**_key(c)), c["epochs"])]
    print(f"{len(cells) - len(todo)} of {len(cells)} cells already done", flush=True)
    parser = build_train_parser()
    for cell in tqdm(todo, desc="cells", file=sys.stderr):
        out = runs / cell_name(**_key(cell))
        out.mkdir(parents=True, exist_ok=True)
        (out / "cell.json").write_text(json.dumps(cell) + "\n")
        train_main(parser.parse_args(train_argv(cell, out, list(extra))))


def _key(cell: dict) -> dict:
    return {k: cell[k] for k in ("dataset", "model", "fmt", "keep", "seed")}


def collect(runs) -> List[dict]:
    """One record per finished cell under ``runs`` (a folder or a list of them): cell.json + results.json + times."""
    roots = [Path(runs)] if isinstance(runs, (str, Path)) else [Path(r) for r in runs]
    records = []
    for res in sorted(p for root in roots for p in root.glob("*/*/*/seed*/results.json")):
        if not finished(res.parent, json.loads((res.parent / "cell.json").read_text())["epochs"]):
            continue
        cell = json.loads((res.parent / "cell.json").read_text())
        result = json.loads(res.read_text())
        times = [json.loads(line)["train_time_s"] for line in (res.parent / "metrics.jsonl").read_text().split("\n")
                 if line.strip()]
        records.append({**cell, "test_oa": result["test_oa"], "test_macc": result["test_macc"],
                        "epoch": result["epoch"], "protocol": result["protocol"],
                        "train_time_s": float(np.sum(times))})
    return records


def family(model: str) -> str:
    """Model name -> its row label key ("pointmlp_coc", "pointmlp" or "convnet")."""
    for key in ("pointmlp_coc", "convnet", "pointmlp"):
        if model.startswith(key):
            return key
    raise ValueError(f"model must be a pointmlp_coc_pixels*, pointmlp_pixels* or convnet_pixels* model; got {model!r}")


def format_label(dataset: str, fmt: str, keep: float) -> str:
    if fmt == "regular":
        return "RGB only (all pixels)" if dataset == "modelnet_depth" else "regular"
    if fmt == "rgbd":
        return "RGB-D (depth as 3rd coordinate + feature)"
    return f"{fmt} {int(round(keep * 100))} %"


def summarize(records: List[dict]) -> List[dict]:
    """Group records by (dataset, format, keep, model family): mean and sample std of test OA over seeds."""
    groups: Dict[tuple, List[dict]] = {}
    for r in records:
        recipe = " ".join(r.get("train_args", []))
        groups.setdefault((r["dataset"], r["fmt"], r["keep"], family(r["model"]), r["epochs"], recipe), []).append(r)
    rows = []
    for (dataset, fmt, keep, fam, epochs, recipe), rs in groups.items():
        oa = np.array([r["test_oa"] for r in rs])
        rows.append(dict(dataset=dataset, fmt=fmt, keep=keep, family=fam, epochs=epochs, recipe=recipe, n=len(rs),
                         seeds=sorted(r["seed"] for r in rs), oa_mean=float(oa.mean()),
                         oa_std=float(oa.std(ddof=1)) if len(rs) > 1 else None,
                         macc_mean=float(np.mean([r["test_macc"] for r in rs])),
                         train_time_s=float(np.mean([r["train_time_s"] for r in rs]))))
    return sorted(rows, key=_row_order)


DATASET_ORDER = ("digits", "mnist5k", "lfw_faces", "modelnet_depth")
FORMAT_ORDER = ("regular", "discrete", "masked", "irregular", "rgbd")


def _row_order(row: dict):
    """Data sets, then formats in PIXEL_FORMATS order (more pixels kept first), then model families."""
    dataset = DATASET_ORDER.index(row["dataset"]) if row["dataset"] in DATASET_ORDER else len(DATASET_ORDER)
    return (dataset, row["dataset"], FORMAT_ORDER.index(row["fmt"]), -row["keep"], row["epochs"], row["recipe"],
            list(MODEL_LABELS).index(row["family"]))


def markdown_table(rows: List[dict]) -> str:
    """Rows (data set, format) x columns (model families): "mean ± std" test OA, best mean in bold."""
    families = [f for f in MODEL_LABELS if any(r["family"] == f for r in rows)]
    header = "| data set | format | epochs | seeds | " + " | ".join(MODEL_LABELS[f] for f in families) + " |"
    lines = [header, "|" + "---|" * (4 + len(families))]
    keys = []
    for r in rows:
        k = (r["dataset"], r["fmt"], r["keep"], r["epochs"], r["recipe"])
        if k not in keys:
            keys.append(k)
    for key in keys:
        dataset, fmt, keep, epochs, recipe = key
        cells = {r["family"]: r for r in rows if (r["dataset"], r["fmt"], r["keep"], r["epochs"], r["recipe"]) == key}
        best = max(r["oa_mean"] for r in cells.values())
        seeds = sorted({n for r in cells.values() for n in [r["n"]]})
        out = []
        for f in families:
            r = cells.get(f)
            if r is None:
                out.append("—")
                continue
            text = f"{r['oa_mean']:.1f}" + (f" ± {r['oa_std']:.1f}" if r["oa_std"] is not None else "")
            out.append(f"**{text}**" if r["oa_mean"] == best else text)
        label = format_label(dataset, fmt, keep) + (f" (`{recipe}`)" if recipe else "")
        lines.append(f"| {dataset} | {label} | {epochs} | {'/'.join(map(str, seeds))} | "
                     + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(rows: List[dict], path: Path) -> Path:
    """Grouped bars: one group per (data set, format), one bar per model family, error bar = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = [f for f in MODEL_LABELS if any(r["family"] == f for r in rows)]
    keys = []
    for r in rows:
        k = (r["dataset"], r["fmt"], r["keep"], r["epochs"], r["recipe"])
        if k not in keys:
            keys.append(k)
    width = 0.8 / max(len(families), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(keys) + 2.5), 4.2))
    for f_i, fam in enumerate(families):
        xs, means, stds = [], [], []
        for k_i, k in enumerate(keys):
            r = next((r for r in rows if (r["dataset"], r["fmt"], r["keep"], r["epochs"], r["recipe"]) == k
                      and r["family"] == fam), None)
            if r is not None:
                xs.append(k_i + (f_i - (len(families) - 1) / 2) * width)
                means.append(r["oa_mean"])
                stds.append(r["oa_std"] or 0.0)
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=MODEL_LABELS[fam])
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([f"{d}\n{format_label(d, f, k).split(' (')[0]}\n{e} epochs" + (f"\n{r.lstrip('-')}" if r else "")
                        for d, f, k, e, r in keys], fontsize=7)
    ax.set_ylabel("test OA (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Pixel sets with missing pixels: test OA, mean ± std over seeds (same data and epochs within a group)",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report(runs, json_path: Path, table_path: Path, png_path: Path) -> str:
    """Collect finished cells, write the all-cells JSON, the markdown table and the bar chart; return the table."""
    records = collect(runs)
    if not records:
        raise ValueError(f"no finished cell (*/*/*/seed*/results.json) under {runs}")
    rows = summarize(records)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"cells": records, "summary": rows}, indent=1) + "\n")
    table = markdown_table(rows)
    table_path.parent.mkdir(parents=True, exist_ok=True)
    table_path.write_text(table)
    bar_chart(rows, png_path)
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--plan", action="append", choices=sorted(PLANS), default=[],
                   help="plan(s) to run: " + "; ".join(f"{k}: {v['dataset']}, {len(plan_cells(v))} cells, "
                                                        f"{v['epochs']} epochs" for k, v in PLANS.items()))
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the plan's seeds")
    p.add_argument("--epochs", type=int, default=None, help="override the plan's epochs")
    p.add_argument("--runs", nargs="+", default=["runs/pixel_experiments"],
                   help="one folder per cell under this; --report collects from every folder given")
    p.add_argument("--json", default="docs/results/pixel_experiments.json", help="all cells + summary")
    p.add_argument("--table", default="docs/results/pixel_experiments.md", help="markdown table")
    p.add_argument("--png", default="docs/images/pixel_experiments.png", help="bar chart")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--report", action="store_true", help="only collect finished cells and write the outputs")
    p.add_argument("train_args", nargs=argparse.REMAINDER,
                   help="after '--': extra scripts/train_pixels.py flags for every cell (e.g. -- --lr 0.05)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = [Path(r) for r in args.runs]
    extra = [a for a in args.train_args if a != "--"]
    if not args.report:
        if not args.plan:
            p.error("give --plan (one or more) or --report")
        if len(runs) != 1:
            p.error(f"running a plan needs one --runs folder; got {len(runs)}")
        for name in args.plan:
            plan = dict(PLANS[name])
            if args.seeds is not None:
                plan["seeds"] = tuple(args.seeds)
            if args.epochs is not None:
                plan["epochs"] = args.epochs
            run_cells(plan_cells(plan), runs[0], extra)
    print(report(runs, Path(args.json), Path(args.table), Path(args.png)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
