"""Clustering maps: labels follow the nearest anchor (brute force), centers, order, colours, the PNG."""
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from pointcoc.data.pixels import image_to_point_set, keep_mask
from pointcoc.layers import ContextCluster, record_assignments
from pointcoc.models import create_model
from pointcoc.viz import cluster_maps, cluster_maps_figure, colorize_clusters, plot_cluster_maps
from pointcoc.viz.clusters import LEGEND_HEIGHT, MISSING_RGB, _palette


def _digit(index=3):
    return torch.tensor(load_digits().images[index] / 16.0, dtype=torch.float32)[None]


def _pixel_set(fmt, keep, depth=False, seed=0):
    image = _digit()
    if depth:
        image = image.repeat(3, 1, 1)
    z = torch.rand(8, 8, generator=torch.Generator().manual_seed(seed)) + 0.5 if depth else None
    mask = keep_mask(fmt, 8, 8, keep, generator=torch.Generator().manual_seed(seed))
    xyz, feats = image_to_point_set(image, depth=z, keep=mask)
    return image, mask, xyz, feats


def _model(depth):
    torch.manual_seed(0)
    kwargs = dict(coord_dim=3, in_channels=4) if depth else {}
    return create_model("pointmlp_coc_pixels_small", num_classes=10, **kwargs).eval()


@pytest.mark.parametrize("fmt, keep, depth", [("regular", 1.0, False), ("discrete", 0.5, False), ("rgbd", 1.0, True)])
def test_labels_are_the_cluster_of_the_nearest_anchor(fmt, keep, depth):
    image, mask, xyz, feats = _pixel_set(fmt, keep, depth)
    model = _model(depth)
    maps, logits = cluster_maps(model, xyz, feats, (8, 8))
    with torch.no_grad(), record_assignments(model):
        expected_logits = model(xyz[None], feats[None])[0]
    torch.testing.assert_close(logits, expected_logits)
    layers = [m for m in model.modules() if isinstance(m, ContextCluster) and m.last_assignment is not None]
    assert len(maps) == len(layers) == 2
    for cmap, layer in zip(maps, layers):
        anchors = layer.last_xyz[0].tolist()
        assign = layer.last_assignment[0].tolist()
        assert cmap.num_points == len(anchors)
        for p, (x, y, *rest) in enumerate(xyz.tolist()):
            dists = [sum((a - b) ** 2 for a, b in zip(xyz[p].tolist(), anchor)) for anchor in anchors]
            nearest = min(range(len(anchors)), key=lambda k: (dists[k], k))
            i, j = round((x + 0.5) * 8), round((y + 0.5) * 8)
            assert cmap.labels[j, i] == assign[nearest]
        assert torch.equal(cmap.labels >= 0, mask)
        # centers are anchor positions, in (column, row) pixels
        cols_rows = {(round((a[0] + 0.5) * 8), round((a[1] + 0.5) * 8)) for a in anchors}
        assert {tuple(c) for c in cmap.centers.round().long().tolist()} <= cols_rows
        assert torch.equal(cmap.center_slots, torch.nonzero(layer.last_center_idx[0] >= 0).flatten())


def test_maps_do_not_depend_on_point_order():
    """With depth (no distance ties; on a flat grid FPS and kNN ties go by index) the order never matters."""
    image, mask, xyz, feats = _pixel_set("rgbd", 1.0, depth=True, seed=2)
    model = _model(True)
    maps, logits = cluster_maps(model, xyz, feats, (8, 8))
    perm = torch.cat([torch.tensor([0]), torch.randperm(len(xyz) - 1, generator=torch.Generator().manual_seed(5)) + 1])
    permuted, permuted_logits = cluster_maps(model, xyz[perm], feats[perm], (8, 8))
    torch.testing.assert_close(permuted_logits, logits, atol=1e-4, rtol=1e-4)
    for a, b in zip(maps, permuted):
        assert torch.equal(a.labels, b.labels)
        assert {tuple(c) for c in a.centers.tolist()} == {tuple(c) for c in b.centers.tolist()}


def test_cluster_maps_restores_training_mode():
    _, _, xyz, feats = _pixel_set("regular", 1.0)
    model = _model(False).train()
    cluster_maps(model, xyz, feats, (8, 8))
    assert model.training


def test_colorize_clusters():
    labels = torch.tensor([[0, 0, 1], [2, -1, 1]])
    pure = colorize_clusters(labels, alpha=1.0)
    palette = _palette(3)
    for (j, i), s in np.ndenumerate(labels.numpy()):
        expected = MISSING_RGB if s < 0 else palette[s]
        np.testing.assert_allclose(pure[j, i], expected)
    assert len({tuple(c) for c in palette}) == 3
    image = torch.tensor([[[0.0, 1.0, 0.5], [0.2, 0.3, 0.5]]])
    blended = colorize_clusters(labels, image, alpha=0.75)
    np.testing.assert_allclose(blended[0, 0], 0.75 * palette[0] + 0.25 * 0.0)
    np.testing.assert_allclose(blended[0, 1], 0.75 * palette[0] + 0.25 * 1.0)
    np.testing.assert_allclose(blended[1, 1], MISSING_RGB)
    with pytest.raises(ValueError, match=r"image must have shape \(C, h, w\) with \(h, w\) = \(2, 3\)"):
        colorize_clusters(labels, torch.zeros(1, 3, 3))


