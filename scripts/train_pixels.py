#!/usr/bin/env python
"""Train PointMLP / PointMLP-CoC on images as pixel sets.

    python scripts/train_pixels.py --dataset digits --format discrete --keep 0.5
    python scripts/train_pixels.py --dataset mnist5k --format irregular --keep 0.5 --epochs 30 --output runs/mnist_irr
    python scripts/train_pixels.py --dataset modelnet_depth --format rgbd --output runs/mn_rgbd

Run with --help for every flag. Exit code 2 (and a message, no traceback) when data, checkpoint or
arguments are wrong.
"""
import sys

try:
    from pointcoc.engine.pixel_task import build_train_parser, run_cli, train_main
except KeyboardInterrupt:  # Ctrl-C while torch is imported: one line, exit 130, as run_cli
    print("interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(run_cli(train_main, build_train_parser()))
