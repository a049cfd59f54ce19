"""The one prepared GPU run: everything that needs a GPU, in one budgeted pass (``scripts/gpu_check.py``).

Sections, in order; each is guarded (an exception is recorded with its
traceback and the next section runs) and a global time budget skips the work
that no longer fits, so the whole run ends within ``budget_s``:

* ``environment``: device, versions, the FPS/kNN backends available on the device;
* ``cuda_tests``: ``pytest -m cuda`` in a subprocess, with its pass/fail counts;
* ``ops``: FPS and kNN with every backend available on the device against the
  torch reference (time, parity, kNN peak memory), on uniform sets, a 2-D
  pixel grid and far-apart clusters (where an inexact kNN fails);
* ``pixels``: a ``pointmlp_coc_pixels`` training step on square images;
* ``train_step``: a PointMLP-CoC training step, pointcoc vs the published layout
  (:mod:`pointcoc.bench.reference_pointmlp`), eager then compiled (last: compiling
  takes the longest), float32 and bf16 autocast: step time, samples/s, peak
  memory, first loss, and the estimated time of one ScanObjectNN PB_T50_RS epoch.

Without CUDA the same sections run on the CPU at reduced sizes (a dry run, said
in the first line of the markdown). :func:`run_quick_check` (``--quick``) is the
first-contact self-test: every backend and the automatic choice against the
reference, one training step of each model, a one-screen pass/fail verdict. :func:`run_gpu_check` writes
``gpu_check.json`` and ``gpu_check.md`` after every section, so an interrupted
run leaves what it measured. The format is documented in docs/gpu_check.md.
"""
from __future__ import annotations

import datetime
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch._inductor.config  # noqa: F401  (fallback_random)

from .. import ops
from .._links import REPOSITORY, repository_link
from ..ops.fps import fps_torch
from ..ops.knn import knn_torch
from .measure import machine_description, peak_memory, random_tensor, synchronize, time_pair, timed
from .model_rows import reference_pair, train_step
from .ops_rows import pixel_set_batch

__all__ = ["CheckSizes", "SIZES", "run_gpu_check", "to_markdown", "FORMAT", "SCANOBJECTNN_TRAIN_OBJECTS",
           "QuickSizes", "QUICK_SIZES", "QUICK_MODELS", "QUICK_FORMAT", "run_quick_check", "quick_verdict"]

FORMAT = "pointcoc-gpu-check-v1"
SCANOBJECTNN_TRAIN_OBJECTS = 11416  # PB_T50_RS training split
LOSS_RTOL = 1e-3  # float32 first losses of the layouts and modes agree to this (relative)
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class CheckSizes:
    """Problem sizes of one kind of run.

    ops_cases: (kind, B, N, D, samples, k) with kind "uniform" (in [-1, 1]^D),
        "pixels" (a sqrt(N) x sqrt(N) grid of pixel coordinates, D = 2), "discrete pixels"
        (half the pixels of a sqrt(2N) x sqrt(2N) image, drawn per set, D = 2) or
        "clusters" (two unit cubes 1000 apart); FPS picks ``samples`` points,
        kNN finds the ``k`` nearest of each of them.
    compiled_precisions: the precisions whose training step is also run compiled.
    step_need_s, compile_need_s: time a training-step configuration is assumed to
        need, eager and compiled; one that no longer fits the budget is skipped.
    threads: torch CPU threads during the run; tiny sizes use one (on a shared CPU,
        two threads on tiny tensors mostly wait for each other).
    """

    name: str
    ops_cases: Tuple[Tuple[str, int, int, int, int, int], ...]
    ops_repeat: int
    train_batch: int
    train_points: int
    train_steps: int
    model_kwargs: Dict = field(default_factory=dict)
    pixel_sides: Tuple[int, ...] = (28, 64)
    pixel_batch: int = 32
    pixel_kwargs: Dict = field(default_factory=dict)
    compile_backend: str = "inductor"
    compiled_precisions: Tuple[str, ...] = ("float32", "bf16 autocast")
    step_need_s: float = 15.0
    compile_need_s: float = 90.0
    pytest_targets: Tuple[str, ...] = ("tests",)
    pytest_timeout_s: float = 200.0
    threads: Optional[int] = None  # torch CPU threads during the run (None: unchanged)


_TWO_SMALL_STAGES = dict(embed_dim=8, k_neighbors=(4, 4), reducers=(2, 2), dim_expansion=(2, 2), pre_blocks=(1, 1),
                         pos_blocks=(1, 1))
