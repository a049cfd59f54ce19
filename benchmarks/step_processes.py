#!/usr/bin/env python
"""Training-step time of pointcoc now against an older copy, each side in its own processes, alternating.

The memory setting of the ``pointcoc`` commands (:func:`pointcoc.allocator.keep_freed_memory`) is a property
of a whole process, so the two sides cannot share one as in ``benchmarks/step_pair.py``. Here each round
starts one process per side (the older copy first, then this one), each builds the model from seed 0, runs
``--warmup`` untimed training steps and then ``--steps`` timed ones on the same inputs, and reports the
median step time and its peak resident memory; the script prints each round and the median ratio.

    git worktree add /tmp/before 3bc4b4e
    mkdir -p /tmp/before_pkg && cp -r /tmp/before/pointcoc /tmp/before_pkg/pointcoc_before
    grep -rl '"pointcoc::' /tmp/before_pkg/pointcoc_before | xargs sed -i 's/"pointcoc::/"pointcoc_before::/g'
    python benchmarks/step_processes.py --old /tmp/before_pkg --model pointmlp_elite --bf16 --threads 2

Side "before": the older package (``pointcoc_before`` under ``--old``) in float32 with the C library's default
allocation, what that commit's commands did. Side "now": this package, under bfloat16 autocast with ``--bf16``
(``--amp`` on a CPU with AVX512_BF16), with the commands' memory setting unless ``--default-allocation``.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, statistics, sys, time
import torch
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["repo"])
if cfg["old"]:
    sys.path.insert(0, cfg["old"])
    import pointcoc_before as package
else:
    import pointcoc as package
    from pointcoc.allocator import keep_freed_memory
    if cfg["keep"] and not keep_freed_memory():
        sys.exit("keep_freed_memory() is not in effect on this system")
from pointcoc.bench.model_rows import step_inputs, train_step
torch.set_num_threads(cfg["threads"])
torch.manual_seed(0)
model = package.create_model(cfg["model"], num_classes=cfg["classes"])
xyz, label = step_inputs(cfg["batch"], cfg["points"], cfg["classes"], "cpu")
step = train_step(model, xyz, label, torch.bfloat16 if cfg["bf16"] else None)
torch.manual_seed(1)
first_loss = float(step())
for _ in range(cfg["warmup"] - 1):
    step()
times = []
for _ in range(cfg["steps"]):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
print(json.dumps(dict(seconds=statistics.median(times), first_loss=first_loss,
                      peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def run_side(cfg: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"a benchmark process failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the folder that holds the older package as pointcoc_before/")
    parser.add_argument("--model", default="pointmlp_elite")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--num-classes", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="process pairs (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per process, the first included "
                                                             "(default: %(default)s)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per process (default: %(default)s)")
    parser.add_argument("--bf16", action="store_true", help="side 'now' under bfloat16 autocast")
    parser.add_argument("--default-allocation", action="store_true",
                        help="side 'now' without keep_freed_memory (the C library's default allocation)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 1 or args.steps < 1:
        parser.error("--rounds, --warmup and --steps must be >= 1")
    common = dict(repo=str(Path(__file__).resolve().parents[1]), model=args.model, classes=args.num_classes,
                  batch=args.batch, points=args.points, threads=args.threads, warmup=args.warmup, steps=args.steps)
    before = dict(common, old=str(Path(args.old).resolve()), bf16=False, keep=False)
    now = dict(common, old=None, bf16=args.bf16, keep=not args.default_allocation)
    label = ("bf16" if args.bf16 else "float32") + (", default allocation" if args.default_allocation
                                                    else ", freed memory kept")
    ratios = []
    for i in range(args.rounds):
        b, n = run_side(before), run_side(now)
        ratios.append(n["seconds"] / b["seconds"])
        print(f"round {i + 1}: before (float32) {b['seconds']:.3f} s, peak {b['peak_mib']:.0f} MiB, first loss "
              f"{b['first_loss']:.4f} | now ({label}) {n['seconds']:.3f} s, peak {n['peak_mib']:.0f} MiB, first loss "
              f"{n['first_loss']:.4f} | ratio {ratios[-1]:.2f}", flush=True)
    print(f"{args.model} B={args.batch} N={args.points}, {args.threads} threads: now / before step time, median of "
          f"{args.rounds} rounds: {statistics.median(ratios):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
