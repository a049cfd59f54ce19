#!/usr/bin/env python
"""Overlay the training curves of several runs (seeds, models) in one PNG: loss, OA and mAcc against epoch.

Thin wrapper over `pointcoc plot-runs` (pointcoc/commands/plot_runs.py); `--help` lists the options.
"""
import sys

try:
    from pointcoc.commands import main
except KeyboardInterrupt:  # Ctrl-C while torch is imported: one line, exit 130, as the command itself
    print("interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main(["plot-runs", *sys.argv[1:]]))