def test_plot_has_one_panel_per_layer_and_image(tmp_path):
    image, _, xyz, feats = _pixel_set("masked", 0.7)
    maps, _ = cluster_maps(_model(False), xyz, feats, (8, 8))
    path = plot_cluster_maps([(image, maps, "a"), (image, maps[:1], "b")], tmp_path / "sub" / "maps.png",
                             panel_size=2.0)
    png = np.asarray(Image.open(path).convert("RGB"))
    assert png.shape[1] == round(2.0 * 3 * 110)  # input + 2 layers, dpi 110
    assert abs(png.shape[0] - (2.0 * 2 + 0.4 + LEGEND_HEIGHT) * 110) <= 1
    with pytest.raises(ValueError, match="at least one"):
        plot_cluster_maps([], tmp_path / "x.png")


def _legend_texts(fig):
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_missing_pixels_have_their_own_colour_and_the_legend_names_it():
    image, mask, xyz, feats = _pixel_set("masked", 0.7)
    maps, _ = cluster_maps(_model(False), xyz, feats, (8, 8))
    assert not bool(mask.all())
    # no cluster colour, pure or blended with any grey, comes near the missing colour
    palette = _palette(40)
    for grey in np.linspace(0, 1, 11):
        blended = 0.75 * palette + 0.25 * grey
        assert np.abs(blended - np.asarray(MISSING_RGB)).max(axis=1).min() > 0.08, grey
    fig = cluster_maps_figure([(image, maps, "a")])
    panels = [ax for ax in fig.axes if ax.images]
    for ax, m in zip(panels[1:], maps):
        drawn = ax.images[0].get_array()
        np.testing.assert_allclose(drawn[~mask.numpy()], np.broadcast_to(MISSING_RGB, drawn[~mask.numpy()].shape))
        shown = {tuple(np.round(c, 6)) for c in drawn[mask.numpy()]}
        assert tuple(np.round(MISSING_RGB, 6)) not in shown
    texts = _legend_texts(fig)
    assert "map: pixel not in the set" in texts and "cluster center" in texts
    legend = fig.legends[0]
    patch = legend.legend_handles[texts.index("map: pixel not in the set")]
    np.testing.assert_allclose(patch.get_facecolor()[:3], MISSING_RGB)
    star = legend.legend_handles[texts.index("cluster center")]
    assert star.get_marker() == "*"
    # a full image has nothing missing: the legend does not mention it
    image, _, xyz, feats = _pixel_set("regular", 1.0)
    maps, _ = cluster_maps(_model(False), xyz, feats, (8, 8))
    assert not any("not in the set" in t for t in _legend_texts(cluster_maps_figure([(image, maps, "a")])))


def test_bad_inputs():
    _, _, xyz, feats = _pixel_set("regular", 1.0)
    with pytest.raises(ValueError, match="no set-level ContextCluster"):
        cluster_maps(create_model("pointmlp_pixels_small", num_classes=10), xyz, feats, (8, 8))
    with pytest.raises(ValueError, match="pixel coordinates"):
        cluster_maps(_model(False), xyz, feats, (28, 28))
    with pytest.raises(ValueError, match="one pixel set"):
        cluster_maps(_model(False), xyz[None].expand(2, -1, -1), feats[None].expand(2, -1, -1), (8, 8))


def test_image_file_is_area_averaged_to_the_model_size(tmp_path):
    from pointcoc.commands.pixel_input import image_from_file

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    rgb = image_from_file(tmp_path / "rgb.png", (3, 8, 12))
    blocks = pixels.reshape(8, 2, 12, 2, 3).astype(np.float64).mean(axis=(1, 3)) / 255.0
    np.testing.assert_allclose(rgb.permute(1, 2, 0).numpy(), blocks, atol=1 / 255 + 1e-6)
    grey = image_from_file(tmp_path / "rgb.png", (1, 8, 12), invert=True)
    assert grey.shape == (1, 8, 12)
    luma = np.asarray(Image.fromarray(pixels).convert("L"), dtype=np.float64).reshape(8, 2, 12, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(grey[0].numpy(), 1 - luma / 255.0, atol=1 / 255 + 1e-6)
    with pytest.raises(ValueError, match="1 \\(grey\\) or 3 \\(RGB\\) channels; the model expects 4"):
        image_from_file(tmp_path / "rgb.png", (4, 8, 12))
