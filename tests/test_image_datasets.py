"""Loaders of the real image sets and RGB-D frames, on the shipped files."""
import gzip
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from pointcoc.data.image_datasets import (IMAGE_DATASETS, estimate_normals, load_image_dataset, load_rgbd_frame,
                                          read_pgm16, render_depth_views, stratified_split)

ROOT = Path(__file__).resolve().parents[1]
FRAMES = ROOT / "data" / "rgbd_frames"
MN10 = ROOT / "data" / "modelnet10"


def _check_splits(s, n_train, n_test, shape, n_classes):
    assert s.train_images.shape == (n_train, *shape) and s.test_images.shape == (n_test, *shape)
    for x in (s.train_images, s.test_images):
        assert x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1 and x.max() > 0.9
    for y in (s.train_labels, s.test_labels):
        assert y.dtype == np.int64 and y.min() >= 0 and y.max() < n_classes
    assert len(s.class_names) == n_classes and s.image_shape == shape


def test_digits_split_is_seeded_stratified_and_disjoint():
    from sklearn.datasets import load_digits

    s = load_image_dataset("digits")
    _check_splits(s, 1438, 359, (1, 8, 8), 10)
    raw = load_digits()
    # every image is in exactly one split, with its own label
    all_images = np.concatenate([s.train_images, s.test_images])[:, 0] * 16
    all_labels = np.concatenate([s.train_labels, s.test_labels])
    order = np.lexsort(all_images.reshape(len(all_images), -1).T)
    ref = np.lexsort(raw.images.reshape(len(raw.images), -1).T)
    np.testing.assert_array_equal(all_images[order], raw.images[ref])
    np.testing.assert_array_equal(all_labels[order], raw.target[ref])
    counts = np.bincount(s.test_labels, minlength=10) / np.bincount(all_labels, minlength=10)
    assert np.all(np.abs(counts - 0.2) < 0.01)
    again = load_image_dataset("digits")
    np.testing.assert_array_equal(again.test_images, s.test_images)


def test_mnist5k_reads_the_csv_rows():
    s = load_image_dataset("mnist5k")
    _check_splits(s, 4000, 1000, (1, 28, 28), 10)
    assert np.bincount(s.train_labels).tolist() == [400] * 10 and np.bincount(s.test_labels).tolist() == [100] * 10
    with gzip.open(ROOT / "data" / "mnist5k" / "mnist_5k.csv.gz", "rt") as f:
        rows = [next(f) for _ in range(3)]
    first = np.array(rows[0].split(","), dtype=np.int64)
    image = first[:784].reshape(28, 28) / 255.0
    hits = [(split, i) for split, x, y in (("train", s.train_images, s.train_labels), ("test", s.test_images, s.test_labels))
            for i in np.flatnonzero(y == first[784]) if np.allclose(x[i, 0], image)]
    assert len(hits) == 1


def test_mnist5k_bad_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "mnist_5k.csv.gz")):
        load_image_dataset("mnist5k", root=tmp_path)
    with gzip.open(tmp_path / "mnist_5k.csv.gz", "wt") as f:
        f.write("1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match="expected 785 columns"):
        load_image_dataset("mnist5k", root=tmp_path)
    with gzip.open(tmp_path / "mnist_5k.csv.gz", "wt") as f:
        f.write(",".join(["300"] * 784 + ["1"]) + "\n")
    with pytest.raises(ValueError, match=r"pixels must lie in 0..255"):
        load_image_dataset("mnist5k", root=tmp_path)


def test_lfw_faces_balanced_binary_task():
    s = load_image_dataset("lfw_faces")
    _check_splits(s, 150, 50, (1, 25, 25), 2)
    assert np.bincount(s.train_labels).tolist() == [75, 75] and np.bincount(s.test_labels).tolist() == [25, 25]
    assert s.class_names == ["non-face", "face"] and s.train_depth is None


def test_lfw_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "lfw_subset.npy")):
        load_image_dataset("lfw_faces", root=tmp_path)


