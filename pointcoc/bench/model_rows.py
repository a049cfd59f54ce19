"""Benchmark rows for whole models: eval forward and training step, pointcoc vs a reference."""
from __future__ import annotations

import statistics
import time
from typing import Callable, List, Optional

import torch
from tqdm import tqdm

from .. import ops
from .measure import Row, import_or_skip, peak_memory, random_tensor, synchronize, time_pair

__all__ = ["bench_models", "bench_model_vs_reference", "coc_pair", "train_step"]


def bench_models(device="cpu", quick=False, names=("pointmlp", "pointmlp_elite", "pointmlp_coc"),
                 batches=None, n_points=1024, num_classes=15) -> List[Row]:
    """Whole models: eval forward latency and one training step (forward, backward, SGD step).

    "ours" is the default backends; the reference is the same model with the
    pure-torch FPS and kNN forced (``use_backend("torch")``): the published
    design run straightforwardly. Peak memory is measured for the training step.
    """
    create_model = import_or_skip("pointcoc", "create_model")
    batches = batches or ((4,) if quick else (16, 32))
    # The parity check and one untimed step are the warm-up; one timed run each (a PointMLP
    # step at batch 16 takes about 10 s on 2 cores). Quick: batch 4, no memory profiling.
    repeat, warmup = 1, 0
    rows = []
    configs = [(name, batch) for name in names for batch in batches]
    for name, batch in tqdm(configs, desc="models", leave=False):
        torch.manual_seed(0)
        model = create_model(name, num_classes=num_classes).to(device)
        xyz = random_tensor((batch, n_points, 3), device, 3) * 2 - 1
        label = torch.randint(0, num_classes, (batch,)).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def forward():
            model.eval()
            with torch.no_grad():
                return model(xyz)

        def step():
            model.train()
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(xyz), label).backward()
            optimizer.step()

        def reference(fn):
            def run():
                with ops.use_backend("torch"):
                    return fn()

            return run

        same = torch.allclose(forward(), reference(forward)(), rtol=1e-4, atol=1e-5)
        case = f"{name}, B={batch}, N={n_points}"
        t_ours, t_ref = time_pair(forward, reference(forward), device, repeat=repeat, warmup=warmup)
        rows.append(Row("model forward (eval)", case, "default backends", "pure-torch FPS/kNN", t_ours, t_ref,
                        note="same logits" if same else "LOGITS DIFFER"))
        step()  # creates the optimizer's momentum buffers outside the timing
        t_ours, t_ref = time_pair(step, reference(step), device, repeat=repeat, warmup=warmup)
        mem_ours = mem_ref = None
        if not quick:
            mem_ours, mem_ref = peak_memory(step, device), peak_memory(reference(step), device)
        rows.append(Row("model train step", case, "default backends", "pure-torch FPS/kNN", t_ours, t_ref,
                        mem_ours, mem_ref, note=f"{batch / t_ours:.2f} vs {batch / t_ref:.2f} samples/s"))
    return rows

def coc_pair(batch: int, n_points: int, num_classes: int, device, kwargs: Optional[dict] = None):
    """(ours, reference, xyz, label): pointcoc's PointMLP-CoC and the published-layout reference with its parameters."""
    from ..models import create_model
    from ..reference_pointmlp import reference_from_pointcoc

    torch.manual_seed(0)
    ours = create_model("pointmlp_coc", num_classes=num_classes, **(kwargs or {})).to(device)
    reference = reference_from_pointcoc(ours, points=n_points)
    xyz = random_tensor((batch, n_points, 3), device, 3) * 2 - 1
    label = (torch.arange(batch) % num_classes).to(device)
    return ours, reference, xyz, label


def train_step(model: torch.nn.Module, inputs, label: torch.Tensor,
               autocast_dtype: Optional[torch.dtype] = None) -> Callable:
    """One SGD step (forward, cross-entropy, backward, update) of ``model`` as a callable returning the loss.

    ``inputs``: a tensor, or a tuple of the model's positional arguments. ``autocast_dtype``
    (e.g. ``torch.bfloat16``): the forward runs under ``torch.autocast`` in that dtype.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    args = inputs if isinstance(inputs, tuple) else (inputs,)

    def step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(label.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(*args)
        loss = torch.nn.functional.cross_entropy(logits.float(), label)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def bench_model_vs_reference(device="cpu", quick=False, batches=None, n_points=1024, num_classes=15,
                             repeat=None, model_kwargs: Optional[dict] = None) -> List[Row]:
    """PointMLP-CoC training step: pointcoc vs the straightforward published layout (:mod:`pointcoc.reference_pointmlp`).

    Both hold the same parameters (the reference is loaded from ours); before
    timing, the first training step's loss is checked equal (same dropout
    seed). Then one untimed step each and ``repeat`` timed steps, alternating
    ours and the reference; the row's times are the medians and its note the
    median of the per-pair throughput ratios (reference time / our time).
    Memory is not measured here (a profiled step at batch 32 holds >10 GB twice).
    """
    batches = batches or ((4,) if quick else (16, 32))
    repeat = repeat or (1 if quick else 3)
    rows = []
    for batch in tqdm(batches, desc="model vs reference", leave=False):
        ours, reference, xyz, label = coc_pair(batch, n_points, num_classes, device, model_kwargs)
        step_ours, step_ref = train_step(ours, xyz, label), train_step(reference, xyz.transpose(1, 2), label)
        torch.manual_seed(1)
        loss_ours = step_ours()
        torch.manual_seed(1)
        loss_ref = step_ref()
        same = torch.allclose(loss_ours, loss_ref, rtol=1e-4, atol=1e-5)
        pairs = []
        for _ in tqdm(range(repeat), desc=f"B={batch} steps", leave=False):
            times = []
            for step in (step_ours, step_ref):
                synchronize(device)
                start = time.perf_counter()
                step()
                synchronize(device)
                times.append(time.perf_counter() - start)
            pairs.append(times)
        t_ours = statistics.median(p[0] for p in pairs)
        t_ref = statistics.median(p[1] for p in pairs)
        speedup = statistics.median(p[1] / p[0] for p in pairs)
        note = (f"{speedup:.2f}x throughput (median of {repeat} pairs); first loss "
                f"{'equal' if same else 'DIFFERS'} ({float(loss_ours):.5f} vs {float(loss_ref):.5f})")
        rows.append(Row("PointMLP-CoC train step", f"B={batch}, N={n_points}, {num_classes} classes",
                        "pointcoc", "published layout", t_ours, t_ref, note=note))
        del ours, reference, step_ours, step_ref
    return rows

