"""The environment report (pointcoc env) and backends.explain, which it is built from."""
import os
import subprocess
import sys

import pytest
import torch

import pointcoc
from pointcoc.ops import backends
from pointcoc.ops.backends import explain, resolve, use_backend

DEVICES = ("cpu", "cuda")  # resolve and explain need no real device of that type


def _assert_explains_resolve(**kw):
    for op in backends.available_backends():
        for d in DEVICES:
            line = explain(op, d, **kw)
            assert line.startswith(f"{op} on {d}: {resolve(op, torch.device(d), **kw).name} ("), line


def test_explain_names_what_resolve_picks_automatic_forced_and_per_call(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    _assert_explains_resolve()
    _assert_explains_resolve(backend="torch")
    with use_backend("mm"):
        _assert_explains_resolve()
        assert "forced by set_backend('mm')" in explain("knn", "cpu")
        assert "set_backend('mm') ignored: fps has no such backend" in explain("fps", "cpu")
    monkeypatch.setenv(backends.ENV_VAR, "torch")
    _assert_explains_resolve()
    assert "forced by $POINTCOC_BACKEND=torch" in explain("knn", "cpu")
    with pytest.raises(ValueError, match="op must be one of"):
        explain("nope", "cpu")


def test_explain_gives_priorities_other_devices_and_missing_backends(monkeypatch):
    monkeypatch.setattr(backends, "_REGISTRY", {})
    monkeypatch.setattr(backends, "_UNAVAILABLE", {})
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    backends.register("probe", "torch", None, devices=("cpu", "cuda"), priority=0)
    backends.register("probe", "fastcpu", None, devices=("cpu",), priority=10)
    backends.register("probe", "gpu", None, devices=("cuda",), priority=20)
    backends.note_unavailable("probe", "ext", "not importable")
    backends.note_unavailable("other", "gone", "not importable")  # another op's: not mentioned
    assert explain("probe", "cpu") == "probe on cpu: fastcpu (priority 10 > torch 0; not on cpu: gpu; ext not importable)"
    assert explain("probe", "cuda") == ("probe on cuda: gpu (priority 20 > torch 0; not on cuda: fastcpu; "
                                        "ext not importable)")
    assert explain("probe", "cuda", backend="torch").startswith("probe on cuda: torch (forced by backend='torch';")


def test_pointcoc_env_reports_versions_devices_and_every_op():
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(pointcoc.__file__)),
           backends.ENV_VAR: "torch"}
    out = subprocess.run([sys.executable, "-m", "pointcoc", "env"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"pointcoc {pointcoc.__version__}" in text and f"torch {torch.__version__}" in text
    for name in ("numpy", "numba", "triton", "pytorch3d"):
        assert f"\n{name} " in text, name
    for op in backends.available_backends():
        assert f"  {op} on cpu: torch (forced by $POINTCOC_BACKEND=torch" in text, op
    assert sum(line.startswith("  ") and " on cpu: " in line for line in text.splitlines()) == \
        len(backends.available_backends())  # one line per op ("not on cpu: ..." may appear inside it)


def test_env_points_to_the_quick_gpu_check_when_cuda_is_visible(monkeypatch):
    from pointcoc.env import GPU_CHECK_HINT, env_report

    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert "gpu-check --quick" not in env_report() or torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # no device properties to read here
    text = env_report()
    assert GPU_CHECK_HINT in text and "`pointcoc gpu-check --quick`" in GPU_CHECK_HINT
    assert any(line.startswith("  knn on cuda: ") for line in text.splitlines())


def test_env_reports_a_kernel_failure(monkeypatch):
    from pointcoc.env import env_report

    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    failure = backends.Failure("knn", "triton", "cuda:0", "float32", "knn_kernel", "triton 3.6.0",
                               "CompilationError: simulated", "mm")
    monkeypatch.setattr(backends, "_FAILED", {("knn", "triton", "cuda:0", "float32"): failure})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    line = next(line for line in env_report().splitlines() if line.startswith("  knn on cuda: "))
    assert ("triton failed on cuda:0 for float32 and is not tried again in this process (kernel knn_kernel, "
            "triton 3.6.0: CompilationError: simulated); those calls use mm") in line
    assert "failed" not in next(line for line in env_report().splitlines() if line.startswith("  fps on cuda: "))
