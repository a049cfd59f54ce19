"""A Triton kernel that fails to compile or launch (issue 29): the automatic choice falls back, once, loudly.

The kernel tests run where the Triton backend runs: in Triton's interpreter on CPU tensors
(``TRITON_INTERPRET=1``, in a subprocess: ``test_fallback_in_the_interpreter``), or compiled on CUDA.
On the CPU the backend is only ever *forced* (pointcoc/ops/triton_backend.py); the fixture
``automatic_triton`` registers it as the automatic first choice on the CPU too, so that the path a
user's GPU run takes, the automatic one, is the one tested. A failure is made by replacing a kernel
of :mod:`pointcoc.ops._triton_kernels` with a launcher that raises: a real JIT error (a kernel whose
``tl.static_assert`` fails), a ``CompilationError``, a launch error and an ``OutOfResources``.
"""
import ast
import os
import re
import warnings

import pytest
import torch

from pointcoc.ops import backends, farthest_point_sample, knn, triton_backend, use_backend
from script_checks import run_python

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETED else "cuda"


def needs_kernels(test):
    """Runs in the interpreter, or compiled on a GPU (then marked ``cuda``: `pytest -m cuda`, gpu-check)."""
    test = pytest.mark.skipif(not triton_backend.WITH_TRITON, reason="needs triton")(test)
    return test if INTERPRETED else pytest.mark.cuda(test)


# ---------------------------------------------------------------------------
# The shared mechanism (backends.call), with stand-in backends: no triton needed.


@pytest.fixture
def probe_op(monkeypatch):
    """A registry with one op "probe": "torch" (priority 0), "mid" (5) and "fast" (20, raises KernelError)."""
    monkeypatch.setattr(backends, "_REGISTRY", {})
    monkeypatch.setattr(backends, "_UNAVAILABLE", {})
    monkeypatch.setattr(backends, "_FAILED", {})
    monkeypatch.setattr(backends, "_forced", None)
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    calls = []

    def fast(x):
        calls.append("fast")
        raise backends.KernelError("probe_kernel", x.device, "triton 9.9", RuntimeError("no kernel image\nmore"))

    def mid(x):
        calls.append("mid")
        return x + 1

    backends.register("probe", "torch", lambda x: x + 1, devices=("cpu",), priority=0)
    backends.register("probe", "mid", mid, devices=("cpu",), priority=5)
    backends.register("probe", "fast", fast, devices=("cpu",), priority=20)
    return calls


def test_call_falls_back_once_per_device_and_dtype(probe_op):
    x = torch.zeros(3)
    cpu = torch.device("cpu")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert torch.equal(backends.call("probe", cpu, None, x), x + 1)
        assert torch.equal(backends.call("probe", cpu, None, x), x + 1)
    assert probe_op == ["fast", "mid", "mid"]  # not retried
    assert len(seen) == 1 and issubclass(seen[0].category, backends.BackendFallbackWarning)
    message = str(seen[0].message)
    assert ("Triton kernel probe_kernel failed on cpu (float32, triton 9.9): RuntimeError: no kernel image. probe "
            "uses backend 'mid' instead") in message and "more" not in message
    assert backends.resolve("probe", cpu).name == "fast"  # no dtype: the priority order
    assert backends.resolve("probe", cpu, dtype=torch.float32).name == "mid"
    assert backends.resolve("probe", cpu, dtype=torch.float64).name == "fast"
    [failure] = backends.failures()
    assert (failure.op, failure.backend, failure.device, failure.dtype, failure.kernel, failure.fallback) == (
        "probe", "fast", "cpu", "float32", "probe_kernel", "mid")
    assert backends.explain("probe", "cpu") == (
        "probe on cpu: fast (priority 20 > mid 5 > torch 0; fast failed on cpu for float32 and is not tried again "
        "in this process (kernel probe_kernel, triton 9.9: RuntimeError: no kernel image); those calls use mid)")
    # Another dtype is another key: tried, fails, warned once more.
    with pytest.warns(backends.BackendFallbackWarning, match=r"\(float64, triton 9.9\)"):
        backends.call("probe", cpu, None, x.double())
    backends.clear_failures()
    assert backends.failures() == [] and backends.resolve("probe", cpu, dtype=torch.float32).name == "fast"


def test_a_forced_backend_raises(probe_op, monkeypatch):
    x, cpu = torch.zeros(2), torch.device("cpu")
    with pytest.raises(backends.KernelError, match="kernel probe_kernel .* no kernel image") as raised:
        backends.call("probe", cpu, "fast", x)
    assert isinstance(raised.value.cause, RuntimeError)
    with use_backend("fast"), pytest.raises(backends.KernelError):
        backends.call("probe", cpu, None, x)
    monkeypatch.setenv(backends.ENV_VAR, "fast")
    with pytest.raises(backends.KernelError):
        backends.call("probe", cpu, None, x)
    assert backends.failures() == []  # forced failures are raised, not remembered
    monkeypatch.delenv(backends.ENV_VAR)
    with pytest.warns(backends.BackendFallbackWarning):  # automatic again: falls back
        backends.call("probe", cpu, None, x)


