"""ConvNet baseline: rasterisation inverts the pixel-set conversion; order, padding and gradients."""
import pytest
import torch

from pointcoc.models import create_model
from pointcoc.models.convnet import ConvNetPixels, rasterize_pixel_sets

from model_checks import assert_padding_never_influences_training


def _brute_force_pixel_set(image, keep, depth=None):
    """Pixel by pixel: (C, h, w) image, (h, w) bool keep -> xyz (n, 2 or 3), features (n, C)."""
    c, h, w = image.shape
    xyz, feats = [], []
    for j in range(h):
        for i in range(w):
            if keep[j, i]:
                p = [i / w - 0.5, j / h - 0.5] + ([float(depth[j, i])] if depth is not None else [])
                xyz.append(p)
                feats.append(image[:, j, i])
    return torch.tensor(xyz), torch.stack(feats)


def _random_sets(batch, c, h, w, keep_fraction, seed, depth=False):
    """Random images, random keep masks and their pixel sets in random order, padded with garbage."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, c, h, w, generator=g)
    keeps = torch.rand(batch, h, w, generator=g) < keep_fraction
    keeps[:, 0, 0] = True
    sets = []
    for b in range(batch):
        z = torch.rand(h, w, generator=g) if depth else None
        xyz, f = _brute_force_pixel_set(images[b], keeps[b], z)
        perm = torch.randperm(len(xyz), generator=g)
        sets.append((xyz[perm], f[perm]))
    n = max(len(s[0]) for s in sets)
    xyz = torch.full((batch, n, sets[0][0].shape[1]), 7.3)  # padding far off the grid
    feats = torch.full((batch, n, c), -5.0)
    for b, (x, f) in enumerate(sets):
        xyz[b, : len(x)], feats[b, : len(f)] = x, f
    lengths = torch.tensor([len(s[0]) for s in sets])
    return images, keeps, xyz, feats, lengths


@pytest.mark.parametrize("h, w, depth", [(8, 8, False), (5, 7, False), (6, 4, True)])
def test_rasterize_inverts_brute_force_conversion(h, w, depth):
    images, keeps, xyz, feats, lengths = _random_sets(3, 3, h, w, 0.6, seed=h * w, depth=depth)
    grid = rasterize_pixel_sets(xyz, feats, (h, w), lengths)
    expected = images * keeps[:, None].to(images.dtype)
    assert torch.equal(grid, expected)


def test_rasterize_inverts_image_to_point_set_of_every_format():
    pixels = pytest.importorskip("pointcoc.data.pixels")
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 9, 11, generator=g)
    depth = torch.rand(9, 11, generator=g)
    for fmt in pixels.PIXEL_FORMATS:
        keep = pixels.keep_mask(fmt, 9, 11, generator=torch.Generator().manual_seed(1))
        xyz, feats = pixels.image_to_point_set(image, depth=depth if fmt == "rgbd" else None, keep=keep)
        grid = rasterize_pixel_sets(xyz[None], feats[None, :, :3], (9, 11))
        assert torch.equal(grid[0], image * keep.to(image.dtype)), fmt


def test_model_is_invariant_to_point_order_and_padding():
    torch.manual_seed(0)
    model = create_model("convnet_pixels_small", num_classes=5, in_channels=3).eval()
    _, _, xyz, feats, lengths = _random_sets(4, 3, 8, 8, 0.5, seed=3)
    with torch.no_grad():
        logits = model(xyz, feats, lengths)
        for b in range(4):
            m = int(lengths[b])
            perm = torch.randperm(m)
            alone = model(xyz[b : b + 1, :m][:, perm], feats[b : b + 1, :m][:, perm])
            torch.testing.assert_close(alone, logits[b : b + 1], atol=1e-5, rtol=1e-5)


def test_padding_never_influences_training_mode():
    model = create_model("convnet_pixels_small", num_classes=5, in_channels=3).train()
    _, _, xyz, feats, lengths = _random_sets(4, 3, 8, 8, 0.5, seed=4)
    assert_padding_never_influences_training(model, xyz, feats, lengths)


def test_gradients_reach_every_parameter_and_only_real_pixels():
    torch.manual_seed(0)
    model = create_model("convnet_pixels_small", num_classes=5, in_channels=3).train()
    _, _, xyz, feats, lengths = _random_sets(4, 3, 8, 8, 0.7, seed=5)
    feats.requires_grad_(True)
    model(xyz, feats, lengths).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    pad = torch.arange(xyz.shape[1])[None, :] >= lengths[:, None]
    assert torch.equal(feats.grad[pad], torch.zeros_like(feats.grad[pad]))
    assert (feats.grad[~pad].abs().sum(-1) > 0).float().mean() > 0.9


def test_rasterize_gradient_is_exact():
    _, _, xyz, feats, lengths = _random_sets(2, 2, 4, 5, 0.7, seed=6)
    feats = feats.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: rasterize_pixel_sets(xyz, f, (4, 5), lengths), (feats,))


def test_depth_coordinate_is_ignored_for_placement():
    _, _, xyz, feats, lengths = _random_sets(2, 4, 6, 6, 0.8, seed=7, depth=True)
    moved = xyz.clone()
    moved[..., 2] = torch.rand(moved.shape[:2]) * 10
    torch.testing.assert_close(rasterize_pixel_sets(xyz, feats, (6, 6), lengths),
                               rasterize_pixel_sets(moved, feats, (6, 6), lengths), rtol=0, atol=0)


def test_bad_inputs_raise_clear_errors():
    model = create_model("convnet_pixels", num_classes=3)
    _, _, xyz, feats, lengths = _random_sets(2, 1, 8, 8, 0.9, seed=8)
    with pytest.raises(ValueError, match=r"xyz must hold pixel coordinates \(i / 28 - 0.5, j / 28 - 0.5\)"):
        model(xyz, feats, lengths)  # 8x8 pixels given to a 28x28 model
    small = create_model("convnet_pixels_small", num_classes=3)
    outside = xyz.clone()
    outside[0, 0, 0] = 0.5  # column 8 of an 8-wide image
    with pytest.raises(ValueError, match="column 8"):
        small(outside, feats, lengths)
    twice = xyz.clone()
    twice[1, 1] = twice[1, 0]
    with pytest.raises(ValueError, match="each pixel at most once"):
        small(twice, feats, lengths)
    with pytest.raises(ValueError, match="features .* are required"):
        small(xyz, None, lengths)
    with pytest.raises(ValueError, match=r"features must have shape \(B, N, D\) with D in \{1\}"):
        small(xyz, feats.expand(-1, -1, 3), lengths)
    with pytest.raises(ValueError, match="in_channels must be an int >= 1"):
        ConvNetPixels(in_channels=0)
    with pytest.raises(ValueError, match="image_size must be"):
        ConvNetPixels(image_size=(8, 8, 8))
