#!/usr/bin/env python
"""Speed and memory of pointcoc against reference implementations, as ratios measured in one process.

Thin wrapper over `pointcoc benchmark` (pointcoc/commands/benchmark.py); `--help` lists the options.
"""
import sys

try:
    from pointcoc.commands import main
except KeyboardInterrupt:  # Ctrl-C while torch is imported: one line, exit 130, as the command itself
    print("interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
