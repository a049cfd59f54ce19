"""scripts/train_pixels.py end to end on real images: files, metrics, resume, rebuilt test set, usage errors."""
import json

import pytest
import torch
from torch.utils.data import DataLoader

from pointcoc.data.pixels import collate_pixel_sets
from pointcoc.engine import build_model_from_checkpoint, evaluate, load_checkpoint
from pointcoc.engine.pixel_task import build_train_parser, pixel_test_set, run_cli, train_main

from script_checks import ROOT, assert_run_outputs, lines, run_python

SCRIPT = ROOT / "scripts" / "train_pixels.py"
TINY = ["--epochs", "2", "--batch-size", "16", "--limit-train-batches", "3", "--limit-val-batches", "2",
        "--device", "cpu", "--workers", "0"]


def run_script(args, timeout=300):
    return run_python([SCRIPT, *args], timeout=timeout)


def run_inprocess(args):
    return run_cli(train_main, build_train_parser(), [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits_discrete")
    proc = run_script(["--dataset", "digits", "--format", "discrete", "--keep", "0.5", "--output", out, *TINY])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_script_writes_checkpoint_metrics_and_config(trained):
    out, proc = trained
    assert_run_outputs(out, epochs=2, n_eval=32, num_classes=10)  # two evaluation batches of 16
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "pointmlp_coc_pixels_small" and cfg["dataset"] == "digits"
    assert cfg["model_kwargs"] == {"num_classes": 10, "in_channels": 1, "coord_dim": 2}
    assert cfg["extra"] == {"task": "pixels", "format": "discrete", "keep": 0.5, "mask_seed": 0,
                            "redraw_masks": True, "image_shape": [1, 8, 8]}
    assert "RESULT [final epoch (no validation split)] epoch 2" in proc.stdout


def test_checkpoint_rebuilds_its_test_set(trained):
    out, _ = trained
    state = load_checkpoint(out / "last.pt")
    test, names = pixel_test_set(state["config"])
    assert len(test) == 359 and names == [str(i) for i in range(10)] and test.fmt == "discrete"
    model = build_model_from_checkpoint(state)
    loader = DataLoader(test, batch_size=16, collate_fn=collate_pixel_sets)
    m = evaluate(model, loader, 10, limit_batches=2, progress=False)
    res = json.loads((out / "results.json").read_text())
    assert m["oa"] == pytest.approx(res["test_oa"]) and m["confusion_matrix"] == res["confusion_matrix"]


def test_resume_with_redrawn_masks_repeats_the_uninterrupted_run(tmp_path):
    common = ["--dataset", "digits", "--format", "masked", "--keep", "0.6", "--redraw-masks", "--seed", "3",
              "--model", "pointmlp_pixels_small", *TINY]
    assert run_inprocess([*common, "--output", tmp_path / "full"]) == 0
    assert run_inprocess([*common, "--output", tmp_path / "part", "--stop-after-epoch", "1"]) == 0
    assert len(lines(tmp_path / "part" / "metrics.jsonl")) == 1
    # the checkpoint alone: its recorded format, keep, masks, model, limits, seed and folder are the defaults
    assert run_inprocess(["--resume", tmp_path / "part" / "last.pt"]) == 0
    full = torch.load(tmp_path / "full" / "last.pt", weights_only=False)["model"]
    resumed = torch.load(tmp_path / "part" / "last.pt", weights_only=False)["model"]
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    a, b = lines(tmp_path / "full" / "metrics.jsonl"), lines(tmp_path / "part" / "metrics.jsonl")
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]


def test_rgbd_run_uses_depth_as_third_coordinate(tmp_path):
    assert run_inprocess(["--dataset", "modelnet_depth", "--format", "rgbd", "--output", tmp_path,
                          "--epochs", "1", "--batch-size", "8", "--limit-train-batches", "2",
                          "--limit-val-batches", "1", "--device", "cpu"]) == 0
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model"] == "pointmlp_coc_pixels"
    assert cfg["model_kwargs"] == {"num_classes": 10, "in_channels": 2, "coord_dim": 3}
    assert cfg["extra"]["format"] == "rgbd" and cfg["extra"]["image_shape"] == [1, 28, 28]


def test_bad_arguments_exit_2_with_a_message(tmp_path, capsys):
    proc = run_script(["--dataset", "digits", "--format", "regular", "--keep", "0.5", "--output", tmp_path])
    assert proc.returncode == 2 and "--keep applies to discrete, masked and irregular" in proc.stderr
    assert "Traceback" not in proc.stderr

    assert run_inprocess(["--dataset", "digits", "--format", "rgbd", "--output", tmp_path]) == 2
    assert "needs a data set with depth" in capsys.readouterr().err
    assert run_inprocess(["--dataset", "digits", "--format", "discrete", "--keep", "0.1", "--output", tmp_path]) == 2
    err = capsys.readouterr().err
    assert "gives sets of 6 pixels" in err and "k_neighbors[0] = 8" in err
    with pytest.raises(SystemExit) as exc:
        run_inprocess(["--keep", "1.5"])
    assert exc.value.code == 2
    assert "expected a fraction in (0, 1]" in capsys.readouterr().err


def test_a_checkpoint_of_the_other_training_command_names_the_command_that_resumes_it(trained, capsys):
    from pointcoc.engine import pointcloud_task

    out, _ = trained
    assert pointcloud_task.run_cli(pointcloud_task.train_main, pointcloud_task.build_train_parser(),
                                   ["--resume", str(out / "last.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --resume {out / 'last.pt'} is a checkpoint of `pointcoc train-pixels`; resume it with "
                   f"`pointcoc train-pixels --resume {out / 'last.pt'}`")


def test_resume_refuses_another_format(trained, tmp_path, capsys):
    out, _ = trained
    code = run_inprocess(["--dataset", "digits", "--format", "irregular", "--keep", "0.5", "--output", tmp_path,
                          "--resume", out / "last.pt", *TINY])
    assert code == 2 and "extra.format: checkpoint 'discrete', now 'irregular'" in capsys.readouterr().err


def test_evaluate_script_reproduces_a_pixel_checkpoint(trained, tmp_path):
    out, _ = trained
    proc = run_python([ROOT / "scripts" / "evaluate.py", out / "last.pt", "--batch-size", "16",
                       "--limit-val-batches", "2", "--json", tmp_path / "m.json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "m.json").read_text())
    res = json.loads((out / "results.json").read_text())
    assert m["oa"] == pytest.approx(res["test_oa"]) and m["confusion_matrix"] == res["confusion_matrix"]


def test_validation_split_keeps_fixed_masks_while_training_masks_change():
    from pointcoc.engine.pixel_task import pixel_datasets, split_validation

    train, _, _ = pixel_datasets("digits", "discrete", 0.5, redraw=True)
    tr, val = split_validation(train, 0.2, seed=0)
    assert abs(len(val) - 0.2 * len(train)) <= 10 and len(tr) + len(val) == len(train)
    assert not set(tr.indices) & set(val.indices)
    torch.manual_seed(0)
    assert torch.equal(val[0]["xyz"], val[0]["xyz"])
    assert not torch.equal(tr[0]["xyz"], tr[0]["xyz"])


def test_script_resumes_a_checkpoint_for_more_epochs(trained, tmp_path):
    out, _ = trained
    run_dir = tmp_path / "more"
    run_dir.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        (run_dir / name).write_text((out / name).read_text())
    args = ["--dataset", "digits", "--format", "discrete", "--keep", "0.5", "--output", run_dir,
            "--resume", out / "last.pt", *TINY]
    args[args.index("--epochs") + 1] = "3"
    proc = run_script(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = lines(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    assert recs[:2] == lines(out / "metrics.jsonl")
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 3
