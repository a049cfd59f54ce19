#!/usr/bin/env python
"""Training-step time of a model with and without ``memory_efficient`` (same parameters), interleaved pairs.

    python benchmarks/memory_efficient_step.py --model pointmlp_coc --batch 16 --repeat 3

Prints the first training loss of each (the same function: they must agree to float rounding), each
pair's step times and the median slow-down (memory-efficient time / default time). Peak memory:
``python scripts/benchmark.py --only memory``.
"""
import argparse
import statistics
import sys

import torch

import pointcoc
from pointcoc.bench.measure import median_speedup, timed_pairs
from pointcoc.bench.model_rows import step_inputs, train_step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pointmlp_coc")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    default = pointcoc.create_model(args.model, num_classes=15)
    lean = pointcoc.create_model(args.model, num_classes=15, memory_efficient=True)
    lean.load_state_dict(default.state_dict())
    xyz, label = step_inputs(args.batch, 1024, 15, "cpu")
    steps = train_step(default, xyz, label), train_step(lean, xyz, label)
    losses = []
    for step in steps:
        torch.manual_seed(1)
        losses.append(float(step()))
    print(f"first loss: default {losses[0]:.6f}, memory_efficient {losses[1]:.6f}")
    pairs = timed_pairs(*steps, repeat=args.repeat, warmup=0)
    for t_default, t_lean in pairs:
        print(f"pair: default {t_default:.2f} s, memory_efficient {t_lean:.2f} s")
    print(f"{args.model} B={args.batch}, {torch.get_num_threads()} threads: default "
          f"{statistics.median(p[0] for p in pairs):.2f} s, "
          f"memory_efficient {statistics.median(p[1] for p in pairs):.2f} s, "
          f"time ratio {median_speedup(pairs):.2f}x")  # median of memory-efficient time / default time
    return 0


if __name__ == "__main__":
    sys.exit(main())
