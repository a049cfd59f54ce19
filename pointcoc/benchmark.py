"""Timing and memory helpers for ``scripts/benchmark.py``: every number is a ratio
against a reference run in the same process, interleaved, so that a shared and
noisy machine slows both sides alike.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional

import torch
from tqdm import tqdm

from . import ops
from .ops import backends
from .ops.fps import fps_torch

__all__ = [
    "synchronize", "time_pair", "peak_cpu_memory", "peak_memory", "Row",
    "SectionUnavailable", "bench_fps", "bench_knn", "bench_gather", "bench_pointwise", "bench_transfer", "bench_masked_norm", "bench_context_cluster", "bench_models",
    "bench_model_vs_reference", "profile_model_vs_reference", "plot_model_vs_reference",
    "run_all", "to_markdown", "to_json", "profile_train_step", "machine_description", "SECTIONS",
]


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on ``device`` (no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_pair(ours: Callable, reference: Callable, device="cpu", repeat: int = 5, warmup: int = 1):
    """Median wall time of two callables, run alternately ``repeat`` times after ``warmup`` runs each.

    Returns:
        (seconds_ours, seconds_reference), medians over the repeats.
    """
    if repeat < 1 or warmup < 0:
        raise ValueError(f"repeat must be >= 1 and warmup >= 0; got repeat={repeat}, warmup={warmup}")
    for _ in range(warmup):
        ours()
        reference()
    synchronize(device)
    times = ([], [])
    for _ in range(repeat):
        for fn, out in ((ours, times[0]), (reference, times[1])):
            start = time.perf_counter()
            fn()
            synchronize(device)
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def peak_cpu_memory(fn: Callable) -> int:
    """Largest amount of CPU memory held by torch tensors while ``fn()`` runs, in bytes.

    Uses ``torch.profiler`` with ``profile_memory``: each event's own
    allocations minus frees, in time order; the peak of the running sum over the
    memory already held when ``fn`` starts. Memory that does not go through
    torch's allocator (numpy or numba arrays) is not seen.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    deltas = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events())
    held = peak = 0
    for _, delta in deltas:
        held += delta
        peak = max(peak, held)
    return peak


def peak_memory(fn: Callable, device="cpu") -> Optional[int]:
    """Peak extra memory of ``fn()`` on ``device`` in bytes: CUDA allocator statistics, or :func:`peak_cpu_memory`."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    return peak_cpu_memory(fn)


# ---------------------------------------------------------------------------
# Benchmark rows: each compares "ours" with a reference in the same process.


class SectionUnavailable(RuntimeError):
    """A benchmark section cannot run here (a module it measures is missing); the message says why."""


@dataclass
class Row:
    """One measured comparison. Times in seconds (medians), memory in bytes (None: not measured)."""

    group: str
    case: str
    ours: str
    reference: str
    ours_s: float
    ref_s: float
    ours_mem: Optional[int] = None
    ref_mem: Optional[int] = None
    note: str = ""

    @property
    def time_ratio(self) -> float:
        """ours / reference wall time: below 1 means ours is faster."""
        return self.ours_s / self.ref_s

    @property
    def mem_ratio(self) -> Optional[float]:
        if self.ours_mem is None or not self.ref_mem:
            return None
        return self.ours_mem / self.ref_mem


def _import_or_skip(module: str, name: str):
    """``module.name``, or SectionUnavailable when it does not import."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise SectionUnavailable(f"{module}.{name} is not available ({err})") from err


def _rand(shape, device, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g).to(device)


def bench_fps(device="cpu", quick=False, cases=((32, 1024, 512), (8, 8192, 2048))) -> List[Row]:
    """FPS: the default backend vs the plain torch loop (and pytorch3d when importable).

    ``cases``: (B, N, n_samples) triples.
    """
    repeat = 3 if quick else 7
    rows = []
    for batch, n, n_samples in cases:
        xyz = _rand((batch, n, 3), device, 0)
        lengths = torch.full((batch,), n, dtype=torch.long, device=device)
        start = torch.zeros(batch, dtype=torch.long, device=device)
        ours_name = backends.resolve("fps", xyz.device).name
        ours = lambda: ops.farthest_point_sample(xyz, n_samples)  # noqa: E731
        ref = lambda: fps_torch(xyz, n_samples, lengths, start)  # noqa: E731
        same = bool(torch.equal(ours(), ref()))
        t_ours, t_ref = time_pair(ours, ref, device, repeat=repeat)
        case = f"B={batch}, N={n} -> {n_samples}"
        note = "same indices" if same else "INDICES DIFFER"
        rows.append(Row("FPS", case, ours_name, "torch loop", t_ours, t_ref, note=note))
        if "pytorch3d" in ops.available_backends("fps") and ours_name != "pytorch3d":
            p3d = lambda: ops.farthest_point_sample(xyz, n_samples, backend="pytorch3d")  # noqa: E731
            t_ours, t_p3d = time_pair(ours, p3d, device, repeat=repeat)
            rows.append(Row("FPS", case, ours_name, "pytorch3d", t_ours, t_p3d))
    return rows


