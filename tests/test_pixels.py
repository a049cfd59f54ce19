"""Images as pixel sets: conversion, formats, dataset, ragged collate, and models on ragged real digits."""
import math

import numpy as np
import pytest
import torch
from skimage.measure import label as connected_components

from pointcoc.data import load_image_dataset, load_rgbd_frame
from pointcoc.data.pixels import (PixelSetDataset, collate_pixel_sets, image_to_point_set, keep_mask,
                                  kept_pixel_count, scale_depth)
from pointcoc.models import create_model


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset("digits")


@pytest.fixture(scope="module")
def tum_crop():
    """A real 24x32 RGB-D crop of the TUM frame that contains pixels without depth."""
    image, depth = load_rgbd_frame("tum")
    invalid = ~np.isfinite(depth)
    # the 24x32 window (stride 8) with about a quarter of its pixels invalid, so absent depth is exercised
    best = min(((abs(invalid[r : r + 24, c : c + 32].mean() - 0.25), r, c)
                for r in range(0, 456, 8) for c in range(0, 608, 8)))
    _, r, c = best
    d = depth[r : r + 24, c : c + 32].copy()
    d[np.isnan(d)] = 0.0  # the file's own "no reading" value
    return image[:, r : r + 24, c : c + 32].copy(), d


def brute_force(image, depth=None, keep=None):
    """Reference: one loop over rows j and columns i."""
    c, h, w = image.shape
    xyz, feats = [], []
    if depth is not None:
        valid = [(depth[j, i] > 0 and math.isfinite(depth[j, i])) for j in range(h) for i in range(w)]
        values = [float(depth[j, i]) for j in range(h) for i in range(w) if valid[j * w + i]]
        lo, hi = min(values), max(values)
    for j in range(h):
        for i in range(w):
            if keep is not None and not keep[j, i]:
                continue
            point = [i / w - 0.5, j / h - 0.5]
            colour = [float(image[ch, j, i]) for ch in range(c)]
            if depth is not None:
                if not valid[j * w + i]:
                    continue
                z = (float(depth[j, i]) - lo) / (hi - lo) - 0.5 if hi > lo else 0.0
                point.append(z)
                colour.append(z)
            xyz.append(point)
            feats.append(colour)
    return torch.tensor(xyz, dtype=torch.float32), torch.tensor(feats, dtype=torch.float32)


def test_conversion_matches_loop_on_real_digit(digits):
    image = digits.train_images[7]
    xyz, feats = image_to_point_set(image)
    ref_xyz, ref_feats = brute_force(image)
    torch.testing.assert_close(xyz, ref_xyz)
    torch.testing.assert_close(feats, ref_feats)
    assert xyz.shape == (64, 2) and feats.shape == (64, 1)


def test_conversion_with_mask_on_non_square_colour_image(tum_crop):
    image, _ = tum_crop
    keep = torch.rand(24, 32, generator=torch.Generator().manual_seed(3)) < 0.4
    xyz, feats = image_to_point_set(torch.from_numpy(image), keep=keep)
    ref_xyz, ref_feats = brute_force(image, keep=keep.numpy())
    torch.testing.assert_close(xyz, ref_xyz)
    torch.testing.assert_close(feats, ref_feats)
    assert len(xyz) == int(keep.sum())
    # x follows the column (width 32), y the row (height 24)
    assert float(xyz[:, 0].max()) <= 31 / 32 - 0.5 + 1e-6 and float(xyz[:, 1].max()) <= 23 / 24 - 0.5 + 1e-6


