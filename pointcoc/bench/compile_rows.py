"""Benchmark rows for ``torch.compile``: a compiled training step against the same step in eager mode."""
from __future__ import annotations

import copy
import statistics
from typing import List, Optional

import torch
import torch._inductor.config  # noqa: F401  (fallback_random)
from tqdm import tqdm

from .measure import MIN_PAIRS, Row, import_or_skip, median_speedup, timed, timed_pairs
from .model_rows import step_inputs, train_step

__all__ = ["bench_compile"]


def bench_compile(device="cpu", quick=False, names=None, batch=None, n_points=1024, num_classes=15, repeat=None,
                  backend="inductor", model_kwargs: Optional[dict] = None) -> List[Row]:
    """Training step (forward, cross-entropy, backward, SGD) of each model, ``torch.compile``-d vs eager.

    Models: PointMLP-elite, PointMLP and PointMLP-CoC at batch 16 (quick: PointMLP-CoC at batch 4; compiling
    one model takes minutes of CPU time).

    Two copies of the model with the same parameters. The compiled copy's first
    step compiles; its time is in the note, and its loss is checked against the
    eager copy's first loss (same dropout: inductor's ``fallback_random`` draws
    from torch's generator as eager does). Then ``repeat`` pairs of steps,
    alternating eager and compiled; the row's times are the medians and the
    note gives the median of the per-pair throughput ratios.
    """
    create_model = import_or_skip("pointcoc", "create_model")
    names = names or (("pointmlp_coc",) if quick else ("pointmlp_elite", "pointmlp", "pointmlp_coc"))
    batch = batch or (4 if quick else 16)
    repeat = repeat or (MIN_PAIRS if quick else 5)
    rows = []
    with torch._inductor.config.patch(fallback_random=True):
        for name in tqdm(names, desc="compile vs eager", leave=False):
            torch.manual_seed(0)
            eager = create_model(name, num_classes=num_classes, **(model_kwargs or {})).to(device)
            compiled = torch.compile(copy.deepcopy(eager), backend=backend)
            xyz, label = step_inputs(batch, n_points, num_classes, device)
            step_eager, step_compiled = train_step(eager, xyz, label), train_step(compiled, xyz, label)
            torch.manual_seed(1)
            loss_eager = step_eager()
            torch.manual_seed(1)
            loss_compiled, first = timed(step_compiled, device)
            same = torch.allclose(loss_compiled, loss_eager, rtol=1e-4, atol=1e-5)
            pairs = timed_pairs(step_compiled, step_eager, device, repeat=repeat, warmup=0)
            t_compiled = statistics.median(p[0] for p in pairs)
            t_eager = statistics.median(p[1] for p in pairs)
            note = (f"{median_speedup(pairs):.2f}x throughput (median of {repeat} pairs); "
                    f"compile + first step {first:.0f} s; "
                    f"first loss {'equal' if same else 'DIFFERS'} ({float(loss_compiled):.5f} vs {float(loss_eager):.5f})")
            rows.append(Row("torch.compile train step", f"{name}, B={batch}, N={n_points}", f"compiled ({backend})",
                            "eager", t_compiled, t_eager, note=note))
            del eager, compiled, step_eager, step_compiled
    return rows
