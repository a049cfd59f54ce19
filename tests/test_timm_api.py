"""The timm-style surface of every registered model: pretrained_cfg, classifier access and reset, forward_head
with pre_logits, forward_intermediates on ragged batches (float64: padded batch == each set alone)."""
import pytest
import torch
from torch import nn

from pointcoc import create_model, list_models
from pointcoc.models import ConvNetPixels
from pointcoc.models.classifier import StageFeatures, take_indices

from test_models import _inputs, _n_points

MODELS = list_models()


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _model(name, **kwargs):
    torch.manual_seed(0)
    return create_model(name, num_classes=6, **kwargs).double().eval()


def _double_inputs(model, batch, n, seed=0):
    xyz, feats = _inputs(model, batch, n, seed=seed)
    return xyz.double(), None if feats is None else feats.double()


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_cfg(name):
    model = create_model(name, num_classes=7)
    cfg = model.pretrained_cfg
    assert isinstance(cfg, dict) and model.default_cfg is cfg
    assert cfg["architecture"] == name and cfg["class"] == type(model).__name__ and cfg["tag"] is None
    assert cfg["num_classes"] == 7 and cfg["num_features"] == model.num_features
    assert cfg["coord_dim"] == model.coord_dim and cfg["in_channels"] == model.in_channels
    assert cfg["min_points"] == model.min_points and cfg["num_points"] >= model.min_points
    assert cfg["head_hidden_size"] == model.head_hidden_size
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
    assert isinstance(model.get_submodule(cfg["first_layer"]), (nn.Linear, nn.Conv2d))
    if "pixels" in name:
        assert cfg["coord_dim"] == 2 and cfg["num_points"] == cfg["image_size"][0] * cfg["image_size"][1]
    else:
        assert cfg["num_points"] == 1024 and cfg["image_size"] is None
    assert create_model(name, in_channels=3).pretrained_cfg["in_channels"] == 3


@pytest.mark.parametrize("name", MODELS)
def test_forward_head_pre_logits_and_reset_classifier(name):
    model = _model(name)
    xyz, feats = _double_inputs(model, 2, _n_points(model))
    with torch.no_grad():
        logits = model(xyz, feats)
        pooled = model.forward_features(xyz, feats)
        assert pooled.shape == (2, model.num_features)
        torch.testing.assert_close(model.forward_head(pooled), logits, rtol=0, atol=0)
        pre = model.forward_head(pooled, pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size)
        head = model.get_classifier()
        assert isinstance(head, nn.Linear) and head is model.classifier[-1]
        assert (head.in_features, head.out_features) == (model.head_hidden_size, 6)
        torch.testing.assert_close(head(pre), logits, rtol=0, atol=0)

        model.reset_classifier(3)
        assert model.num_classes == 3 and model.get_classifier().out_features == 3
        assert model.get_classifier().weight.dtype == torch.float64
        assert model(xyz, feats).shape == (2, 3)
        torch.testing.assert_close(model.forward_features(xyz, feats), pooled, rtol=0, atol=0)

        model.reset_classifier(0)  # timm: no classifier, the model returns the pre-logits
        assert model.num_classes == 0 and isinstance(model.get_classifier(), nn.Identity)
        assert model.head_hidden_size == pre.shape[1]
        torch.testing.assert_close(model(xyz, feats), pre, rtol=0, atol=0)
        model.reset_classifier(4)
        assert model.get_classifier().in_features == pre.shape[1] and model(xyz, feats).shape == (2, 4)
    # gradients reach the new head and the first layer
    model.train()
    model(xyz, feats).square().sum().backward()
    first = model.get_submodule(model.pretrained_cfg["first_layer"])
    for module in (model.get_classifier(), first):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="num_classes must be an int >= 0"):
        model.reset_classifier(-1)
    with pytest.raises(ValueError, match="global_pool cannot be changed"):
        model.reset_classifier(2, global_pool="avg")


