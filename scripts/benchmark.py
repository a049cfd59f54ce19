#!/usr/bin/env python
"""Speed and memory of pointcoc against reference implementations, as ratios measured in one process.

Thin wrapper over `pointcoc benchmark` (pointcoc/commands/benchmark.py); `--help` lists the options.
"""
import sys

from pointcoc.commands import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
