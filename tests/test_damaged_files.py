"""A damaged user file is one ``error:`` line naming the file, exit 2; any other error one line, exit 1; and
``POINTCOC_DEBUG=1`` / ``pointcoc --debug`` brings the traceback back (issue 28 item 4)."""
import argparse
import json
import os

import pytest
import torch

from pointcoc.commands import main
from pointcoc.data.image_datasets import shipped_set_dir
from pointcoc.engine import load_checkpoint
from pointcoc.engine.checkpoint import CheckpointError
from pointcoc.engine.cli import run_cli

TINY = ["--epochs", "1", "--batch-size", "16", "--limit-train-batches", "2", "--limit-val-batches", "2",
        "--device", "cpu", "--workers", "0", "--progress", "none"]


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    assert main(["train-pixels", "--dataset", "digits", "--model", "pointmlp_pixels_small", "--output", str(out),
                 *TINY]) == 0
    return out


def one_error_line(capsys, code, expected_code=2):
    err = capsys.readouterr().err
    assert code == expected_code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize("damage", ["not gzip", "cut short"])
def test_a_damaged_mnist5k_file_is_one_line(tmp_path, capsys, damage):
    real = (shipped_set_dir("mnist5k") / "mnist_5k.csv.gz").read_bytes()
    bad = tmp_path / "mnist_5k.csv.gz"
    bad.write_bytes(b"no gzip here" * 100 if damage == "not gzip" else real[:len(real) // 2])
    code = main(["train-pixels", "--dataset", "mnist5k", "--data-root", str(tmp_path), "--output",
                 str(tmp_path / "run"), *TINY])
    assert one_error_line(capsys, code).startswith(f"error: {bad} is damaged: not a complete gzip file")


@pytest.mark.parametrize("content", [b"", b"this is text, not a picture", "truncated png"])
def test_visualize_clusters_names_a_file_that_is_no_image(pixel_run, tmp_path, capsys, content):
    from PIL import Image

    path = tmp_path / "digit.png"
    if content == "truncated png":
        Image.new("L", (64, 64), 128).save(path)
        path.write_bytes(path.read_bytes()[:40])
    else:
        path.write_bytes(content)
    code = main(["visualize-clusters", str(pixel_run / "last.pt"), str(path), "--output", str(tmp_path / "c.png")])
    assert one_error_line(capsys, code).startswith(f"error: {path} is not a readable image")


def test_a_checkpoint_without_its_metrics_record_is_refused_by_name(pixel_run, tmp_path, capsys):
    state = torch.load(pixel_run / "last.pt", weights_only=True)
    state["metrics"] = {}
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="its config and metrics.record must be dicts"):
        load_checkpoint(tmp_path / "bad.pt")
    code = main(["evaluate", str(tmp_path / "bad.pt")])
    assert f"{tmp_path / 'bad.pt'} is damaged" in one_error_line(capsys, code)


def test_load_exported_refuses_a_file_that_is_no_program(tmp_path):
    from pointcoc import load_exported

    (tmp_path / "model.pt2").write_bytes(b"garbage" * 50)
    with pytest.raises(ValueError, match="model.pt2 is not a program saved by export_model"):
        load_exported(tmp_path / "model.pt2")


def test_recipes_with_a_byte_order_mark_are_read_and_dates_are_refused(tmp_path, capsys):
    from pointcoc.engine.pixel_task import build_train_parser
    from pointcoc.engine.recipes import parse_with_recipe

    bom = tmp_path / "bom.toml"
    bom.write_bytes('\ufeffcommand = "train-pixels"\n[args]\nlr = 0.125\n'.encode("utf-8"))
    assert parse_with_recipe(build_train_parser(), ["--config", str(bom)], "train-pixels").lr == 0.125
    dated = tmp_path / "dated.toml"
    dated.write_text('command = "train-pixels"\n[args.model_kwargs]\nk_neighbors = 1979-05-27T07:32:00Z\n')
    with pytest.raises(SystemExit) as exit_:
        parse_with_recipe(build_train_parser(), ["--config", str(dated)], "train-pixels")
    assert exit_.value.code == 2
    assert f"--config {dated}: model_kwargs holds a TOML date or time" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [(b"\xff\xfe\x00binary", "is not a metrics file: not UTF-8 text"),
                                              (b'{"epoch": "one", "train_loss": 1}\n',
                                               "line 1: 'epoch' must be an integer >= 1; got 'one'")])
def test_plot_runs_names_a_damaged_metrics_file(tmp_path, capsys, content, message):
    (tmp_path / "metrics.jsonl").write_bytes(content)
    code = main(["plot-runs", str(tmp_path), "--output", str(tmp_path / "r.png")])
    assert message in one_error_line(capsys, code)
    assert not (tmp_path / "r.png").exists()


