"""Benchmark rows for whole models: eval forward and training step, pointcoc vs a reference."""
from __future__ import annotations

import statistics
from typing import Callable, List, Optional

import torch
from tqdm import tqdm

from .. import ops
from .measure import MIN_PAIRS, Row, import_or_skip, median_speedup, peak_memory, random_tensor, time_pair, timed_pairs

__all__ = ["MODEL_LABELS", "STEP_GROUPS", "bench_models", "bench_model_vs_reference", "check_models", "reference_pair",
           "step_inputs", "train_step"]


def bench_models(device="cpu", quick=False, names=("pointmlp", "pointmlp_elite", "pointmlp_coc"),
                 batches=None, n_points=1024, num_classes=15) -> List[Row]:
    """Whole models: eval forward latency and one training step (forward, backward, SGD step).

    "ours" is the default backends; the reference is the same model with the
    pure-torch FPS and kNN forced (``use_backend("torch")``): the published
    design run straightforwardly. Peak memory is measured for the training step.
    """
    create_model = import_or_skip("pointcoc", "create_model")
    batches = batches or ((4,) if quick else (16, 32))
    # The parity check and one untimed step are the warm-up; MIN_PAIRS timed pairs each (a PointMLP
    # step at batch 16 takes about 10 s on 2 cores). Quick: batch 4, no memory profiling.
    repeat, warmup = MIN_PAIRS, 0
    rows = []
    configs = [(name, batch) for name in names for batch in batches]
    for name, batch in tqdm(configs, desc="models", leave=False):
        torch.manual_seed(0)
        model = create_model(name, num_classes=num_classes).to(device)
        xyz, label = step_inputs(batch, n_points, num_classes, device)
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

# The published configurations the reference layout can hold, and their names in row labels.
MODEL_LABELS = {"pointmlp_coc": "PointMLP-CoC", "pointmlp": "PointMLP", "pointmlp_elite": "PointMLP-elite"}
# The row group of each model's training step vs the published layout (:func:`bench_model_vs_reference`).
STEP_GROUPS = {name: f"{label} train step" for name, label in MODEL_LABELS.items()}


def check_models(models) -> None:
    """ValueError unless ``models`` is a non-empty sequence of names from :data:`MODEL_LABELS`."""
    unknown = [m for m in models if m not in MODEL_LABELS]
    if isinstance(models, str) or not models or unknown:
        raise ValueError(f"models must be a non-empty sequence of names from {list(MODEL_LABELS)}; got {models!r}")


def step_inputs(batch: int, n_points: int, num_classes: int, device):
    """(xyz, label) of the benchmarked training steps: xyz (batch, n_points, 3) uniform in [-1, 1) from a fixed
    seed, label (batch,) long cycling through the classes."""
    xyz = random_tensor((batch, n_points, 3), device, 3) * 2 - 1
    return xyz, (torch.arange(batch) % num_classes).to(device)


def reference_pair(name: str, batch: int, n_points: int = 1024, num_classes: int = 15, device="cpu",
                   kwargs: Optional[dict] = None):
    """(ours, reference, xyz, label): pointcoc's model ``name`` and the published layout holding its parameters.

    Args:
        name: one of :data:`MODEL_LABELS` ("pointmlp_coc", "pointmlp", "pointmlp_elite").
        kwargs: overrides for ``create_model`` (e.g. narrower widths in tests).

    Returns:
        ours (seeded with 0), reference (:class:`pointcoc.bench.reference_pointmlp.ReferencePointMLP`),
        xyz (batch, n_points, 3) and label (batch,) from :func:`step_inputs`. ``ours`` takes xyz,
        the reference ``xyz.transpose(1, 2)``.
    """
    from ..models import create_model
    from .reference_pointmlp import reference_from_pointcoc

    check_models([name])
    torch.manual_seed(0)
    ours = create_model(name, num_classes=num_classes, **(kwargs or {})).to(device)
    reference = reference_from_pointcoc(ours, points=n_points)
    return (ours, reference) + step_inputs(batch, n_points, num_classes, device)


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


def bench_model_vs_reference(device="cpu", quick=False, models=tuple(MODEL_LABELS), batches=None, n_points=1024,
                             num_classes=15, repeat=None, model_kwargs: Optional[dict] = None) -> List[Row]:
    """Training step of each model in ``models``: pointcoc vs the straightforward published layout
    (:mod:`pointcoc.bench.reference_pointmlp`), one row "<Model> train step" per model and batch.

    Both hold the same parameters (the reference is loaded from ours, :func:`reference_pair`);
    the first training step's loss is checked equal (same dropout seed), and that step is the
    untimed warm-up. Then ``repeat`` timed pairs of steps, ours and the reference alternately;
    the row's times are the medians and its note the median of the per-pair throughput ratios
    (reference time / our time). Memory is not measured here (``bench_memory`` does, in fresh processes).
    """
    check_models(models)
    batches = batches or ((4,) if quick else (16, 32))
    repeat = repeat or MIN_PAIRS
    rows = []
    for name, batch in tqdm([(m, b) for m in models for b in batches], desc="model vs reference", leave=False):
        ours, reference, xyz, label = reference_pair(name, batch, n_points, num_classes, device, model_kwargs)
        step_ours, step_ref = train_step(ours, xyz, label), train_step(reference, xyz.transpose(1, 2), label)
        torch.manual_seed(1)
        loss_ours = step_ours()
        torch.manual_seed(1)
        loss_ref = step_ref()
        # float32 rounding, amplified by BatchNorm over few samples in small cases (logits of either layout
        # differ from float64 by up to 2e-3 at B=2, N=128); a different function differs by far more
        same = torch.allclose(loss_ours, loss_ref, rtol=1e-3, atol=1e-4)
        pairs = timed_pairs(step_ours, step_ref, device, repeat=repeat, warmup=0)
        note = (f"{median_speedup(pairs):.2f}x throughput (median of {repeat} pairs); first loss "
                f"{'equal' if same else 'DIFFERS'} ({float(loss_ours):.5f} vs {float(loss_ref):.5f})")
        rows.append(Row(STEP_GROUPS[name], f"B={batch}, N={n_points}, {num_classes} classes",
                        "pointcoc", "published layout", statistics.median(p[0] for p in pairs),
                        statistics.median(p[1] for p in pairs), note=note))
        del ours, reference, step_ours, step_ref
    return rows
