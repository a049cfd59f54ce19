"""Issue 20, item 10: small bad inputs, each a clear error (or a documented behaviour) instead of a traceback."""
import json
import os
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

import pointcoc
from pointcoc.data.h5sets import DataFormatError, read_h5_split
from pointcoc.engine import CheckpointError, TrainConfig, load_checkpoint
from pointcoc.ops import knn

from point_h5_helpers import write_h5

SMALL = dict(num_classes=4, embed_dim=8, k_neighbors=4, res_expansion=0.25)


def test_an_h5_data_entry_that_is_a_group_is_a_data_format_error(tmp_path):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_group("data").create_dataset("x", data=np.zeros((2, 8, 3), np.float32))
        f.create_dataset("label", data=np.zeros(2, np.int64))
    with pytest.raises(DataFormatError, match=r"'data' must be HDF5 datasets \(arrays\); got a Group"):
        read_h5_split(path, 4)


def test_coordinates_whose_squared_distances_overflow_are_refused(tmp_path):
    data = np.random.default_rng(0).random((2, 16, 3)).astype(np.float32)
    data[1, 3] = 1e30
    with pytest.raises(DataFormatError, match=r"coordinates up to 1e\+30 in magnitude; float32 squared distances "
                                              r"overflow"):
        read_h5_split(write_h5(tmp_path / "big.h5", data, np.zeros(2, np.int64)), 4)
    model = pointcoc.create_model("pointmlp_elite", **SMALL).eval()
    with pytest.raises(ValueError, match=r"xyz holds coordinates up to 1e\+30 in magnitude; squared distances "
                                         r"overflow torch.float32 above 5.3\de\+18"):
        model(torch.from_numpy(data))
    model(torch.from_numpy(data).clamp(max=1e3))  # large but fine


def test_seeds_are_checked_before_anything_trains(tmp_path, capsys):
    from pointcoc.engine.pointcloud_task import build_train_parser, run_cli, train_main

    base = ["--dataset", "modelnet10", "--model", "pointmlp_elite", "--num-points", "64", "--epochs", "1",
            "--device", "cpu", "--output", str(tmp_path / "out")]
    assert run_cli(train_main, build_train_parser(), [*base, "--seeds", "0", "0"]) == 2
    assert "--seeds must name each seed once; [0] given more than once" in capsys.readouterr().err
    assert run_cli(train_main, build_train_parser(), [*base, "--seeds", "0", str(2**64)]) == 2
    assert f"seed (--seed / --seeds) must be an int in [0, 2**63 - 1]; got {2**64}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # seed 0 was not trained first
    assert run_cli(train_main, build_train_parser(), [*base, "--seed", str(2**64)]) == 2
    assert "seed (--seed / --seeds) must be an int" in capsys.readouterr().err


def test_a_validation_split_and_select_on_test_exclude_each_other():
    with pytest.raises(ValueError, match="--val-fraction and --select-on-test exclude each other"):
        TrainConfig(val_fraction=0.2, select_on_test=True)


