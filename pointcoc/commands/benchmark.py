"""Speed and memory of pointcoc against reference implementations, as ratios measured in one process.

    pointcoc benchmark [--quick] [--device cpu|cuda] [--json OUT] [--markdown OUT] [--only fps,knn,...]
    pointcoc benchmark --profile pointmlp_coc [--backend torch]   # where a training step's time goes
    pointcoc benchmark --only model_vs_reference --png step.png   # each model's step vs the published layout
    pointcoc benchmark --only model_vs_reference,memory --models pointmlp_coc --batches 16,32
    pointcoc benchmark --profile-vs-reference 16 --out profile.txt   # both steps profiled side by side
    pointcoc benchmark --only memory   # a training step's peak memory per model and batch, fresh processes
    pointcoc benchmark --only compile   # torch.compile vs eager training step (minutes: it compiles)

Prints a markdown table (paste it into docs/benchmarks.md with the command,
machine and date). See pointcoc/bench/ for what each row compares.
"""
import argparse
import datetime
import sys

import torch

from pointcoc import bench as benchmark
from pointcoc._atomic import check_output_file


def main(argv=None, prog=None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small case per section: checks the plumbing and parity notes, not the numbers for the docs")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="device to measure on (default: %(default)s)")
    parser.add_argument("--json", metavar="OUT", help="also write the rows to this JSON file")
    parser.add_argument("--markdown", metavar="OUT", help="also write the table to this file")
    parser.add_argument("--only", help=f"comma-separated sections from {list(benchmark.SECTIONS)} "
                                       f"(default: all but {', '.join(benchmark.OPT_IN)}, which run only when "
                                       "named here)")
    parser.add_argument("--models", help=f"comma-separated models from {list(benchmark.MODEL_LABELS)} for the "
                                         f"{' and '.join(benchmark.MODEL_SECTIONS)} sections (default: all three; "
                                         "--quick: PointMLP-CoC, resp. PointMLP-elite)")
    parser.add_argument("--batches", help="comma-separated batch sizes for the "
                                          f"{' and '.join(benchmark.MODEL_SECTIONS)} sections, e.g. 16,32 "
                                          "(default: each section's own)")
    parser.add_argument("--profile", metavar="MODEL", help="instead: profile one training step of MODEL (batch 16)")
    parser.add_argument("--backend", help="with --profile: force this ops backend (e.g. torch)")
    parser.add_argument("--profile-vs-reference", type=int, metavar="BATCH",
                        help="instead: profile one PointMLP-CoC training step of pointcoc and of the published-layout "
                             "reference at this batch size (N=1024)")
    parser.add_argument("--out", metavar="TXT", help="with --profile-vs-reference: also write the text here")
    parser.add_argument("--png", metavar="OUT", help="with model_vs_reference rows: bar chart of the step times")
    args = parser.parse_args(argv)
    for flag in ("json", "markdown", "png", "out"):  # before minutes of measuring
        if getattr(args, flag):
            try:
                check_output_file(getattr(args, flag), f"--{flag}")
            except ValueError as err:
                parser.error(str(err))
    if args.profile is not None:
        from pointcoc.models import list_models
        if args.profile not in list_models():
            parser.error(f"--profile {args.profile!r} is no registered model; one of {', '.join(list_models())}")
    if args.profile_vs_reference is not None and args.profile_vs_reference < 1:
        parser.error(f"--profile-vs-reference takes a batch size >= 1; got {args.profile_vs_reference}")
    if args.profile:
        print(benchmark.profile_train_step(args.profile, device=args.device, backend=args.backend))
        return 0
    if args.profile_vs_reference:
        text = benchmark.profile_model_vs_reference(args.profile_vs_reference, device=args.device)
        print(text)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text + "\n")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    only = args.only.split(",") if args.only else None
    models = args.models.split(",") if args.models else None
    try:
        batches = [int(b) for b in args.batches.split(",")] if args.batches else None
    except ValueError:
        parser.error(f"--batches must be comma-separated integers, e.g. 16,32; got {args.batches!r}")
    try:
        rows, skipped = benchmark.run_all(device=args.device, quick=args.quick, only=only, models=models,
                                          batches=batches)
    except ValueError as err:
        parser.error(str(err))
    command = "pointcoc benchmark " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {
        "command": command.strip(),
        "machine": benchmark.machine_description(args.device),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    table = benchmark.to_markdown(rows, skipped, quick=args.quick)
    header = f"`{meta['command']}` on {meta['machine']}, {meta['date']}\n\n"
    print(header + table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(header + table + "\n")
    if args.json:
        benchmark.to_json(rows, args.json, dict(meta, skipped=skipped))
    if args.png and any(r.group in benchmark.STEP_GROUPS.values() for r in rows):
        benchmark.plot_model_vs_reference(rows, args.png)
    return 0

