#!/usr/bin/env python
"""Overlay the training curves of several runs (seeds, models) in one PNG: loss, OA and mAcc against epoch.

    python scripts/plot_runs.py runs/coc_s0 runs/coc_s1 runs/pm_s0 --output runs.png
    python scripts/plot_runs.py runs/coc runs/pm --labels PointMLP-CoC PointMLP

Each RUN is a folder written by train_scanobjectnn.py or train_pixels.py (its metrics.jsonl).
Exit code 2 (and a message) when a run has no readable metrics.jsonl or the labels do not fit.
"""
import argparse
import sys

from pointcoc.viz.curves import plot_runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder (or its metrics.jsonl)")
    p.add_argument("--labels", nargs="+", default=None, help="one legend label per run (default: the paths)")
    p.add_argument("--title", default="", help="figure title")
    p.add_argument("--output", default="runs.png", help="PNG to write (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        path = plot_runs(args.runs, args.output, args.labels, args.title)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
