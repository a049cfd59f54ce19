#!/usr/bin/env python
"""Clustering maps of a trained pixel-set CoC model: one row per image, one panel per context-cluster layer.

Thin wrapper over `pointcoc visualize-clusters` (pointcoc/commands/visualize_clusters.py); `--help` lists the options.
"""
import sys

try:
    from pointcoc.commands import main
except KeyboardInterrupt:  # Ctrl-C while torch is imported: one line, exit 130, as the command itself
    print("interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main(["visualize-clusters", *sys.argv[1:]]))
