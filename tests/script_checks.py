"""Running the scripts in subprocesses and checking what a training run writes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = ("config.json", "metrics.jsonl", "last.pt", "results.json", "confusion_matrix.png")


def run_python(args, timeout=300, cwd=ROOT):
    """``python ARGS...`` with one torch thread and the checkout importable; returns the CompletedProcess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd)


def lines(path):
    """The JSON records of a .jsonl file."""
    return [json.loads(line) for line in open(path)]


def assert_run_outputs(out, epochs, n_eval, num_classes):
    """A finished run in ``out``: every output file, one metrics line per epoch, and a results.json whose
    confusion matrix counts ``n_eval`` samples of ``num_classes`` classes and gives its test OA.

    Returns (metrics records, results dict).
    """
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    recs = lines(out / "metrics.jsonl")
    assert [r["epoch"] for r in recs] == list(range(1, epochs + 1))
    res = json.loads((out / "results.json").read_text())
    cm = res["confusion_matrix"]
    assert sum(map(sum, cm)) == n_eval and len(cm) == num_classes
    assert res["test_oa"] == pytest.approx(100 * sum(cm[i][i] for i in range(num_classes)) / n_eval)
    return recs, res