def test_conversion_with_real_depth_scaling_and_absent_pixels(tum_crop):
    image, depth = tum_crop
    assert (depth == 0).sum() > 0, "the crop should contain pixels without depth"
    keep = torch.rand(24, 32, generator=torch.Generator().manual_seed(5)) < 0.7
    xyz, feats = image_to_point_set(image, depth=depth, keep=keep)
    ref_xyz, ref_feats = brute_force(image, depth, keep.numpy())
    torch.testing.assert_close(xyz, ref_xyz)
    torch.testing.assert_close(feats, ref_feats)
    assert xyz.shape[1] == 3 and feats.shape[1] == 4
    assert len(xyz) == int((keep.numpy() & (depth > 0)).sum())
    # depth scaled over every valid pixel of the map: the full map spans [-0.5, 0.5] exactly
    z = scale_depth(torch.from_numpy(depth))
    valid = torch.from_numpy(depth > 0)
    assert float(z[valid].min()) == -0.5 and float(z[valid].max()) == 0.5
    # removing pixels never changes the depth coordinate of the others
    all_xyz, _ = image_to_point_set(image, depth=depth)
    kept_rows = keep.numpy()[depth > 0]
    torch.testing.assert_close(all_xyz[torch.from_numpy(kept_rows)], xyz)


def test_nan_depth_means_absent_and_constant_depth_gives_zero():
    image = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(0))
    depth = torch.full((4, 5), 2.0)
    depth[1, 2] = float("nan")
    depth[3, 0] = 0.0
    xyz, feats = image_to_point_set(image, depth=depth)
    assert len(xyz) == 18
    assert torch.equal(xyz[:, 2], torch.zeros(18)) and torch.equal(feats[:, 3], torch.zeros(18))
    present = [(j, i) for j in range(4) for i in range(5) if (j, i) not in ((1, 2), (3, 0))]
    expect = torch.tensor([[i / 5 - 0.5, j / 4 - 0.5] for j, i in present])
    torch.testing.assert_close(xyz[:, :2], expect)


def test_layout_is_explicit_and_a_channels_last_looking_shape_is_refused():
    hwc = torch.rand(8, 6, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"image of shape \(8, 6, 3\) is ambiguous: as \(C, H, W\) it is 8 "
                                         r"channels of a 6x3 image.*Pass layout='HWC'"):
        image_to_point_set(hwc)
    ref_xyz, ref_feats = brute_force(hwc.permute(2, 0, 1).numpy())
    for image in (hwc, hwc.numpy()):
        xyz, feats = image_to_point_set(image, layout="HWC")
        torch.testing.assert_close(xyz, ref_xyz)
        torch.testing.assert_close(feats, ref_feats)
        assert feats.shape == (48, 3)
    assert image_to_point_set(hwc, layout="CHW").features.shape == (18, 8)  # asked for explicitly
    with pytest.raises(ValueError, match="layout must be None, 'CHW' or 'HWC'"):
        image_to_point_set(hwc, layout="WHC")


@pytest.mark.parametrize("kwargs, match", [
    (dict(image=torch.rand(8, 8)), r"image must have shape \(C, H, W\)"),
    (dict(image=torch.ones(1, 8, 8, dtype=torch.uint8)), "image must be floating point"),
    (dict(image=torch.full((1, 8, 8), float("nan"))), "finite colours"),
    (dict(image=torch.full((1, 8, 8), 1e300, dtype=torch.float64)), "image colours up to 1e\\+300 in magnitude do "
                                                                    "not fit float32"),
    (dict(image=torch.rand(1, 8, 8), keep=torch.ones(8, 7, dtype=torch.bool)), r"keep must have shape \(H, W\) = \(8, 8\)"),
    (dict(image=torch.rand(1, 8, 8), keep=torch.ones(8, 8)), "keep must be a bool mask"),
    (dict(image=torch.rand(1, 8, 8), keep=torch.zeros(8, 8, dtype=torch.bool)), "keep mask is all False"),
    (dict(image=torch.rand(1, 8, 8), depth=torch.ones(7, 8)), r"depth must have shape \(H, W\) = \(8, 8\)"),
    (dict(image=torch.rand(1, 8, 8), depth=torch.zeros(8, 8)), "no kept pixel has a valid depth"),
    (dict(image=[[1.0]]), "must be a torch.Tensor or numpy array"),
])
def test_conversion_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        image_to_point_set(**kwargs)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("fmt", ["discrete", "masked", "irregular"])
@pytest.mark.parametrize("size", [(8, 8), (28, 28), (25, 31)])
@pytest.mark.parametrize("keep", [0.5, 0.25, 0.1])
def test_random_formats_keep_exactly_round_keep_hw(fmt, size, keep):
    h, w = size
    for seed in range(3):
        m = keep_mask(fmt, h, w, keep, generator=_gen(seed))
        assert m.shape == (h, w) and m.dtype == torch.bool
        assert int(m.sum()) == max(1, round(keep * h * w + 1e-9)) == kept_pixel_count(keep, h, w)


