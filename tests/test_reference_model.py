"""pointcoc's PointMLP(-CoC) computes the same function as the straightforward published layout.

The reference (pointcoc/bench/reference_pointmlp.py) is the benchmark's yardstick; these tests show that the
optimised model is a faster way to the same logits, loss and gradients, not a different model.
"""
import pytest
import torch

from pointcoc import create_model
from pointcoc.bench.reference_pointmlp import (
    GroupContextCluster, ReferencePointMLP, farthest_point_sample as ref_fps, index_points, knn_point,
    reference_from_pointcoc,
)
from pointcoc.layers import ContextCluster
from pointcoc.models.authors_keys import state_dict_from_pointcoc
from pointcoc.ops import farthest_point_sample, gather, knn

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


SMALL = dict(k_neighbors=8, embed_dim=16)  # 128 points: 64, 32, 16, 8 anchors; groups of 8; narrow


def _pair(name, n=128, dtype=torch.float64, seed=0, **kwargs):
    torch.manual_seed(seed)
    ours = create_model(name, num_classes=15, **SMALL, **kwargs).to(dtype)
    return ours, reference_from_pointcoc(ours, points=n)


def _points(batch, n, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, n, 3, generator=g) * 2 - 1).to(dtype)


def test_building_blocks_match_pointcoc_ops():
    xyz = _points(3, 200, torch.float32)
    torch.testing.assert_close(ref_fps(xyz, 50), farthest_point_sample(xyz, 50), rtol=0, atol=0)
    queries = gather(xyz, farthest_point_sample(xyz, 50))
    want = knn(queries, xyz, 10).idx.sort(-1).values
    assert torch.equal(knn_point(10, xyz, queries).sort(-1).values, want)
    feats = torch.randn(3, 200, 5)
    assert torch.equal(index_points(feats, want), gather(feats, want))


def test_state_dict_mapping_covers_every_reference_key():
    ours, ref = _pair("pointmlp_coc")
    mapped = state_dict_from_pointcoc(ours.state_dict())
    assert set(mapped) == set(ref.state_dict())
    w = mapped["pre_blocks_list.0.transfer.net.0.weight"]
    assert w.shape == (32, 32, 1)  # neighbour channels first, then the anchor's
    assert torch.equal(w[:, :16, 0], ours.stages[0].transfer.neighbour.weight)
    assert torch.equal(w[:, 16:, 0], ours.stages[0].transfer.anchor.weight)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    with pytest.raises(ValueError, match="shortcut"):
        state_dict_from_pointcoc({"stages.0.pre_blocks.0.shortcut.weight": torch.zeros(1)})


@pytest.mark.parametrize("name, memory_efficient", [("pointmlp_coc", False), ("pointmlp_elite", False),
                                                    ("pointmlp_coc", True)])
def test_eval_logits_equal_reference(name, memory_efficient):
    ours, ref = _pair(name, memory_efficient=memory_efficient)
    xyz = _points(4, 128)
    ours.train(), ref.train()
    with torch.no_grad():  # one training forward each so the running statistics are not trivial
        torch.manual_seed(5)
        ours(xyz)
        torch.manual_seed(5)
        ref(xyz.transpose(1, 2))
    ours.eval(), ref.eval()
    with torch.no_grad():
        got, want = ours(xyz), ref(xyz.transpose(1, 2))
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    mapped = state_dict_from_pointcoc(ours.state_dict())
    for key, value in ref.state_dict().items():  # running statistics moved the same way
        torch.testing.assert_close(mapped[key].to(value.dtype), value, rtol=1e-9, atol=1e-9)


def _points_near_origin(batch, n, seed=2):
    """Points in [-1, 1]^3 with about a third moved inside the squared-norm 1e-3 ball (not point 0)."""
    xyz = _points(batch, n, seed=seed)
    inside = torch.rand(batch, n, generator=torch.Generator().manual_seed(seed)) < 0.3
    inside[:, 0] = False
    xyz[inside] *= 0.015
    return xyz


def test_near_origin_fps_rule_gives_the_reference_logits_with_the_rule():
    torch.manual_seed(0)
    ours = create_model("pointmlp_coc", num_classes=15, fps_skip_near_origin=True, **SMALL).double().eval()
    ref = reference_from_pointcoc(ours, points=128).eval()
    plain = create_model("pointmlp_coc", num_classes=15, **SMALL).double().eval()
    plain.load_state_dict(ours.state_dict())
    xyz = _points_near_origin(4, 128)
    assert torch.equal(ref_fps(xyz, 64, skip_near_origin=True), farthest_point_sample(xyz, 64, skip_near_origin=True))
    with torch.no_grad():
        got, want, without = ours(xyz), ref(xyz.transpose(1, 2)), plain(xyz)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert float((without - want).abs().max()) > 1e-6  # the rule changes the anchors, so the logits


