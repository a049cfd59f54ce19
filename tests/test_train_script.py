"""The training / evaluation scripts end to end, in subprocesses, on tiny h5 files written here."""
import json
import os
import re
import signal
import time

import pytest
import torch

from pointcoc.engine import load_checkpoint

from point_h5_helpers import damage_chunk, write_h5, write_scanobjectnn
from script_checks import (ROOT, assert_run_outputs, last_line, lines, run_killed_in_save, run_python as run,
                           start_python)

TRAIN = ROOT / "scripts" / "train_scanobjectnn.py"
EVAL = ROOT / "scripts" / "evaluate.py"
SMALL = json.dumps({"embed_dim": 8, "k_neighbors": 4, "res_expansion": 0.25})
FAST = ["--model", "pointmlp_elite", "--model-kwargs", SMALL, "--num-points", "64", "--batch-size", "8",
        "--workers", "0", "--device", "cpu", "--lr", "0.05"]


@pytest.fixture(scope="module")
def h5_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("scanobjectnn") / "h5_files"
    write_scanobjectnn(root, n_train=32, n_test=15, points=128)
    return root


@pytest.fixture(scope="module")
def trained(h5_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    # --memory-efficient: the recomputing model trains and its checkpoint evaluates like any other
    proc = run([TRAIN, "--data-root", h5_root, "--epochs", "2", "--output", out, "--seed", "1", "--memory-efficient",
                *FAST])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_training_run_writes_checkpoint_and_consistent_metrics(trained):
    out, proc = trained
    recs, res = assert_run_outputs(out, epochs=2, n_eval=15, num_classes=15)
    assert res["test_oa"] == pytest.approx(recs[-1]["test_oa"])
    assert "RESULT [final epoch (no validation split)] epoch 2" in proc.stdout
    # stdout and stderr are pipes here: one line per epoch, no progress-bar fragments
    assert [line.split(" | ")[0] for line in proc.stdout.splitlines() if line.startswith("epoch ")] == \
        ["epoch 1/2", "epoch 2/2"]
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "pointmlp_elite" and cfg["model_kwargs"]["num_classes"] == 15 and cfg["num_points"] == 64
    assert cfg["model_kwargs"]["memory_efficient"] is True


def test_evaluate_script_reproduces_the_logged_metrics(trained, tmp_path):
    out, _ = trained
    res = json.loads((out / "results.json").read_text())
    proc = run([EVAL, out / "last.pt", "--device", "cpu", "--json", tmp_path / "m.json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["confusion_matrix"] == res["confusion_matrix"]
    assert f"OA {res['test_oa']:.2f}%" in proc.stdout and f"mAcc {res['test_macc']:.2f}%" in proc.stdout
    # the per-class table, printed after the summary and in the JSON: counts and accuracies from the matrix
    cm = res["confusion_matrix"]
    rows = m["per_class"]
    assert [r["count"] for r in rows] == [sum(row) for row in cm]
    for i, r in enumerate(rows):
        assert r["class"] == res["class_names"][i]
        assert r["accuracy"] == (pytest.approx(100 * cm[i][i] / r["count"]) if r["count"] else None)
    table = proc.stdout[proc.stdout.index("OA "):].splitlines()[1:]
    assert table[0].split() == ["class", "count", "accuracy"] and len(table) == 1 + len(rows)
    for line, r in zip(table[1:], rows):
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.1f}%"
        assert line.split() == [r["class"], str(r["count"]), acc]


def test_missing_data_exits_2_with_paths_and_no_traceback(tmp_path):
    proc = run([TRAIN, "--data-root", tmp_path / "absent", *FAST])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(tmp_path / "absent" / "main_split" / "training_objectdataset_augmentedrot_scale75.h5") in proc.stderr
    assert "terms of use" in proc.stderr


@pytest.mark.parametrize("case, message", [
    ("label", "labels must lie in 0..14; found [15]"),
    ("shape", "dataset 'data' must have shape (n, P, 3)"),
    ("keys", "missing ['label']"),
])
def test_bad_data_files_exit_2(tmp_path, case, message):
    root = tmp_path / "h5_files"
    (x, y), _ = write_scanobjectnn(root, n_train=16, n_test=8, points=64)
    bad = root / "main_split" / "training_objectdataset_augmentedrot_scale75.h5"
    if case == "label":
        y[3] = 15
        write_h5(bad, x, y)
    elif case == "shape":
        write_h5(bad, x[:, :, :2], y)
    else:
        write_h5(bad, x, None)
    proc = run([TRAIN, "--data-root", root, *FAST])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr


def test_bad_checkpoint_and_bad_arguments_exit_2(tmp_path, h5_root):
    garbage = tmp_path / "last.pt"
    garbage.write_bytes(b"junk")
    proc = run([TRAIN, "--data-root", h5_root, "--resume", garbage, *FAST])
    assert proc.returncode == 2 and "not a readable pointcoc checkpoint" in proc.stderr
    proc = run([EVAL, garbage])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = run([TRAIN, "--data-root", h5_root, *FAST, "--model", "pointmlp_nope"])
    assert proc.returncode == 2 and "unknown model 'pointmlp_nope'" in proc.stderr
    proc = run([TRAIN, "--batch-size", "0"])
    assert proc.returncode == 2 and "expected a positive integer" in proc.stderr


def test_help_documents_every_flag():
    proc = run([TRAIN, "--help"])
    assert proc.returncode == 0
    for flag in ("--model", "--dataset", "--data-root", "--variant", "--epochs", "--batch-size", "--num-points",
                 "--lr", "--workers", "--device", "--seed", "--output", "--resume", "--amp",
                 "--limit-train-batches", "--limit-val-batches", "--select-on-test", "--val-fraction", "--progress"):
        assert flag in proc.stdout, flag
    assert "--votes" in run([EVAL, "--help"]).stdout and "--progress" in run([EVAL, "--help"]).stdout


def test_interrupted_then_resumed_run_equals_uninterrupted(trained, h5_root, tmp_path):
    out = tmp_path / "r"
    common = [TRAIN, "--data-root", h5_root, "--epochs", "2", "--output", out, "--seed", "1", *FAST]
    first = run([*common, "--stop-after-epoch", "1"])
    assert first.returncode == 0, first.stderr[-2000:]
    assert len(lines(out / "metrics.jsonl")) == 1
    again = run([*common, "--resume", out / "last.pt"])
    assert again.returncode == 0, again.stderr[-2000:]

    def strip(recs):
        return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in recs]

    assert strip(lines(out / "metrics.jsonl")) == strip(lines(trained[0] / "metrics.jsonl"))
    res = json.loads((out / "results.json").read_text())
    assert res["confusion_matrix"] == json.loads((trained[0] / "results.json").read_text())["confusion_matrix"]


def test_torchrun_two_gloo_processes_match_one_process(h5_root, tmp_path):
    out = tmp_path / "ddp"
    proc = run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", TRAIN,
                "--data-root", h5_root, "--epochs", "1", "--output", out, *FAST], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(lines(out / "metrics.jsonl")) == 1  # only rank 0 writes
    res = json.loads((out / "results.json").read_text())
    assert sum(map(sum, res["confusion_matrix"])) == 15  # every test sample counted once over both shards
    single = run([EVAL, out / "last.pt", "--device", "cpu", "--json", tmp_path / "m.json"])
    assert single.returncode == 0, single.stderr[-2000:]
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["confusion_matrix"] == res["confusion_matrix"]
    assert m["oa"] == pytest.approx(res["test_oa"]) and m["macc"] == pytest.approx(res["test_macc"])
    assert m["loss"] == pytest.approx(res["test_loss"], rel=1e-4)


