"""Under torchrun (2 gloo processes on the CPU) every rank fails cleanly (issue 20): the output folder's verdict
reaches every rank, a checkpoint resumes only with its number of processes, orphaned ranks stop."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pointcoc.engine import CheckpointError, fit, load_checkpoint, save_checkpoint

from script_checks import ROOT, _env, run_python
from test_engine import NAMES, TinyPointNet, config, datasets, records

TRAIN = ROOT / "scripts" / "train_scanobjectnn.py"
# the shipped modelnet10, cut to 8 training and 2 test batches an epoch
MINI = ["--dataset", "modelnet10", "--model", "pointmlp_elite", "--model-kwargs",
        json.dumps({"embed_dim": 8, "k_neighbors": 4, "res_expansion": 0.25}), "--num-points", "64",
        "--limit-train-batches", "8", "--limit-val-batches", "2",
        "--batch-size", "16", "--lr", "0.05", "--workers", "0", "--device", "cpu", "--threads", "1", "--seed", "0"]


def torchrun(*args, timeout=600, launcher=()):
    return run_python(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *launcher, TRAIN, *MINI,
                       *args], timeout=timeout)


def test_a_checkpoint_of_another_number_of_processes_is_refused_unless_allowed(tmp_path):
    train, test = datasets()
    fit(TinyPointNet(), train, test, config(epochs=2), tmp_path / "a", NAMES, stop_after_epoch=1)
    state = load_checkpoint(tmp_path / "a" / "last.pt")
    assert state["world_size"] == 1 and state["per_process_batch"] == 8
    state.update(world_size=2, per_process_batch=4)  # as a 2-process run of the same global batch writes it
    save_checkpoint(state, tmp_path / "a" / "last.pt")
    with pytest.raises(CheckpointError, match=r"--resume: the checkpoint was written by 2 processes \(4 samples each "
                                              r"per step\); this run has 1 process \(8 samples each\)\. .*Resume with "
                                              r"2 processes \(torchrun --nproc_per_node 2\), or pass "
                                              r"--allow-world-size-change"):
        fit(TinyPointNet(), train, test, config(epochs=2), tmp_path / "a", NAMES, resume=tmp_path / "a" / "last.pt")
    with pytest.warns(UserWarning, match="--allow-world-size-change: the checkpoint was written by 2 processes"):
        fit(TinyPointNet(), train, test, config(epochs=2), tmp_path / "a", NAMES, resume=tmp_path / "a" / "last.pt",
            allow_world_size_change=True)
    assert [r["epoch"] for r in records(tmp_path / "a" / "metrics.jsonl")] == [1, 2]


@pytest.mark.slow
def test_a_two_process_checkpoint_resumed_in_one_process_is_refused(tmp_path):
    out = tmp_path / "run"
    proc = torchrun("--epochs", "2", "--stop-after-epoch", "1", "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_checkpoint(out / "last.pt")["world_size"] == 2
    again = run_python([TRAIN, *MINI, "--epochs", "2", "--output", out, "--resume", out / "last.pt"])
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert "--resume: the checkpoint was written by 2 processes (8 samples each per step); this run has 1 process " \
           "(16 samples each)" in again.stderr
    allowed = run_python([TRAIN, *MINI, "--epochs", "2", "--output", out, "--resume", out / "last.pt",
                          "--allow-world-size-change"])
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "--allow-world-size-change: the checkpoint was written by 2 processes" in allowed.stderr


@pytest.mark.slow
def test_every_rank_stops_with_one_message_when_the_output_folder_is_refused(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    held = tmp_path / "held"
    held.mkdir()
    (held / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (held / "last.pt").write_bytes(b"a run")
    for out, message in ((tmp_path / "file", f"error: --output {tmp_path / 'file'} is a file, not a folder"),
                         (held, f"error: --output {held} already holds a run")):
        # torchrun looks at its ranks every 10 s (default 0.1 s), so rank 1 ends by itself before torchrun would
        # stop it: it used to run on into DDP and die there with a gloo "Connection closed by peer" traceback
        proc = torchrun("--epochs", "1", "--output", out, launcher=("--monitor-interval", "10"))
        assert proc.returncode != 0
        err = proc.stderr
        assert err.count("error: ") == 1 and message in err, err[-3000:]
        # no traceback of ours on any rank (torchrun prints its own ChildFailedError summary)
        assert "pointcoc/engine" not in err and "Connection closed" not in err and "DistBackendError" not in err, \
            err[-3000:]
        assert err.count("exitcode  : 2") == 2, err[-3000:]  # both ranks: exit code 2


def _children(pid):
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_ranks_whose_torchrun_was_killed_stop_instead_of_sleeping(tmp_path):
    # kill -9 of torchrun while its ranks start: the ranks used to sleep in init_process_group for minutes
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                 "2", str(TRAIN), *MINI, "--epochs", "50", "--output", str(tmp_path / "run")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(), cwd=ROOT)
    deadline = time.monotonic() + 120
    ranks = []
    while len(ranks) < 2 and time.monotonic() < deadline:
        ranks = _children(launcher.pid)
        time.sleep(0.1)
    assert len(ranks) == 2, ranks
    time.sleep(3)  # the ranks import torch, read the data, join the group
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 60
    while any(_alive(r) for r in ranks) and time.monotonic() < deadline:
        time.sleep(0.2)
    still = [r for r in ranks if _alive(r)]
    for r in still:
        os.kill(r, signal.SIGKILL)
    assert not still, f"ranks {still} still running 60 s after their torchrun was killed"


def test_the_timeout_flag_is_checked_and_recorded(tmp_path):
    from pointcoc.engine import TrainConfig

    assert TrainConfig().dist_timeout_s == 600.0
    for bad in (0.0, float("nan"), -1.0):
        with pytest.raises(ValueError, match=r"dist_timeout_s \(--dist-timeout\) must be finite and > 0"):
            TrainConfig(dist_timeout_s=bad)


# Runs SCRIPT ARGS... with rank 0 slowed down: "save" sleeps in each torch.save (a slow disk), "evaluate" before
# each evaluation (the other rank then waits in the evaluation's all-reduce).
_SLOW_RANK0 = """
import os, runpy, sys, time
import torch
import pointcoc.engine.loop as loop
what, seconds = sys.argv[1], float(sys.argv[2])
def slowed(fn):
    def wrapper(*args, **kwargs):
        if os.environ.get("RANK") == "0":
            time.sleep(seconds)
        return fn(*args, **kwargs)
    return wrapper
if what == "save":
    torch.save = slowed(torch.save)
else:
    loop.evaluate = slowed(loop.evaluate)
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_collective_past_the_dist_timeout_stops_each_rank_with_one_line_naming_the_flag(tmp_path):
    script = tmp_path / "slow_rank0.py"
    script.write_text(_SLOW_RANK0)

    def slow_torchrun(what, out):
        return run_python(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script, what, "5",
                           TRAIN, *MINI, "--limit-train-batches", "2", "--epochs", "2", "--output", out,
                           "--dist-timeout", "2"], timeout=300)

    stuck = slow_torchrun("evaluate", tmp_path / "evaluate")
    assert stuck.returncode != 0
    lines = [line for line in stuck.stderr.splitlines() if line.startswith("error: rank 1:")]
    assert len(lines) == 1 and "waited longer than --dist-timeout 2 s for the other processes" in lines[0], \
        stuck.stderr[-3000:]
    assert 'pointcoc/engine' not in stuck.stderr  # no traceback of a rank (torchrun prints its own summary)