@pytest.mark.parametrize("name, memory_efficient", [
    ("pointmlp_coc", False), ("pointmlp_elite", False),
    ("pointmlp_coc", True), ("pointmlp_elite", True), ("pointmlp", True)])
def test_training_loss_and_gradients_equal_reference(name, memory_efficient):
    """Also the memory-efficient models (recomputed pre-extraction): the same loss, gradients and running statistics."""
    ours, ref = _pair(name, memory_efficient=memory_efficient)
    xyz, label = _points(4, 128), torch.tensor([0, 3, 7, 14])
    ours.train(), ref.train()
    torch.manual_seed(7)  # the same dropout masks: neither model draws random numbers before the head
    loss = torch.nn.functional.cross_entropy(ours(xyz), label)
    loss.backward()
    torch.manual_seed(7)
    ref_loss = torch.nn.functional.cross_entropy(ref(xyz.transpose(1, 2)), label)
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-10)
    grads = state_dict_from_pointcoc({k: p.grad for k, p in ours.named_parameters()})
    ref_grads = {k: p.grad for k, p in ref.named_parameters()}
    assert set(grads) == set(ref_grads)
    for key, g in ref_grads.items():
        assert g is not None and float(g.abs().max()) > 0, key
        torch.testing.assert_close(grads[key], g, rtol=1e-7, atol=1e-9, msg=key)
    mapped = state_dict_from_pointcoc(ours.state_dict())
    for key, value in ref.state_dict().items():  # running statistics updated once, as the reference's
        torch.testing.assert_close(mapped[key].to(value.dtype), value, rtol=1e-9, atol=1e-9, msg=key)


def test_float32_training_loss_equals_reference():
    """The benchmark's setting (float32, training mode): the same loss to float rounding.

    (Gradients agree to about 1% in float32 at batch 4: the head's BatchNorm over 4 samples
    amplifies rounding; the float64 test above shows they are the same function.)
    """
    ours, ref = _pair("pointmlp_coc", dtype=torch.float32)
    xyz, label = _points(4, 128, torch.float32), torch.tensor([1, 2, 3, 4])
    ours.train(), ref.train()
    torch.manual_seed(3)
    loss = torch.nn.functional.cross_entropy(ours(xyz), label)
    torch.manual_seed(3)
    want = torch.nn.functional.cross_entropy(ref(xyz.transpose(1, 2)), label)
    torch.testing.assert_close(loss, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("heads", [1, 2])
def test_grouped_context_cluster_equals_published_block(heads):
    torch.manual_seed(4)
    ours = ContextCluster(24, heads=heads, head_dim=7).double()
    ours.alpha.data.fill_(1.7), ours.beta.data.fill_(-0.3)
    ref = GroupContextCluster(24, heads=heads, head_dim=7).double()
    names = {"fc_sim": "fc1", "fc_val": "fc_v", "fc_out": "fc2", "alpha": "sim_alpha", "beta": "sim_beta"}
    ref_params = dict(ref.named_parameters())
    pairs = [(p, ref_params[names[k.split(".")[0]] + k[len(k.split(".")[0]):]]) for k, p in ours.named_parameters()]
    assert len(pairs) == len(ref_params)
    with torch.no_grad():
        for p, r in pairs:
            r.copy_(p)
    x = torch.randn(6, 9, 24, dtype=torch.float64, requires_grad=True)
    out = ours(x)
    want = ref(x.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    weight = torch.randn_like(out)
    grads = torch.autograd.grad((out * weight).sum(), [x] + [p for p, _ in pairs])
    ref_grads = torch.autograd.grad((want * weight).sum(), [x] + [r for _, r in pairs])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10)


def test_reference_rejects_wrong_shapes():
    ref = ReferencePointMLP(points=128, k_neighbors=(8, 8, 8, 8))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, 128\)"):
        ref(torch.rand(2, 128, 3))
    with pytest.raises(ValueError, match="one entry per stage"):
        ReferencePointMLP(pre_blocks=(1, 1), pos_blocks=(1, 1, 1))
    with pytest.raises(ValueError, match=r"published PointMLP .*\['use_xyz'\]"):
        reference_from_pointcoc(create_model("pointmlp_coc", use_xyz=True, **SMALL), points=128)
