#!/usr/bin/env python
"""Train PointMLP / PointMLP-elite / PointMLP-CoC on ScanObjectNN, ModelNet40 or modelnet10.

    python scripts/train_scanobjectnn.py --config scanobjectnn_pointmlp_coc --output runs/coc
    torchrun --nproc_per_node 4 scripts/train_scanobjectnn.py --model pointmlp --output runs/pm

Thin wrapper over `pointcoc train` (pointcoc/engine/pointcloud_task.py); `--help` lists every flag.
Exit code 2 (and a message, no traceback) when data, checkpoint or arguments are wrong.
"""
import sys

try:
    from pointcoc.commands import main
except KeyboardInterrupt:  # Ctrl-C while torch is imported: one line, exit 130, as the command itself
    print("interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