SIZES = {
    # One H100: the sizes the issue asks for.
    "full": CheckSizes("full", (("uniform", 32, 1024, 3, 512, 24), ("uniform", 8, 8192, 3, 2048, 24),
                                ("pixels", 8, 224 * 224, 2, 224 * 224 // 16, 16),
                                ("discrete pixels", 8, 224 * 224 // 2, 2, 224 * 224 // 32, 16),
                                ("clusters", 4, 8192, 3, 2048, 24)),
                       ops_repeat=3, train_batch=32, train_points=1024, train_steps=10),
    # No GPU: the same sections on the CPU, smaller.
    "reduced": CheckSizes("reduced", (("uniform", 8, 1024, 3, 512, 24), ("uniform", 2, 4096, 3, 1024, 24),
                                      ("pixels", 1, 64 * 64, 2, 64 * 64 // 4, 16), ("clusters", 2, 2048, 3, 512, 24)),
                          ops_repeat=3, train_batch=8, train_points=1024, train_steps=2, pixel_batch=8),
    # The test suite's dry run: seconds.
    "tiny": CheckSizes("tiny", (("uniform", 2, 64, 3, 16, 4), ("pixels", 1, 16 * 16, 2, 64, 8),
                                ("clusters", 2, 128, 3, 32, 4)),
                       ops_repeat=3, train_batch=2, train_points=64, train_steps=1, model_kwargs=_TWO_SMALL_STAGES,
                       pixel_sides=(8,), pixel_batch=2, pixel_kwargs=dict(embed_dim=8, k_neighbors=4),
                       compile_backend="eager", compiled_precisions=("float32",), step_need_s=1.0,
                       compile_need_s=5.0, pytest_targets=("tests/test_ops_gather.py",), pytest_timeout_s=60.0,
                       threads=1),
}


class _Budget:
    """Seconds left of the run's budget."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


class SectionSkipped(RuntimeError):
    """Raised inside a section that cannot run here; the message says why (recorded as "skipped")."""


class BudgetExhausted(SectionSkipped):
    """Raised inside a section when what remains would not fit in the time budget."""


def _need(budget: _Budget, seconds: float, what: str) -> None:
    if budget.left() < seconds:
        raise BudgetExhausted(f"time budget: {budget.left():.0f} s left, {what} needs about {seconds:.0f} s")


# ---------------------------------------------------------------------------
# Sections: each returns a dict of results; "rows" lists measured cases.


def _environment(device: torch.device, sizes: CheckSizes, budget: _Budget) -> Dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "machine": machine_description(device), "threads": torch.get_num_threads(),
            "backends": {op: ops.available_backends(op, device) for op in ("fps", "knn")},
            "default_backends": {op: ops.backends.resolve(op, device).name for op in ("fps", "knn")},
            "backend_choice": {op: ops.backends.explain(op, device) for op in ("fps", "knn")}}
    for module in ("triton", "numba", "pytorch3d"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # not installed, or broken: the backends that need it are absent
            info[module] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = {"name": props.name, "memory_bytes": props.total_memory,
                       "capability": f"{props.major}.{props.minor}"}
    return info


def _cuda_tests(device: torch.device, sizes: CheckSizes, budget: _Budget, out_dir: Path) -> Dict:
    """``pytest -m cuda`` over ``sizes.pytest_targets`` in a subprocess; counts from its JUnit XML.

    Skipped (SectionSkipped) where the tests are not there (an installed wheel holds none) or pytest is missing.
    """
    if not all((ROOT / target).exists() for target in sizes.pytest_targets):
        raise SectionSkipped(f"the CUDA tests are not part of the installed package; run pointcoc gpu-check in a "
                             f"source checkout ({REPOSITORY}) to include them")
    if importlib.util.find_spec("pytest") is None:
        raise SectionSkipped("pytest is not installed (pip install 'pointcoc[test]')")
    timeout = min(sizes.pytest_timeout_s, budget.left() - 30)
    _need(budget, 2 * sizes.step_need_s, "the CUDA tests")
    xml = out_dir / "cuda_tests.xml"
    # A test module that cannot be imported there (a missing optional package) is an error, not the end of the run.
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", f"--junitxml={xml}", *sizes.pytest_targets]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if sizes.threads:
        env["OMP_NUM_THREADS"] = str(sizes.threads)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"pytest -m cuda did not finish within {timeout:.0f} s") from None
    result = {"command": " ".join(["python", *cmd[1:]]), "returncode": proc.returncode,
              "output_tail": proc.stdout[-2000:] + proc.stderr[-1000:]}
    if not xml.is_file():
        raise RuntimeError(f"pytest wrote no report (exit code {proc.returncode}): {proc.stderr[-500:]}")
    suites = ElementTree.parse(xml).getroot()
    suite = suites if suites.tag == "testsuite" else suites.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    result.update(passed=counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
                  failed=counts["failures"], errors=counts["errors"], skipped=counts["skipped"],
                  failed_tests=failed)
    return result


def _case_points(kind: str, batch: int, n: int, dim: int, device: torch.device) -> torch.Tensor:
    if kind == "uniform":
        return random_tensor((batch, n, dim), device, 1) * 2 - 1
    if kind == "pixels":
        side = math.isqrt(n)
        if side * side != n or dim != 2:
            raise ValueError(f"a pixel case needs N = side**2 and D = 2; got N={n}, D={dim}")
        i, j = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        grid = torch.stack([i.reshape(-1) / side - 0.5, j.reshape(-1) / side - 0.5], -1)
        return grid.to(device)[None].expand(batch, -1, -1).contiguous()
    if kind == "discrete pixels":  # half the pixels of a side x side image, each set its own draw
        side = math.isqrt(2 * n)
        if side * side != 2 * n or dim != 2:
            raise ValueError(f"a discrete pixel case needs N = side**2 / 2 and D = 2; got N={n}, D={dim}")
        return pixel_set_batch("discrete", side, side, batch, keep=0.5, seed=3)[0].to(device)
    if kind == "clusters":
        x = random_tensor((batch, n, dim), device, 2)
        offset = torch.zeros(dim, device=device)
        offset[0] = 500.0
        return torch.cat([x[:, : n // 2] - offset, x[:, n // 2 :] + offset], 1)
    raise ValueError(f"kind must be 'uniform', 'pixels', 'discrete pixels' or 'clusters'; got {kind!r}")


def _ops(device: torch.device, sizes: CheckSizes, budget: _Budget) -> Dict:
    """Every FPS and kNN backend on the device against the torch reference, case by case."""
    rows = []
    for kind, batch, n, dim, samples, k in sizes.ops_cases:
        _need(budget, sizes.step_need_s, f"the {kind} FPS/kNN case")
        xyz = _case_points(kind, batch, n, dim, device)
        lengths = torch.full((batch,), n, dtype=torch.long, device=device)
        start = torch.zeros(batch, dtype=torch.long, device=device)
        case = f"{kind}, B={batch}, N={n}, D={dim}"
        want_idx = fps_torch(xyz, samples, lengths, start, False)
        query = ops.gather(xyz, want_idx)
        want = knn_torch(query, xyz, k, torch.full_like(lengths, samples), lengths)
        for name in ops.available_backends("fps", device):
            run = lambda: ops.farthest_point_sample(xyz, samples, backend=name)  # noqa: E731
            t, t_ref = time_pair(run, lambda: fps_torch(xyz, samples, lengths, start, False), device,
                                 repeat=sizes.ops_repeat)
            rows.append({"op": "fps", "case": f"{case} -> {samples}", "backend": name, "ms": 1e3 * t,
                         "torch_ms": 1e3 * t_ref, "speedup_vs_torch": t_ref / t,
                         "parity": bool(torch.equal(run(), want_idx)), "parity_rule": "same indices"})
        # triton-cells (the cell-list kernel) is only forced; knn_triton uses it for large 2-D sets.
        forced = [n_ for n_ in ("triton-cells",) if n_ in ops.available_backends("knn") and device.type == "cuda"]
        for name in ops.available_backends("knn", device) + forced:
            run = lambda: ops.knn(query, xyz, k, backend=name)  # noqa: E731
            reference = lambda: ops.knn(query, xyz, k, backend="torch")  # noqa: E731
            t, t_ref = time_pair(run, reference, device, repeat=sizes.ops_repeat)
            got = run()
            rows.append({"op": "knn", "case": f"{case}, M={samples}, k={k}", "backend": name, "ms": 1e3 * t,
                         "torch_ms": 1e3 * t_ref, "speedup_vs_torch": t_ref / t,
                         "peak_memory_bytes": peak_memory(run, device),
                         "parity": bool(torch.equal(got.dist2, want.dist2)),
                         "same_indices_fraction": float((got.idx == want.idx).all(-1).float().mean()),
                         "parity_rule": "bit-identical squared distances"})
    return {"rows": rows}


def _epoch_seconds(step_s: float, batch: int) -> float:
    """One PB_T50_RS training epoch: full batches only (the loader drops the last), step time only."""
    return (SCANOBJECTNN_TRAIN_OBJECTS // batch) * step_s


def _measure_step(step: Callable, device: torch.device, steps: int) -> Dict:
    """First step (it compiles, when compiled) and the median of ``steps`` more; peak memory of one more."""
    torch.manual_seed(1)
    loss, first = timed(step, device)
    times = [timed(step, device)[1] for _ in range(steps)]
    row = {"first_step_s": first, "first_loss": float(loss), "step_ms": 1e3 * statistics.median(times)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    row["peak_memory_bytes"] = peak_memory(step, device)  # above the memory held before the step
    if device.type == "cuda":
        row["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return row


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()


def _train_step(device: torch.device, sizes: CheckSizes, budget: _Budget) -> Dict:
    """PointMLP-CoC step: pointcoc vs the published layout; eager first, then compiled; float32 and bf16 autocast.

    Eager also measures pointcoc built with ``memory_efficient=True`` (its peak memory against the others').
    """
    batch, points = sizes.train_batch, sizes.train_points
    rows, errors = [], {}
    for mode in ("eager", "compiled"):
        for precision, dtype in (("float32", None), ("bf16 autocast", torch.bfloat16)):
            if mode == "compiled" and precision not in sizes.compiled_precisions:
                continue
            layouts = ("pointcoc", "published layout") + (("pointcoc memory_efficient",) if mode == "eager" else ())
            for layout in layouts:
                label_ = f"{layout}, {mode}, {precision}"
                try:
                    _need(budget, sizes.compile_need_s if mode == "compiled" else sizes.step_need_s, label_)
                    kwargs = dict(sizes.model_kwargs or {}, memory_efficient=layout.endswith("memory_efficient"))
                    ours, reference, xyz, label = reference_pair("pointmlp_coc", batch, points, 15, device, kwargs)
                    model, inputs = ((reference, xyz.transpose(1, 2)) if layout == "published layout"
                                     else (ours, xyz))
                    if mode == "compiled":
                        model = torch.compile(model, backend=sizes.compile_backend)
                    with torch._inductor.config.patch(fallback_random=True):  # dropout as in eager
                        row = _measure_step(train_step(model, inputs, label, dtype), device, sizes.train_steps)
                    row.update(layout=layout, mode=mode, precision=precision, batch=batch, points=points,
                               samples_per_s=batch / (row["step_ms"] / 1e3),
                               epoch_estimate_s=_epoch_seconds(row["step_ms"] / 1e3, batch))
                    if mode == "compiled":
                        row["compile_backend"] = sizes.compile_backend
                    rows.append(row)
                except BudgetExhausted as err:
                    errors[label_] = str(err)
                except Exception as err:  # one failed configuration must not hide the others
                    errors[label_] = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=4)[-1500:]}"
                finally:
                    ours = reference = model = None
                    _release(device)
    _mark_loss_parity(rows)
    return {"rows": rows, "failed_or_skipped": errors, "epoch_objects": SCANOBJECTNN_TRAIN_OBJECTS}


def _mark_loss_parity(rows: List[Dict]) -> None:
    """float32 rows: the first loss against pointcoc's eager float32 loss (same parameters, data and dropout).

    bfloat16 keeps 3 significant digits and the loss drifts by a few percent (more at tiny sizes), so
    bf16 rows are not judged (``loss_parity`` None); how far bf16 moves the loss from float32 is
    recorded as ``loss_vs_float32`` (relative difference).
    """
    base = next((r["first_loss"] for r in rows
                 if (r["layout"], r["mode"], r["precision"]) == ("pointcoc", "eager", "float32")), None)
    for r in rows:
        r["loss_parity"] = r["loss_vs_float32"] = None
        if base is None:
            continue
        r["loss_vs_float32"] = (r["first_loss"] - base) / abs(base)
        if r["precision"] == "float32":
            r["loss_parity"] = bool(abs(r["loss_vs_float32"]) <= LOSS_RTOL)


def _pixels(device: torch.device, sizes: CheckSizes, budget: _Budget) -> Dict:
    """``pointmlp_coc_pixels`` training step on side x side images (every pixel, grey value as feature)."""
    from ..models import create_model

    rows = []
    batch = sizes.pixel_batch
    for side in sizes.pixel_sides:
        _need(budget, sizes.step_need_s, f"the {side}x{side} pixel step")
        torch.manual_seed(0)
        model = create_model("pointmlp_coc_pixels", num_classes=10, **sizes.pixel_kwargs).to(device)
        xyz = _case_points("pixels", batch, side * side, 2, device)
        grey = random_tensor((batch, side * side, 1), device, 4)
        label = (torch.arange(batch) % 10).to(device)
        row = _measure_step(train_step(model, (xyz, grey), label), device, sizes.train_steps)
        row.update(image=f"{side}x{side}", points=side * side, batch=batch,
                   samples_per_s=batch / (row["step_ms"] / 1e3),
                   fps_backend=ops.backends.resolve("fps", device).name,
                   knn_backend=ops.backends.resolve("knn", device).name)
        rows.append(row)
        model = None
        _release(device)
    return {"rows": rows}


SECTIONS = ("environment", "cuda_tests", "ops", "pixels", "train_step")


def run_gpu_check(out_dir, device: Optional[str] = None, sizes: Optional[str] = None, budget_s: float = 420.0,
                  only: Optional[List[str]] = None, command: str = "") -> Dict:
    """Run the sections and write ``out_dir/gpu_check.json`` and ``out_dir/gpu_check.md``.

    Args:
        out_dir: folder for the two files (and pytest's ``cuda_tests.xml``).
        device: "cuda" or "cpu"; default cuda when available.
        sizes: a key of :data:`SIZES`; default "full" on CUDA, "reduced" on the CPU.
        budget_s: the whole run's time limit in seconds (sections that would not fit are skipped).
        only: run these sections only (default: all of :data:`SECTIONS`).
        command: the command line, recorded in both files.

    Returns:
        The JSON document as a dict.

    Raises:
        ValueError: ``budget_s`` not finite and > 0, ``out_dir`` a file, below a file or not writable, an
            unknown device, sizes or section.
    """
    from ..engine.rundir import create_output_dir

    if isinstance(budget_s, bool) or not isinstance(budget_s, (int, float)) or not math.isfinite(budget_s) \
            or budget_s <= 0:
        raise ValueError(f"--budget-s must be finite and > 0; got {budget_s!r}")
    start = time.monotonic()
    budget = _Budget(budget_s)
    dev, chosen = _device_and_sizes(device, sizes, SIZES)
    names = list(SECTIONS) if only is None else list(only)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise ValueError(f"only must name sections from {list(SECTIONS)}; got {unknown}")
    out = create_output_dir(out_dir, "--out")  # the training scripts' rules: a file, below a file, not writable
    doc = {"format": FORMAT, "mode": "cuda" if dev.type == "cuda" else "cpu dry run", "device": str(dev),
           "sizes": asdict(SIZES[chosen]), "budget_s": budget_s, "command": command,
           "threads": SIZES[chosen].threads or torch.get_num_threads(),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "sections": {}}
    runners = {"environment": lambda: _environment(dev, SIZES[chosen], budget),
               "cuda_tests": lambda: _cuda_tests(dev, SIZES[chosen], budget, out),
               "ops": lambda: _ops(dev, SIZES[chosen], budget),
               "train_step": lambda: _train_step(dev, SIZES[chosen], budget),
               "pixels": lambda: _pixels(dev, SIZES[chosen], budget)}
    threads = torch.get_num_threads()
    try:
        if SIZES[chosen].threads:
            torch.set_num_threads(SIZES[chosen].threads)
        _run_sections(names, runners, doc, out, start)
    finally:
        torch.set_num_threads(threads)
    return doc


def _run_sections(names: List[str], runners: Dict[str, Callable], doc: Dict, out: Path, start: float) -> None:
    """Run each named section, recording its result (or failure, or skip) and writing both files after it."""
    for name in names:
        t0 = time.monotonic()
        try:
            result = {"status": "ok", **runners[name]()}
        except SectionSkipped as err:
            result = {"status": "skipped", "reason": str(err)}
        except Exception as err:  # recorded; the next section still runs
            result = {"status": "failed", "error": f"{type(err).__name__}: {err}",
                      "traceback": traceback.format_exc(limit=6)[-3000:]}
        result["seconds"] = time.monotonic() - t0
        doc["sections"][name] = result
        doc["elapsed_s"] = time.monotonic() - start
        _write(doc, out)


def _write(doc: Dict, out: Path) -> None:
    (out / "gpu_check.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "gpu_check.md").write_text(to_markdown(doc) + "\n")


def _mib(b) -> str:
    return "" if b is None else f"{b / 2**20:.0f}"


def _cell(value) -> str:
    """``value`` as one markdown table cell: one line (a line break would end the table), ``|`` escaped."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _table(header: List[str], lines: List[List]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(v) for v in line) + " |" for line in lines]
    return out


def to_markdown(doc: Dict) -> str:
    """The JSON document as markdown; the first line says whether this was a GPU run or a CPU dry run."""
    sections = doc["sections"]
    env = sections.get("environment", {})
    where = env.get("machine", doc["device"])
    if doc["mode"] == "cuda":
        lines = [f"# pointcoc GPU check on {where}"]
    else:
        lines = [f"# pointcoc GPU check: DRY RUN on the CPU (no CUDA device), {doc['sizes']['name']} sizes, "
                 f"no GPU numbers; {where}"]
    lines += ["", f"`{doc['command']}`, {doc['date']}, {doc.get('elapsed_s', 0):.0f} s of a {doc['budget_s']:.0f} s "
                  f"budget. Sizes: {doc['sizes']['name']}. Format: {repository_link('docs/gpu_check.md')}.", ""]
    lines.append("| section | status | seconds |")
    lines.append("|---|---|---:|")
    for name, sec in sections.items():
        status = sec["status"] + ("" if sec["status"] == "ok" else f": {sec.get('reason') or sec.get('error')}")
        lines.append(f"| {name} | {_cell(status)} | {sec['seconds']:.1f} |")
    if env.get("status") == "ok":
        lines += ["", f"torch {env['torch']}, CUDA {env['cuda']}, triton {env['triton']}, numba {env['numba']}, "
                      f"pytorch3d {env['pytorch3d']}. Backends: {env['backend_choice']['fps']}; "
                      f"{env['backend_choice']['knn']}"]
    tests = sections.get("cuda_tests", {})
    if tests.get("status") == "ok":
        lines += ["", "## CUDA-marked tests", "",
                  f"{tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, "
                  f"{tests['skipped']} skipped (`{tests['command']}`)"]
        lines += [f"- FAILED {name}" for name in tests["failed_tests"]]
    if sections.get("ops", {}).get("rows"):
        lines += ["", "## FPS and kNN, every backend vs the torch reference", ""]
        lines += _table(["op", "case", "backend", "ms", "torch ms", "speed-up", "parity", "peak MiB"],
                        [[r["op"], r["case"], r["backend"], f"{r['ms']:.2f}", f"{r['torch_ms']:.2f}",
                          f"{r['speedup_vs_torch']:.1f}x", "yes" if r["parity"] else "NO",
                          _mib(r.get("peak_memory_bytes"))] for r in sections["ops"]["rows"]])
    step = sections.get("train_step", {})
    if step.get("rows") or step.get("failed_or_skipped"):
        lines += ["", f"## PointMLP-CoC training step (epoch = {SCANOBJECTNN_TRAIN_OBJECTS} PB_T50_RS objects)", ""]
        lines += _table(["layout", "mode", "precision", "batch", "step ms", "samples/s", "peak MiB", "epoch s",
                         "first step s", "first loss", "loss parity"],
                        [[r["layout"], r["mode"], r["precision"], r["batch"], f"{r['step_ms']:.1f}",
                          f"{r['samples_per_s']:.1f}", _mib(r["peak_memory_bytes"]), f"{r['epoch_estimate_s']:.0f}",
                          f"{r['first_step_s']:.1f}", f"{r['first_loss']:.5f}",
                          {True: "yes", False: "NO", None: "not judged"}[r["loss_parity"]]] for r in step.get("rows", [])])
        lines += [f"- {k}: {v.splitlines()[0]}" for k, v in step.get("failed_or_skipped", {}).items()]
    if sections.get("pixels", {}).get("rows"):
        lines += ["", "## pointmlp_coc_pixels training step", ""]
        lines += _table(["image", "points", "batch", "step ms", "samples/s", "peak MiB", "FPS / kNN backend"],
                        [[r["image"], r["points"], r["batch"], f"{r['step_ms']:.1f}", f"{r['samples_per_s']:.1f}",
                          _mib(r["peak_memory_bytes"]), f"{r['fps_backend']} / {r['knn_backend']}"]
                         for r in sections["pixels"]["rows"]])
    for name, sec in sections.items():
        if sec["status"] == "failed":
            lines += ["", f"## {name} failed", "", "```", sec["traceback"].rstrip(), "```"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# The first-contact self-test: ``pointcoc gpu-check --quick``.

QUICK_FORMAT = "pointcoc-gpu-check-quick-v1"
QUICK_MODELS = ("pointmlp", "pointmlp_elite", "pointmlp_coc")


@dataclass(frozen=True)
class QuickSizes:
    """Sizes of the quick check: ``ops_cases`` as :class:`CheckSizes` (run in each of ``dtypes``), one training
    step of each of :data:`QUICK_MODELS` at ``train_batch`` x ``train_points`` (``model_kwargs``: overrides)."""

    name: str
    ops_cases: Tuple[Tuple[str, int, int, int, int, int], ...]
    dtypes: Tuple[str, ...] = ("float32", "float64")
    train_batch: int = 4
    train_points: int = 1024
    model_kwargs: Dict = field(default_factory=dict)


QUICK_SIZES = {
    # A GPU: under a minute, compiling the kernels included.
    "full": QuickSizes("full", (("uniform", 2, 512, 3, 64, 16), ("pixels", 2, 32 * 32, 2, 64, 8),
                                ("clusters", 2, 512, 3, 64, 16))),
    # No GPU: the same checks on the CPU, smaller.
    "reduced": QuickSizes("reduced", (("uniform", 2, 256, 3, 32, 8), ("pixels", 1, 16 * 16, 2, 32, 8),
                                      ("clusters", 2, 256, 3, 32, 8)), train_batch=2, train_points=256),
    # The test suite's dry run.
    "tiny": QuickSizes("tiny", (("uniform", 2, 48, 3, 8, 4), ("pixels", 1, 8 * 8, 2, 8, 4)),
                       train_batch=2, train_points=64, model_kwargs=_TWO_SMALL_STAGES),
}


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return type(err).__name__ + (f": {lines[0]}" if lines else "")


def _quick_ops(device: torch.device, sizes: QuickSizes) -> List[Dict]:
    """FPS and kNN with every backend (forced) and the automatic choice against the torch reference, exactly."""
    checks = []
    for op in ("fps", "knn"):
        for name in ops.available_backends(op, device, forced=True) + ["automatic"]:
            row = {"check": f"{op} {name}", "kind": "ops", "op": op, "backend": name, "cases": 0, "passed": 0,
                   "first_call_ms": None, "failures": []}
            for dtype_name in sizes.dtypes:
                dtype = getattr(torch, dtype_name)
                for kind, batch, n, dim, samples, k in sizes.ops_cases:
                    case = f"{dtype_name} {kind} B={batch} N={n} -> {samples}" + (f" k={k}" if op == "knn" else "")
                    row["cases"] += 1
                    try:
                        xyz = _case_points(kind, batch, n, dim, device).to(dtype)
                        lengths = torch.full((batch,), n, dtype=torch.long, device=device)
                        lengths[-1] = n - n // 8  # ragged: padding must never be picked
                        backend = None if name == "automatic" else name
                        if op == "fps":
                            want = ops.farthest_point_sample(xyz, samples, lengths, backend="torch")
                            got, seconds = timed(lambda: ops.farthest_point_sample(xyz, samples, lengths,
                                                                                   backend=backend), device)
                            same = torch.equal(got, want)
                        else:
                            query = ops.gather(xyz, ops.farthest_point_sample(xyz, samples, lengths, backend="torch"))
                            ql = torch.full_like(lengths, samples)
                            want = ops.knn(query, xyz, k, ql, lengths, backend="torch")
                            got, seconds = timed(lambda: ops.knn(query, xyz, k, ql, lengths, backend=backend), device)
                            same = torch.equal(got.dist2, want.dist2) and torch.equal(got.idx, want.idx)
                        if row["first_call_ms"] is None:
                            row["first_call_ms"] = 1e3 * seconds
                        if same:
                            row["passed"] += 1
                        else:
                            row["failures"].append(f"{case}: differs from the torch reference")
                    except Exception as err:  # recorded: the user reports it
                        row["failures"].append(f"{case}: {_first_line(err)}")
            row["status"] = "pass" if row["passed"] == row["cases"] else "FAIL"
            checks.append(row)
    return checks


def _quick_train(device: torch.device, sizes: QuickSizes) -> List[Dict]:
    """One SGD step of each model in float32 (first loss also with the pure-torch FPS/kNN) and bf16 autocast."""
    from ..models import create_model
    from .model_rows import step_inputs

    checks = []
    for model_name in QUICK_MODELS:
        losses = {}
        for precision, dtype in (("float32", None), ("bf16 autocast", torch.bfloat16)):
            row = {"check": f"train {model_name} {precision}", "kind": "train", "model": model_name,
                   "precision": precision, "batch": sizes.train_batch, "points": sizes.train_points, "failures": []}
            try:
                def step_loss(reference: bool = False):
                    torch.manual_seed(0)
                    model = create_model(model_name, num_classes=15, **sizes.model_kwargs).to(device)
                    xyz, label = step_inputs(sizes.train_batch, sizes.train_points, 15, device)
                    step = train_step(model, xyz, label, dtype)
                    torch.manual_seed(1)  # the same dropout draws
                    if reference:
                        with ops.use_backend("torch"):
                            loss, seconds = timed(step, device)
                    else:
                        loss, seconds = timed(step, device)
                    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
                    return float(loss), seconds, finite

                loss, seconds, finite = step_loss()
                row.update(loss=loss, step_s=seconds)
                if not (math.isfinite(loss) and finite):
                    row["failures"].append(f"loss {loss} or updated parameters not finite")
                if dtype is None:
                    losses["float32"] = loss
                    ref_loss = step_loss(reference=True)[0]
                    row["torch_backends_loss"] = ref_loss
                    if not abs(loss - ref_loss) <= LOSS_RTOL * abs(ref_loss) + 1e-4:
                        row["failures"].append(f"loss {loss:.5f} differs from the pure-torch FPS/kNN's {ref_loss:.5f}")
                elif "float32" in losses:
                    row["loss_vs_float32"] = (loss - losses["float32"]) / abs(losses["float32"])
            except Exception as err:
                row["failures"].append(_first_line(err))
            finally:
                _release(device)
            row["status"] = "FAIL" if row["failures"] else "pass"
            checks.append(row)
    return checks


def run_quick_check(device: Optional[str] = None, sizes: Optional[str] = None, out_dir=None,
                    command: str = "") -> Dict:
    """The first-contact self-test (``pointcoc gpu-check --quick``): backends and training steps, pass or fail.

    Every FPS/kNN backend that runs on the device (forced, so that a failure shows) and the automatic
    choice against the torch reference on small sets, exactly; one training step of each of
    :data:`QUICK_MODELS` in float32 (first loss also against the pure-torch FPS/kNN) and bf16 autocast.
    Under a minute on a GPU; without CUDA a dry run on the CPU. Kernel failures that made the automatic
    choice fall back (:func:`pointcoc.ops.backends.failures`) are listed.

    Args:
        device: "cuda" or "cpu"; default cuda when available.
        sizes: a key of :data:`QUICK_SIZES`; default "full" on CUDA, "reduced" on the CPU.
        out_dir: when given, also writes ``quick_check.json`` and ``quick_check.txt`` (the verdict) there.
        command: the command line, recorded.

    Returns:
        The document (format ``QUICK_FORMAT``, docs/gpu_check.md); ``doc["passed"]`` is the verdict.

    Raises:
        ValueError: CUDA requested but not available, unknown sizes, ``out_dir`` not a writable folder.
    """
    import warnings

    from .._version import __version__

    start = time.monotonic()
    dev, chosen = _device_and_sizes(device, sizes, QUICK_SIZES)
    out = None
    if out_dir is not None:
        from ..engine.rundir import create_output_dir

        out = create_output_dir(out_dir, "--out")
    env = _environment(dev, SIZES["tiny"], _Budget(60))
    env["pointcoc"] = __version__
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ops.backends.BackendFallbackWarning)
        checks = _quick_ops(dev, QUICK_SIZES[chosen]) + _quick_train(dev, QUICK_SIZES[chosen])
    for w in seen:  # other warnings are shown as usual; the fallbacks are listed in the verdict
        if not issubclass(w.category, ops.backends.BackendFallbackWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    doc = {"format": QUICK_FORMAT, "mode": "cuda" if dev.type == "cuda" else "cpu dry run", "device": str(dev),
           "sizes": asdict(QUICK_SIZES[chosen]), "command": command,
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "environment": env, "checks": checks,
           "automatic_backends": {op: ops.backends.resolve(op, dev, dtype=torch.float32).name
                                  for op in ("fps", "knn")},
           "fallbacks": [f.describe() for f in ops.backends.failures()],
           "passed": all(c["status"] == "pass" for c in checks), "elapsed_s": time.monotonic() - start}
    if out is not None:
        (out / "quick_check.json").write_text(json.dumps(doc, indent=1) + "\n")
        (out / "quick_check.txt").write_text(quick_verdict(doc) + "\n")
    return doc


def quick_verdict(doc: Dict) -> str:
    """The quick check as one screen of text for a bug report (format: docs/gpu_check.md)."""
    env, checks = doc["environment"], doc["checks"]
    failed = [c for c in checks if c["status"] != "pass"]
    verdict = "PASS" if not failed else "FAIL"
    lines = [f"pointcoc gpu-check --quick: {verdict}, {len(checks) - len(failed)} of {len(checks)} checks passed "
             f"in {doc['elapsed_s']:.1f} s ({doc['sizes']['name']} sizes)",
             f"pointcoc {env['pointcoc']} | python {env['python']} | torch {env['torch']} "
             f"({'CUDA ' + env['cuda'] if env['cuda'] else 'no CUDA'}) | "
             + " | ".join(f"{m} {env[m] or 'not installed'}" for m in ("triton", "numba", "pytorch3d"))]
    if doc["mode"] == "cuda":
        gpu = env["gpu"]
        lines.append(f"device: {doc['device']}, {gpu['name']}, compute capability {gpu['capability']}, "
                     f"{gpu['memory_bytes'] / 2**30:.1f} GiB")
    else:
        lines.append(f"device: cpu (DRY RUN: no CUDA device, nothing about a GPU is checked); {env['machine']}")
    lines.append(f"automatic backends (float32): fps {doc['automatic_backends']['fps']}, "
                 f"knn {doc['automatic_backends']['knn']}")
    for c in checks:
        if c["kind"] == "ops":
            first = "" if c["first_call_ms"] is None else f", first call {c['first_call_ms']:.0f} ms"
            detail = f"{c['passed']} of {c['cases']} cases equal the torch reference{first}"
        else:
            detail = f"batch {c['batch']} x {c['points']} points"
            if "loss" in c:
                detail += f", loss {c['loss']:.4f}"
            if "torch_backends_loss" in c:
                detail += f" (pure-torch FPS/kNN {c['torch_backends_loss']:.4f})"
            if c.get("loss_vs_float32") is not None:
                detail += f" ({100 * c['loss_vs_float32']:+.2f} % vs float32)"
        lines.append(f"{c['status']:4}  {c['check']:34} {detail}")
        lines += [f"      {f}" for f in c["failures"][:2]]
        if len(c["failures"]) > 2:
            lines.append(f"      ... {len(c['failures']) - 2} more (quick_check.json with --out)")
    lines.append("fallbacks: " + ("none" if not doc["fallbacks"] else ""))
    lines += [f"  {f}" for f in doc["fallbacks"]]
    return "\n".join(lines)


def _device_and_sizes(device, sizes, table):
    """(torch.device, size name) of a check: ``device`` or CUDA when available, else the CPU; ``sizes`` or "full" on
    CUDA and "reduced" elsewhere, which must be a key of ``table``."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    chosen = sizes or ("full" if dev.type == "cuda" else "reduced")
    if chosen not in table:
        raise ValueError(f"sizes must be one of {sorted(table)}; got {chosen!r}")
    return dev, chosen