def bench_knn(device="cpu", quick=False, cases=((32, 512, 1024, 24), (8, 2048, 8192, 24))) -> List[Row]:
    """kNN: the default backend vs brute force ``torch.cdist`` + ``topk`` (and pytorch3d when importable).

    ``cases``: (B, M, N, k) tuples. Peak memory of both sides is measured.
    """
    repeat = 3 if quick else 7
    rows = []
    for batch, m, n, k in cases:
        query, points = _rand((batch, m, 3), device, 1), _rand((batch, n, 3), device, 2)
        ours_name = backends.resolve("knn", query.device).name
        ours = lambda: ops.knn(query, points, k)  # noqa: E731
        brute = lambda: torch.topk(torch.cdist(query, points), k, dim=-1, largest=False)  # noqa: E731
        exact = ops.knn(query, points, k, backend="torch").dist2
        close = torch.allclose(ours().dist2, exact, rtol=1e-5, atol=1e-6)
        t_ours, t_ref = time_pair(ours, brute, device, repeat=repeat)
        mem_ours, mem_ref = peak_memory(ours, device), peak_memory(brute, device)
        note = "same distances as the torch reference" if close else "DISTANCES DIFFER from the torch reference"
        case = f"B={batch}, M={m}, N={n}, k={k}"
        rows.append(Row("kNN", case, ours_name, "cdist + topk", t_ours, t_ref, mem_ours, mem_ref, note))
        if ours_name != "mm":  # the torch-only fast path (the default on CUDA without pytorch3d)
            mm = lambda: ops.knn(query, points, k, backend="mm")  # noqa: E731
            t_mm, t_ref = time_pair(mm, brute, device, repeat=repeat)
            close = torch.allclose(mm().dist2, exact, rtol=1e-5, atol=1e-6)
            note = "same distances as the torch reference" if close else "DISTANCES DIFFER from the torch reference"
            rows.append(Row("kNN", case, "mm", "cdist + topk", t_mm, t_ref, peak_memory(mm, device), mem_ref, note))
        if "pytorch3d" in ops.available_backends("knn") and ours_name != "pytorch3d":
            p3d = lambda: ops.knn(query, points, k, backend="pytorch3d")  # noqa: E731
            t_ours, t_p3d = time_pair(ours, p3d, device, repeat=repeat)
            rows.append(Row("kNN", case, ours_name, "pytorch3d", t_ours, t_p3d))
    return rows


def bench_gather(device="cpu", quick=False, cases=((32, 1024, 64, 512, 24), (32, 512, 128, 256, 24))) -> List[Row]:
    """gather, forward + backward: ours vs advanced indexing ``x[batch_index, idx]`` (the published PointMLP code).

    ``cases``: (B, N, C, S, K) for x (B, N, C) and idx (B, S, K), as in a PointMLP grouping stage.
    """
    repeat = 3 if quick else 7
    rows = []
    for batch, n, c, s, k in cases:
        x = _rand((batch, n, c), device, 4).requires_grad_(True)
        idx = (_rand((batch, s, k), device, 5) * n).long()
        weights = _rand((batch, s, k, c), device, 6)

        def ours():
            (ops.gather(x, idx) * weights).sum().backward()

        batch_index = torch.arange(batch, device=device)[:, None, None]

        def plain():
            (x[batch_index, idx] * weights).sum().backward()

        t_ours, t_ref = time_pair(ours, plain, device, repeat=repeat)
        case = f"x ({batch}, {n}, {c}), idx ({batch}, {s}, {k}), fwd+bwd"
        rows.append(Row("gather", case, "index_select", "x[batch, idx]", t_ours, t_ref))
    return rows