def test_other_errors_are_not_swallowed(probe_op):
    """Only a KernelError (a kernel's compile or launch) falls back; any other error of a backend is raised."""
    def buggy(x):
        raise IndexError("a bug in the wrapper")

    backends.register("probe", "buggy", buggy, devices=("cpu",), priority=30)
    with pytest.raises(IndexError, match="a bug in the wrapper"):
        backends.call("probe", torch.device("cpu"), None, torch.zeros(1))


# ---------------------------------------------------------------------------
# Versions: an old Triton is not tried.


@pytest.mark.parametrize("version, problem", [("2.3.1", True), ("2.1.0+cu121", True), ("3.0.0", False),
                                              ("3.6.0", False), ("3.9.0", False), (None, False)])
def test_version_problem(version, problem):
    why = triton_backend.version_problem(version)
    assert (why is not None) == problem
    if problem:
        assert f"triton {version} is older than 3.0" in why


@pytest.mark.skipif(not triton_backend.WITH_TRITON, reason="needs triton")
def test_a_triton_older_than_supported_is_unavailable_with_the_reason(monkeypatch):
    without = {op: {n: b for n, b in table.items() if not n.startswith("triton")}
               for op, table in backends._REGISTRY.items()}
    monkeypatch.setattr(backends, "_REGISTRY", without)
    monkeypatch.setattr(backends, "_UNAVAILABLE", {})
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    monkeypatch.setattr(triton_backend, "triton_version", lambda: "2.3.1")
    assert triton_backend.register_backends() is False
    for op in ("fps", "knn"):
        assert "triton" not in backends.available_backends(op)
        line = backends.explain(op, "cuda")
        assert "triton not used: triton 2.3.1 is older than 3.0" in line, line
    assert "triton-cells not used: triton 2.3.1" in backends.explain("knn", "cuda")
    with pytest.raises(ValueError, match="must name a registered backend"):
        backends.set_backend("triton")
    monkeypatch.setattr(triton_backend, "triton_version", lambda: "3.6.0")
    assert triton_backend.register_backends() is True
    assert backends.resolve("knn", torch.device("cuda")).name == "triton"


def test_readme_states_the_supported_versions():
    """The README names the oldest Triton and GPU architecture the code enforces."""
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    oldest = ".".join(map(str, triton_backend.MIN_TRITON))
    capability = ".".join(map(str, triton_backend.MIN_CAPABILITY))
    assert f"Triton {oldest}" in readme and f"compute capability {capability}" in readme


# ---------------------------------------------------------------------------
# The kernels, made to fail.


def test_fallback_in_the_interpreter():
    if INTERPRETED or not triton_backend.WITH_TRITON:
        pytest.skip("this is the interpreted run" if INTERPRETED else "needs triton")
    out = run_python(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "kernel_failure or automatic_triton",
                      __file__], env={"TRITON_INTERPRET": "1"}, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    assert int(re.search(r"(\d+) passed", out.stdout).group(1)) == 11, out.stdout