def test_a_resume_survives_a_binary_metrics_file(pixel_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes((pixel_run / "last.pt").read_bytes())
    (run / "metrics.jsonl").write_bytes(b"\xff\xfe\x00\x01 damaged")
    assert main(["train-pixels", "--resume", str(run / "last.pt"), "--epochs", "2"]) == 0
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_an_unexpected_error_is_one_line_with_exit_1_and_debug_shows_the_traceback(capsys, monkeypatch):
    parser = argparse.ArgumentParser()

    def broken(args):
        raise RuntimeError("something inside went wrong")

    monkeypatch.delenv("POINTCOC_DEBUG", raising=False)
    line = one_error_line(capsys, run_cli(broken, parser, []), expected_code=1)
    assert line.startswith("error: RuntimeError: something inside went wrong (unexpected; POINTCOC_DEBUG=1 shows")
    monkeypatch.setenv("POINTCOC_DEBUG", "1")
    with pytest.raises(RuntimeError, match="something inside"):
        run_cli(broken, parser, [])
    with pytest.raises(FileNotFoundError):  # usage errors too
        run_cli(lambda args: open("/no/such/file"), parser, [])
    monkeypatch.delenv("POINTCOC_DEBUG")
    assert main(["--debug", "env"]) == 0
    assert os.environ["POINTCOC_DEBUG"] == "1"
    monkeypatch.delenv("POINTCOC_DEBUG")


# ---------------------------------------------------------------- outputs checked before the work (item 5)


def test_outputs_are_checked_before_the_work(tmp_path, capsys, monkeypatch):
    from pointcoc import bench, create_model, export_model

    (tmp_path / "file").write_text("x")
    below_a_file, missing = tmp_path / "file" / "out.png", tmp_path / "no" / "out.json"
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 1.0}\n')
    code = main(["plot-runs", str(run), "--output", str(below_a_file)])
    assert f"--output {below_a_file}: its folder {tmp_path / 'file'} is not a folder" in one_error_line(capsys, code)
    monkeypatch.setattr(bench, "run_all", lambda **kw: pytest.fail("measured before checking --json"))
    with pytest.raises(SystemExit) as exit_:
        main(["benchmark", "--quick", "--json", str(missing)])
    assert exit_.value.code == 2
    assert f"--json {missing}: its folder {tmp_path / 'no'} does not exist" in capsys.readouterr().err
    model = create_model("pointmlp_elite", embed_dim=8, k_neighbors=4, num_classes=3)
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: pytest.fail("exported before checking path"))
    with pytest.raises(ValueError, match=f"path {missing}: its folder .* does not exist"):
        export_model(model, (torch.rand(2, 32, 3),), path=missing)


def test_a_full_disk_while_writing_a_figure_leaves_no_empty_png_and_names_the_file(tmp_path, monkeypatch):
    import errno

    import matplotlib.pyplot as plt

    from pointcoc import _atomic
    from pointcoc.engine.metrics import plot_confusion_matrix

    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_atomic.os, "fsync", full)
    path = tmp_path / "confusion_matrix.png"
    with pytest.raises(OSError, match=f"No space left on device: could not write {path}"):
        plot_confusion_matrix(torch.eye(3, dtype=torch.long), path, ["a", "b", "c"])
    assert list(tmp_path.iterdir()) == [] and not plt.get_fignums()
    monkeypatch.setattr(_atomic.os, "fsync", real_fsync)
    plot_confusion_matrix(torch.eye(3, dtype=torch.long), path, ["a", "b", "c"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- flags checked before the data (item 6)


@pytest.mark.parametrize("argv, message", [
    (["--lr=-0.1"], r"lr \(--lr\) must be finite and > 0; got -0.1"),
    (["--model-kwargs", '{"reducers": 0}'], "reducers must be an int >= 1; got 0"),
    (["--model-kwargs", '{"embed_dim": -4}'], "embed_dim must be an int >= 1; got -4"),
])
def test_flags_and_model_arguments_are_checked_before_the_data_set_is_looked_for(pixel_run, tmp_path, capsys, argv,
                                                                                 message):
    import re

    argv = [a.replace("{ckpt}", str(pixel_run / "last.pt")) for a in argv]
    # ScanObjectNN is not here: a check that came after the data would report the missing data set instead
    code = main(["train", "--data-root", str(tmp_path / "no_data"), "--output", str(tmp_path / "o"), *argv])
    line = one_error_line(capsys, code)
    assert re.search(message, line), line


def test_resume_and_overwrite_exclude_each_other(pixel_run, capsys):
    code = main(["train-pixels", "--resume", str(pixel_run / "last.pt"), "--overwrite"])
    assert "--resume continues the run in its folder and --overwrite replaces" in one_error_line(capsys, code)


def test_a_num_classes_that_contradicts_the_data_names_both(tmp_path, capsys):
    code = main(["train-pixels", "--dataset", "digits", "--model-kwargs", '{"num_classes": 5}', "--output",
                 str(tmp_path / "o"), *TINY])
    assert "--model-kwargs num_classes 5 contradicts the 10 classes of digits" in one_error_line(capsys, code)


def test_seeds_refuse_an_existing_seed_folder_before_the_first_seed_trains(pixel_run, tmp_path, capsys):
    (tmp_path / "seed1").mkdir()
    (tmp_path / "seed1" / "last.pt").write_bytes((pixel_run / "last.pt").read_bytes())
    code = main(["train", "--dataset", "modelnet10", "--seeds", "0", "1", "--output", str(tmp_path)])
    assert f"--output {tmp_path / 'seed1'} already holds a run" in one_error_line(capsys, code)
    assert not (tmp_path / "seed0").exists()


def test_evaluate_and_benchmark_check_their_numbers(pixel_run, capsys):
    code = main(["evaluate", str(pixel_run / "last.pt"), "--seed", str(2**64)])
    assert "--seed must be an int in [0, 2**63 - 1]" in one_error_line(capsys, code)
    for argv, message in ((["--profile", "nope"], "--profile 'nope' is no registered model"),
                          (["--profile-vs-reference", "0"], "--profile-vs-reference takes a batch size >= 1")):
        with pytest.raises(SystemExit) as exit_:
            main(["benchmark", *argv])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
