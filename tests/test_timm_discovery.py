"""timm's discovery API (issue 27 item 7): list_models(pretrained=True), list_pretrained, is_model,
create_model(features_only=True, out_indices=...), and one mode rule: every model comes in train mode."""
import pytest
import torch

import pointcoc
from pointcoc.models.pretrained import list_pretrained as weights_found

SMALL = dict(num_classes=3, embed_dim=8, k_neighbors=4)


def test_discovery_lists_the_weights_and_names_the_models():
    found = weights_found()
    assert found and pointcoc.list_models(pretrained=True) == pointcoc.list_pretrained() == found
    assert pointcoc.list_pretrained("*digits*") == [t for t in found if "digits" in t]
    assert pointcoc.list_models("*coc*", pretrained=True) == [t for t in found if "coc" in t]
    assert "pointmlp_coc" in pointcoc.list_models() and "pointmlp_coc" not in found
    assert pointcoc.is_model("pointmlp_coc") and pointcoc.is_model(found[0])
    assert not pointcoc.is_model("pointmlp_cocc") and not pointcoc.is_model(None)
    for name in found:  # every listed name builds, as in timm
        assert pointcoc.create_model(name).pretrained_cfg["tag"] == name


@pytest.mark.parametrize("out_indices", [None, (0, 2, -1), 2])
def test_features_only_gives_the_classifiers_intermediates_without_its_head(out_indices):
    torch.manual_seed(0)
    full = pointcoc.create_model("pointmlp_elite", **SMALL).eval()
    torch.manual_seed(0)
    backbone = pointcoc.create_model("pointmlp_elite", features_only=True, out_indices=out_indices, **SMALL).eval()
    assert not any(k.startswith("model.classifier") for k in backbone.state_dict())
    assert all(torch.equal(v, full.state_dict()[k[len("model."):]]) for k, v in backbone.state_dict().items())
    xyz, lengths = torch.rand(3, 128, 3), torch.tensor([128, 100, 64])
    with torch.no_grad():
        got = backbone(xyz, lengths=lengths)
        want = full.forward_intermediates(xyz, lengths=lengths, indices=out_indices, intermediates_only=True)
    assert len(got) == len(want) == len(backbone.feature_info)
    for g, w, channels in zip(got, want, backbone.feature_info.channels()):
        assert torch.equal(g.features, w.features) and torch.equal(g.xyz, w.xyz) and g.features.shape[-1] == channels
    assert backbone.feature_info.reduction()[-1] == full.feature_info[-1]["reduction"]


def test_features_only_of_trained_weights_and_its_errors():
    digits = pointcoc.create_model("pointmlp_coc_pixels_small", pretrained=True).eval()
    backbone = pointcoc.create_model("pointmlp_coc_pixels_small", pretrained=True, features_only=True).eval()
    assert backbone.pretrained_cfg["tag"] == "pointmlp_coc_pixels_small.digits"
    xyz, feats = torch.rand(2, 64, 2), torch.rand(2, 64, 1)
    with torch.no_grad():
        assert torch.equal(backbone(xyz, feats)[-1].features,
                           digits.forward_intermediates(xyz, feats, intermediates_only=True)[-1].features)
    with pytest.raises(ValueError, match="out_indices selects the stages of a feature model"):
        pointcoc.create_model("pointmlp_elite", out_indices=2)
    with pytest.raises(ValueError, match="indices must be ints in"):
        pointcoc.create_model("pointmlp_elite", features_only=True, out_indices=(7,))


def test_every_model_comes_in_train_mode():
    assert pointcoc.create_model("pointmlp_elite").training
    assert pointcoc.create_model("pointmlp_coc_pixels_small", pretrained=True).training
    assert pointcoc.create_model("pointmlp_elite", features_only=True).training
    # load_authors_checkpoint too: tests/test_authors_checkpoint.py
