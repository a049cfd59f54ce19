#!/usr/bin/env python
"""Train PointMLP / PointMLP-elite / PointMLP-CoC on ScanObjectNN, ModelNet40 or modelnet40_mini.

    python scripts/train_scanobjectnn.py --model pointmlp_coc --output runs/coc
    torchrun --nproc_per_node 4 scripts/train_scanobjectnn.py --model pointmlp --output runs/pm

Run with --help for every flag. Exit code 2 (and a message, no traceback) when data, checkpoint or
arguments are wrong.
"""
import sys

try:
    from pointcoc.engine.pointcloud_task import build_train_parser, run_cli, train_main
except KeyboardInterrupt:  # Ctrl-C while torch is imported: one line, exit 130, as run_cli
    print("interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(run_cli(train_main, build_train_parser()))
