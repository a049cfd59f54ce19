"""load_authors_checkpoint: checkpoints in the authors' format give the authors' logits, or a clear ValueError.

The "authors' model" is ReferencePointMLP (pointcoc/bench/reference_pointmlp.py), which has their module names,
so its state dict has their checkpoint keys; it is built here directly, never from a pointcoc model.
"""
import functools
import json

import pytest
import torch

from pointcoc import load_authors_checkpoint
from pointcoc.models.authors import authors_state_dict
from pointcoc.bench.reference_pointmlp import ReferencePointMLP

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

N = 128
SMALL = dict(embed_dim=16, k_neighbors=(8, 8, 8, 8))  # the same override on both sides
ELITE = dict(res_expansion=0.25, dim_expansion=(2, 2, 2, 1), pre_blocks=(1, 1, 2, 1), pos_blocks=(1, 1, 2, 1))
AUTHORS = {  # pointcoc name -> the authors' configuration (ReferencePointMLP arguments)
    "pointmlp": dict(cluster=False),
    "pointmlp_elite": dict(cluster=False, **ELITE),
    "pointmlp_coc": dict(cluster=True),
}


def _points_near_origin(batch, seed=1):
    """Points in [-1, 1]^3, about a third moved inside the squared-norm 1e-3 ball (not point 0), float64."""
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(batch, N, 3, generator=g, dtype=torch.float64) * 2 - 1
    inside = torch.rand(batch, N, generator=g) < 0.3
    inside[:, 0] = False
    xyz[inside] *= 0.015
    return xyz


@functools.lru_cache(maxsize=None)
def _authors_model(name, num_classes=11, seed=0):
    """The authors' model with random weights and BatchNorm statistics from a training pass (float64).

    Cached: callers must not change it."""
    torch.manual_seed(seed)
    ref = ReferencePointMLP(num_classes=num_classes, points=N, fps_skip_near_origin=True, **SMALL,
                            **AUTHORS[name]).double()
    with torch.no_grad():
        for p in ref.parameters():  # away from the initial values, so a swapped tensor shows
            p.add_(0.1 * torch.randn_like(p))
        ref.train()
        ref(_points_near_origin(6, seed=10).transpose(1, 2))
    return ref.eval()


def _saved_like_the_authors(ref, data_parallel=True):
    """The dict of the authors' save_model (utils/misc.py); DataParallel prefixes every key with 'module.'."""
    net = {("module." + k if data_parallel else k): v for k, v in ref.state_dict().items()}
    return {"net": net, "epoch": 249, "acc": 85.1, "best_test_acc": 86.0, "optimizer": {"state": {}, "param_groups": []}}


@pytest.mark.parametrize("name", ["pointmlp", "pointmlp_elite", "pointmlp_coc"])
def test_loaded_checkpoint_gives_the_authors_logits(name, tmp_path):
    ref = _authors_model(name)
    path = tmp_path / "best_checkpoint.pth"
    torch.save(_saved_like_the_authors(ref), path)
    model = load_authors_checkpoint(path, model=name, **SMALL)
    assert model.embedding.linear.weight.dtype == torch.float64  # the checkpoint's dtype
    assert model.training and model.num_classes == 11  # train mode, as create_model gives every model
    model.eval()
    xyz = _points_near_origin(4)
    with torch.no_grad():
        got, want = model(xyz), ref(xyz.transpose(1, 2))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())


def test_every_form_of_checkpoint_loads_the_same_weights(tmp_path):
    ref = _authors_model("pointmlp_coc", num_classes=5)
    forms = [_saved_like_the_authors(ref), _saved_like_the_authors(ref, data_parallel=False),
             ref.state_dict(), {"module." + k: v for k, v in ref.state_dict().items()}]
    torch.save(forms[0], tmp_path / "ckpt.pth")
    states = [load_authors_checkpoint(f, **SMALL).state_dict() for f in forms]
    states.append(load_authors_checkpoint(str(tmp_path / "ckpt.pth"), **SMALL).state_dict())
    for state in states[1:]:
        assert state.keys() == states[0].keys()
        assert all(torch.equal(state[k], states[0][k]) for k in state)


def test_near_origin_rule_is_on_and_can_be_turned_off():
    ref = _authors_model("pointmlp_coc")
    xyz = _points_near_origin(4)
    with torch.no_grad():
        want = ref(xyz.transpose(1, 2))
        plain = load_authors_checkpoint(ref.state_dict(), fps_skip_near_origin=False, **SMALL).eval()(xyz)
    assert float((plain - want).abs().max()) > 1e-6  # the rule matters on these sets


