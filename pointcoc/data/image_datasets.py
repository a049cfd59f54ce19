"""Real labelled image sets and real RGB-D frames, loaded from the files they ship in (no downloads).

Labelled sets (``IMAGE_DATASETS``), each with a fixed, documented train/test split:

* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, 10 classes, grey 0-16 -> [0, 1]).
  Split: stratified, 20 % test per class, seed 0 (1,438 train / 359 test).
* ``mnist5k``: 5,000 real MNIST digits, 28x28 (``mnist5k/mnist_5k.csv.gz`` of the shipped data, 500 per class).
  Split: stratified, 20 % test per class, seed 0 (4,000 train / 1,000 test).
* ``lfw_faces``: scikit-image's bundled ``lfw_subset`` (25x25 grey, 100 faces then 100 non-faces;
  class 0 non-face, 1 face). Split: stratified, 25 % test, seed 0 (150 train / 50 test).
* ``modelnet_depth``: depth images rendered from real ModelNet10 shapes of the shipped ``modelnet10``
  (:func:`render_depth_views`): the first ``MODELNET_DEPTH_SHAPES`` = (20, 5) training / test shapes of each
  class in file (name) order, 512 points each, turned from z up to the renderer's y up; 28x28, 8 views per
  shape, a grey Lambertian-shaded intensity (normals estimated from the points, :func:`estimate_normals`) as the
  "camera" channel and the z-buffer depth; background pixels have depth NaN. The official train/test split of
  shapes is kept, so no shape is in both (1,600 train / 400 test images, 10 classes).

The split helper is :func:`stratified_split`: within each class, a permutation drawn from
``numpy.random.RandomState(seed)`` (classes in increasing order), the first ``round(fraction * n_c)``
go to test.

RGB-D frames (:func:`load_rgbd_frame`), unlabelled, for pictures and pipeline tests: ``nyu``, ``sun``,
``tum`` (shipped data, see its SOURCE.md) and ``motorcycle`` (Middlebury 2014 in scikit-image).
"""
from __future__ import annotations

import gzip
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from .._links import repository_link
from .._optional import MissingOptionalPackage
from .locations import shipped_set_dir

__all__ = [
    "IMAGE_DATASETS",
    "RGBD_FRAMES",
    "ImageSplits",
    "load_image_dataset",
    "load_digits",
    "load_mnist5k",
    "load_lfw_faces",
    "load_modelnet_depth",
    "estimate_normals",
    "render_depth_views",
    "stratified_split",
    "load_rgbd_frame",
    "read_pgm16",
]

IMAGE_DATASETS = ("digits", "mnist5k", "lfw_faces", "modelnet_depth")
RGBD_FRAMES = ("nyu", "sun", "tum", "motorcycle")

# modelnet_depth rendering: 8 azimuths, 30 degrees above the horizon, 28x28 pixels
MODELNET_VIEWS = tuple(float(a) for a in range(0, 360, 45))
MODELNET_ELEVATION = 30.0
MODELNET_SIZE = 28
# modelnet_depth shapes: the first this many (train, test) shapes of each modelnet10 class; neighbours per normal
MODELNET_DEPTH_SHAPES = (20, 5)
MODELNET_NORMAL_NEIGHBOURS = 16


@dataclass
class ImageSplits:
    """A labelled image set split into train and test.

    train_images / test_images: float32 (n, C, H, W) in [0, 1].
    train_labels / test_labels: int64 (n,) in [0, len(class_names)).
    class_names: one name per class.
    train_depth / test_depth: float32 (n, H, W), NaN where there is no depth; None for sets without depth.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: List[str]
    train_depth: Optional[np.ndarray] = None
    test_depth: Optional[np.ndarray] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(int(s) for s in self.train_images.shape[1:])


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Sorted index arrays (train, test): per class a seeded permutation, the first round(f * n_c) are test."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction!r}")
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(math.floor(test_fraction * len(idx) + 0.5))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _split(images, labels, names, test_fraction, seed=0) -> ImageSplits:
    tr, te = stratified_split(labels, test_fraction, seed)
    return ImageSplits(images[tr], labels[tr], images[te], labels[te], names)


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}. It ships inside the pointcoc package (and in the "
                                f"repository, {repository_link('data/')}): reinstall pointcoc, or pass root= / "
                                f"--data-root pointing at a folder holding {path.name}")
    return path


def load_digits() -> ImageSplits:
    """scikit-learn's 8x8 digits: (n, 1, 8, 8) grey levels / 16, seeded stratified 80/20 split."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    images = (d.images.astype(np.float32) / 16.0)[:, None]
    return _split(images, d.target.astype(np.int64), [str(i) for i in range(10)], 0.2)


