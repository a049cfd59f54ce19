"""Every registered model: gradients, ragged == one by one, permutations, parameter counts, training, bad input."""
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import pointcoc
from pointcoc import PointMLP, PointMLPCoC, PointMLPElite, create_model, list_models
from pointcoc.layers import ContextCluster, record_assignments

from model_checks import assert_padding_never_influences_training

MODELS = list_models()
MODELNET = str(Path(__file__).resolve().parents[1] / "data" / "modelnet10" / "modelnet10_train.h5")


def _n_points(model):
    return 64 if model.min_points <= 8 else (196 if model.coord_dim == 2 else 128)


def _inputs(model, batch, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(batch, n, model.coord_dim, generator=g) - 0.5
    if hasattr(model, "image_size"):  # grid models (convnet_pixels*): n distinct pixels of the image per set
        h, w = model.image_size
        cells = torch.stack([torch.randperm(h * w, generator=g)[:n] for _ in range(batch)])
        xyz[..., 0], xyz[..., 1] = (cells % w) / w - 0.5, (cells // w) / h - 0.5
    feats = torch.rand(batch, n, model.in_channels, generator=g) if model.in_channels else None
    return xyz, feats


def test_registry():
    for name in ["pointmlp", "pointmlp_elite", "pointmlp_coc", "pointmlp_elite_coc", "pointmlp_pixels_small",
                 "pointmlp_coc_pixels_small", "pointmlp_pixels", "pointmlp_coc_pixels"]:
        assert name in MODELS
    assert list_models("*coc*") == [n for n in MODELS if "coc" in n]
    assert isinstance(create_model("pointmlp_elite"), PointMLPElite)
    assert isinstance(create_model("pointmlp_coc"), PointMLPCoC)
    model = create_model("pointmlp_pixels", num_classes=10, in_channels=3)
    assert model.num_classes == 10 and model.in_channels == 3
    with pytest.raises(ValueError, match="Did you mean 'pointmlp_coc'"):
        create_model("pointmlp_cco")
    with pytest.raises(ValueError, match=r"model 'pointmlp_coc_pixels' has no argument 'embed_dimm'. Did you mean "
                                         r"'embed_dim'\? Its arguments: num_classes, in_channels, coord_dim"):
        create_model("pointmlp_coc_pixels", embed_dimm=8)
    with pytest.raises(ValueError, match="model 'convnet_pixels_small' has no argument 'k_neighbors'"):
        create_model("convnet_pixels_small", k_neighbors=4)


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_every_parameter(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7).train()
    xyz, feats = _inputs(model, 2, _n_points(model))
    logits = model(xyz, feats)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing}"
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, f"parameters with an all-zero gradient: {zero}"
    feats_out = model.forward_features(xyz, feats)
    assert feats_out.shape == (2, model.num_features)
    model.reset_classifier(4)
    assert model.num_classes == 4 and model(xyz, feats).shape == (2, 4)
    assert model.forward_head(feats_out).shape == (2, 4)


@pytest.mark.parametrize("name", MODELS)
def test_padded_batch_equals_one_by_one(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    n = _n_points(model)
    xyz, feats = _inputs(model, 3, n, seed=1)
    lengths = torch.tensor([n, n - 37, max(model.min_points, n // 2 + 5)])
    with torch.no_grad():
        logits = model(xyz, feats, lengths)
        for b in range(3):
            m = int(lengths[b])
            alone = model(xyz[b : b + 1, :m], None if feats is None else feats[b : b + 1, :m])
            torch.testing.assert_close(logits[b : b + 1], alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["pointmlp_elite_coc", "pointmlp_coc_pixels_small"])
def test_padding_never_influences_training_mode(name):
    """Batch statistics (BatchNorm in train mode, the anchor std) and gradients ignore what padding holds."""
    model = create_model(name).train()
    n = 64
    xyz, feats = _inputs(model, 3, n, seed=4)
    lengths = torch.tensor([n, n - 30, model.min_points])
    assert_padding_never_influences_training(model, xyz, feats, lengths)


@pytest.mark.parametrize("name", ["pointmlp_elite_coc", "pointmlp_elite"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_memory_efficient_equals_default_on_ragged_batches(name, mode):
    """Recomputing the pre-extraction in backward gives the same logits, gradients and running statistics (float64)."""
    torch.manual_seed(0)
    plain = create_model(name, num_classes=5).double()
    lean = create_model(name, num_classes=5, memory_efficient=True).double()
    lean.load_state_dict(plain.state_dict())
    n = 64
    xyz, _ = _inputs(plain, 3, n, seed=6)
    xyz = xyz.double()
    lengths = torch.tensor([n, n - 21, plain.min_points])
    results = []
    for model in (plain, lean):
        model.train(mode == "train")
        torch.manual_seed(2)
        logits = model(xyz, None, lengths)
        logits.square().sum().backward()
        results.append((logits.detach(), {k: p.grad for k, p in model.named_parameters()}, model.state_dict()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-12, atol=1e-12)
    for key, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][key], grad, rtol=1e-10, atol=1e-12, msg=key)
    for key, value in results[0][2].items():  # running statistics moved once, the same way
        torch.testing.assert_close(results[1][2][key], value, rtol=1e-12, atol=1e-12, msg=key)


@pytest.mark.parametrize("name", MODELS)
def test_permutation_invariance_in_eval(name):
    """FPS starts at index 0, so that point stays first; any order of the others gives the same logits."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    n = _n_points(model)
    xyz, feats = _inputs(model, 2, n, seed=2)
    perm = torch.cat([torch.tensor([0]), torch.randperm(n - 1, generator=torch.Generator().manual_seed(3)) + 1])
    with torch.no_grad():
        logits = model(xyz, feats)
        permuted = model(xyz[:, perm], None if feats is None else feats[:, perm])
        assert torch.equal(model(xyz, feats), logits)  # deterministic in eval mode
    torch.testing.assert_close(permuted, logits, atol=1e-4, rtol=1e-4)


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _published_count(embed, expansion, pre, pos, res_expansion, num_classes, coc=False):
    """Parameters of the authors' Model (pointMLP-pytorch / Context-Cluster), use_xyz=False, bias=False."""
    bn = lambda c: 2 * c  # noqa: E731  (weight and bias)
    total = 3 * embed + bn(embed)
    c = embed
    for e, n_pre, n_pos in zip(expansion, pre, pos):
        out = c * e
        total += 2 * c  # affine alpha, beta of the grouper
        total += 2 * c * out + bn(out)  # transfer on [normalised, anchor]
        hidden = int(out * res_expansion)
        res = out * hidden + bn(hidden) + hidden * out + bn(out)
        total += (n_pre + n_pos) * res
        if coc:
            hd = max(out // 4, 32)
            total += n_pre * (2 * (out * hd + hd) + hd * out + out + 2)
        c = out
    total += c * 512 + 512 + bn(512) + 512 * 256 + 256 + bn(256) + 256 * num_classes + num_classes
    return total


@pytest.mark.parametrize("num_classes", [15, 40])
def test_parameter_counts(num_classes):
    full = dict(embed=64, expansion=[2] * 4, pre=[2] * 4, pos=[2] * 4, res_expansion=1.0)
    elite = dict(embed=32, expansion=[2, 2, 2, 1], pre=[1, 1, 2, 1], pos=[1, 1, 2, 1], res_expansion=0.25)
    cases = [(PointMLP, full, False), (PointMLPElite, elite, False), (PointMLPCoC, full, True)]
    for cls, cfg, coc in cases:
        model = cls(num_classes=num_classes)
        assert _count(model) == _published_count(num_classes=num_classes, coc=coc, **cfg)
    # the papers' counts (millions of 2**20 parameters, ModelNet40): PointMLP 12.6M, elite 0.68M
    assert abs(_count(PointMLP(num_classes=40)) / 2**20 - 12.6) / 12.6 < 0.005
    assert abs(_count(PointMLPElite(num_classes=40)) / 2**20 - 0.68) / 0.68 < 0.005


@pytest.mark.parametrize("cls", [PointMLP, PointMLPElite, PointMLPCoC])
def test_documented_counts(cls):
    docs = open(os.path.join(os.path.dirname(__file__), "..", "docs", "models.md")).read()
    for num_classes in (15, 40):
        assert f"{_count(cls(num_classes=num_classes)):,}" in docs
    if cls is not PointMLPCoC:
        assert f"{_count(cls(num_classes=15)):,}" in cls.__doc__


def _modelnet_batch(n_points=256, batch=8):
    with h5py.File(MODELNET, "r") as f:
        rows = [int(i) for i in np.linspace(0, f["label"].shape[0] - 1, batch)]  # shapes of several classes
        data = torch.from_numpy(f["data"][rows]).float()
        label = torch.from_numpy(f["label"][rows]).long()
    idx = torch.randperm(data.shape[1], generator=torch.Generator().manual_seed(0))[:n_points]
    return data[:, idx], label


@pytest.mark.skipif(not os.path.exists(MODELNET), reason="data/modelnet10 not available")
@pytest.mark.parametrize("name", ["pointmlp_elite_coc"])  # every layer kind of the point-cloud models
def test_sgd_steps_reduce_loss_on_real_batch(name):
    torch.manual_seed(0)
    xyz, label = _modelnet_batch(n_points=128)
    model = create_model(name, num_classes=10, dropout=0.0).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xyz), label)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_bad_inputs():
    model = create_model("pointmlp_elite")
    xyz = torch.rand(2, 64, 3)
    with pytest.raises(ValueError, match=r"xyz must have shape \(B, N, D\)"):
        model(xyz[0])
    with pytest.raises(ValueError, match=r"D in \{3\}"):
        model(xyz[..., :2])
    with pytest.raises(ValueError, match="at least k_neighbors"):
        model(xyz[:, :10])
    with pytest.raises(ValueError, match="at least k_neighbors"):
        model(xyz[:, :1])
    with pytest.raises(ValueError, match="at least k_neighbors"):
        model(xyz, lengths=torch.tensor([64, 5]))
    bad = xyz.clone()
    bad[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        model(bad)
    with pytest.raises(ValueError, match="xyz must be torch.float32 on cpu"):
        model(xyz.double())
    with pytest.raises(ValueError, match="lengths must have shape"):
        model(xyz, lengths=torch.tensor([64]))
    with pytest.raises(ValueError, match="features must be None"):
        model(xyz, torch.rand(2, 64, 3))
    pixels = create_model("pointmlp_pixels_small")
    with pytest.raises(ValueError, match="features .* are required"):
        pixels(torch.rand(2, 64, 2))
    with pytest.raises(ValueError, match="features must have shape"):
        pixels(torch.rand(2, 64, 2), torch.rand(2, 64, 3))
    for m, xyz_m in ((model, xyz), (pixels, torch.rand(2, 64, 2))):  # lengths given in the features slot
        with pytest.raises(ValueError, match=r"features got a \(2,\) integer tensor, which looks like lengths: "
                                             r"lengths is the third argument; call model\(xyz, lengths=lengths\)"):
            m(xyz_m, torch.tensor([64, 50]))
    with pytest.raises(ValueError, match="coord_dim must be 2 or 3"):
        PointMLP(coord_dim=4)
    with pytest.raises(ValueError, match="one entry per stage"):
        PointMLP(k_neighbors=[24, 24])


@pytest.mark.parametrize("name", ["pointmlp_coc_pixels_small", "pointmlp_coc_pixels"])
def test_record_assignments_in_pixel_models(name):
    model = create_model(name).eval()
    n = _n_points(model)
    xyz, feats = _inputs(model, 2, n)
    lengths = torch.tensor([n, n - 20])
    with record_assignments(model), torch.no_grad():
        model(xyz, feats, lengths)
    layers = [m for m in model.modules() if isinstance(m, ContextCluster)]
    assert layers and all(m.n_centers is not None for m in layers)
    for cc in layers:
        b, s = cc.last_assignment.shape
        assert b == 2 and cc.last_xyz.shape == (2, s, 2)
        valid = torch.arange(s)[None] < cc.last_lengths[:, None]
        assert (cc.last_assignment[valid] >= 0).all() and (cc.last_assignment[~valid] == -1).all()
        assert int(cc.last_assignment.max()) < cc.last_center_idx.shape[1]


def test_pixel_models_use_set_level_cluster_and_grouped_coc():
    grouped = [m for m in create_model("pointmlp_coc").modules() if isinstance(m, ContextCluster)]
    assert len(grouped) == 8 and all(m.n_centers is None and m.heads == 1 for m in grouped)
    assert [m.head_dim for m in grouped[::2]] == [32, 64, 128, 256]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pointmlp_coc"])  # every layer of pointmlp plus the grouped context cluster
def test_torch_compile_forward(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    xyz, _ = _inputs(model, 2, 128)
    with torch.no_grad():
        want = model(xyz)
        got = torch.compile(model)(xyz)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["pointmlp_elite", "pointmlp_coc", "pointmlp_coc_pixels_small"])
def test_cuda_matches_cpu(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    n = _n_points(model)
    xyz, feats = _inputs(model, 2, n)
    lengths = torch.tensor([n, n - 10])
    with torch.no_grad():
        want = model(xyz, feats, lengths)
        model.cuda()
        got = model(xyz.cuda(), None if feats is None else feats.cuda(), lengths.cuda()).cpu()
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name", ["pointmlp_elite_coc", "pointmlp_coc_pixels_small"])
def test_bfloat16_autocast(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    n = _n_points(model)
    xyz, feats = _inputs(model, 2, n)
    lengths = torch.tensor([n, n - 20])
    with torch.no_grad():
        want = model(xyz, feats, lengths)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(xyz, feats, lengths)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=0.1 * float(want.abs().max()), rtol=0.05)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(xyz, feats, lengths).float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_public_imports():
    assert pointcoc.PointMLP is PointMLP and pointcoc.create_model is create_model
    assert pointcoc.functional.context_cluster is pointcoc.layers.context_cluster
