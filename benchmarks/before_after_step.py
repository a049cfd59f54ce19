#!/usr/bin/env python
"""One training step of a pointcoc model now vs an older copy of the package, same parameters, interleaved.

    git worktree add /tmp/before 8514cb4
    mkdir -p /tmp/before_pkg && cp -r /tmp/before/pointcoc /tmp/before_pkg/pointcoc_before
    grep -rl '"pointcoc::' /tmp/before_pkg/pointcoc_before | xargs sed -i 's/"pointcoc::/"pointcoc_before::/g'
    python benchmarks/before_after_step.py --old /tmp/before_pkg --model pointmlp_coc --batch 8 --threads 1

The old copy is imported as ``pointcoc_before`` (the models, layers and ops use relative imports
only; its custom operators are renamed so that both copies can register theirs). Prints the first training loss of each (the same function: they must agree to float
rounding), each pair's step times and the median speed-up (old time / new time).
"""
import argparse
import statistics
import sys
import time

import torch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="folder that holds the old package as pointcoc_before/")
    parser.add_argument("--model", default="pointmlp_coc")
    parser.add_argument("--memory-efficient", action="store_true", help="build the new model memory_efficient")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    sys.path.insert(0, args.old)
    import pointcoc_before  # noqa: E402

    import pointcoc
    from pointcoc.bench.model_rows import train_step

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    new = pointcoc.create_model(args.model, num_classes=15, memory_efficient=args.memory_efficient)
    old = pointcoc_before.create_model(args.model, num_classes=15)
    old.load_state_dict(new.state_dict())
    g = torch.Generator().manual_seed(3)
    xyz = torch.rand(args.batch, 1024, 3, generator=g) * 2 - 1
    label = torch.arange(args.batch) % 15
    step_new, step_old = train_step(new, xyz, label), train_step(old, xyz, label)
    torch.manual_seed(1)
    loss_new = step_new()
    torch.manual_seed(1)
    loss_old = step_old()
    print(f"first loss: now {float(loss_new):.6f}, before {float(loss_old):.6f}")
    pairs = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        step_new()
        middle = time.perf_counter()
        step_old()
        pairs.append((middle - start, time.perf_counter() - middle))
        print(f"pair: now {pairs[-1][0]:.2f} s, before {pairs[-1][1]:.2f} s", flush=True)
    print(f"{args.model}{' (memory_efficient)' if args.memory_efficient else ''}, "
          f"B={args.batch}, {torch.get_num_threads()} threads: now {statistics.median(p[0] for p in pairs):.2f} s, "
          f"before {statistics.median(p[1] for p in pairs):.2f} s, "
          f"speed-up {statistics.median(p[1] / p[0] for p in pairs):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
