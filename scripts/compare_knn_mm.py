"""Time the ``mm`` kNN backend and the torch reference against their versions at another git revision, and check
both for exactness (distances) and for the reference's indices (ties to the lowest index).

    python scripts/compare_knn_mm.py --before 4c5f4fe [--repeat 5] [--threads 1]

Each case runs both versions alternately, ``--repeat`` times, and reports the
minimum process CPU time of each (less sensitive to a loaded machine than wall
time), and the share of queries whose distances, resp. indices, differ from the
current torch reference's.
"""
import argparse
import importlib
import importlib.util
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from pointcoc.ops import backends

knn_module = importlib.import_module("pointcoc.ops.knn")
ROOT = Path(__file__).resolve().parents[1]


def load_knn_at(revision: str):
    """pointcoc/ops/knn.py as it was at ``revision``, without touching the backend registry."""
    source = subprocess.run(["git", "show", f"{revision}:pointcoc/ops/knn.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "knn_before.py"
    path.write_text(source)
    saved = dict(backends._REGISTRY["knn"])
    spec = importlib.util.spec_from_file_location("pointcoc.ops._knn_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    backends._REGISTRY["knn"] = saved
    return module


def cases():
    g = torch.Generator().manual_seed(0)
    shift = torch.tensor([500.0, 0, 0])
    far = torch.cat([torch.rand(1, 5000, 3, generator=g) - shift, torch.rand(1, 5000, 3, generator=g) + shift], 1)
    axis = torch.arange(112.0)
    pixels = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(1, -1, 2)
    yield "B=32, M=512, N=1024, k=24, uniform in [-1, 1]^3", torch.rand(32, 512, 3, generator=g) * 2 - 1, \
        torch.rand(32, 1024, 3, generator=g) * 2 - 1, 24
    yield "B=8, M=2048, N=8192, k=24, uniform in [-1, 1]^3", torch.rand(8, 2048, 3, generator=g) * 2 - 1, \
        torch.rand(8, 8192, 3, generator=g) * 2 - 1, 24
    yield "B=1, M=N=10000, k=16, two unit cubes at x = +-500", far, far, 16
    yield "B=1, M=N=12544, k=16, 112x112 pixel grid in pixels", pixels, pixels, 16


def cpu_ms(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git revision of the older pointcoc/ops/knn.py")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before = load_knn_at(args.before)
    print("| case | mm before ms | mm now ms | now / before | torch reference before ms | now ms | now / before "
          "| rows wrong before | rows wrong now | rows with other indices before | now |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, query, points, k in cases():
        lengths = (torch.full((query.shape[0],), query.shape[1]), torch.full((points.shape[0],), points.shape[1]))
        call = {v: (lambda f=f: f(query, points, k, *lengths)) for v, f in
                (("before", before.knn_mm), ("now", knn_module.knn_mm), ("ref_before", before.knn_torch),
                 ("ref", knn_module.knn_torch))}
        ref = call["ref"]()
        outs = {v: call[v]() for v in ("before", "now")}
        wrong = {v: (o.dist2 != ref.dist2).any(-1).float().mean().item() for v, o in outs.items()}
        # the reference now keeps the lowest indices among equal distances, as every backend must
        other = {v: (o.idx != ref.idx).any(-1).float().mean().item() for v, o in outs.items()}
        best = dict.fromkeys(call, float("inf"))
        for _ in range(args.repeat):  # alternate, so that all see the same load
            for v in call:
                best[v] = min(best[v], cpu_ms(call[v], 1))
        print(f"| {name} | {best['before']:.0f} | {best['now']:.0f} | {best['now'] / best['before']:.2f} | "
              f"{best['ref_before']:.0f} | {best['ref']:.0f} | {best['ref'] / best['ref_before']:.2f} | "
              f"{wrong['before']:.1%} | {wrong['now']:.1%} | {other['before']:.1%} | {other['now']:.1%} |",
              flush=True)


if __name__ == "__main__":
    main()