def _error(checkpoint, **kwargs):
    with pytest.raises(ValueError) as err:
        load_authors_checkpoint(checkpoint, **kwargs)
    return str(err.value)


def test_checkpoint_of_another_model_raises_naming_the_keys():
    coc = _saved_like_the_authors(_authors_model("pointmlp_coc"))
    msg = _error(coc, model="pointmlp", **SMALL)
    assert msg.startswith("checkpoint does not fit model 'pointmlp'")
    assert "48 missing keys (pre_blocks_list.0.operation.0.net1.0.weight" in msg
    assert "112 unexpected keys (pre_blocks_list.0.operation.0.sim_alpha" in msg
    elite = _saved_like_the_authors(_authors_model("pointmlp_elite"))
    msg = _error(elite, model="pointmlp_coc", **SMALL)
    assert "missing keys (pre_blocks_list.0.operation.0.sim_alpha" in msg


def test_missing_key_and_shape_mismatch_raise_naming_them():
    state = _authors_model("pointmlp").state_dict()
    del state["pos_blocks_list.2.operation.1.net2.1.running_var"]
    msg = _error(state, model="pointmlp", **SMALL)
    assert "1 missing keys (pos_blocks_list.2.operation.1.net2.1.running_var)" in msg
    state = _authors_model("pointmlp").state_dict()
    msg = _error(state, model="pointmlp", k_neighbors=8)  # published width 64, checkpoint width 16
    assert "shape mismatches (embedding.net.0.weight: got (16, 3, 1), expected (64, 3, 1)" in msg
    state["extra.weight"] = torch.zeros(2)
    assert "1 unexpected keys (extra.weight)" in _error(state, model="pointmlp", **SMALL)


def test_bad_checkpoints_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_authors_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    assert "could not be read" in _error(tmp_path / "junk.pth")
    assert "state dict of tensors; got list" in _error([1, 2])
    assert "got dict with keys ['epoch', 'acc']" in _error({"epoch": 3, "acc": 1.0})
    assert "one of the authors' models ['pointmlp', 'pointmlp_elite', 'pointmlp_coc']; got 'pointmlp_pixels'" in \
        _error({"x": torch.zeros(1)}, model="pointmlp_pixels")
    state = _authors_model("pointmlp").state_dict()
    del state["classifier.8.weight"]
    assert "classifier.8.weight" in _error(state, model="pointmlp", **SMALL)
    state.pop("classifier.4.weight"), state.pop("classifier.0.weight")
    assert "no classifier weight" in _error(state, model="pointmlp", **SMALL)
    assert list(authors_state_dict({"net": {"module.a": torch.zeros(1)}})) == ["a"]


def test_evaluate_script_scores_an_authors_checkpoint_as_the_authors_model_does(tmp_path):
    from pointcoc.data.h5sets import build_point_datasets
    from pointcoc.engine.pointcloud_task import build_eval_parser, evaluate_main, run_cli

    torch.manual_seed(3)
    ref = ReferencePointMLP(num_classes=10, points=N, fps_skip_near_origin=True, cluster=True, **SMALL).eval()
    path = tmp_path / "best_checkpoint.pth"
    torch.save(_saved_like_the_authors(ref), path)
    out = tmp_path / "metrics.json"
    argv = ["--authors-checkpoint", str(path), "--model", "pointmlp_coc", "--model-kwargs",
            '{"embed_dim": 16, "k_neighbors": 8}', "--dataset", "modelnet10", "--num-points", str(N),
            "--batch-size", "16", "--limit-val-batches", "1", "--json", str(out)]
    assert run_cli(evaluate_main, build_eval_parser(), argv) == 0
    _, test_ds, _ = build_point_datasets("modelnet10", num_points=N)
    items = [test_ds[i] for i in range(16)]
    xyz = torch.stack([torch.as_tensor(it["xyz"]) for it in items])
    labels = torch.tensor([int(it["label"]) for it in items])
    with torch.no_grad():
        pred = ref(xyz.transpose(1, 2)).argmax(1)
    got = json.loads(out.read_text())
    assert got["count"] == 16 and got["model"] == "pointmlp_coc"
    want = torch.zeros(10, 10, dtype=torch.long)
    want.index_put_((labels, pred), torch.ones(16, dtype=torch.long), accumulate=True)
    assert got["confusion_matrix"] == want.tolist()  # every prediction is the authors' model's
    assert len(set(pred.tolist())) > 1
    assert got["oa"] == pytest.approx(100 * float((pred == labels).double().mean()))
    assert run_cli(evaluate_main, build_eval_parser(), ["--dataset", "modelnet10"]) == 2  # no checkpoint