def test_plot_runs_says_which_file_it_wrote(tmp_path, capsys):
    from pointcoc.commands.plot_runs import main
    run = tmp_path / "run"
    run.mkdir()
    run.joinpath("metrics.jsonl").write_text(json.dumps({"epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_oa": 50.0,
                                                         "train_macc": 50.0, "test_loss": 1.0, "test_oa": 50.0,
                                                         "test_macc": 50.0}) + "\n")
    assert main([str(run), "--output", str(tmp_path / "curves")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'curves.png'}"
    assert (tmp_path / "curves.png").is_file()
    assert main([str(run), "--output", str(run)]) == 2
    assert f"--output {run} is a folder; give a PNG file name" in capsys.readouterr().err


def test_authors_checkpoints_with_nan_weights_or_of_pointcoc_are_refused(tmp_path):
    model = pointcoc.create_model("pointmlp_elite", **SMALL)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    from pointcoc.models.authors import authors_state_dict

    bad = dict(state)
    bad["classifier.0.weight"] = bad["classifier.0.weight"].clone().fill_(float("nan"))
    with pytest.raises(ValueError, match=r"checkpoint holds NaN or inf values in 1 tensor\(s\), e.g. "
                                         r"\['classifier.0.weight'\]"):
        authors_state_dict({"net": bad})
    ours = {"format": "pointcoc-checkpoint-v1", "model": state}
    torch.save(ours, tmp_path / "last.pt")
    with pytest.raises(ValueError, match=r"this is a pointcoc checkpoint .*evaluate it with `pointcoc evaluate "
                                         r"PATH` \(without --authors-checkpoint\)"):
        pointcoc.load_authors_checkpoint(tmp_path / "last.pt", "pointmlp_elite")
    with pytest.raises(ValueError, match="is a folder; give the checkpoint file"):
        pointcoc.load_authors_checkpoint(tmp_path, "pointmlp_elite")


def test_a_folder_given_as_a_checkpoint_is_named_as_a_folder(tmp_path):
    with pytest.raises(CheckpointError, match=rf"checkpoint {tmp_path} is a folder, not a checkpoint file; give a "
                                              rf"file such as {tmp_path / 'last.pt'}"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("kwargs", [{"memory_efficient": "no"}, {"fps_skip_near_origin": 1},
                                    {"use_xyz": "false"}])
def test_bool_arguments_must_be_bools(kwargs):
    (key, value), = kwargs.items()
    with pytest.raises(ValueError, match=rf"{key} must be a bool \(true or false\); got {value!r}"):
        pointcoc.create_model("pointmlp_elite", **SMALL, **kwargs)
    with pytest.raises(ValueError, match=rf"{key} must be a bool \(True or False\); got {value!r}"):
        pointcoc.PointMLP(**SMALL, **kwargs)


def test_a_training_batch_of_one_gets_our_message_not_batchnorms():
    model = pointcoc.create_model("pointmlp_elite", **SMALL)
    with pytest.raises(ValueError, match="a batch of 1 set cannot be trained: the classifier's BatchNorm needs at "
                                         "least 2 sets per batch in training mode"):
        model(torch.rand(1, 32, 3))
    assert model.eval()(torch.rand(1, 32, 3)).shape == (1, 4)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter runs triton on the CPU")
def test_a_forced_backend_that_cannot_run_here_raises():
    from pointcoc.ops import available_backends

    if "triton" not in available_backends("knn"):
        pytest.skip("triton is not installed")
    x = torch.rand(2, 16, 3)
    with pytest.raises(ValueError, match=r"backend 'triton' of knn cannot run on cpu tensors \(Triton runs on CPU "
                                         r"tensors only in its interpreter"):
        knn(x, x, 4, backend="triton")
    with pytest.raises(ValueError, match=r"backend 'triton' of fps cannot run on cpu tensors"):
        pointcoc.ops.farthest_point_sample(x, 4, backend="triton")


def test_float64_goes_to_the_reference_where_pytorch3d_rejects_it(monkeypatch):
    from pointcoc.ops import pytorch3d_backend

    def knn_points(p1, p2, lengths1, lengths2, K, return_sorted):  # pytorch3d's CPU kernel: float32 only
        if p1.dtype == torch.float64 and p1.device.type == "cpu":
            raise RuntimeError("knn_points: float64 is not supported on the CPU")
        raise AssertionError("the stand-in only answers float64")

    monkeypatch.setattr(pytorch3d_backend._optional, "pytorch3d_ops", SimpleNamespace(knn_points=knn_points))
    x = torch.rand(2, 40, 3, dtype=torch.float64)
    lengths = torch.tensor([40, 25])
    out = pytorch3d_backend.knn_pytorch3d(x, x, 8, lengths, lengths)
    ref = knn(x, x, 8, lengths, lengths, backend="torch")
    assert torch.equal(out.dist2, ref.dist2) and torch.equal(out.idx, ref.idx)


def test_an_absurd_k_from_the_model_kwargs_is_one_error_line_not_an_allocation(tmp_path, capsys):
    from pointcoc.engine.pointcloud_task import build_train_parser, run_cli, train_main

    kwargs = json.dumps({"k_neighbors": [4, 10**12, 4, 4]})  # stage 1 groups 32 points: 10**12 neighbours is absurd
    argv = ["--dataset", "modelnet10", "--model", "pointmlp_elite", "--num-points", "64", "--epochs", "1",
            "--batch-size", "4", "--workers", "0", "--device", "cpu", "--output", str(tmp_path / "out"),
            "--model-kwargs", kwargs]
    assert run_cli(train_main, build_train_parser(), argv) == 2
    err = capsys.readouterr().err
    assert "error: k must be at most max(N, 1024) = 1024 for sets of N = 32 points" in err and "Traceback" not in err
