"""Running the scripts in subprocesses and checking what a training run writes."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = ("config.json", "metrics.jsonl", "curves.png", "last.pt", "results.json", "confusion_matrix.png")


def _env(extra=None):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(extra or {})}


def run_python(args, timeout=300, cwd=ROOT, env=None):
    """``python ARGS...`` with one torch thread (unless ``env``, variables added to the environment, says
    otherwise) and the checkout importable; returns the CompletedProcess."""
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=_env(env), cwd=cwd)


def _default_sigint():
    # A test suite started in the background of a non-interactive shell (`pytest &`) inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler in the child: the Ctrl-C tests would test nothing.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_python(args, cwd=ROOT):
    """``python ARGS...`` as ``run_python``, started in the background: a Popen with text stdout/stderr pipes.
    SIGINT is restored to its default in the child, so that Python raises KeyboardInterrupt on it."""
    return subprocess.Popen([sys.executable, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(), cwd=cwd, preexec_fn=_default_sigint)


# Runs SCRIPT ARGS... and SIGKILLs the process inside its N-th torch.save, after the temp file got a few bytes:
# a real kill at the worst moment of a checkpoint write, at a chosen epoch.
_KILL_IN_SAVE = """
import os, runpy, signal, sys
import torch
n, calls, real_save = int(sys.argv[1]), [], torch.save
def save(obj, f, *args, **kwargs):
    calls.append(1)
    if len(calls) == n:
        f.write(b"partial checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_killed_in_save(script, args, n, timeout=300):
    """Run ``script ARGS`` killed (SIGKILL) inside its ``n``-th checkpoint write; returns the CompletedProcess."""
    return run_python(["-c", _KILL_IN_SAVE, n, script, *args], timeout=timeout)


def last_line(text):
    """The last non-empty line of ``text``, progress-bar redraws (``\\r``) removed."""
    rows = [row.rsplit("\r", 1)[-1].strip() for row in text.split("\n")]
    return [row for row in rows if row][-1]


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
