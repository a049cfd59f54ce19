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
import time

import torch

import pointcoc
from pointcoc.bench.model_rows import train_step


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
    g = torch.Generator().manual_seed(3)
    xyz = torch.rand(args.batch, 1024, 3, generator=g) * 2 - 1
    label = torch.arange(args.batch) % 15
    steps = train_step(default, xyz, label), train_step(lean, xyz, label)
    losses = []
    for step in steps:
        torch.manual_seed(1)
        losses.append(float(step()))
    print(f"first loss: default {losses[0]:.6f}, memory_efficient {losses[1]:.6f}")
    pairs = []
    for _ in range(args.repeat):
        times = []
        for step in steps:
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        pairs.append(times)
        print(f"pair: default {times[0]:.2f} s, memory_efficient {times[1]:.2f} s", flush=True)
    print(f"{args.model} B={args.batch}, {torch.get_num_threads()} threads: default "
          f"{statistics.median(p[0] for p in pairs):.2f} s, "
          f"memory_efficient {statistics.median(p[1] for p in pairs):.2f} s, "
          f"time ratio {statistics.median(p[1] / p[0] for p in pairs):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