def _zbuffer_loop(points, normals, size, azimuth, elevation):
    """Reference renderer: rotate, then for each point overwrite its pixel when it is nearer."""
    a, e = np.radians(azimuth), np.radians(elevation)
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(e), -np.sin(e)], [0, np.sin(e), np.cos(e)]])
    light = np.array([-0.4, 0.6, 1.0]) / np.linalg.norm([-0.4, 0.6, 1.0])
    depth = np.full((size, size), np.inf)
    shade = np.zeros((size, size))
    for p, n in zip(points, normals):
        q, m = rx @ ry @ p, rx @ ry @ (n / np.linalg.norm(n))
        col = min(max(int(np.floor((q[0] + 1) / 2 * size)), 0), size - 1)
        row = min(max(int(np.floor((1 - q[1]) / 2 * size)), 0), size - 1)
        if 2 - q[2] < depth[row, col]:
            depth[row, col] = 2 - q[2]
            shade[row, col] = 0.15 + 0.85 * abs(m @ light)
    return shade, np.where(np.isinf(depth), np.nan, depth)


def test_depth_rendering_matches_a_zbuffer_loop():
    with h5py.File(MN10 / "modelnet10_test.h5", "r") as f:
        points = f["data"][3].astype(np.float64)[:, [0, 2, 1]]
    normals = estimate_normals(points)
    intensity, depth = render_depth_views(points, normals, size=20, azimuths=(0.0, 135.0), elevation=30.0)
    for v, az in enumerate((0.0, 135.0)):
        shade, ref = _zbuffer_loop(points, normals, 20, az, 30.0)
        np.testing.assert_allclose(intensity[v, 0], shade, atol=1e-5)
        np.testing.assert_allclose(depth[v], ref, atol=1e-5)


def test_modelnet_depth_keeps_the_shape_split():
    s = load_image_dataset("modelnet_depth")
    _check_splits(s, 200 * 8, 50 * 8, (1, 28, 28), 10)
    with h5py.File(MN10 / "modelnet10_train.h5", "r") as f:
        train_names, train_labels = set(f["name"][:].tolist()), f["label"][:]
    with h5py.File(MN10 / "modelnet10_test.h5", "r") as f:
        test_names = set(f["name"][:].tolist())
    assert not train_names & test_names  # the official split: no shape in both
    # the first 20 training shapes of each class, in file order, 8 views each
    first = np.concatenate([np.flatnonzero(train_labels == c)[:20] for c in range(10)])
    np.testing.assert_array_equal(s.train_labels, np.repeat(train_labels[np.sort(first)], 8))
    np.testing.assert_array_equal(np.bincount(s.test_labels), np.full(10, 5 * 8))
    for images, depth in ((s.train_images, s.train_depth), (s.test_images, s.test_depth)):
        assert depth.shape == (len(images), 28, 28) and depth.dtype == np.float32
        # the object's pixels: depth valid exactly where the shade is (>= 0.15), background 0 / NaN
        np.testing.assert_array_equal(np.isfinite(depth), images[:, 0] > 0)
        assert np.nanmin(depth) >= 1.0 and np.nanmax(depth) <= 3.0 and images[:, 0][images[:, 0] > 0].min() >= 0.15


def test_modelnet_depth_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "shape_names.txt")):
        load_image_dataset("modelnet_depth", root=tmp_path)


def test_unknown_names():
    with pytest.raises(ValueError, match="name must be one of"):
        load_image_dataset("cifar10")
    with pytest.raises(ValueError, match="name must be one of"):
        load_rgbd_frame("kitti")
    assert set(IMAGE_DATASETS) == {"digits", "mnist5k", "lfw_faces", "modelnet_depth"}


def test_stratified_split_fractions_and_seed():
    labels = np.repeat(np.arange(3), [10, 20, 5])
    tr, te = stratified_split(labels, 0.2, seed=1)
    assert np.bincount(labels[te]).tolist() == [2, 4, 1]
    assert sorted(np.r_[tr, te].tolist()) == list(range(35))
    assert np.array_equal(te, stratified_split(labels, 0.2, seed=1)[1])
    assert not np.array_equal(te, stratified_split(labels, 0.2, seed=2)[1])
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(labels, 1.0)