class Failing:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](...)`` raises; counts the launches."""

    def __init__(self, kind):
        self.kind, self.launches = kind, 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches += 1
            raise _error(self.kind)

        return launch


def _error(kind):
    import triton
    import triton.language as tl
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    if kind == "jit":  # a real error out of Triton's JIT (interpreter: InterpreterError; compiled: CompilationError)
        @triton.jit
        def broken(x_ptr, BLOCK: tl.constexpr):
            tl.static_assert(BLOCK < 0, "simulated: BLOCK must be negative")
            tl.store(x_ptr + tl.arange(0, BLOCK), 0.0)

        try:
            broken[(1,)](torch.zeros(2, device=DEVICE), BLOCK=2)
        except Exception as err:
            return err
        raise AssertionError("the broken kernel ran")
    if kind == "compile":
        src = "def knn_kernel(q_ptr):\n    x = tl.load(q_ptr)\n"
        node = ast.parse(src).body[0].body[0]
        return CompilationError(src, node, "simulated: unsupported instruction")
    if kind == "launch":
        return RuntimeError("Triton Error [CUDA]: simulated: no kernel image is available for execution")
    return OutOfResources(262144, 232448, "shared memory")


FIRST_LINES = {"jit": "simulated: BLOCK must be negative", "compile": "CompilationError: simulated: unsupported",
               "launch": "RuntimeError: Triton Error [CUDA]: simulated", "resources": "OutOfResources: out of resource"}


@pytest.fixture
def automatic_triton(monkeypatch):
    """The Triton backends as the automatic first choice on DEVICE; no failures recorded before or after."""
    monkeypatch.setattr(backends, "_REGISTRY", {op: dict(table) for op, table in backends._REGISTRY.items()})
    monkeypatch.setattr(backends, "_FAILED", {})
    monkeypatch.setattr(backends, "_forced", None)
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    if INTERPRETED:
        for op, fn in (("fps", triton_backend.fps_triton), ("knn", triton_backend.knn_triton)):
            backends.register(op, "triton", fn, devices=("cpu",), priority=20)
    device = torch.device(DEVICE)
    assert backends.resolve("fps", device).name == backends.resolve("knn", device).name == "triton"


def _sets(seed, dim=3, dtype=torch.float32, n=40):
    g = torch.Generator().manual_seed(seed)
    xyz = (torch.rand(2, n, dim, generator=g, dtype=torch.float64) * 2 - 1).to(dtype).to(DEVICE)
    return xyz, torch.tensor([n, n - 7], device=DEVICE)


def _calls(op, dim=3, dtype=torch.float32, **kw):
    xyz, lengths = _sets(dim, dim, dtype, **kw)
    if op == "fps":
        return lambda backend=None: farthest_point_sample(xyz, 10, lengths, backend=backend)
    return lambda backend=None: tuple(knn(xyz, xyz, 5, lengths, lengths, backend=backend))


def _same(a, b):
    a, b = (a,) if torch.is_tensor(a) else a, (b,) if torch.is_tensor(b) else b
    return all(torch.equal(x, y) for x, y in zip(a, b))


@needs_kernels
@pytest.mark.parametrize("op", ["fps", "knn"])
def test_automatic_triton_runs_the_kernel_when_it_works(op, automatic_triton, monkeypatch):
    """The fixture's automatic choice really runs the Triton kernel (so the failures below are its failures)."""
    from pointcoc.ops import _triton_kernels

    name = {"fps": "fps_kernel", "knn": "knn_kernel"}[op]
    real, launches = getattr(_triton_kernels, name), []

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return real[grid]

    monkeypatch.setattr(_triton_kernels, name, Counting())
    run = _calls(op)
    with warnings.catch_warnings():
        warnings.simplefilter("error", backends.BackendFallbackWarning)
        assert _same(run(), run("torch"))
    assert len(launches) == 1 and backends.failures() == []


@needs_kernels
@pytest.mark.parametrize("kind", ["jit", "compile", "launch", "resources"])
@pytest.mark.parametrize("op", ["fps", "knn"])
def test_kernel_failure_falls_back_once_with_the_reference_result(op, kind, automatic_triton, monkeypatch):
    import triton

    from pointcoc.ops import _triton_kernels

    name = {"fps": "fps_kernel", "knn": "knn_kernel"}[op]
    failing = Failing(kind)
    monkeypatch.setattr(_triton_kernels, name, failing)
    device = torch.device(DEVICE)
    run = _calls(op)
    expected_next = [b.name for b in sorted((b for b in backends._REGISTRY[op].values() if device.type in b.devices),
                                            key=lambda b: -b.priority)][1]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        results = [run() for _ in range(3)]
    reference = run("torch")
    assert all(_same(r, reference) for r in results)
    assert failing.launches == 1  # remembered: not retried on every call
    ours = [w for w in seen if issubclass(w.category, backends.BackendFallbackWarning)]
    assert len(ours) == 1, [str(w.message) for w in seen]
    message = str(ours[0].message)
    where = str(torch.empty(0, device=DEVICE).device)
    assert f"Triton kernel {name} failed on {where} (float32, triton {triton.__version__}): " in message, message
    assert FIRST_LINES[kind] in message and "\n" not in message, message
    assert f"{op} uses backend {expected_next!r} instead" in message
    # Reported: explain (and so `pointcoc env`), and the per-dtype choice.
    assert f"triton failed on {where} for float32 and is not tried again" in backends.explain(op, DEVICE)
    assert backends.resolve(op, device, dtype=torch.float32).name == expected_next
    from pointcoc.env import env_report

    assert f"kernel {name}, triton {triton.__version__}: " in env_report()
    # Forced, in each of the three ways: the error is raised.
    with pytest.raises(backends.KernelError, match=name) as raised:
        run("triton")
    assert type(raised.value.__cause__).__name__ == type(_error(kind)).__name__
    with use_backend("triton"), pytest.raises(backends.KernelError):
        run()
    monkeypatch.setenv(backends.ENV_VAR, "triton")
    with pytest.raises(backends.KernelError):
        run()


@needs_kernels
def test_kernel_failure_of_the_cell_list(automatic_triton, monkeypatch):
    """2-D sets above the crossover go to the cell-list kernel inside "triton": its failure falls back too;
    the forced-only "triton-cells" raises."""
    from pointcoc.ops import _triton_kernels

    monkeypatch.setattr(triton_backend, "CELLS_CROSSOVER", 16)
    monkeypatch.setattr(_triton_kernels, "knn_cells_kernel", Failing("resources"))
    run = _calls("knn", dim=2, n=48)
    with pytest.warns(backends.BackendFallbackWarning, match=r"Triton kernel knn_cells_kernel failed .*OutOfRes"):
        got = run()
    assert _same(got, run("torch"))
    with pytest.raises(backends.KernelError, match="knn_cells_kernel"):
        run("triton-cells")
