#!/usr/bin/env python
"""Train PointMLP / PointMLP-CoC on images as pixel sets.

    python scripts/train_pixels.py --dataset digits --format discrete --keep 0.5
    python scripts/train_pixels.py --dataset mnist5k --format irregular --keep 0.5 --epochs 30 --output runs/mnist_irr
    python scripts/train_pixels.py --dataset modelnet_depth --format rgbd --output runs/mn_rgbd

Thin wrapper over `pointcoc train-pixels` (pointcoc/engine/pixel_task.py); `--help` lists every flag.
Exit code 2 (and a message, no traceback) when data, checkpoint or arguments are wrong.
"""
import sys

try:
    from pointcoc.commands import main
except KeyboardInterrupt:  # Ctrl-C while torch is imported: one line, exit 130, as the command itself
    print("interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main(["train-pixels", *sys.argv[1:]]))
