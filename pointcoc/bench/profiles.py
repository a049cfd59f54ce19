"""Where a training step's time goes: ``torch.profiler`` tables, ours and the published-layout reference."""
from __future__ import annotations

import time
from typing import Optional

import torch

from .. import ops
from .measure import import_or_skip, machine_description, quiet_profile, synchronize
from .model_rows import MODEL_LABELS, reference_pair, step_inputs, train_step

__all__ = ["profile_train_step", "profile_model_vs_reference", "profile_pixel_step"]


def profile_train_step(name: str, batch: int = 16, n_points: int = 1024, device="cpu", backend=None,
                       row_limit: int = 25, num_classes: int = 15) -> str:
    """Where the time of one training step of model ``name`` goes: ``torch.profiler``'s table by self CPU time.

    One untimed step first (allocations, kernel compilation), then one profiled
    step. ``backend`` forces an ops backend (e.g. "torch") for the step.
    """
    from torch.profiler import ProfilerActivity, record_function

    create_model = import_or_skip("pointcoc", "create_model")
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes).to(device).train()
    xyz, label = step_inputs(batch, n_points, num_classes, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with record_function("forward"):
            logits = model(xyz)
        with record_function("backward"):
            torch.nn.functional.cross_entropy(logits, label).backward()
        optimizer.step()

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
    with ops.use_backend(backend):
        step()
        with quiet_profile(activities=activities, record_shapes=False) as prof:
            step()
            synchronize(device)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit)

# Forward-time sections of a step: which module classes of each model make up each one.
_SECTION_CLASSES = {
    "ours": {"grouping (FPS, kNN, gathers, normalisation)": ("LocalGrouper",),
             "context clusters": ("ContextCluster",),
             "pointwise MLP (linear/conv + BN + ReLU)": ("GroupTransfer", "ResidualPointBlock", "PointwiseLayer")},
    "reference": {"grouping (FPS, kNN, gathers, normalisation)": ("LocalGrouper",),
                  "context clusters": ("GroupContextCluster",),
                  "pointwise MLP (linear/conv + BN + ReLU)": ("ConvBNReLU1D", "ConvBNReLURes1D")},
}

# Whole-step aten ops (forward and backward) by kind, for the profile summary.
_OP_KINDS = [
    ("matrix products / 1x1 convolutions", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
                                            "aten::mkldnn_convolution", "aten::convolution_backward")),
    ("BatchNorm", ("aten::native_batch_norm", "aten::native_batch_norm_backward")),
    ("gathers and their gradients", ("aten::index", "aten::index_select", "aten::index_put_",
                                     "aten::_index_put_impl_", "aten::scatter_add_", "aten::index_add_",
                                     "aten::index_add", "aten::gather", "aten::scatter_add")),
    ("max / topk / sort (FPS loop, kNN, pooling)", ("aten::max", "aten::topk", "aten::sort", "aten::argmax",
                                                    "aten::amax", "aten::adaptive_max_pool2d",
                                                    "aten::adaptive_max_pool2d_backward")),
]


def _label_sections(model: torch.nn.Module, sections: dict) -> list:
    """Wrap the forward of the outermost modules of each section in a ``record_function`` range; returns undo info."""
    from torch.profiler import record_function

    undo = []

    def wrap(module, name):
        # pointcoc's stages call the grouper's steps (index, inverse_std), not its forward
        for method in ("forward", "index", "inverse_std"):
            original = getattr(module, method, None)
            if original is None:
                continue

            def timed_call(*args, _original=original, **kwargs):
                with record_function(name):
                    return _original(*args, **kwargs)

            setattr(module, method, timed_call)
            undo.append((module, method))

    def visit(module):
        for child in module.children():
            name = next((sec for sec, classes in sections.items() if type(child).__name__ in classes), None)
            if name is not None:
                wrap(child, name)  # nested modules of a labelled one are inside its range
            else:
                visit(child)

    visit(model)
    return undo