def bench_pointwise(device="cpu", quick=False, cases=((16, 128, 512 * 24), (16, 256, 256 * 24),
                                                      (16, 512, 128 * 24), (16, 1024, 64 * 24))) -> List[Row]:
    """One pointwise layer of a PointMLP block (C -> C, BatchNorm, ReLU), forward + backward, two layouts.

    Ours: ``nn.Linear`` on channels-last (B, L, C) with BatchNorm over the
    flattened rows; reference: ``nn.Conv1d(kernel_size=1)`` on (B, C, L) with
    ``BatchNorm1d``, as the published code writes it. Same maths, same weights;
    ``cases``: (B, C, L) with L = groups x neighbours of PointMLP's four stages
    at batch 16. This row measures a proposal for the model code (see docs/benchmarks.md).
    """
    repeat = 2 if quick else 5
    rows = []
    for batch, c, length in (cases[:2] if quick else cases):
        conv = torch.nn.Conv1d(c, c, 1).to(device)
        linear = torch.nn.Linear(c, c).to(device)
        with torch.no_grad():
            linear.weight.copy_(conv.weight[:, :, 0])
            linear.bias.copy_(conv.bias)
        norm_first, norm_last = torch.nn.BatchNorm1d(c).to(device), torch.nn.BatchNorm1d(c).to(device)
        x_first = (_rand((batch, c, length), device, 12) - 0.5).requires_grad_(True)
        x_last = x_first.detach().transpose(1, 2).contiguous().requires_grad_(True)
        # A dense upstream gradient, as the next layer gives (out.sum() would pass a stride-0 one).
        grad_first = _rand((batch, c, length), device, 15)
        grad_last = grad_first.transpose(1, 2).contiguous()

        def channels_first():
            out = torch.relu(norm_first(conv(x_first)))
            out.backward(grad_first)
            return out

        def channels_last():
            out = torch.relu(norm_last(linear(x_last).reshape(-1, c))).reshape(batch, length, c)
            out.backward(grad_last)
            return out

        same = torch.allclose(channels_last().transpose(1, 2), channels_first(), rtol=1e-3, atol=1e-4)
        t_ours, t_ref = time_pair(channels_last, channels_first, device, repeat=repeat)
        case = f"C={c}, (B, L)=({batch}, {length}), fwd+bwd"
        rows.append(Row("pointwise layer", case, "Linear (B, L, C)", "Conv1d (B, C, L)", t_ours, t_ref,
                        note="same outputs" if same else "OUTPUTS DIFFER"))
    return rows


def bench_transfer(device="cpu", quick=False, cases=((16, 512, 24, 64), (16, 256, 24, 128),
                                                    (16, 128, 24, 256), (16, 64, 24, 512))) -> List[Row]:
    """The first layer after grouping, forward + backward: split anchor term vs concatenated input.

    The published grouper concatenates each neighbour's normalised features
    and xyz (C + 3) with its group's anchor features repeated k times (C), then
    applies one pointwise layer to 2C + 3 channels. The anchor part of that
    product is the same for the k neighbours of a group: ours computes it once
    per group and broadcasts it (same maths). ``cases``: (B, S groups, k, C),
    output 2C channels, channels-last Linear layers on both sides.
    """
    repeat = 2 if quick else 5
    rows = []
    for batch, groups, k, c in (cases[:2] if quick else cases):
        full = torch.nn.Linear(2 * c + 3, 2 * c).to(device)
        neighbour = torch.nn.Linear(c + 3, 2 * c).to(device)
        anchor_part = torch.nn.Linear(c, 2 * c, bias=False).to(device)
        with torch.no_grad():
            neighbour.weight.copy_(full.weight[:, : c + 3])
            neighbour.bias.copy_(full.bias)
            anchor_part.weight.copy_(full.weight[:, c + 3 :])
        grouped = (_rand((batch, groups, k, c + 3), device, 13) - 0.5).requires_grad_(True)
        anchor = (_rand((batch, groups, c), device, 14) - 0.5).requires_grad_(True)
        grad = _rand((batch, groups, k, 2 * c), device, 16)

        def concatenated():
            out = full(torch.cat([grouped, anchor[:, :, None, :].expand(-1, -1, k, -1)], -1))
            out.backward(grad)
            return out

        def split():
            out = neighbour(grouped) + anchor_part(anchor)[:, :, None, :]
            out.backward(grad)
            return out

        same = torch.allclose(split(), concatenated(), rtol=1e-4, atol=1e-4)
        t_ours, t_ref = time_pair(split, concatenated, device, repeat=repeat)
        case = f"(B, S, k, C)=({batch}, {groups}, {k}, {c}), fwd+bwd"
        rows.append(Row("transfer layer", case, "anchor term per group", "concat anchor x k", t_ours, t_ref,
                        note="same outputs" if same else "OUTPUTS DIFFER"))
    return rows