@pytest.mark.parametrize("name, size, lo, hi", [("nyu", (480, 640), 0.5, 10.0), ("sun", (480, 640), 0.3, 12.0),
                                                ("tum", (480, 640), 0.3, 10.0), ("motorcycle", (500, 741), 1.5, 6.0)])
def test_rgbd_frames_shapes_and_metric_depth(name, size, lo, hi):
    image, depth = load_rgbd_frame(name)
    assert image.shape == (3, *size) and image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1
    assert depth.shape == size and depth.dtype == np.float32
    valid = np.isfinite(depth)
    assert 0.5 < valid.mean() < 1.0  # real frames have holes
    assert lo < np.nanmin(depth) and np.nanmax(depth) < hi and np.all(depth[valid] > 0)


def test_rgbd_depth_conversions_against_the_raw_files():
    raw_tum = np.asarray(Image.open(FRAMES / "TUM_depth.png")).astype(np.float64)
    _, tum = load_rgbd_frame("tum")
    np.testing.assert_allclose(tum[raw_tum > 0], raw_tum[raw_tum > 0] / 5000.0, rtol=1e-6)
    assert np.isnan(tum[raw_tum == 0]).all()
    raw_sun = np.asarray(Image.open(FRAMES / "SUN_depth.png")).astype(np.int64)
    mm = ((raw_sun >> 3) | ((raw_sun << 13) & 0xFFFF))
    _, sun = load_rgbd_frame("sun")
    np.testing.assert_allclose(sun[mm > 0], mm[mm > 0] / 1000.0, rtol=1e-6)
    body = (FRAMES / "NYU_depth.pgm").read_bytes()[-640 * 480 * 2 :]
    lo_byte, hi_byte = np.frombuffer(body, np.uint8)[0::2].astype(np.int64), np.frombuffer(body, np.uint8)[1::2]
    raw_nyu = (lo_byte + 256 * hi_byte.astype(np.int64)).reshape(480, 640)
    _, nyu = load_rgbd_frame("nyu")
    metres = 351.3 / (1092.5 - raw_nyu)
    np.testing.assert_allclose(nyu[metres > 0], metres[metres > 0], rtol=1e-5)
    assert np.isnan(nyu[raw_nyu == 2047]).all()


def test_motorcycle_depth_from_disparity():
    import skimage.data

    _, _, disp = skimage.data.stereo_motorcycle()
    _, depth = load_rgbd_frame("motorcycle")
    ok = np.isfinite(disp)
    np.testing.assert_array_equal(np.isfinite(depth), ok)
    np.testing.assert_allclose(depth[ok], 994.978 * 0.193001 / (disp[ok] + 31.086), rtol=1e-5)


def test_rgbd_missing_files_and_bad_pgm(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "TUM_color.png")):
        load_rgbd_frame("tum", root=tmp_path)
    (tmp_path / "a.pgm").write_bytes(b"P2 2 2 255\n1 2 3 4\n")
    with pytest.raises(ValueError, match="not a binary PGM"):
        read_pgm16(tmp_path / "a.pgm")
    (tmp_path / "b.pgm").write_bytes(b"P5 2 1 65535\n" + np.array([7, 513], "<u2").tobytes())
    assert read_pgm16(tmp_path / "b.pgm").tolist() == [[7, 513]]
    (tmp_path / "c.pgm").write_bytes(b"P5 2 2 65535\n\x00\x01")
    with pytest.raises(ValueError, match="expected 8 bytes"):
        read_pgm16(tmp_path / "c.pgm")



def test_estimated_normals_are_the_plane_normals_of_a_flat_patch():
    rng = np.random.default_rng(0)
    points = np.c_[rng.uniform(-1, 1, (64, 2)), np.zeros(64)]  # the plane z = 0
    tilt = np.array([[1, 0, 0], [0, np.cos(0.5), -np.sin(0.5)], [0, np.sin(0.5), np.cos(0.5)]])
    normals = estimate_normals(points @ tilt.T, k=8)
    np.testing.assert_allclose(np.abs(normals @ (tilt @ [0, 0, 1])), 1.0, atol=1e-9)
    with pytest.raises(ValueError, match=r"points must have shape \(P, 3\)"):
        estimate_normals(points[:, :2])