def load_mnist5k(root=None) -> ImageSplits:
    """``mnist_5k.csv.gz``: rows of 784 grey values 0-255 then the label; (n, 1, 28, 28) / 255, 80/20 split."""
    path = _require(Path(root or shipped_set_dir("mnist5k")) / "mnist_5k.csv.gz", "mnist5k file")
    with gzip.open(path, "rt") as f:
        try:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
        except ValueError as err:
            raise ValueError(f"{path}: expected comma-separated integers, 785 per row ({err})") from None
        except (OSError, EOFError, zlib.error) as err:  # not gzip, or cut short
            raise ValueError(f"{path} is damaged: not a complete gzip file ({type(err).__name__}: {err})") from None
    if table.shape[1] != 785:
        raise ValueError(f"{path}: expected 785 columns (784 pixels + label); got {table.shape[1]}")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: pixels must lie in 0..255 and labels in 0..9; got pixels "
                         f"{pixels.min()}..{pixels.max()}, labels {labels.min()}..{labels.max()}")
    images = (pixels.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return _split(images, labels, [str(i) for i in range(10)], 0.2)


def _skimage_data_file(name: str) -> Path:
    try:
        import skimage.data
    except ImportError:
        raise MissingOptionalPackage(f"{name} ships with scikit-image, which is not installed: pip install "
                                     "'pointcoc[images]' (or scikit-image)") from None
    return Path(skimage.data.__file__).parent / name


def load_lfw_faces(root=None) -> ImageSplits:
    """scikit-image's ``lfw_subset.npy`` (200, 25, 25): first 100 faces (class 1), then 100 non-faces (0)."""
    path = _require(Path(root) / "lfw_subset.npy" if root else _skimage_data_file("lfw_subset.npy"), "lfw_subset")
    images = np.load(path)
    if images.shape != (200, 25, 25):
        raise ValueError(f"{path}: expected 200 grey 25x25 images; got shape {images.shape}")
    images = images.astype(np.float32)
    if images.max() > 1.0:
        images = images / 255.0
    labels = np.r_[np.ones(100, np.int64), np.zeros(100, np.int64)]
    return _split(images[:, None], labels, ["non-face", "face"], 0.25)


def _rotation(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """World (y up) -> camera: turn by the azimuth about y, then tilt by the elevation about x."""
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(e), -math.sin(e)], [0, math.sin(e), math.cos(e)]])
    return rx @ ry


def render_depth_views(points: np.ndarray, normals: np.ndarray, size: int = MODELNET_SIZE,
                       azimuths=MODELNET_VIEWS, elevation: float = MODELNET_ELEVATION):
    """Orthographic z-buffer rendering of one point cloud (unit sphere, y up) from several directions.

    For each view the cloud is rotated (:func:`_rotation`), the camera looks along -z from z = +2, and each
    point falls into the pixel ``col = floor((x + 1) / 2 * size)``, ``row = floor((1 - y) / 2 * size)``.
    A pixel keeps its nearest point: depth = 2 - z (in unit-sphere radii, so in [1, 3]) and intensity =
    0.15 + 0.85 * |n . l|, a Lambertian shade of that point's normal n (camera frame) under a light l =
    normalise(-0.4, 0.6, 1) from the upper left of the camera -- what a grey camera would see of a matte
    object. Pixels no point falls into are background: intensity 0, depth NaN.

    Args:
        points, normals: float (P, 3). size: image side. azimuths: degrees about y. elevation: degrees.

    Returns:
        intensity (V, 1, size, size) float32 in [0, 1], depth (V, size, size) float32 (NaN = background).
    """
    light = np.array([-0.4, 0.6, 1.0])
    light /= np.linalg.norm(light)
    unit_normals = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    views = len(azimuths)
    intensity = np.zeros((views, 1, size, size), np.float32)
    depth = np.full((views, size, size), np.nan, np.float32)
    for v, az in enumerate(azimuths):
        r = _rotation(az, elevation)
        p, n = points @ r.T, unit_normals @ r.T
        col = np.clip(np.floor((p[:, 0] + 1) / 2 * size), 0, size - 1).astype(np.int64)
        row = np.clip(np.floor((1 - p[:, 1]) / 2 * size), 0, size - 1).astype(np.int64)
        dist = 2.0 - p[:, 2]
        pixel = row * size + col
        order = np.lexsort((dist, pixel))  # by pixel, nearest first
        first = order[np.r_[True, pixel[order][1:] != pixel[order][:-1]]]
        shade = 0.15 + 0.85 * np.abs(n[first] @ light)
        intensity[v, 0].flat[pixel[first]] = shade
        depth[v].flat[pixel[first]] = dist[first]
    return intensity, depth