def bench_masked_norm(device="cpu", quick=False, cases=((16, 512, 24, 128), (16, 256, 24, 256))) -> List[Row]:
    """BatchNorm over the real entries of a (B, S, k, C) tensor with no padding, forward + backward.

    Reference: the boolean-mask form ``out[mask] = bn(x[mask])`` (two copies
    of the tensor each way); ours: check ``mask.all()`` and normalise the
    flattened tensor directly (same statistics, same result).
    """
    repeat = 2 if quick else 5
    rows = []
    for batch, groups, k, c in (cases[:1] if quick else cases):
        norm = torch.nn.BatchNorm1d(c).to(device)
        x = (_rand((batch, groups, k, c), device, 17) - 0.5).requires_grad_(True)
        mask = torch.ones(batch, groups, k, dtype=torch.bool, device=device)
        grad = _rand((batch, groups, k, c), device, 18)

        def boolean_index():
            out = x.new_zeros(x.shape)
            out[mask] = norm(x[mask])
            out.backward(grad)
            return out

        def direct_when_full():
            if bool(mask.all()):
                out = norm(x.reshape(-1, c)).reshape(x.shape)
            else:
                out = x.new_zeros(x.shape)
                out[mask] = norm(x[mask])
            out.backward(grad)
            return out

        same = torch.allclose(direct_when_full(), boolean_index(), rtol=1e-4, atol=1e-5)
        t_ours, t_ref = time_pair(direct_when_full, boolean_index, device, repeat=repeat)
        case = f"(B, S, k, C)=({batch}, {groups}, {k}, {c}), no padding, fwd+bwd"
        rows.append(Row("masked BatchNorm", case, "skip mask when all real", "x[mask] copy", t_ours, t_ref,
                        note="same outputs" if same else "OUTPUTS DIFFER"))
    return rows


def _context_cluster_functions():
    """(context_cluster, context_cluster_dense) from pointcoc.layers, or SectionUnavailable."""
    try:
        return (_import_or_skip("pointcoc.layers", "context_cluster"),
                _import_or_skip("pointcoc.layers", "context_cluster_dense"))
    except SectionUnavailable:
        return (_import_or_skip("pointcoc.layers.context_cluster", "context_cluster"),
                _import_or_skip("pointcoc.layers.context_cluster", "context_cluster_dense"))


def bench_context_cluster(device="cpu", quick=False, cases=((1, 3136, 196, 64), (1, 12544, 196, 64)),
                          functions=None) -> List[Row]:
    """Set-level context cluster, forward + backward: segment sums (ours) vs the dense-mask reference.

    ``cases``: (B, N points, M centers, channels), with similarity and value
    spaces of ``channels`` each. Time and peak memory of both. ``functions``:
    (ours, reference) with the signature of ``pointcoc.layers.context_cluster``;
    default: ``context_cluster`` and ``context_cluster_dense`` from pointcoc.layers.
    """
    ours_fn, dense_fn = functions or _context_cluster_functions()
    repeat = 2 if quick else 5
    rows = []
    for batch, n, m, c in cases:
        inputs = [
            _rand((batch, n, c), device, 7) - 0.5,
            _rand((batch, n, c), device, 8) - 0.5,
            _rand((batch, m, c), device, 9) - 0.5,
            _rand((batch, m, c), device, 10) - 0.5,
        ]
        inputs = [t.requires_grad_(True) for t in inputs]
        alpha = torch.ones((), device=device, requires_grad=True)
        beta = torch.zeros((), device=device, requires_grad=True)
        weights = _rand((batch, n, c), device, 11)

        def run(fn):
            def fwd_bwd():
                out, _ = fn(*inputs, alpha, beta)
                grads = torch.autograd.grad((out * weights).sum(), inputs + [alpha, beta], allow_unused=True)
                return out, grads

            return fwd_bwd

        (out_o, grads_o), (out_d, grads_d) = run(ours_fn)(), run(dense_fn)()
        same = torch.allclose(out_o, out_d, rtol=1e-4, atol=1e-5) and all(
            (a is None and b is None) or (a is not None and b is not None and torch.allclose(a, b, rtol=1e-3, atol=1e-4))
            for a, b in zip(grads_o, grads_d)
        )
        del out_o, grads_o, out_d, grads_d
        t_ours, t_ref = time_pair(run(ours_fn), run(dense_fn), device, repeat=repeat)
        mem_ours, mem_ref = peak_memory(run(ours_fn), device), peak_memory(run(dense_fn), device)
        case = f"B={batch}, N={n}, {m} centers, {c} channels, fwd+bwd"
        note = "same values and gradients" if same else "RESULTS DIFFER"
        rows.append(Row("context cluster", case, "segment sums", "dense mask", t_ours, t_ref, mem_ours, mem_ref, note))
    return rows


