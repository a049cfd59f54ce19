"""torch.export of the eval forward: saved, loaded, the eager logits on ragged batches of any size; the value
checks run inside the exported program. Every registered model: slow; one small point model and the ConvNet
in the default run."""
import pytest
import torch

import pointcoc
from pointcoc import create_model, export_model, list_models, load_exported
from pointcoc.models.convnet import pixel_grid_check_op
from pointcoc.ops.library import check_point_inputs_op

from test_models import _inputs, _n_points

SMALL_COC = dict(embed_dim=8, k_neighbors=4, pre_blocks=(1, 1), pos_blocks=(1, 1), reducers=(2, 2),
                 dim_expansion=(2, 2))  # pointmlp_elite_coc in two narrow stages: FPS, kNN, grouped clusters


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _ragged(model, batch, n, seed):
    xyz, feats = _inputs(model, batch, n, seed=seed)
    lengths = torch.full((batch,), n)
    lengths[1::2] = torch.tensor([max(model.min_points, n - 7 * (i + 1)) for i in range(len(lengths[1::2]))])
    return xyz, feats, lengths


def _export_save_load_compare(model, n, tmp_path):
    model.eval()
    path = tmp_path / "model.pt2"
    export_model(model, _ragged(model, 3, n, seed=0), path=path)
    exported = load_exported(path)
    with torch.no_grad():
        for batch, seed in ((2, 1), (5, 2)):
            xyz, feats, lengths = _ragged(model, batch, n, seed)
            torch.testing.assert_close(exported(xyz, feats, lengths), model(xyz, feats, lengths),
                                       rtol=1e-5, atol=1e-5)
            full = torch.full((batch,), n)  # full sets through the ragged program
            torch.testing.assert_close(exported(xyz, feats, full), model(xyz, feats), rtol=1e-5, atol=1e-5)
    return exported


@pytest.fixture(scope="module")
def small_programs(tmp_path_factory):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = {}
    for name, kwargs in (("pointmlp_elite_coc", SMALL_COC), ("convnet_pixels_small", {})):
        model = create_model(name, **kwargs).eval()
        out[name] = model, _export_save_load_compare(model, 64, tmp_path_factory.mktemp(name))
    return out


def test_small_models_export_save_load_and_give_eager_logits(small_programs):
    assert set(small_programs) == {"pointmlp_elite_coc", "convnet_pixels_small"}


def test_full_set_program_without_lengths():
    torch.manual_seed(0)
    model = create_model("pointmlp_elite_coc", **SMALL_COC).eval()
    xyz, _ = _inputs(model, 2, 48)
    program = export_model(model, (xyz,), dynamic_batch=False)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(xyz), model(xyz), rtol=1e-5, atol=1e-5)
    names = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert {"pointcoc.farthest_point_sample.default", "pointcoc.knn.default",
            "pointcoc.check_point_inputs.default"} <= names


def test_exported_programs_check_values_as_eager_mode(small_programs):
    _, point = small_programs["pointmlp_elite_coc"]
    xyz, _, lengths = _ragged(small_programs["pointmlp_elite_coc"][0], 2, 64, seed=3)
    bad = xyz.clone()
    bad[1, 5, 0] = float("nan")
    with pytest.raises(ValueError, match="xyz must hold only finite values"):
        point(bad, None, lengths)
    with pytest.raises(ValueError, match=r"lengths must have values in \[1, 64\]"):
        point(xyz, None, torch.tensor([64, 65]))
    with pytest.raises(ValueError, match="every set needs at least k_neighbors"):
        point(xyz, None, torch.tensor([64, 3]))
    model, grid = small_programs["convnet_pixels_small"]
    xyz, feats, lengths = _ragged(model, 2, 64, seed=4)
    off = xyz.clone()
    off[0, 2, 0] += 0.01
    with pytest.raises(ValueError, match="xyz must hold pixel coordinates"):
        grid(off, feats, lengths)
    nan_feats = feats.clone()
    nan_feats[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="features must hold only finite values"):
        grid(xyz, nan_feats, lengths)


def test_check_ops_pass_opcheck():
    xyz, lengths = torch.rand(3, 20, 3), torch.tensor([20, 9, 5])
    torch.library.opcheck(check_point_inputs_op, (xyz, None, lengths, 4))
    torch.library.opcheck(check_point_inputs_op, (xyz, torch.rand(3, 20, 2), None, 4))
    model = create_model("convnet_pixels_small")
    pix, feats = _inputs(model, 2, 30)
    torch.library.opcheck(pixel_grid_check_op, (pix, feats, torch.tensor([30, 12]), 8, 8))


def test_export_model_arguments(tmp_path):
    model = create_model("convnet_pixels_small")
    xyz, feats = _inputs(model, 1, 20)
    with pytest.raises(ValueError, match="a dynamic batch needs an example of at least 2 sets"):
        export_model(model, (xyz, feats))
    with pytest.raises(ValueError, match="example_inputs must be"):
        export_model(model, ())
    model.train()
    export_model(model, (xyz, feats), dynamic_batch=False)
    assert model.training  # restored
    with pytest.raises(FileNotFoundError, match="exported program not found"):
        load_exported(tmp_path / "missing.pt2")
    assert pointcoc.export_model is export_model


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_exports(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name).eval()
    _export_save_load_compare(model, _n_points(model), tmp_path)


def test_load_exported_in_a_fresh_process_registers_the_ops_itself(tmp_path):
    # `import pointcoc` imports its names on first use; load_exported imports what the program calls
    from script_checks import run_python

    model = create_model("pointmlp_elite_coc", **SMALL_COC).eval()
    xyz, _, lengths = _ragged(model, 2, 64, seed=0)
    export_model(model, (xyz, None, lengths), path=tmp_path / "m.pt2")
    torch.save((xyz, lengths, model(xyz, None, lengths)), tmp_path / "io.pt")
    check = ("import sys, torch; from pointcoc import load_exported; m = load_exported(sys.argv[1]); "
             "xyz, lengths, want = torch.load(sys.argv[2]); "
             "torch.testing.assert_close(m(xyz, None, lengths), want, rtol=1e-5, atol=1e-5); print('same')")
    done = run_python(["-c", check, tmp_path / "m.pt2", tmp_path / "io.pt"])
    assert done.returncode == 0 and done.stdout.strip() == "same", done.stderr[-2000:]
