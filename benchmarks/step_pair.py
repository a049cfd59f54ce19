#!/usr/bin/env python
"""Training-step time of a pointcoc model against a baseline holding the same parameters, interleaved pairs.

The baseline is the same model's default build, or with ``--old`` the same model from an older copy of the
package; ``--memory-efficient`` builds the measured model with ``memory_efficient=True``:

    python benchmarks/step_pair.py --model pointmlp_coc --batch 16 --memory-efficient   # vs the default build
    git worktree add /tmp/before bff79d8
    mkdir -p /tmp/before_pkg && cp -r /tmp/before/pointcoc /tmp/before_pkg/pointcoc_before
    grep -rl '"pointcoc::' /tmp/before_pkg/pointcoc_before | xargs sed -i 's/"pointcoc::/"pointcoc_before::/g'
    python benchmarks/step_pair.py --old /tmp/before_pkg --model pointmlp_coc --batch 16   # vs the older code
    python benchmarks/step_pair.py --old /tmp/before_pkg --model pointmlp_elite --batch 32 --bf16 --peak

``--bf16`` runs the measured model's forward under bfloat16 autocast (what ``--amp`` does on a CPU with
AVX512_BF16 or AMX), the baseline in float32. ``--peak`` also counts the step's floating-point operations
(torch's ``FlopCounterMode``) and reports both sides' achieved FLOP/s against the rate of a 2048x2048 float32
and bfloat16 matrix product on the same threads, timed in the same run: the practical peak of the machine.

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
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--num-classes", type=int, default=15)
    parser.add_argument("--bf16", action="store_true", help="measured side under bfloat16 autocast")
    parser.add_argument("--peak", action="store_true", help="FLOP/s of each step against the matmul rate")
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
    measured = pointcoc.create_model(args.model, num_classes=args.num_classes, memory_efficient=args.memory_efficient)
    baseline = baseline_package.create_model(args.model, num_classes=args.num_classes)
    baseline.load_state_dict(measured.state_dict())
    name = ("memory_efficient" if args.memory_efficient else "now") + (" bf16" if args.bf16 else "")
    xyz, label = step_inputs(args.batch, args.points, args.num_classes, "cpu")
    steps = (train_step(measured, xyz, label, torch.bfloat16 if args.bf16 else None),
             train_step(baseline, xyz, label))
    losses = []
    for step in steps:
        torch.manual_seed(1)
        losses.append(float(step()))
    print(f"first loss: {name} {losses[0]:.6f}, {baseline_name} {losses[1]:.6f}")
    flops = step_flops(steps[1]) if args.peak else None
    pairs = timed_pairs(*steps, repeat=args.repeat, warmup=0)
    for t_measured, t_baseline in pairs:
        print(f"pair: {name} {t_measured:.2f} s, {baseline_name} {t_baseline:.2f} s")
    t_measured, t_baseline = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    print(f"{args.model} B={args.batch}, {torch.get_num_threads()} threads: {name} {t_measured:.2f} s, "
          f"{baseline_name} {t_baseline:.2f} s, time ratio {statistics.median(m / b for m, b in pairs):.2f}x, "
          f"speed-up {median_speedup(pairs):.2f}x")
    if flops:
        peaks = {dtype: matmul_rate(dtype) for dtype in (torch.float32, torch.bfloat16)}
        print(f"step: {flops / 1e9:.1f} GFLOP ({flops / args.batch / 1e9:.2f} per sample); 2048x2048 matmul: "
              f"float32 {peaks[torch.float32] / 1e9:.0f} GFLOP/s, bfloat16 {peaks[torch.bfloat16] / 1e9:.0f} GFLOP/s")
        for who, seconds in ((name, t_measured), (baseline_name, t_baseline)):
            rate = flops / seconds
            print(f"{who}: {rate / 1e9:.1f} GFLOP/s = {rate / peaks[torch.float32]:.0%} of the float32 matmul rate, "
                  f"{rate / peaks[torch.bfloat16]:.0%} of the bfloat16 one")
    return 0


def step_flops(step) -> int:
    """Floating-point operations of one call of ``step`` (forward and backward), by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def matmul_rate(dtype: torch.dtype, size: int = 2048, repeat: int = 5) -> float:
    """FLOP/s of a size x size matrix product in ``dtype`` on the current threads (best of ``repeat``)."""
    from pointcoc.bench.measure import timed

    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b
    best = min(timed(lambda: a @ b)[1] for _ in range(repeat))
    return 2 * size ** 3 / best


if __name__ == "__main__":
    sys.exit(main())