@pytest.mark.parametrize("fmt", ["discrete", "masked", "irregular"])
def test_formats_reproducible_and_seeds_differ(fmt):
    a = keep_mask(fmt, 28, 28, 0.5, generator=_gen(11))
    b = keep_mask(fmt, 28, 28, 0.5, generator=_gen(11))
    c = keep_mask(fmt, 28, 28, 0.5, generator=_gen(12))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_regular_and_rgbd_keep_everything():
    for fmt in ("regular", "rgbd"):
        assert bool(keep_mask(fmt, 5, 7, generator=_gen(0)).all())


def test_masked_removes_blocks_not_scattered_pixels():
    for seed in range(5):
        removed = ~keep_mask("masked", 28, 28, 0.6, generator=_gen(seed))
        assert int(removed.sum()) == 784 - kept_pixel_count(0.6, 28, 28)
        # a removed pixel inside a block has removed 4-neighbours; scattered pixels (discrete) mostly do not
        r = removed.numpy()
        pad = np.pad(r, 1)
        neighbours = pad[:-2, 1:-1].astype(int) + pad[2:, 1:-1] + pad[1:-1, :-2] + pad[1:-1, 2:]
        assert (neighbours[r] >= 2).mean() > 0.9
        scattered = ~keep_mask("discrete", 28, 28, 0.6, generator=_gen(seed)).numpy()
        pad = np.pad(scattered, 1)
        n2 = pad[:-2, 1:-1].astype(int) + pad[2:, 1:-1] + pad[1:-1, :-2] + pad[1:-1, 2:]
        assert (n2[scattered] >= 2).mean() < 0.6


@pytest.mark.parametrize("size, keep", [((28, 28), 0.1), ((28, 28), 0.5), ((28, 28), 0.9), ((8, 8), 0.5), ((25, 25), 0.3)])
def test_irregular_region_is_one_piece_and_not_a_rectangle(size, keep):
    for seed in range(10):
        m = keep_mask("irregular", *size, keep, generator=_gen(seed)).numpy()
        assert connected_components(m, connectivity=2).max() == 1
        rows, cols = m.any(1), m.any(0)
        assert not m[rows][:, cols].all(), "the region fills its bounding box"


def test_keep_mask_errors():
    with pytest.raises(ValueError, match="fmt must be one of"):
        keep_mask("dotted", 8, 8)
    with pytest.raises(ValueError, match=r"keep must be a fraction in \(0, 1\]"):
        keep_mask("discrete", 8, 8, keep=0.0)
    with pytest.raises(ValueError, match="height must be an int >= 1"):
        keep_mask("discrete", 0, 8, keep=0.5)


def test_dataset_items_are_conversions_of_deterministic_masks(digits):
    ds = PixelSetDataset(digits.train_images[:20], digits.train_labels[:20], "irregular", keep=0.5, seed=4)
    again = PixelSetDataset(digits.train_images[:20], digits.train_labels[:20], "irregular", keep=0.5, seed=4)
    other = PixelSetDataset(digits.train_images[:20], digits.train_labels[:20], "irregular", keep=0.5, seed=5)
    for i in (0, 13):
        item = ds[i]
        xyz, feats = image_to_point_set(digits.train_images[i], keep=ds.mask(i))
        assert torch.equal(item["xyz"], xyz) and torch.equal(item["features"], feats)
        assert item["label"].dtype == torch.long and int(item["label"]) == digits.train_labels[i]
        assert torch.equal(again.mask(i), ds.mask(i))
        assert torch.equal(ds[i]["xyz"], item["xyz"])  # the same in every epoch
    assert not torch.equal(ds.mask(0), ds.mask(1))
    assert not torch.equal(ds.mask(0), other.mask(0))
    assert ds.smallest_set_size() == 32 and len(ds) == 20


