"""Everything that needs a GPU, in one budgeted run: CUDA tests, FPS/kNN backends, training steps.

    pointcoc gpu-check --out gpu_check_out            # on a GPU machine (make gpu-check)
    pointcoc gpu-check --out /tmp/dry --sizes tiny    # without CUDA: a dry run on the CPU

Writes OUT/gpu_check.json and OUT/gpu_check.md (format: docs/gpu_check.md). Without CUDA the same
sections run on the CPU at reduced sizes and the first line of the markdown says so.
"""
import argparse
import sys

from pointcoc.bench import gpu_check


def main(argv=None, prog=None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None,
                        help="default: cuda when available, else a dry run on the cpu")
    parser.add_argument("--sizes", choices=sorted(gpu_check.SIZES), default=None,
                        help="problem sizes (default: full on cuda, reduced on the cpu; tiny: seconds, for tests)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="time budget of the whole run in seconds: what would not fit is skipped; a compile already "
                             "running may overrun it by a minute (default: %(default)s)")
    parser.add_argument("--only", help=f"comma-separated sections from {list(gpu_check.SECTIONS)} (default: all)")
    args = parser.parse_args(argv)
    if not args.budget_s > 0 or args.budget_s == float("inf"):  # nan and inf too
        parser.error(f"--budget-s must be finite and > 0; got {args.budget_s}")
    command = "pointcoc gpu-check " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        doc = gpu_check.run_gpu_check(args.out, device=args.device, sizes=args.sizes, budget_s=args.budget_s,
                                      only=args.only.split(",") if args.only else None, command=command.strip())
    except ValueError as err:
        parser.error(str(err))
    print(gpu_check.to_markdown(doc))
    return 0