def test_validation_split_from_the_script_selects_best_pt(h5_root, tmp_path):
    out = tmp_path / "val"
    proc = run([TRAIN, "--data-root", h5_root, "--epochs", "2", "--output", out, "--val-fraction", "0.25", *FAST])
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = lines(out / "metrics.jsonl")
    assert all("val_oa" in r for r in recs)
    res = json.loads((out / "results.json").read_text())
    assert "validation" in res["protocol"] and (out / "best.pt").is_file()
    assert res["epoch"] == max(recs, key=lambda r: r["val_oa"])["epoch"]


def test_a_run_killed_while_saving_resumes_to_the_uninterrupted_metrics_and_files(trained, h5_root, tmp_path):
    """SIGKILL inside epoch 2's checkpoint write: epoch 2 is logged, last.pt is epoch 1's, a temp file is left.
    The resumed run removes the temp file, repeats epoch 2 without a second line, and matches the straight run."""
    out = tmp_path / "killed"
    args = ["--data-root", h5_root, "--epochs", "2", "--output", out, "--seed", "1", *FAST]
    killed = run_killed_in_save(TRAIN, args, n=2)
    assert killed.returncode == -signal.SIGKILL
    assert [r["epoch"] for r in lines(out / "metrics.jsonl")] == [1, 2]
    assert len(list(out.glob(".last.pt.*.tmp"))) == 1
    again = run([TRAIN, *args, "--resume", out / "last.pt"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert not list(out.glob(".*.tmp"))

    def strip(recs):
        return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in recs]

    assert strip(lines(out / "metrics.jsonl")) == strip(lines(trained[0] / "metrics.jsonl"))
    mode = {p.name: os.stat(p).st_mode & 0o777 for p in out.iterdir()}
    assert mode["last.pt"] == mode["config.json"] == mode["results.json"], mode


def test_ctrl_c_stops_with_one_line_naming_epoch_step_and_checkpoint(h5_root, tmp_path):
    out = tmp_path / "int"
    # so many epochs that the run cannot end before the signal, even when this process is starved of CPU
    proc = start_python([TRAIN, "--data-root", h5_root, "--epochs", "100000", "--output", out, *FAST])
    deadline = time.monotonic() + 240
    while not (out / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    msg = last_line(err)
    m = re.fullmatch(r"interrupted at epoch (\d+), step (\d+); last.pt holds epoch (\d+). Resume with: pointcoc train "
                     r"--resume (.+)", msg)
    assert m, msg
    epoch, step, saved, path = int(m[1]), int(m[2]), int(m[3]), m[4]
    assert path == str(out / "last.pt") and load_checkpoint(path)["epoch"] == saved
    assert saved in (epoch - 1, epoch) and 0 <= step <= 4  # 32 samples / batch 8; a save at step 4 keeps its epoch
    assert [r["epoch"] for r in lines(out / "metrics.jsonl")][-1] >= saved


def test_the_checkpoint_alone_resumes_the_run_to_the_uninterrupted_metrics(trained, h5_root, tmp_path):
    out = tmp_path / "alone"
    recipe = tmp_path / "two_epochs.toml"  # the recipe's name stays in config.json, checkpoints and weight cards
    recipe.write_text('command = "train"\ndescription = "two epochs, seed 1"\n\n[args]\nepochs = 2\nseed = 1\n')
    first = run([TRAIN, "--config", recipe, "--data-root", h5_root, "--output", out, *FAST, "--stop-after-epoch", "1"])
    assert first.returncode == 0, first.stderr[-2000:]
    config = (out / "config.json").read_text()
    elsewhere = tmp_path / "cwd"  # data, model, seed, output folder and threads all come from the checkpoint
    elsewhere.mkdir()
    again = run([TRAIN, "--resume", out / "last.pt"], cwd=elsewhere)
    assert again.returncode == 0, again.stderr[-2000:]
    assert not list(elsewhere.iterdir())

    def strip(recs):
        return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in recs]

    assert strip(lines(out / "metrics.jsonl")) == strip(lines(trained[0] / "metrics.jsonl"))
    assert (out / "config.json").read_text() == config
    state = load_checkpoint(out / "last.pt")
    assert state["config"]["recipe"] == str(recipe)
    assert state["num_threads"] == 1 and state["data"]["train"]["count"] == 32
    assert state["data"]["test"]["count"] == 15 and len(state["data"]["train"]["labels_sha256"]) == 64


def test_a_resume_on_other_data_is_refused_and_another_thread_count_warns(trained, h5_root, tmp_path, capsys):
    from pointcoc.engine.pointcloud_task import build_train_parser, run_cli, train_main

    other = tmp_path / "other" / "h5_files"
    write_scanobjectnn(other, n_train=32, n_test=15, points=128, seed=7)  # same sizes, other clouds and labels
    ckpt = trained[0] / "last.pt"
    assert run_cli(train_main, build_train_parser(), ["--resume", str(ckpt), "--data-root", str(other),
                                                      "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"error: --resume: the data in --data-root {other} is not the data the checkpoint trained on (train: " \
           f"checkpoint 32 samples, labels " in err and "--allow-data-change" in err
    assert not (tmp_path / "o").exists()
    with pytest.warns(UserWarning, match="trained with 1 torch threads, this run has 2.*--threads 1"):
        assert run_cli(train_main, build_train_parser(), ["--resume", str(ckpt), "--threads", "2", "--epochs", "3",
                                                          "--output", str(tmp_path / "t"), "--stop-after-epoch",
                                                          "3"]) == 0
    assert [r["epoch"] for r in lines(tmp_path / "t" / "metrics.jsonl")] == [3]


def test_sigterm_stops_like_ctrl_c_with_exit_143_and_a_resume_command_that_works(h5_root, tmp_path):
    import shlex

    out = tmp_path / "term"
    proc = start_python([TRAIN, "--data-root", h5_root, "--epochs", "100000", "--output", out, *FAST])
    deadline = time.monotonic() + 240
    while not (out / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    m = re.fullmatch(r"terminated \(SIGTERM\) at epoch (\d+), step (\d+); last.pt holds epoch (\d+). Resume with: "
                     r"(pointcoc train --resume .+)", last_line(err))
    assert m, last_line(err)
    saved, command = int(m[3]), shlex.split(m[4])
    assert command[-1] == str(out / "last.pt") and load_checkpoint(command[-1])["epoch"] == saved
    again = run(["-m", "pointcoc", *command[1:], "--stop-after-epoch", saved + 1], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert [r["epoch"] for r in lines(out / "metrics.jsonl")] == list(range(1, saved + 2))


BAD_INPUTS = [  # (arguments after the common ones, message); each exits 2 with one line and no traceback
    (["--lr", "inf"], r"lr \(--lr\) must be finite and > 0; got inf"),
    (["--weight-decay", "nan"], r"weight_decay \(--weight-decay\) must be finite"),
    (["--batch-size", "1"], r"--batch-size must give at least 2 samples in training"),
    (["--model-kwargs", '{"embed_dimm": 8}'], r"model 'pointmlp_elite' has no argument 'embed_dimm'. Did you mean "
                                              r"'embed_dim'\?"),
    (["--device", "mps"], r"--device 'mps' requested but MPS \(Apple GPU\) is not available"),
    (["--device", "cuda:99"], r"--device 'cuda:99' requested but"),
    (["--output", "/proc"], r"--output /proc is not writable"),
    (["--lr", "1e38"], r"training diverged: .* at epoch 1, step \d; likely --lr 1e\+38 is too high"),
    (["--output", "{file}"], r"--output .*/file is a file, not a folder"),
    (["--output", "{file}/run"], r"--output .*/file/run lies below .*/file, which is a file, not a folder"),
]


@pytest.mark.parametrize("extra, message", BAD_INPUTS)
def test_bad_inputs_exit_2_with_a_message(h5_root, tmp_path, capsys, extra, message):
    from pointcoc.engine.pointcloud_task import build_train_parser, run_cli, train_main

    (tmp_path / "file").write_text("not a folder")
    argv = ["--data-root", h5_root, "--epochs", "1", "--output", tmp_path / "out", *FAST, *extra]
    argv = [str(a).replace("{file}", str(tmp_path / "file")) for a in argv]
    assert run_cli(train_main, build_train_parser(), argv) == 2
    out, err = capsys.readouterr()
    assert re.fullmatch("error: " + message + ".*", last_line(err)) and "Traceback" not in err, err
    assert '"epoch": 1' not in out and not list(tmp_path.rglob("last.pt"))


def test_a_full_disk_exits_2_saying_the_previous_checkpoint_is_intact(h5_root, tmp_path, capsys, monkeypatch):
    import errno

    from pointcoc.engine.pointcloud_task import build_train_parser, run_cli, train_main

    real_save, calls = torch.save, []

    def save_on_a_full_disk(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    argv = ["--data-root", h5_root, "--epochs", "3", "--output", tmp_path, *FAST]
    assert run_cli(train_main, build_train_parser(), [str(a) for a in argv]) == 2
    assert last_line(capsys.readouterr().err) == (f"error: the disk is full: could not write {tmp_path / 'last.pt'} "
                                                  "(No space left on device); the previous last.pt is intact. Free "
                                                  "some space and resume")
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1 and not list(tmp_path.glob(".*.tmp"))


def test_existing_runs_and_contradicting_resumes_are_refused(trained, h5_root, tmp_path, capsys):
    from pointcoc.engine.pointcloud_task import build_train_parser, run_cli, train_main

    out = trained[0]
    def files():  # the lock file holds the pid of the last process that checked the folder
        return {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".pointcoc.lock"}

    before = files()
    argv = ["--data-root", h5_root, "--epochs", "2", "--seed", "1", *FAST]
    assert run_cli(train_main, build_train_parser(), [str(a) for a in [*argv, "--output", out]]) == 2
    assert f"--output {out} already holds a run" in capsys.readouterr().err
    argv[argv.index("--lr") + 1] = "0.5"
    code = run_cli(train_main, build_train_parser(),
                   [str(a) for a in [*argv, "--output", tmp_path, "--resume", out / "last.pt"]])
    assert code == 2 and "lr: checkpoint 0.05, now 0.5" in capsys.readouterr().err
    assert before == files()


def test_a_damaged_compressed_chunk_exits_2_naming_the_file(tmp_path, capsys):
    from pointcoc.engine.pointcloud_task import build_train_parser, run_cli, train_main

    root = tmp_path / "h5_files"
    (x, y), _ = write_scanobjectnn(root, n_train=16, n_test=8, points=64)
    bad = root / "main_split" / "training_objectdataset_augmentedrot_scale75.h5"
    damage_chunk(bad, x, y)
    assert run_cli(train_main, build_train_parser(), [str(a) for a in ["--data-root", root, *FAST]]) == 2
    assert f"{bad} is damaged: reading its data failed" in capsys.readouterr().err


def test_evaluate_checks_its_json_path_before_evaluating(trained, tmp_path, capsys):
    from pointcoc.engine.pointcloud_task import build_eval_parser, evaluate_main, run_cli

    for target, message in ((tmp_path, "is a folder"), (tmp_path / "no" / "m.json", "does not exist")):
        assert run_cli(evaluate_main, build_eval_parser(), [str(trained[0] / "last.pt"), "--json", str(target)]) == 2
        out, err = capsys.readouterr()
        assert f"--json {target}" in err and message in err and "OA" not in out
    assert run_cli(evaluate_main, build_eval_parser(), [str(trained[0] / "last.pt"), "--limit-val-batches", "0"]) == 2
    assert "--limit-val-batches must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_refuses_an_uneven_global_batch_and_cpu_sync_bn(h5_root, tmp_path):
    for extra, message in ((["--batch-size", "9"], "--batch-size 9 is the global batch and must divide evenly over "
                                                   "the 2 processes; use a multiple of 2, e.g. 8"),
                           (["--sync-bn"], "--sync-bn needs CUDA devices")):
        proc = run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", TRAIN,
                    "--data-root", h5_root, "--epochs", "1", "--output", tmp_path / extra[0], *FAST, *extra],
                   timeout=600)
        assert proc.returncode != 0 and f"error: {message}" in proc.stderr, proc.stderr[-3000:]
        assert "pointcoc/engine" not in proc.stderr  # torchrun reports the failed workers; no traceback of ours
        assert not (tmp_path / extra[0] / "metrics.jsonl").exists()


@pytest.mark.slow
def test_torchrun_run_repeats_itself_and_resumes_exactly(h5_root, tmp_path):
    """Two gloo processes: a run stopped after epoch 1 and resumed gives the straight run's metrics and weights."""
    def torchrun(out, *extra):
        proc = run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", TRAIN, "--data-root",
                    h5_root, "--epochs", "2", "--seed", "4", "--output", out, *FAST, *extra], timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    torchrun(tmp_path / "a")
    torchrun(tmp_path / "b", "--stop-after-epoch", "1")
    torchrun(tmp_path / "b", "--resume", tmp_path / "b" / "last.pt")

    def strip(recs):
        return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in recs]

    assert strip(lines(tmp_path / "a" / "metrics.jsonl")) == strip(lines(tmp_path / "b" / "metrics.jsonl"))
    wa, wb = (load_checkpoint(tmp_path / d / "last.pt")["model"] for d in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_the_script_gives_the_same_run_with_and_without_workers(h5_root, tmp_path):
    # issue 20, item 1: --workers 0 and --workers 2 used to end with different weights
    weights = {}
    for workers in ("0", "2"):
        out = tmp_path / f"w{workers}"
        args = list(FAST)
        args[args.index("--workers") + 1] = workers
        proc = run([TRAIN, "--data-root", h5_root, "--epochs", "1", "--output", out, "--threads", "1", *args])
        assert proc.returncode == 0, proc.stderr[-3000:]
        weights[workers] = load_checkpoint(out / "last.pt")["model"]
    for k, v in weights["0"].items():
        assert torch.equal(weights["2"][k], v), k


# Runs SCRIPT ARGS... with the N-th and later checkpoint writes going to /dev/full: the real torch.save meets ENOSPC.
_FULL_DISK_FROM_SAVE = """
import os, runpy, sys
n, calls, real_fdopen = int(sys.argv[1]), [], os.fdopen
def fdopen(fd, *args, **kwargs):
    if ".pt." not in os.readlink(f"/proc/self/fd/{fd}"):  # config.json, PNGs: written normally
        return real_fdopen(fd, *args, **kwargs)
    calls.append(1)
    if len(calls) < n:
        return real_fdopen(fd, *args, **kwargs)
    os.close(fd)
    return open("/dev/full", "wb")
import pointcoc._atomic
pointcoc._atomic.os.fdopen = fdopen
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_inside_torch_save_exits_2_with_one_line(h5_root, tmp_path):
    # issue 20, item 4: torch's zip writer raised "RuntimeError: [enforce fail at inline_container.cc ...]"
    proc = run(["-c", _FULL_DISK_FROM_SAVE, 2, TRAIN, "--data-root", h5_root, "--epochs", "3", "--output", tmp_path,
                *FAST])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert last_line(proc.stderr) == (f"error: the disk is full: could not write {tmp_path / 'last.pt'} (No space left "
                                      "on device); the previous last.pt is intact. Free some space and resume")
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1 and not list(tmp_path.glob(".*.tmp"))