def bench_models(device="cpu", quick=False, names=("pointmlp", "pointmlp_elite", "pointmlp_coc"),
                 batches=None, n_points=1024, num_classes=15) -> List[Row]:
    """Whole models: eval forward latency and one training step (forward, backward, SGD step).

    "ours" is the default backends; the reference is the same model with the
    pure-torch FPS and kNN forced (``use_backend("torch")``): the published
    design run straightforwardly. Peak memory is measured for the training step.
    """
    create_model = _import_or_skip("pointcoc", "create_model")
    batches = batches or ((4,) if quick else (16, 32))
    # The parity check and one untimed step are the warm-up; one timed run each (a PointMLP
    # step at batch 16 takes about 10 s on 2 cores). Quick: batch 4, no memory profiling.
    repeat, warmup = 1, 0
    rows = []
    configs = [(name, batch) for name in names for batch in batches]
    for name, batch in tqdm(configs, desc="models", leave=False):
        torch.manual_seed(0)
        model = create_model(name, num_classes=num_classes).to(device)
        xyz = _rand((batch, n_points, 3), device, 3) * 2 - 1
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


def profile_train_step(name: str, batch: int = 16, n_points: int = 1024, device="cpu", backend=None,
                       row_limit: int = 25, num_classes: int = 15) -> str:
    """Where the time of one training step of model ``name`` goes: ``torch.profiler``'s table by self CPU time.

    One untimed step first (allocations, kernel compilation), then one profiled
    step. ``backend`` forces an ops backend (e.g. "torch") for the step.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    create_model = _import_or_skip("pointcoc", "create_model")
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes).to(device).train()
    xyz = _rand((batch, n_points, 3), device, 3) * 2 - 1
    label = torch.randint(0, num_classes, (batch,)).to(device)
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
        with profile(activities=activities, record_shapes=False) as prof:
            step()
            synchronize(device)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit)


def _coc_pair(batch: int, n_points: int, num_classes: int, device, kwargs: Optional[dict] = None):
    """(ours, reference, xyz, label): pointcoc's PointMLP-CoC and the published-layout reference with its parameters."""
    from .models import create_model
    from .reference_pointmlp import reference_from_pointcoc

    torch.manual_seed(0)
    ours = create_model("pointmlp_coc", num_classes=num_classes, **(kwargs or {})).to(device)
    reference = reference_from_pointcoc(ours, points=n_points)
    xyz = _rand((batch, n_points, 3), device, 3) * 2 - 1
    label = (torch.arange(batch) % num_classes).to(device)
    return ours, reference, xyz, label


def _train_step(model: torch.nn.Module, inputs: torch.Tensor, label: torch.Tensor) -> Callable:
    """One SGD step (forward, cross-entropy, backward, update) of ``model`` as a callable returning the loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(inputs), label)
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
        ours, reference, xyz, label = _coc_pair(batch, n_points, num_classes, device, model_kwargs)
        step_ours, step_ref = _train_step(ours, xyz, label), _train_step(reference, xyz.transpose(1, 2), label)
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
        original = module.forward

        def forward(*args, **kwargs):
            with record_function(name):
                return original(*args, **kwargs)

        module.forward = forward
        undo.append(module)

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
                               row_limit: int = 20, model_kwargs: Optional[dict] = None) -> str:
    """Where one PointMLP-CoC training step's time goes, ours and the published-layout reference.

    For each: the forward time by section (``record_function`` ranges around
    the grouper, the context clusters and the pointwise layers; wall time, so
    the numba FPS/kNN are counted), the whole step's self CPU time by kind of
    op (forward and backward), then ``torch.profiler``'s top ops. One untimed
    step precedes each profiled one. Returns the text.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    ours, reference, xyz, label = _coc_pair(batch, n_points, num_classes, device, model_kwargs)
    runs = [("ours", ours, xyz), ("reference", reference, xyz.transpose(1, 2))]
    lines = [f"PointMLP-CoC training step, B={batch}, N={n_points}, {num_classes} classes, "
             f"{machine_description(device)}", ""]
    for name, model, inputs in runs:
        step = _train_step(model, inputs, label)
        step()
        undo = _label_sections(model, _SECTION_CLASSES[name])
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
        start = time.perf_counter()
        with profile(activities=activities) as prof:
            with record_function("step"):
                step()
            synchronize(device)
        wall = time.perf_counter() - start
        for module in undo:
            del module.forward  # back to the class's forward
        events = prof.key_averages()
        by_key = {e.key: e for e in events}
        total_self = sum(e.self_cpu_time_total for e in events)
        lines.append(f"== {name} ({'pointcoc' if name == 'ours' else 'published layout'}): "
                     f"step {wall:.2f} s wall under the profiler")
        lines.append("forward time by section (wall, inside record_function ranges):")
        for section in _SECTION_CLASSES[name]:
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