def estimate_normals(points: np.ndarray, k: int = MODELNET_NORMAL_NEIGHBOURS) -> np.ndarray:
    """Unit normals (P, 3) of a cloud (P, 3): for each point the direction of least variance (the eigenvector of
    the smallest eigenvalue of the covariance) of its ``k`` nearest points, itself included. The sign is
    arbitrary; :func:`render_depth_views` shades with ``|n . l|``, which does not depend on it."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or not 3 <= k <= points.shape[0]:
        raise ValueError(f"points must have shape (P, 3) with P >= k >= 3; got {points.shape}, k={k}")
    d2 = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    idx = np.argsort(d2, axis=1, kind="stable")[:, :k]
    nb = points[idx]  # (P, k, 3)
    centred = nb - nb.mean(axis=1, keepdims=True)
    cov = np.einsum("pki,pkj->pij", centred, centred)
    _, vectors = np.linalg.eigh(cov)  # eigenvalues ascending
    return vectors[:, :, 0]


def load_modelnet_depth(root=None) -> ImageSplits:
    """Depth renderings of shapes of the shipped ``modelnet10`` (see :func:`render_depth_views`): the first
    ``MODELNET_DEPTH_SHAPES`` training / test shapes of each class, the official split kept. ``root``: a folder
    holding ``modelnet10_{train,test}.h5`` and ``shape_names.txt`` (default: the shipped copy)."""
    import h5py

    base = Path(root or shipped_set_dir("modelnet10"))
    names_path = _require(base / "shape_names.txt", "modelnet10 shape_names.txt")
    names = [s.strip() for s in names_path.read_text().splitlines() if s.strip()]
    out = []
    for split, per_class in zip(("train", "test"), MODELNET_DEPTH_SHAPES):
        path = _require(base / f"modelnet10_{split}.h5", "modelnet10 file")
        with h5py.File(path, "r") as f:
            missing = [k for k in ("data", "label") if k not in f]
            if missing:
                raise ValueError(f"{path} must hold datasets data and label; missing {missing}")
            labels = f["label"][:].reshape(-1).astype(np.int64)
            keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(names))])
            points = f["data"][np.sort(keep)].astype(np.float64)
            labels = labels[np.sort(keep)]
        points = points[:, :, [0, 2, 1]]  # z up (the file) -> y up (the renderer): (x, y, z) -> (x, z, y)
        images, depths = zip(*(render_depth_views(p, estimate_normals(p)) for p in points))
        views = len(MODELNET_VIEWS)
        out.append((np.concatenate(images), np.repeat(labels, views), np.concatenate(depths)))
    (tr_x, tr_y, tr_d), (te_x, te_y, te_d) = out
    return ImageSplits(tr_x, tr_y, te_x, te_y, names, tr_d, te_d)


def load_image_dataset(name: str, root=None) -> ImageSplits:
    """Load a labelled image set by name (one of ``IMAGE_DATASETS``); ``root`` overrides its folder."""
    if name == "digits":
        return load_digits()
    if name == "mnist5k":
        return load_mnist5k(root)
    if name == "lfw_faces":
        return load_lfw_faces(root)
    if name == "modelnet_depth":
        return load_modelnet_depth(root)
    raise ValueError(f"name must be one of {IMAGE_DATASETS}; got {name!r}")


def read_pgm16(path) -> np.ndarray:
    """(H, W) uint16 pixels of a binary 16-bit PGM, read little-endian as the NYU files are written.

    (The PGM standard says big-endian; Open3D's NYU reader reads big-endian and then swaps the bytes.)
    """
    path = _require(Path(path), "PGM file")
    data = path.read_bytes()
    m = re.match(rb"P5\s+(\d+)\s+(\d+)\s+(\d+)\s", data)
    if m is None:
        raise ValueError(f"{path}: not a binary PGM (expected a 'P5 width height maxval' header)")
    w, h, maxval = (int(g) for g in m.groups())
    if maxval < 256:
        raise ValueError(f"{path}: expected a 16-bit PGM (maxval >= 256); got maxval {maxval}")
    body = data[m.end() : m.end() + 2 * w * h]
    if len(body) != 2 * w * h:
        raise ValueError(f"{path}: expected {2 * w * h} bytes of pixels; got {len(body)}")
    return np.frombuffer(body, dtype="<u2").reshape(h, w).copy()


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(_require(path, "colour image")) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0


def _read_png16(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(_require(path, "depth image")) as im:
        return np.asarray(im).astype(np.uint16)


def load_rgbd_frame(name: str, root=None) -> Tuple[np.ndarray, np.ndarray]:
    """One real RGB-D frame: (image (3, H, W) float32 in [0, 1], depth (H, W) float32 metres, NaN invalid).

    Depth conversions (as Open3D's ``RGBDImage.CreateFrom*Format``, without their range cut-offs):

    * ``nyu`` (640x480): raw Kinect value r (little-endian 16-bit PGM) -> ``351.3 / (1092.5 - r)`` m;
      results <= 0 (r = 2047, no reading) are invalid.
    * ``sun`` (640x480): 16-bit PNG rotated right by 3 bits -> millimetres -> / 1000.
    * ``tum`` (640x480): 16-bit PNG / 5000.
    * ``motorcycle`` (741x500, Middlebury 2014, 4x down-sampled in scikit-image): disparity d ->
      ``f * B / (d + doffs)`` with f = 994.978 px, B = 0.193001 m, doffs = 31.086 px (the calibration of
      the down-sampled images given by ``skimage.data.stereo_motorcycle``); unknown disparity is invalid.

    A depth of 0 means "no reading" in the PNG/PGM files and becomes NaN.
    """
    base = Path(root or shipped_set_dir("rgbd_frames"))
    if name == "nyu":
        image = _read_rgb(base / "NYU_color.ppm")
        raw = read_pgm16(base / "NYU_depth.pgm").astype(np.float64)
        depth = 351.3 / (1092.5 - raw)
    elif name == "sun":
        image = _read_rgb(base / "SUN_color.jpg")
        raw = _read_png16(base / "SUN_depth.png")
        depth = ((raw >> 3) | (raw << 13)).astype(np.float64) / 1000.0
    elif name == "tum":
        image = _read_rgb(base / "TUM_color.png")
        depth = _read_png16(base / "TUM_depth.png").astype(np.float64) / 5000.0
    elif name == "motorcycle":
        image = _read_rgb(Path(root) / "motorcycle_left.png" if root else _skimage_data_file("motorcycle_left.png"))
        disp_path = _require(Path(root) / "motorcycle_disp.npz" if root else _skimage_data_file("motorcycle_disp.npz"),
                             "motorcycle disparity")
        with np.load(disp_path) as z:
            disp = z[z.files[0]].astype(np.float64)
        depth = 994.978 * 0.193001 / (disp + 31.086)
    else:
        raise ValueError(f"name must be one of {RGBD_FRAMES}; got {name!r}")
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, np.nan).astype(np.float32)
    if depth.shape != image.shape[1:]:
        raise ValueError(f"{name}: colour {image.shape[1:]} and depth {depth.shape} sizes differ")
    return image, depth
