"""One run per output folder (issue 20): no resume into another run's folder, an exclusive lock while a run
lives, a folder whose run never saved a checkpoint is reused, Ctrl-C during start-up is one line."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from pointcoc.engine import fit, load_checkpoint
from pointcoc.engine.errors import RunFolderBusy
from pointcoc.engine.rundir import LOCK_NAME, RunFolderLock

from script_checks import ROOT, lines, run_python, start_python
from test_engine import NAMES, TinyPointNet, config, datasets, records

TRAIN = ROOT / "scripts" / "train_scanobjectnn.py"
# the shipped modelnet10, cut to 8 training and 2 test batches an epoch
MINI = ["--dataset", "modelnet10", "--model", "pointmlp_elite", "--model-kwargs",
        json.dumps({"embed_dim": 8, "k_neighbors": 4, "res_expansion": 0.25}), "--num-points", "64",
        "--limit-train-batches", "8", "--limit-val-batches", "2",
        "--batch-size", "16", "--lr", "0.05", "--workers", "0", "--device", "cpu", "--threads", "1"]


def files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != LOCK_NAME}


def test_resuming_into_a_folder_that_holds_another_run_is_refused(tmp_path):
    train, test = datasets()
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    fit(TinyPointNet(), train, test, config(epochs=2), a, NAMES, stop_after_epoch=1)
    fit(TinyPointNet(), train, test, config(epochs=2, seed=4), b, NAMES, stop_after_epoch=1)
    before = files(b)
    with pytest.raises(ValueError, match=rf"--resume {a / 'last.pt'} continues the run in {a}, but --output {b} "
                                         r"holds another run \(metrics.jsonl, last.pt, results.json\); resuming "
                                         r"there would mix the two runs"):
        fit(TinyPointNet(), train, test, config(epochs=2), b, NAMES, resume=a / "last.pt")
    assert files(b) == before
    # into its own folder, or into an empty one, a resume goes on
    fit(TinyPointNet(), train, test, config(epochs=2), c, NAMES, resume=a / "last.pt")
    assert [r["epoch"] for r in records(c / "metrics.jsonl")] == [2]
    fit(TinyPointNet(), train, test, config(epochs=2), a, NAMES, resume=a / "last.pt")
    assert [r["epoch"] for r in records(a / "metrics.jsonl")] == [1, 2]


def test_the_script_refuses_a_resume_into_another_runs_folder(tmp_path, capsys):
    from pointcoc.engine.pointcloud_task import build_train_parser, run_cli, train_main

    a, b = tmp_path / "a", tmp_path / "b"
    for out, seed in ((a, "0"), (b, "1")):
        argv = [*MINI, "--epochs", "2", "--stop-after-epoch", "1", "--seed", seed, "--output", str(out)]
        assert run_cli(train_main, build_train_parser(), argv) == 0
    capsys.readouterr()
    before = files(b)
    argv = [*MINI, "--epochs", "2", "--seed", "0", "--output", str(b), "--resume", str(a / "last.pt")]
    assert run_cli(train_main, build_train_parser(), argv) == 2
    err = capsys.readouterr().err
    assert f"--resume {a / 'last.pt'} continues the run in {a}, but --output {b} holds another run" in err
    assert files(b) == before


_HOLD_LOCK = """
import sys, time
from pointcoc.engine.rundir import RunFolderLock
lock = RunFolderLock(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_run_into_a_locked_folder_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path):
    train, test = datasets()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert (tmp_path / LOCK_NAME).read_text().strip() == str(holder.pid)
        with pytest.raises(RunFolderBusy, match=rf"--output {tmp_path} is in use by another run \(pid {holder.pid}"):
            fit(TinyPointNet(), train, test, config(epochs=1), tmp_path, NAMES)
        assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "config.json").exists()
    finally:
        holder.kill()  # SIGKILL: the OS drops the lock with the process
        holder.wait()
    fit(TinyPointNet(), train, test, config(epochs=1), tmp_path, NAMES)
    assert [r["epoch"] for r in records(tmp_path / "metrics.jsonl")] == [1]
    with RunFolderLock(tmp_path):  # released when fit returned: it can be taken again
        pass


