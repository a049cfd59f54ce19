#!/usr/bin/env python
"""Training-step time of a pointcoc model against a baseline holding the same parameters, interleaved pairs.

The baseline is the same model's default build, or with ``--old`` the same model from an older copy of the
package; ``--memory-efficient`` builds the measured model with ``memory_efficient=True``:

    python benchmarks/step_pair.py --model pointmlp_coc --batch 16 --memory-efficient   # vs the default build
    git worktree add /tmp/before bff79d8
    mkdir -p /tmp/before_pkg && cp -r /tmp/before/pointcoc /tmp/before_pkg/pointcoc_before
    grep -rl '"pointcoc::' /tmp/before_pkg/pointcoc_before | xargs sed -i 's/"pointcoc::/"pointcoc_before::/g'
    python benchmarks/step_pair.py --old /tmp/before_pkg --model pointmlp_coc --batch 16   # vs the older code

The old copy is imported as ``pointcoc_before`` (the models, layers and ops use relative imports only; its
custom operators are renamed so that both copies can register theirs). Prints the first training loss of
each (the same function: they must agree to float rounding), each pair's step times, the median time ratio
(measured / baseline) and the median speed-up (baseline / measured).
"""
import argparse
import statistics
import sys

import torch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pointmlp_coc")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--memory-efficient", action="store_true", help="measure the memory_efficient build")
    parser.add_argument("--old", default=None, help="baseline: the folder that holds an older package as "
                                                    "pointcoc_before/ (default: this package's default build)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    import pointcoc
    from pointcoc.bench.measure import median_speedup, timed_pairs
    from pointcoc.bench.model_rows import step_inputs, train_step

    baseline_package, baseline_name = pointcoc, "default"
    if args.old:
        sys.path.insert(0, args.old)
        import pointcoc_before

        baseline_package, baseline_name = pointcoc_before, "before"
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    measured = pointcoc.create_model(args.model, num_classes=15, memory_efficient=args.memory_efficient)
    baseline = baseline_package.create_model(args.model, num_classes=15)
    baseline.load_state_dict(measured.state_dict())
    name = "memory_efficient" if args.memory_efficient else "now"
    xyz, label = step_inputs(args.batch, 1024, 15, "cpu")
    steps = train_step(measured, xyz, label), train_step(baseline, xyz, label)
    losses = []
    for step in steps:
        torch.manual_seed(1)
        losses.append(float(step()))
    print(f"first loss: {name} {losses[0]:.6f}, {baseline_name} {losses[1]:.6f}")
    pairs = timed_pairs(*steps, repeat=args.repeat, warmup=0)
    for t_measured, t_baseline in pairs:
        print(f"pair: {name} {t_measured:.2f} s, {baseline_name} {t_baseline:.2f} s")
    t_measured, t_baseline = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    print(f"{args.model} B={args.batch}, {torch.get_num_threads()} threads: {name} {t_measured:.2f} s, "
          f"{baseline_name} {t_baseline:.2f} s, time ratio {statistics.median(m / b for m, b in pairs):.2f}x, "
          f"speed-up {median_speedup(pairs):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
