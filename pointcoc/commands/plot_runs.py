"""Overlay the training curves of several runs (seeds, models) in one PNG: loss, OA and mAcc against epoch.

    pointcoc plot-runs runs/coc_s0 runs/coc_s1 runs/pm_s0 --output runs.png
    pointcoc plot-runs runs/coc runs/pm --labels PointMLP-CoC PointMLP

Each RUN is a folder written by ``pointcoc train`` or ``pointcoc train-pixels`` (its metrics.jsonl).
Exit code 2 (and a message) when a run has no readable metrics.jsonl or the labels do not fit.
"""
import argparse
import sys
from pathlib import Path

from pointcoc._atomic import check_output_file
from pointcoc.viz.curves import plot_runs


def build_parser(prog=None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder (or its metrics.jsonl)")
    p.add_argument("--labels", nargs="+", default=None, help="one legend label per run (default: the paths)")
    p.add_argument("--title", default="", help="figure title")
    p.add_argument("--output", default="runs.png", help="PNG to write (default: %(default)s)")
    return p


def main(argv=None, prog=None) -> int:
    """Exit code 0 on success, 2 when a run has no readable metrics.jsonl or the labels do not fit."""
    args = build_parser(prog).parse_args(argv)
    try:
        if not Path(args.output).is_dir():  # (plot_runs says what a folder given as --output should be)
            check_output_file(args.output, "--output")  # before the runs are read
        path = plot_runs(args.runs, args.output, args.labels, args.title)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0

