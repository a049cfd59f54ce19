#!/usr/bin/env python
"""Everything that needs a GPU, in one budgeted run: CUDA tests, FPS/kNN backends, training steps.

Thin wrapper over `pointcoc gpu-check` (pointcoc/commands/gpu_check.py); `--help` lists the options;
`--quick` is the first-contact self-test (pass/fail on one screen, under a minute on a GPU).
"""
import sys

try:
    from pointcoc.commands import main
except KeyboardInterrupt:  # Ctrl-C while torch is imported: one line, exit 130, as the command itself
    print("interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main(["gpu-check", *sys.argv[1:]]))
