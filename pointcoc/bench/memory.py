"""Peak memory of one training step, each measured in a fresh process: pointcoc vs the published layout.

On the CPU the peak is the process's resident-memory high-water mark during
the step (``VmHWM``) minus its resident memory just before it (``VmRSS``):
what the step adds, whatever allocates it (torch, numba, the allocator's
slack). On CUDA it is ``torch.cuda.max_memory_allocated`` minus the memory
allocated before the step. A fresh process per measurement keeps one
measurement's freed-but-cached memory out of the next.

One measurement prints one JSON line (what :func:`fresh_process_peak` runs)::

    python -c "import sys; from pointcoc.bench.memory import main; sys.exit(main())" \
        --model pointmlp_coc --batch 8 --layout ours [--memory-efficient]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

from ..ops import farthest_point_sample, knn
from .measure import Row, peak_cpu_memory, synchronize
from .model_rows import check_models, step_inputs, train_step

__all__ = ["step_peak_memory", "fresh_process_peak", "bench_memory"]

LAYOUTS = ("ours", "published")


def _proc_status_bytes(field: str) -> int:
    """``field`` (e.g. "VmRSS", "VmHWM") of /proc/self/status in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field} line")


def step_peak_memory(model: str, batch: int, layout: str = "ours", n_points: int = 1024, num_classes: int = 15,
                     device="cpu", memory_efficient: bool = False, tensor_peak: bool = False) -> Dict[str, float]:
    """Peak extra memory of one training step (forward, cross-entropy, backward, SGD with momentum), in this process.

    Args:
        model: a registered pointcoc model name (``pointmlp``, ``pointmlp_elite``, ``pointmlp_coc``).
        layout: "ours" (the pointcoc model) or "published" (:mod:`pointcoc.bench.reference_pointmlp`
            holding the same parameters).
        memory_efficient: build the pointcoc model with ``memory_efficient=True`` (layout "ours" only).
        tensor_peak: on the CPU, also run a second step under ``torch.profiler`` and report the
            largest amount of memory its tensors held (:func:`~pointcoc.bench.measure.peak_cpu_memory`):
            what the step needs, without the C allocator's retained or fragmented memory.

    For layout "ours" the FPS/kNN kernels are loaded (numba's compiled code, about 60 MiB, once per
    process) by a call on a tiny input before the base is read: a per-process cost, not a step's.

    Returns:
        {"peak_bytes": what the step adds at its peak, "step_s": the step's wall time, and with
        ``tensor_peak`` "tensor_peak_bytes"}. Call it once per fresh process
        (:func:`fresh_process_peak`): the high-water mark never goes down.
    """
    from ..models import create_model
    from .reference_pointmlp import reference_from_pointcoc

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    if memory_efficient and layout != "ours":
        raise ValueError("memory_efficient applies to layout 'ours' only")
    device = torch.device(device)
    torch.manual_seed(0)
    net = create_model(model, num_classes=num_classes, **({"memory_efficient": True} if memory_efficient else {}))
    net = net.to(device)
    xyz, label = step_inputs(batch, n_points, num_classes, device)
    if layout == "published":
        net, xyz = reference_from_pointcoc(net, points=n_points), xyz.transpose(1, 2).contiguous()
    step = train_step(net, xyz, label)
    if layout == "ours":
        tiny = xyz.new_zeros(1, 8, 3) + torch.arange(8, dtype=xyz.dtype, device=device)[None, :, None]
        knn(tiny[:, farthest_point_sample(tiny, 4)[0]], tiny, 2)
    if device.type == "cuda":
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        base = _proc_status_bytes("VmRSS")
    start = time.perf_counter()
    step()
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _proc_status_bytes("VmHWM")
    result = {"peak_bytes": peak - base, "step_s": seconds}
    if tensor_peak and device.type == "cpu":
        result["tensor_peak_bytes"] = peak_cpu_memory(step)
    return result


def fresh_process_peak(model: str, batch: int, layout: str = "ours", n_points: int = 1024, device="cpu",
                       memory_efficient: bool = False, threads: Optional[int] = None,
                       tensor_peak: bool = False) -> Dict[str, float]:
    """:func:`step_peak_memory` run in a new Python process (this package, same interpreter)."""
    command = [sys.executable, "-c", "import sys; from pointcoc.bench.memory import main; sys.exit(main())",
               "--model", model, "--batch", str(batch), "--layout", layout, "--points", str(n_points),
               "--device", str(device)]
    if memory_efficient:
        command.append("--memory-efficient")
    if threads:
        command += ["--threads", str(threads)]
    if tensor_peak:
        command.append("--tensor-peak")
    root = str(Path(__file__).resolve().parents[2])  # the folder that holds this copy of pointcoc
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement {' '.join(command[3:])} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_memory(device="cpu", quick=False, models: Sequence[str] = ("pointmlp", "pointmlp_elite", "pointmlp_coc"),
                 batches: Optional[Sequence[int]] = None, n_points: int = 1024,
                 memory_efficient: Sequence[bool] = (False, True),
                 tensor_peak_batches: Optional[Sequence[int]] = None) -> List[Row]:
    """Peak memory of a training step per model and batch: pointcoc vs the published layout, fresh processes.

    One row per (model, batch, pointcoc variant): the published layout is
    measured once per (model, batch), each pointcoc variant (default and
    ``memory_efficient``) right after it. The rows' times are those of the
    single measured step (first step of a fresh process: indicative only; the
    ``model_vs_reference`` rows time steps properly). At the batch sizes in
    ``tensor_peak_batches`` (default: the smallest) the note also gives the peak
    memory held by tensors (a second, profiled step; CPU only).
    """
    check_models(models)
    batches = batches or (8, 16, 32)
    tensor_peak_batches = (min(batches),) if tensor_peak_batches is None else tuple(tensor_peak_batches)
    cpu = torch.device(device).type == "cpu"
    rows = []
    for name in tqdm(models, desc="memory", leave=False):
        for batch in batches:
            tensors = cpu and batch in tensor_peak_batches
            ref = fresh_process_peak(name, batch, "published", n_points, device, tensor_peak=tensors)
            for lean in memory_efficient:
                ours = fresh_process_peak(name, batch, "ours", n_points, device, memory_efficient=lean,
                                          tensor_peak=tensors)
                note = ("fresh process each; peak RSS above start" if cpu
                        else "fresh process each; max_memory_allocated above start")
                if tensors:
                    mib = 2 ** 20
                    note += (f"; tensors' peak {ours['tensor_peak_bytes'] / mib:.1f} vs "
                             f"{ref['tensor_peak_bytes'] / mib:.1f} MiB "
                             f"({ours['tensor_peak_bytes'] / ref['tensor_peak_bytes']:.3f}x)")
                rows.append(Row("train step peak memory", f"{name}, B={batch}, N={n_points}",
                                "pointcoc" + (" memory_efficient" if lean else ""), "published layout",
                                ours["step_s"], ref["step_s"], int(ours["peak_bytes"]), int(ref["peak_bytes"]),
                                note=note))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="One training step's peak memory in this process, as JSON.")
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--layout", choices=LAYOUTS, default="ours")
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-efficient", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tensor-peak", action="store_true", help="also a profiled step's tensor peak (CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = step_peak_memory(args.model, args.batch, args.layout, args.points, device=args.device,
                              memory_efficient=args.memory_efficient, tensor_peak=args.tensor_peak)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
