#!/usr/bin/env python
"""Re-evaluate a training checkpoint on its test set and print OA / mAcc.

    python scripts/evaluate.py runs/coc/last.pt --votes 10
    python scripts/evaluate.py --authors-checkpoint best_checkpoint.pth --model pointmlp_coc   # the authors' weights

Exit code 2 (and a message) when the checkpoint or the data is missing or wrong.
"""
import sys

try:
    from pointcoc.engine.pointcloud_task import build_eval_parser, evaluate_main, run_cli
except KeyboardInterrupt:  # Ctrl-C while torch is imported: one line, exit 130, as run_cli
    print("interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(run_cli(evaluate_main, build_eval_parser()))
