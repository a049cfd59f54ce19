#!/usr/bin/env python
"""Re-evaluate a training checkpoint on its test set and print OA / mAcc.

    python scripts/evaluate.py runs/coc/last.pt --votes 10
    python scripts/evaluate.py --authors-checkpoint best_checkpoint.pth --model pointmlp_coc   # the authors' weights

Thin wrapper over `pointcoc evaluate` (pointcoc/engine/pointcloud_task.py); `--help` lists every flag.
Exit code 2 (and a message) when the checkpoint or the data is missing or wrong.
"""
import sys

try:
    from pointcoc.commands import main
except KeyboardInterrupt:  # Ctrl-C while torch is imported: one line, exit 130, as the command itself
    print("interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