def test_redrawn_masks_follow_the_global_generator(digits):
    ds = PixelSetDataset(digits.train_images[:4], digits.train_labels[:4], "discrete", keep=0.25, redraw=True)
    torch.manual_seed(0)
    a = [ds[i]["xyz"] for i in range(4)]
    b = ds[0]["xyz"]
    torch.manual_seed(0)
    c = [ds[i]["xyz"] for i in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(a, c))
    assert not torch.equal(a[0], b)
    assert all(len(x) == 16 for x in a)


def test_rgbd_dataset_items(tum_crop):
    image, depth = tum_crop
    images = np.stack([image, image[:, ::-1].copy()])
    depths = np.stack([depth, depth[:, ::-1].copy()])
    ds = PixelSetDataset(images, np.array([0, 1]), "rgbd", depth=depths)
    item = ds[1]
    assert item["xyz"].shape[1] == 3 and item["features"].shape[1] == 4
    xyz, feats = image_to_point_set(images[1], depth=depths[1])
    assert torch.equal(item["xyz"], xyz) and torch.equal(item["features"], feats)
    assert ds.smallest_set_size() == int((depth > 0).sum()) and ds.point_dim == 3 and ds.feature_dim == 4


def test_dataset_errors(digits):
    imgs, labs = digits.train_images[:4], digits.train_labels[:4]
    with pytest.raises(ValueError, match="fmt 'rgbd' needs depth"):
        PixelSetDataset(imgs, labs, "rgbd")
    with pytest.raises(ValueError, match=r"depth must have shape \(n, H, W\) = \(4, 8, 8\)"):
        PixelSetDataset(imgs, labs, "rgbd", depth=np.ones((4, 8, 7), np.float32))
    with pytest.raises(ValueError, match="has no valid pixel"):
        PixelSetDataset(imgs, labs, "rgbd", depth=np.zeros((4, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"labels must be integers of shape \(n,\) = \(4,\)"):
        PixelSetDataset(imgs, labs[:3], "regular")
    with pytest.raises(ValueError, match=r"keep must be a fraction"):
        PixelSetDataset(imgs, labs, "discrete", keep=1.5)
    with pytest.raises(ValueError, match=r"images must have shape \(n, C, H, W\)"):
        PixelSetDataset(imgs[:, 0], labs)


def test_collate_pads_with_zeros_and_returns_lengths(digits):
    samples = [PixelSetDataset(digits.train_images, digits.train_labels, fmt, keep)[i]
               for i, (fmt, keep) in enumerate([("discrete", 0.25), ("regular", 1.0), ("irregular", 0.5)])]
    batch = collate_pixel_sets(samples)
    assert batch["xyz"].shape == (3, 64, 2) and batch["features"].shape == (3, 64, 1)
    assert batch["lengths"].tolist() == [16, 64, 32] and batch["lengths"].dtype == torch.long
    assert batch["label"].tolist() == [int(digits.train_labels[i]) for i in range(3)]
    for b, s in enumerate(samples):
        n = len(s["xyz"])
        assert torch.equal(batch["xyz"][b, :n], s["xyz"]) and torch.equal(batch["features"][b, :n], s["features"])
        assert not batch["xyz"][b, n:].any() and not batch["features"][b, n:].any()


def test_collate_errors():
    a = {"xyz": torch.zeros(3, 2), "features": torch.zeros(3, 1), "label": torch.tensor(0)}
    with pytest.raises(ValueError, match="at least one sample"):
        collate_pixel_sets([])
    with pytest.raises(ValueError, match=r"sample 1: expected xyz \(n, 2\) and features \(n, 1\)"):
        collate_pixel_sets([a, {**a, "xyz": torch.zeros(3, 3)}])
    with pytest.raises(ValueError, match="sample 0 must be a dict"):
        collate_pixel_sets([{"xyz": torch.zeros(3, 2)}])


@pytest.mark.parametrize("name", ["pointmlp_pixels_small", "pointmlp_coc_pixels_small"])
def test_padded_batch_logits_equal_one_by_one(digits, name):
    """Ragged real discrete/irregular digit sets: padding never leaks into the logits (eval mode)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1, coord_dim=2)
    # give BatchNorm non-trivial running statistics
    warm = PixelSetDataset(digits.train_images[:32], digits.train_labels[:32], "discrete", keep=0.5)
    model.train()
    with torch.no_grad():
        b = collate_pixel_sets([warm[i] for i in range(32)])
        model(b["xyz"], b["features"], b["lengths"])
    model.eval()
    specs = [("discrete", 0.25), ("regular", 1.0), ("discrete", 0.5), ("irregular", 0.4), ("masked", 0.7)]
    samples = [PixelSetDataset(digits.test_images, digits.test_labels, fmt, keep, seed=9)[i]
               for i, (fmt, keep) in enumerate(specs)]
    batch = collate_pixel_sets(samples)
    assert len(set(batch["lengths"].tolist())) == 5
    with torch.no_grad():
        together = model(batch["xyz"], batch["features"], batch["lengths"])
        alone = torch.cat([model(s["xyz"][None], s["features"][None]) for s in samples])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_pixel_models_refuse_sets_smaller_than_k(digits):
    model = create_model("pointmlp_coc_pixels_small", num_classes=10, in_channels=1, coord_dim=2).eval()
    item = PixelSetDataset(digits.test_images, digits.test_labels, "discrete", keep=0.05)[0]  # 3 pixels
    with pytest.raises(ValueError, match=f"at least k_neighbors\\[0\\] = {model.min_points} points"):
        model(item["xyz"][None], item["features"][None])


def test_sgd_steps_on_real_ragged_digits_reduce_the_loss(digits):
    torch.manual_seed(0)
    model = create_model("pointmlp_coc_pixels_small", num_classes=10, in_channels=1, coord_dim=2)
    ds = PixelSetDataset(digits.train_images[:48], digits.train_labels[:48], "irregular", keep=0.6, seed=1)
    mixed = PixelSetDataset(digits.train_images[:48], digits.train_labels[:48], "discrete", keep=0.4, seed=1)
    batch = collate_pixel_sets([ds[i] if i % 2 else mixed[i] for i in range(48)])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = torch.nn.functional.cross_entropy

    def loss():
        return loss_fn(model(batch["xyz"], batch["features"], batch["lengths"]), batch["label"])

    model.train()
    first = None
    for _ in range(12):
        value = loss()
        first = float(value.detach()) if first is None else first
        opt.zero_grad()
        value.backward()
        opt.step()
    with torch.no_grad():
        assert float(loss()) < 0.7 * first


@pytest.mark.parametrize("name, size, kwargs, smallest", [
    ("pointmlp_coc_pixels_small", (8, 8), {}, 8),
    ("pointmlp_coc_pixels_small", (8, 8), {"k_neighbors": (6, 6)}, 6),
    ("pointmlp_coc_pixels", (28, 28), {}, 16),
])
def test_pixel_models_take_their_smallest_sets_in_ragged_batches(name, size, kwargs, smallest):
    """Sets of exactly model.min_points pixels, fewer anchors than k and than centers, next to a full image."""
    splits = load_image_dataset("mnist5k") if size == (28, 28) else load_image_dataset("digits")
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1, coord_dim=2, **kwargs).eval()
    assert model.min_points == smallest
    keep = smallest / (size[0] * size[1])
    small = PixelSetDataset(splits.test_images, splits.test_labels, "irregular", keep=keep)[0]
    full = PixelSetDataset(splits.test_images, splits.test_labels, "regular")[1]
    assert len(small["xyz"]) == smallest
    batch = collate_pixel_sets([small, full])
    with torch.no_grad():
        together = model(batch["xyz"], batch["features"], batch["lengths"])
        alone = torch.cat([model(s["xyz"][None], s["features"][None]) for s in (small, full)])
    assert torch.isfinite(together).all()
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