@pytest.mark.parametrize("name", MODELS)
def test_intermediates_of_ragged_batch_equal_each_set_alone(name):
    model = _model(name)
    n = _n_points(model)
    xyz, feats = _double_inputs(model, 3, n, seed=1)
    lengths = torch.tensor([n, n - 21, max(model.min_points, n // 2 + 3)])
    with torch.no_grad():
        pooled, stages = model.forward_intermediates(xyz, feats, lengths)
        torch.testing.assert_close(pooled, model.forward_features(xyz, feats, lengths), rtol=0, atol=0)
        torch.testing.assert_close(model.forward_head(pooled), model(xyz, feats, lengths), rtol=0, atol=0)
        assert len(stages) == len(model.feature_info)
        for info, st in zip(model.feature_info, stages):
            assert isinstance(st, StageFeatures)
            b, s, c = st.features.shape
            assert b == 3 and c == info["num_chs"] and st.xyz.shape == (3, s, model.coord_dim)
            assert st.lengths is None or (st.lengths.shape == (3,) and int(st.lengths.max()) <= s)
        for b in range(3):
            m = int(lengths[b])
            alone = model.forward_intermediates(xyz[b:b + 1, :m], None if feats is None else feats[b:b + 1, :m],
                                                intermediates_only=True)
            for i, (st, one) in enumerate(zip(stages, alone)):
                count = one.features.shape[1]
                assert one.lengths is None  # one full set
                if st.lengths is not None:
                    assert int(st.lengths[b]) == count, (i, b)
                torch.testing.assert_close(st.features[b, :count], one.features[0], rtol=1e-10, atol=1e-10)
                torch.testing.assert_close(st.xyz[b, :count], one.xyz[0], rtol=0, atol=0)
                assert not st.features[b, count:].any() and not st.xyz[b, count:].any()  # padding holds zeros


@pytest.mark.parametrize("name", ["pointmlp_elite_coc", "pointmlp_coc_pixels_small", "convnet_pixels_small"])
def test_intermediate_indices_stop_early_and_gradients(name):
    model = _model(name).train()
    n = _n_points(model)
    xyz, feats = _double_inputs(model, 2, n, seed=2)
    count = len(model.feature_info)
    torch.manual_seed(0)
    pooled, every = model.forward_intermediates(xyz, feats, torch.tensor([n, n - 9]))
    loss = pooled.sum() + sum(st.features.square().sum() for st in every)
    loss.backward()
    missing = [k for k, p in model.named_parameters() if p.grad is None and not k.startswith("classifier")]
    assert not missing, missing
    model.eval()
    with torch.no_grad():
        _, every = model.forward_intermediates(xyz, feats)
        last_two = model.forward_intermediates(xyz, feats, indices=2, intermediates_only=True)
        ends = model.forward_intermediates(xyz, feats, indices=[0, -1], intermediates_only=True)
        early_pooled, early = model.forward_intermediates(xyz, feats, indices=[1], stop_early=True)
    for got, want in [(last_two, every[-2:]), (ends, [every[0], every[-1]]), (early, [every[1]])]:
        assert len(got) == len(want)
        for g, w in zip(got, want):
            torch.testing.assert_close(g.features, w.features, rtol=0, atol=0)
    assert early_pooled.shape == (2, model.feature_info[1]["num_chs"])
    for bad in (0, count + 1, [count], [-count - 1], []):
        with pytest.raises(ValueError, match="indices"):
            model.forward_intermediates(xyz, feats, indices=bad)


def test_take_indices():
    assert take_indices(5, None) == [0, 1, 2, 3, 4]
    assert take_indices(5, 2) == [3, 4]
    assert take_indices(5, [-1, 0, 0]) == [0, 4]


def test_convnet_cell_positions_follow_the_pixel_convention():
    model = create_model("convnet_pixels")  # 28x28 -> 14x14 -> 7x7
    h, w = model.image_size
    pos = model.cell_positions(0).view(h, w, 2)
    j, i = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    torch.testing.assert_close(pos[..., 0], i / w - 0.5)
    torch.testing.assert_close(pos[..., 1], j / h - 0.5)
    # a cell of stage 2 pools 4x4 pixels: its position is their mean
    coarse = model.cell_positions(2).view(7, 7, 2)
    torch.testing.assert_close(coarse, pos.view(7, 4, 7, 4, 2).mean(dim=(1, 3)))
    rgbd = ConvNetPixels(coord_dim=3, in_channels=4)
    assert rgbd.cell_positions(1).shape == (16, 3) and not rgbd.cell_positions(1)[:, 2].any()