def plot_model_vs_reference(rows: List[Row], path: str) -> None:
    """Bar chart of the training-step rows: seconds per step, ours and the reference, per batch size (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.group == "PointMLP-CoC train step"]
    if not rows:
        raise ValueError("rows must hold at least one 'PointMLP-CoC train step' row; got none")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r.ref_s for r in rows], width=0.4, label="published layout (reference)")
    ax.bar([x + 0.2 for x in xs], [r.ours_s for r in rows], width=0.4, label="pointcoc")
    for x, r in zip(xs, rows):
        ax.text(x + 0.2, r.ours_s, f"{r.ref_s / r.ours_s:.2f}x faster", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), [r.case.split(",")[0] for r in rows])
    ax.set_ylim(0, 1.3 * max(max(r.ref_s, r.ours_s) for r in rows))  # room for the legend
    ax.set_ylabel("seconds per training step (median)")
    ax.set_title("PointMLP-CoC training step, N=1024")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def to_markdown(rows: List[Row], skipped: Optional[dict] = None) -> str:
    """The rows as a markdown table (times in ms, memory in MiB, ratios ours / reference), then skipped sections."""
    def mib(b):
        return "" if b is None else f"{b / 2**20:.1f}"

    lines = [
        "| what | case | ours | reference | ours ms | ref ms | time ratio | ours MiB | ref MiB | memory ratio | note |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        mem_ratio = "" if r.mem_ratio is None else f"{r.mem_ratio:.3f}"
        lines.append(
            f"| {r.group} | {r.case} | {r.ours} | {r.reference} | {r.ours_s * 1e3:.1f} | {r.ref_s * 1e3:.1f} "
            f"| {r.time_ratio:.2f} | {mib(r.ours_mem)} | {mib(r.ref_mem)} | {mem_ratio} | {r.note} |"
        )
    for name, reason in (skipped or {}).items():
        lines.append(f"\nSkipped section {name}: {reason}")
    return "\n".join(lines)


def machine_description(device="cpu") -> str:
    """One line naming the machine, threads and torch version."""
    device = torch.device(device)
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                what = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        what += f", {os.cpu_count()} CPU cores"
    return f"{what}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def to_json(rows: List[Row], path: str, meta: Optional[dict] = None) -> None:
    """Write the rows (with their ratios) and ``meta`` to ``path`` as JSON."""
    records = [dict(asdict(r), time_ratio=r.time_ratio, mem_ratio=r.mem_ratio) for r in rows]
    with open(path, "w") as f:
        json.dump({"meta": meta or {}, "rows": records}, f, indent=2)


SECTIONS = {
    "fps": bench_fps,
    "knn": bench_knn,
    "gather": bench_gather,
    "pointwise": bench_pointwise,
    "transfer": bench_transfer,
    "masked_norm": bench_masked_norm,
    "context_cluster": bench_context_cluster,
    "models": bench_models,
    "model_vs_reference": bench_model_vs_reference,
}


def run_all(device="cpu", quick=False, only=None):
    """Run the benchmark sections named in ``only`` (default: all).

    Returns:
        (rows, skipped): the measured rows, and {section: reason} for sections
        that could not run here.
    """
    names = list(SECTIONS) if only is None else list(only)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise ValueError(f"only must name sections from {sorted(SECTIONS)}; got {unknown}")
    rows, skipped = [], {}
    for name in tqdm(names, desc="benchmark"):
        try:
            rows.extend(SECTIONS[name](device=device, quick=quick))
        except SectionUnavailable as err:
            skipped[name] = str(err)
    return rows, skipped
