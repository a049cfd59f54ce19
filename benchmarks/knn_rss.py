#!/usr/bin/env python
"""Resident memory of repeated self-kNN calls with one backend: does the process grow from call to call?

    python benchmarks/knn_rss.py --points 50000 --calls 50 --backend torch --threads 2

Prints each call's time and the process's RSS after it (from /proc/self/statm, Linux), then the largest RSS over
all calls against the RSS after the first call.
"""
import argparse
import sys
import time

import torch


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=50000)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    from pointcoc.ops import knn

    if args.threads:
        torch.set_num_threads(args.threads)
    xyz = torch.rand(1, args.points, 3, generator=torch.Generator().manual_seed(0))
    rss = []
    for call in range(args.calls):
        start = time.perf_counter()
        knn(xyz, xyz, args.k, backend=args.backend)
        rss.append(rss_mib())
        print(f"call {call + 1}: {time.perf_counter() - start:.2f} s, RSS {rss[-1]:.0f} MiB", flush=True)
    print(f"{args.backend} self-kNN of {args.points} points, k {args.k}, {torch.get_num_threads()} threads: RSS after "
          f"call 1 {rss[0]:.0f} MiB, largest {max(rss):.0f} MiB ({max(rss) / rss[0]:.2f}x) over {args.calls} calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