def profile_model_vs_reference(batch: int = 16, n_points: int = 1024, num_classes: int = 15, device="cpu",
                               row_limit: int = 20, model_kwargs: Optional[dict] = None,
                               name: str = "pointmlp_coc") -> str:
    """Where one training step's time of model ``name`` goes, ours and the published-layout reference.

    For each: the forward time by section (``record_function`` ranges around
    the grouper, the context clusters and the pointwise layers; wall time, so
    the numba FPS/kNN are counted), the whole step's self CPU time by kind of
    op (forward and backward), then ``torch.profiler``'s top ops. One untimed
    step precedes each profiled one. Returns the text.
    """
    from torch.profiler import ProfilerActivity, record_function

    ours, reference, xyz, label = reference_pair(name, batch, n_points, num_classes, device, model_kwargs)
    runs = [("ours", ours, xyz), ("reference", reference, xyz.transpose(1, 2))]
    lines = [f"{MODEL_LABELS[name]} training step, B={batch}, N={n_points}, {num_classes} classes, "
             f"{machine_description(device)}", ""]
    for layout, model, inputs in runs:
        step = train_step(model, inputs, label)
        step()
        undo = _label_sections(model, _SECTION_CLASSES[layout])
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
        start = time.perf_counter()
        with quiet_profile(activities=activities) as prof:
            with record_function("step"):
                step()
            synchronize(device)
        wall = time.perf_counter() - start
        for module, method in undo:
            delattr(module, method)  # back to the class's method
        events = prof.key_averages()
        by_key = {e.key: e for e in events}
        total_self = sum(e.self_cpu_time_total for e in events)
        lines.append(f"== {layout} ({'pointcoc' if layout == 'ours' else 'published layout'}): "
                     f"step {wall:.2f} s wall under the profiler")
        lines.append("forward time by section (wall, inside record_function ranges):")
        for section in _SECTION_CLASSES[layout]:
            e = by_key.get(section)
            lines.append(f"  {section:48s} {0 if e is None else e.cpu_time_total / 1e6:8.3f} s")
        lines.append("whole step, self CPU time by kind of op (forward + backward):")
        counted = 0.0
        for kind, keys in _OP_KINDS:
            t = sum(by_key[k].self_cpu_time_total for k in keys if k in by_key)
            counted += t
            lines.append(f"  {kind:48s} {t / 1e6:8.2f} s  {100 * t / max(total_self, 1):5.1f} %")
        rest = total_self - counted
        lines.append(f"  {'elementwise, reductions, copies, other':48s} {rest / 1e6:8.2f} s  "
                     f"{100 * rest / max(total_self, 1):5.1f} %")
        lines.append(events.table(sort_by="self_cpu_time_total", row_limit=row_limit))
        lines.append("")
    return "\n".join(lines)


def profile_pixel_step(name: str = "pointmlp_coc_pixels", side: int = 28, batch: int = 32, channels: int = 1,
                       brute_force_ops: bool = False, steps: int = 2, num_classes: int = 10) -> dict:
    """One training step of a pixel-set model on full ``side`` x ``side`` images: time and the FPS / kNN share.

    Inputs: every pixel (the "regular" format), ``channels`` random colour channels, B=``batch``.
    ``brute_force_ops``: run FPS and kNN with the brute-force numba kernels (the state before
    issue 21's cell lists), for a before/after comparison in one process. One untimed step, then
    ``steps`` profiled steps.

    Returns:
        dict with ``step_s`` (mean over the profiled steps), ``fps_s`` and ``knn_s`` (their share, from
        the profiler's ``pointcoc::`` custom-op events) and ``top`` (the profiler table, 15 rows).
    """
    from torch.profiler import ProfilerActivity

    from ..ops import numba_backend
    from .ops_rows import pixel_set_batch

    create_model = import_or_skip("pointcoc", "create_model")
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, in_channels=channels).train()
    xyz, lengths = pixel_set_batch("regular", side, side, batch)
    features = torch.rand(batch, xyz.shape[1], channels)
    label = torch.arange(batch) % num_classes
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(xyz, features, lengths), label).backward()
        optimizer.step()

    saved = (dict(numba_backend.CELLS_CROSSOVER), numba_backend.FPS_CELLS_CROSSOVER)
    if brute_force_ops:
        numba_backend.CELLS_CROSSOVER.update({2: 1 << 62, 3: 1 << 62})
        numba_backend.FPS_CELLS_CROSSOVER = 1 << 62
    try:
        step()
        with quiet_profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for _ in range(steps):
                step()
            elapsed = (time.perf_counter() - start) / steps
    finally:
        numba_backend.CELLS_CROSSOVER.update(saved[0])
        numba_backend.FPS_CELLS_CROSSOVER = saved[1]
    events = {e.key: e.cpu_time_total / 1e6 / steps for e in prof.key_averages()}
    return {"model": name, "image": f"{side}x{side}", "channels": channels, "batch": batch, "step_s": elapsed,
            "fps_s": events.get("pointcoc::farthest_point_sample", 0.0), "knn_s": events.get("pointcoc::knn", 0.0),
            "brute_force_ops": brute_force_ops,
            "top": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)}