@pytest.mark.slow
def test_two_script_runs_started_into_one_folder_one_is_refused_naming_the_pid(tmp_path):
    out = tmp_path / "run"
    # long enough (8 epochs at 256 points) that the second run, importing torch meanwhile, meets it still running
    first = start_python([TRAIN, *MINI, "--epochs", "8", "--num-points", "256", "--output", out])
    deadline = time.monotonic() + 240
    while first.poll() is None and time.monotonic() < deadline:
        lock = out / LOCK_NAME
        if lock.exists() and lock.read_text().strip() == str(first.pid):
            break
        time.sleep(0.05)
    second = run_python([TRAIN, *MINI, "--epochs", "8", "--num-points", "256", "--seed", "1", "--output", out])
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 2, second.stderr[-2000:]
    assert "Traceback" not in second.stderr
    assert f"--output {out} is in use by another run (pid {first.pid}" in second.stderr
    assert [r["epoch"] for r in lines(out / "metrics.jsonl")] == list(range(1, 9))
    assert load_checkpoint(out / "last.pt")["config"]["seed"] == 0


def test_a_folder_whose_run_stopped_before_its_first_checkpoint_is_reused(tmp_path):
    # what Ctrl-C in epoch 1 after its metrics line leaves: config.json and metrics.jsonl, no checkpoint
    train, test = datasets()
    fit(TinyPointNet(), train, test, config(epochs=1), tmp_path / "ref", NAMES)
    (tmp_path / "run").mkdir()
    for name in ("config.json", "metrics.jsonl"):
        (tmp_path / "run" / name).write_bytes((tmp_path / "ref" / name).read_bytes())
    fit(TinyPointNet(), train, test, config(epochs=2), tmp_path / "run", NAMES)
    assert [r["epoch"] for r in records(tmp_path / "run" / "metrics.jsonl")] == [1, 2]


@pytest.mark.slow
def test_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_path):
    # SIGINT while python imports torch, parses the flags or reads the data: never a traceback
    for delay in (0.3, 0.8, 1.5, 2.5, 4.0):
        out = tmp_path / f"d{delay}"
        proc = start_python([TRAIN, *MINI, "--epochs", "1", "--output", out])
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out_text, err = proc.communicate(timeout=240)
        if proc.returncode == 0 or "RESULT [" in out_text:  # the run ended (or was shutting down) before the signal
            continue
        assert proc.returncode == 130, (delay, err[-2000:])
        assert "Traceback" not in err, (delay, err[-2000:])
        assert err.strip().splitlines()[-1].startswith("interrupted"), err


def test_a_resume_keeps_its_own_log_copied_to_a_new_folder_but_not_another_runs(tmp_path):
    train, test = datasets()
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    fit(TinyPointNet(), train, test, config(epochs=2), a, NAMES, stop_after_epoch=1)
    fit(TinyPointNet(), train, test, config(epochs=2, seed=4), c, NAMES, stop_after_epoch=1)
    b.mkdir()
    (b / "metrics.jsonl").write_bytes((c / "metrics.jsonl").read_bytes())  # another run's epoch-1 log only
    with pytest.raises(ValueError, match=r"holds another run \(metrics.jsonl\)"):
        fit(TinyPointNet(), train, test, config(epochs=2), b, NAMES, resume=a / "last.pt")
    (b / "metrics.jsonl").write_bytes((a / "metrics.jsonl").read_bytes())  # the resumed run's own log
    fit(TinyPointNet(), train, test, config(epochs=2), b, NAMES, resume=a / "last.pt")
    assert [r["epoch"] for r in records(b / "metrics.jsonl")] == [1, 2]
