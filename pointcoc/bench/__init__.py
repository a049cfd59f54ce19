"""Benchmark harness behind ``pointcoc benchmark`` and ``pointcoc gpu-check``; only ``pointcoc.commands`` imports it.

One module per subject:

* :mod:`.measure` - paired timings, peak memory, :class:`Row`, the machine's name;
* :mod:`.ops_rows` - single ops and layers (FPS, kNN, gather, pointwise layers, context cluster);
* :mod:`.model_rows` - whole models: eval forward, training step of PointMLP, PointMLP-elite and
  PointMLP-CoC, pointcoc vs the published layout;
* :mod:`.memory` - peak memory of a training step, each in a fresh process;
* :mod:`.compile_rows` - ``torch.compile`` against eager, training step (opt-in: ``--only compile``);
* :mod:`.gpu_check` - the one prepared GPU run (``scripts/gpu_check.py``);
* :mod:`.profiles` - where a training step's time goes;
* :mod:`.report` - markdown table, JSON, bar chart;
* :mod:`.reference_pointmlp` - the published layout, re-written: the reference the model rows compare
  against (the float64 parity tests use it too).
"""
from __future__ import annotations

from tqdm import tqdm

from .compile_rows import bench_compile
from .measure import (MIN_PAIRS, Row, SectionUnavailable, machine_description, median_speedup, peak_cpu_memory, peak_memory,
                      synchronize, time_pair, timed, timed_pairs)
from .memory import bench_memory
from .model_rows import (MODEL_LABELS, STEP_GROUPS, bench_model_vs_reference, bench_models, check_models,
                         reference_pair)
from .ops_rows import (bench_context_cluster, bench_fps, bench_fps_large, bench_gather, bench_knn,
                       bench_knn_crossover, bench_knn_density, bench_knn_large, bench_masked_norm, bench_pointwise,
                       bench_transfer)
from .profiles import profile_model_vs_reference, profile_train_step
from .report import QUICK_NOTE, plot_model_vs_reference, to_json, to_markdown

__all__ = [
    "synchronize", "timed", "timed_pairs", "time_pair", "median_speedup", "peak_cpu_memory", "peak_memory", "Row",
    "SectionUnavailable", "bench_fps", "bench_fps_large", "bench_knn", "bench_knn_large", "bench_knn_crossover",
    "bench_knn_density", "bench_gather", "bench_pointwise", "bench_transfer",
    "bench_masked_norm", "bench_context_cluster", "bench_models", "bench_memory", "bench_compile",
    "bench_model_vs_reference", "reference_pair", "profile_model_vs_reference", "plot_model_vs_reference", "run_all",
    "to_markdown", "to_json", "profile_train_step", "machine_description", "SECTIONS", "MODEL_SECTIONS",
    "MODEL_LABELS", "STEP_GROUPS", "MIN_PAIRS", "QUICK_NOTE",
]

SECTIONS = {
    "fps": bench_fps,
    "fps_large": bench_fps_large,
    "knn": bench_knn,
    "knn_large": bench_knn_large,
    "knn_crossover": bench_knn_crossover,
    "knn_density": bench_knn_density,
    "gather": bench_gather,
    "pointwise": bench_pointwise,
    "transfer": bench_transfer,
    "masked_norm": bench_masked_norm,
    "context_cluster": bench_context_cluster,
    "models": bench_models,
    "model_vs_reference": bench_model_vs_reference,
    "memory": bench_memory,
    "compile": bench_compile,
}


# --quick: one small case per section (the earlier quick cases took over 5 minutes on 2 loaded cores).
# Its numbers check the plumbing and the parity notes; the docs quote full runs.
QUICK_CASES = {
    "fps": dict(cases=((8, 1024, 256),)),
    "knn": dict(cases=((8, 256, 1024, 24),)),
    "fps_large": dict(cases=(("uniform 3-D", 5000, 512), ("pixels discrete", 64, 512)), brute=False),
    "knn_large": dict(cases=(("uniform 3-D", 5000, 1.0), ("pixels discrete", 64, 0.5)), brute=False),
    "knn_crossover": dict(sizes=(256, 2048), batch=4),
    "knn_density": dict(grid=32),
    "gather": dict(cases=((8, 512, 64, 256, 24),)),
    "pointwise": dict(cases=((4, 128, 256 * 24),)),
    "transfer": dict(cases=((4, 256, 24, 64),)),
    "masked_norm": dict(cases=((4, 256, 24, 64),)),
    "context_cluster": dict(cases=((1, 3136, 196, 64),)),
    "models": dict(names=("pointmlp_elite",), batches=(2,)),
    # at batch 2 the head's BatchNorm over 2 samples amplifies float32 rounding
    "model_vs_reference": dict(models=("pointmlp_coc",), batches=(4,)),
    "memory": dict(models=("pointmlp_elite",), batches=(2,), memory_efficient=(True,)),
}
# Run only when named in ``only``: compiling takes minutes on a CPU; the large kNN rows time today's brute force
# (seconds per call), the crossover sweep takes a minute, the density sweep a few minutes (up to 1M points).
OPT_IN = ("compile", "fps_large", "knn_large", "knn_crossover", "knn_density")
# Sections whose models and batch sizes ``run_all``'s ``models`` and ``batches`` choose.
MODEL_SECTIONS = ("model_vs_reference", "memory")


def run_all(device="cpu", quick=False, only=None, models=None, batches=None):
    """Run the benchmark sections named in ``only`` (default: all but the OPT_IN ones); ``quick``: the small
    cases of ``QUICK_CASES``.

    ``models`` (names from :data:`MODEL_LABELS`) and ``batches`` (positive ints), when given, replace
    the models and batch sizes of the ``MODEL_SECTIONS``, quick or not.

    Returns:
        (rows, skipped): the measured rows, and {section: reason} for sections
        that could not run here.
    """
    names = [n for n in SECTIONS if n not in OPT_IN] if only is None else list(only)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise ValueError(f"only must name sections from {sorted(SECTIONS)}; got {unknown}")
    if models is not None:
        check_models(models)
    if batches is not None and (not batches or not all(isinstance(b, int) and b > 0 for b in batches)):
        raise ValueError(f"batches must be a non-empty sequence of positive ints; got {batches!r}")
    chosen = {key: value for key, value in (("models", models), ("batches", batches)) if value is not None}
    rows, skipped = [], {}
    for name in tqdm(names, desc="benchmark"):
        kwargs = dict(QUICK_CASES.get(name, {})) if quick else {}
        if name in MODEL_SECTIONS:
            kwargs.update(chosen)
        try:
            rows.extend(SECTIONS[name](device=device, quick=quick, **kwargs))
        except SectionUnavailable as err:
            skipped[name] = str(err)
    return rows, skipped
