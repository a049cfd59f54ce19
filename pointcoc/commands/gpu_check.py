"""Everything that needs a GPU, in one budgeted run: CUDA tests, FPS/kNN backends, training steps.

    pointcoc gpu-check --out gpu_check_out            # on a GPU machine (make gpu-check)
    pointcoc gpu-check --out /tmp/dry --sizes tiny    # without CUDA: a dry run on the CPU
    pointcoc gpu-check --quick                        # first contact with a GPU: pass/fail in under a minute

Writes OUT/gpu_check.json and OUT/gpu_check.md (format: docs/gpu_check.md) and exits 1 when a section failed.
Without CUDA the same sections run on the CPU at reduced sizes and the first line of the markdown says so. The
CUDA tests run only in a source checkout with pytest installed; elsewhere their section is skipped, saying why.

--quick runs every FPS/kNN backend against the torch reference on small sets and one training step of
each model (float32, bf16 autocast), prints a one-screen verdict for a bug report and exits 1 when a
check failed; with --out it also writes OUT/quick_check.{json,txt}.
"""
import argparse
import sys

from pointcoc.bench import gpu_check


def main(argv=None, prog=None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="output folder for gpu_check.json and gpu_check.md (required without --quick; "
                                      "with it: quick_check.json and quick_check.txt)")
    parser.add_argument("--quick", action="store_true",
                        help="the first-contact self-test instead: every backend and one training step of each model, "
                             "pass/fail on one screen, under a minute on a GPU; exit code 1 when a check fails")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None,
                        help="default: cuda when available, else a dry run on the cpu")
    parser.add_argument("--sizes", choices=sorted(gpu_check.SIZES), default=None,
                        help="problem sizes, of the full check or of --quick (default: full on cuda, reduced on the "
                             "cpu; tiny: seconds, for tests)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="time budget of the whole run in seconds: what would not fit is skipped; a compile already "
                             "running may overrun it by a minute (default: %(default)s)")
    parser.add_argument("--only", help=f"comma-separated sections from {list(gpu_check.SECTIONS)} (default: all)")
    args = parser.parse_args(argv)
    if not args.budget_s > 0 or args.budget_s == float("inf"):  # nan and inf too
        parser.error(f"--budget-s must be finite and > 0; got {args.budget_s}")
    command = "pointcoc gpu-check " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.quick:
        if args.only:
            parser.error("--only selects sections of the full check; --quick has none")
        try:
            doc = gpu_check.run_quick_check(device=args.device, sizes=args.sizes, out_dir=args.out,
                                            command=command.strip())
        except ValueError as err:
            parser.error(str(err))
        print(gpu_check.quick_verdict(doc))
        return 0 if doc["passed"] else 1
    if args.out is None:
        parser.error("--out is required (except with --quick)")
    try:
        doc = gpu_check.run_gpu_check(args.out, device=args.device, sizes=args.sizes, budget_s=args.budget_s,
                                      only=args.only.split(",") if args.only else None, command=command.strip())
    except ValueError as err:
        parser.error(str(err))
    print(gpu_check.to_markdown(doc))
    failed = [name for name, section in doc["sections"].items() if section["status"] == "failed"]
    if failed:
        print(f"error: gpu-check sections failed: {', '.join(failed)} (see {args.out}/gpu_check.md)", file=sys.stderr)
        return 1
    return 0

