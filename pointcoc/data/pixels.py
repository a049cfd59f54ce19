"""Images as sets of pixels: conversion, pixel-set formats, a dataset and a ragged collate.

A pixel at column ``i`` and row ``j`` of an image of width ``w`` and height ``h`` becomes a point at
``(i / w - 0.5, j / h - 0.5)`` whose features are its colour channels. With a depth map the point gets
a third coordinate, the depth scaled to [-0.5, 0.5] (see :func:`scale_depth`), and the scaled depth is
appended to its features. Points are listed in row-major order (row ``j``, then column ``i``).

Formats (``PIXEL_FORMATS``), each a keep-mask drawn by :func:`keep_mask` from a seeded generator:

* ``regular``: every pixel.
* ``discrete``: ``round(keep * H * W)`` pixels drawn uniformly without replacement.
* ``masked``: random rectangular blocks removed until exactly ``H * W - round(keep * H * W)`` pixels
  are gone (the last block is trimmed to hit the count).
* ``irregular``: a random ellipse or star-shaped polygon (random centre, size, rotation), grown until it
  holds ``round(keep * H * W)`` pixels: the pixels with the smallest shape-normalised distance to the
  centre are kept, so the region is the shape clipped by the image border.
* ``rgbd``: every pixel whose depth is valid (finite and > 0); ``keep`` is ignored.

So every format except ``rgbd`` gives sets of exactly ``kept_pixel_count(keep, H, W)`` points.
"""
from __future__ import annotations

import math
from typing import Dict, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "PIXEL_FORMATS",
    "PixelSet",
    "image_to_point_set",
    "pixel_coordinates",
    "scale_depth",
    "valid_depth",
    "kept_pixel_count",
    "keep_mask",
    "PixelSetDataset",
    "collate_pixel_sets",
]

PIXEL_FORMATS = ("regular", "discrete", "masked", "irregular", "rgbd")

ArrayLike = Union[torch.Tensor, np.ndarray]


class PixelSet(NamedTuple):
    """A point set made from an image.

    xyz: (N, 2) pixel coordinates, or (N, 3) with the scaled depth as third coordinate.
    features: (N, C) colours, or (N, C + 1) with the scaled depth appended.
    """

    xyz: torch.Tensor
    features: torch.Tensor


def _as_tensor(name: str, x, ndim: int, shape_text: str) -> torch.Tensor:
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array of shape {shape_text}; got {type(x).__name__}")
    t = torch.as_tensor(x)
    if t.dim() != ndim:
        raise ValueError(f"{name} must have shape {shape_text}; got shape {tuple(t.shape)}")
    return t


def pixel_coordinates(height: int, width: int) -> torch.Tensor:
    """(H, W, 2) float32 grid: entry [j, i] = (i / width - 0.5, j / height - 0.5)."""
    cols = torch.arange(width, dtype=torch.float32) / width - 0.5
    rows = torch.arange(height, dtype=torch.float32) / height - 0.5
    return torch.stack(torch.meshgrid(cols, rows, indexing="xy"), dim=-1)


def valid_depth(depth: torch.Tensor) -> torch.Tensor:
    """(H, W) bool: depth is finite and > 0 (0 and NaN mean "no measurement")."""
    return torch.isfinite(depth) & (depth > 0)


def scale_depth(depth: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Depth scaled to [-0.5, 0.5] over the valid pixels of one depth map.

    ``z = (d - d_min) / (d_max - d_min) - 0.5`` with ``d_min``, ``d_max`` over every valid pixel of the
    map (not only the kept ones, so removing pixels never changes the others' depth coordinate); ``z = 0``
    when all valid depths are equal. Invalid pixels get 0. Returns (H, W) float32.
    """
    valid = valid_depth(depth) if valid is None else valid
    d = depth.float()
    if not bool(valid.any()):
        return torch.zeros_like(d)
    lo, hi = d[valid].min(), d[valid].max()
    z = (d - lo) / (hi - lo) - 0.5 if bool(hi > lo) else torch.zeros_like(d)
    return torch.where(valid, z, torch.zeros_like(z))


IMAGE_LAYOUTS = ("CHW", "HWC")
MAX_CHANNELS_GUESS = 4  # grey, grey+alpha, RGB, RGBA: a last axis this short may be channels


def image_to_point_set(image: ArrayLike, depth: Optional[ArrayLike] = None,
                       keep: Optional[ArrayLike] = None, layout: Optional[str] = None) -> PixelSet:
    """Convert one image (optionally with depth) into a point set.

    Args:
        image: float colours (any range; the data loaders give [0, 1]); every value finite. (C, H, W) by
            default (torch's layout); (H, W, C) with ``layout="HWC"`` (numpy / PIL / matplotlib's layout).
        depth: optional float (H, W) depth (any unit); pixels with depth <= 0 or non-finite are absent.
        keep: optional bool (H, W), True on the pixels present (None: all).
        layout: "CHW" or "HWC". None means "CHW" but refuses a shape that looks channels-last (first axis
            longer than 4, last axis at most 4, e.g. (8, 8, 3)) instead of guessing: pass the layout.

    Returns:
        PixelSet(xyz, features), float32, one row per present pixel in row-major order:
        without depth xyz (N, 2) = (i / W - 0.5, j / H - 0.5) and features (N, C);
        with depth xyz (N, 3) whose last column is :func:`scale_depth`, and features (N, C + 1) with the
        same scaled depth appended.

    Raises:
        ValueError: wrong ranks or mismatched shapes, an ambiguous shape without ``layout``, a non-floating
            or non-finite image, a non-bool mask, or no pixel present.
    """
    if layout not in (None, *IMAGE_LAYOUTS):
        raise ValueError(f"layout must be None, 'CHW' or 'HWC'; got {layout!r}")
    img = _as_tensor("image", image, 3, "(H, W, C)" if layout == "HWC" else "(C, H, W)")
    if layout == "HWC":
        img = img.permute(2, 0, 1)
    elif layout is None and img.shape[0] > MAX_CHANNELS_GUESS >= img.shape[2]:
        c, h, w = img.shape
        raise ValueError(f"image of shape {tuple(img.shape)} is ambiguous: as (C, H, W) it is {c} channels of a "
                         f"{h}x{w} image, but it looks like an {c}x{h} image with {w} channels (H, W, C). "
                         "Pass layout='HWC' for channels-last (numpy/PIL) images or layout='CHW'")
    if not img.is_floating_point():
        raise ValueError(f"image must be floating point (C, H, W) (divide uint8 images by 255); got dtype {img.dtype}")
    c, h, w = img.shape
    if c == 0 or h == 0 or w == 0:
        raise ValueError(f"image must have shape (C, H, W) with C, H, W >= 1; got shape {tuple(img.shape)}")
    if not bool(torch.isfinite(img).all()):
        raise ValueError("image must hold only finite colours; it contains NaN or inf")
    biggest = float(img.detach().abs().max())
    if biggest > torch.finfo(torch.float32).max:  # checked before the cast to float32, which would give inf
        raise ValueError(f"image colours up to {biggest:.3g} in magnitude do not fit float32 (the point set's dtype, "
                         f"at most {torch.finfo(torch.float32).max:.3g}); rescale the image")
    present = torch.ones(h, w, dtype=torch.bool)
    if keep is not None:
        mask = _as_tensor("keep", keep, 2, f"(H, W) = ({h}, {w})")
        if mask.dtype != torch.bool:
            raise ValueError(f"keep must be a bool mask of shape (H, W) = ({h}, {w}); got dtype {mask.dtype}")
        if tuple(mask.shape) != (h, w):
            raise ValueError(f"keep must have shape (H, W) = ({h}, {w}) like the image; got {tuple(mask.shape)}")
        present = present & mask.cpu()
    z = None
    if depth is not None:
        d = _as_tensor("depth", depth, 2, f"(H, W) = ({h}, {w})")
        if tuple(d.shape) != (h, w):
            raise ValueError(f"depth must have shape (H, W) = ({h}, {w}) like the image; got {tuple(d.shape)}")
        if not d.is_floating_point():
            d = d.double()
        d = d.cpu()
        valid = valid_depth(d)
        z = scale_depth(d, valid)
        present = present & valid
    if not bool(present.any()):
        why = "the keep mask is all False" if depth is None else "no kept pixel has a valid depth (> 0, finite)"
        raise ValueError(f"the point set would be empty: {why}")
    rows, cols = torch.nonzero(present, as_tuple=True)
    img = img.detach().cpu().float()
    xyz = pixel_coordinates(h, w)[rows, cols]
    features = img[:, rows, cols].T
    if z is not None:
        zs = z[rows, cols, None]
        xyz = torch.cat([xyz, zs], dim=1)
        features = torch.cat([features, zs], dim=1)
    return PixelSet(xyz.contiguous(), features.contiguous())


def kept_pixel_count(keep: float, height: int, width: int) -> int:
    """``round(keep * height * width)`` (halves round up), at least 1."""
    return max(1, int(math.floor(keep * height * width + 0.5)))


def _check_keep(keep) -> float:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise ValueError(f"keep must be a fraction in (0, 1]; got {keep!r}")
    return float(keep)


def _discrete(h: int, w: int, count: int, g: torch.Generator) -> torch.Tensor:
    mask = torch.zeros(h * w, dtype=torch.bool)
    mask[torch.randperm(h * w, generator=g)[:count]] = True
    return mask.view(h, w)


def _masked(h: int, w: int, count: int, g: torch.Generator) -> torch.Tensor:
    """Remove random blocks (sides 15-40 % of the image's) until exactly h*w - count pixels are gone."""
    removed = torch.zeros(h, w, dtype=torch.bool)
    to_remove = h * w - count
    lo_h, hi_h = max(1, math.ceil(0.15 * h)), max(1, math.ceil(0.4 * h))
    lo_w, hi_w = max(1, math.ceil(0.15 * w)), max(1, math.ceil(0.4 * w))
    while int(removed.sum()) < to_remove:
        bh = int(torch.randint(lo_h, hi_h + 1, (), generator=g))
        bw = int(torch.randint(lo_w, hi_w + 1, (), generator=g))
        top = int(torch.randint(0, h - bh + 1, (), generator=g))
        left = int(torch.randint(0, w - bw + 1, (), generator=g))
        block = torch.zeros(h, w, dtype=torch.bool)
        block[top : top + bh, left : left + bw] = True
        new = block & ~removed
        excess = int(removed.sum()) + int(new.sum()) - to_remove
        if excess > 0:  # trim the last block so the count is exact
            idx = torch.nonzero(new.flatten()).flatten()
            new.view(-1)[idx[len(idx) - excess :]] = False
        removed |= new
    return ~removed


def _shape_distance(h: int, w: int, g: torch.Generator) -> torch.Tensor:
    """(H, W) distance of each pixel to a random centre, normalised by a random ellipse or star polygon.

    Level sets {distance <= t} are that shape scaled by t around the centre (in the [-0.5, 0.5)
    pixel coordinates, so the shape is not stretched by the aspect ratio).
    """

    def uniform(lo, hi, n=()):
        return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)

    grid = pixel_coordinates(h, w).double()
    centre = uniform(-0.2, 0.2, (2,))
    rel = grid - centre
    angle = float(uniform(0, math.pi))
    cos, sin = math.cos(angle), math.sin(angle)
    u = rel[..., 0] * cos + rel[..., 1] * sin
    v = -rel[..., 0] * sin + rel[..., 1] * cos
    if float(uniform(0, 1)) < 0.5:  # ellipse with axis ratio in [0.35, 1]
        ratio = float(uniform(0.35, 1.0))
        return torch.sqrt(u**2 + (v / ratio) ** 2)
    # star-shaped polygon: k vertices at jittered angles with radii in [0.45, 1]
    k = int(torch.randint(3, 8, (), generator=g))
    base = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    vert_angle = base + uniform(-0.3, 0.3, (k,)) * (2 * math.pi / k)
    radius = uniform(0.45, 1.0, (k,))
    vx, vy = radius * torch.cos(vert_angle), radius * torch.sin(vert_angle)
    theta = torch.remainder(torch.atan2(v, u) - vert_angle[0], 2 * math.pi)
    rel_vert = torch.remainder(vert_angle - vert_angle[0], 2 * math.pi)
    seg = torch.searchsorted(rel_vert.contiguous(), theta.flatten().contiguous(), right=True).view_as(theta) - 1
    a = seg.clamp(0, k - 1)
    b = (a + 1) % k
    ax, ay, bx, by = vx[a], vy[a], vx[b], vy[b]
    # the ray from the centre along (u, v) meets edge a-b at t * (u, v); distance = 1 / t
    ex, ey = bx - ax, by - ay
    denom = u * ey - v * ex
    t = (ax * ey - ay * ex) / torch.where(denom.abs() < 1e-12, torch.full_like(denom, 1e-12), denom)
    dist = 1.0 / t
    return torch.where(torch.hypot(u, v) < 1e-12, torch.zeros_like(dist), dist)


def _irregular(h: int, w: int, count: int, g: torch.Generator) -> torch.Tensor:
    dist = _shape_distance(h, w, g).flatten()
    order = torch.argsort(dist, stable=True)
    mask = torch.zeros(h * w, dtype=torch.bool)
    mask[order[:count]] = True
    return mask.view(h, w)


def keep_mask(fmt: str, height: int, width: int, keep: float = 1.0,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(H, W) bool mask of the pixels a format keeps (see the module docstring).

    Args:
        fmt: one of ``PIXEL_FORMATS``.
        height, width: image size.
        keep: fraction of pixels kept, in (0, 1]; ignored by ``regular`` and ``rgbd`` (all pixels; for
            ``rgbd`` the depth's validity then decides in :func:`image_to_point_set`).
        generator: torch.Generator for the random draws (None: torch's global generator).
    """
    if fmt not in PIXEL_FORMATS:
        raise ValueError(f"fmt must be one of {PIXEL_FORMATS}; got {fmt!r}")
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1; got {v!r}")
    keep = _check_keep(keep)
    if fmt in ("regular", "rgbd"):
        return torch.ones(height, width, dtype=torch.bool)
    count = kept_pixel_count(keep, height, width)
    if generator is None:
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
    if fmt == "discrete":
        return _discrete(height, width, count, generator)
    if fmt == "masked":
        return _masked(height, width, count, generator)
    return _irregular(height, width, count, generator)


def _item_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index * 7_919 + 12_345) % 2**62


class PixelSetDataset(Dataset):
    """Labelled images served as pixel sets of one format.

    Args:
        images: float (n, C, H, W), values as they should appear as features (loaders give [0, 1]).
        labels: int (n,).
        fmt: one of ``PIXEL_FORMATS``.
        keep: fraction of pixels kept by ``discrete`` / ``masked`` / ``irregular``, in (0, 1].
        seed: the keep-mask of item i is drawn from a generator seeded with (seed, i) only, so it is the
            same in every epoch, in every DataLoader worker and after resume (masks are NOT re-drawn per
            epoch; use another seed for another draw).
        redraw: instead draw a new mask at every access from torch's global generator (training-time
            augmentation). :func:`pointcoc.engine.fit` seeds that generator from (seed, epoch, index) for
            every training item it loads, in whichever process, so runs stay reproducible and resumable.
        depth: float (n, H, W); required by ``rgbd`` (ignored by the other formats).
        class_names: optional, one name per class.

    Items: ``{"xyz": (m, D) float32, "features": (m, C') float32, "label": () long}`` with D = 2 and
    C' = C, or for ``rgbd`` D = 3 and C' = C + 1. Batch them with :func:`collate_pixel_sets`.
    """

    def __init__(self, images: ArrayLike, labels: ArrayLike, fmt: str = "regular", keep: float = 1.0,
                 seed: int = 0, depth: Optional[ArrayLike] = None, class_names: Optional[Sequence[str]] = None,
                 redraw: bool = False):
        imgs = _as_tensor("images", images, 4, "(n, C, H, W)")
        if not imgs.is_floating_point():
            raise ValueError(f"images must be floating point (n, C, H, W); got dtype {imgs.dtype}")
        if not bool(torch.isfinite(imgs).all()):
            raise ValueError("images must hold only finite values; they contain NaN or inf")
        labs = _as_tensor("labels", labels, 1, f"(n,) = ({imgs.shape[0]},)")
        if labs.shape[0] != imgs.shape[0] or labs.is_floating_point() or labs.dtype == torch.bool:
            raise ValueError(f"labels must be integers of shape (n,) = ({imgs.shape[0]},); "
                             f"got {tuple(labs.shape)} {labs.dtype}")
        if fmt not in PIXEL_FORMATS:
            raise ValueError(f"fmt must be one of {PIXEL_FORMATS}; got {fmt!r}")
        self.keep = _check_keep(keep)
        self.images = imgs.float().contiguous()
        self.labels = labs.long()
        self.fmt = fmt
        self.seed = int(seed)
        self.redraw = bool(redraw)
        self.class_names = list(class_names) if class_names is not None else None
        self.height, self.width = int(imgs.shape[2]), int(imgs.shape[3])
        self.depth = None
        if fmt == "rgbd":
            if depth is None:
                raise ValueError("fmt 'rgbd' needs depth (n, H, W); got None")
            d = _as_tensor("depth", depth, 3, f"(n, H, W) = ({imgs.shape[0]}, {self.height}, {self.width})")
            if tuple(d.shape) != (imgs.shape[0], self.height, self.width):
                raise ValueError(f"depth must have shape (n, H, W) = ({imgs.shape[0]}, {self.height}, {self.width}); "
                                 f"got {tuple(d.shape)}")
            self.depth = d.float()
            counts = valid_depth(self.depth).flatten(1).sum(1)
            if bool((counts == 0).any()):
                bad = torch.nonzero(counts == 0).flatten()[:5].tolist()
                raise ValueError(f"depth of items {bad} has no valid pixel (> 0, finite); rgbd sets would be empty")

    @property
    def point_dim(self) -> int:
        """D of the items' xyz (2, or 3 for rgbd)."""
        return 3 if self.fmt == "rgbd" else 2

    @property
    def feature_dim(self) -> int:
        """C' of the items' features (colour channels, + 1 for rgbd)."""
        return self.images.shape[1] + (1 if self.fmt == "rgbd" else 0)

    def smallest_set_size(self) -> int:
        """The fewest points any item has (known without drawing masks: counts are exact)."""
        if self.fmt == "rgbd":
            return int(valid_depth(self.depth).flatten(1).sum(1).min())
        if self.fmt == "regular":
            return self.height * self.width
        return kept_pixel_count(self.keep, self.height, self.width)

    def mask(self, index: int) -> torch.Tensor:
        """(H, W) bool keep-mask of item ``index`` (a function of (seed, index) only, unless ``redraw``)."""
        if self.redraw:
            g = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
        else:
            g = torch.Generator().manual_seed(_item_seed(self.seed, index))
        return keep_mask(self.fmt, self.height, self.width, self.keep, generator=g)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index = index % len(self)
        depth = self.depth[index] if self.depth is not None else None
        xyz, features = image_to_point_set(self.images[index], depth=depth, keep=self.mask(index), layout="CHW")
        return {"xyz": xyz, "features": features, "label": self.labels[index]}


def collate_pixel_sets(samples: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Pad per-item dicts of different sizes into one batch.

    Args:
        samples: dicts with ``xyz`` (n_b, D), ``features`` (n_b, C) and ``label`` () (n_b may differ).

    Returns:
        ``{"xyz": (B, Nmax, D), "features": (B, Nmax, C), "lengths": (B,) long, "label": (B,) long}``;
        rows at index >= lengths[b] are zeros.
    """
    if not samples:
        raise ValueError("collate_pixel_sets needs at least one sample; got an empty list")
    for k, s in enumerate(samples):
        if not isinstance(s, dict) or not {"xyz", "features", "label"} <= set(s):
            got = sorted(s) if isinstance(s, dict) else type(s).__name__
            raise ValueError(f"sample {k} must be a dict with 'xyz', 'features' and 'label'; got {got}")
    d, c = samples[0]["xyz"].shape[-1], samples[0]["features"].shape[-1]
    lengths = []
    for k, s in enumerate(samples):
        x, f = s["xyz"], s["features"]
        if x.dim() != 2 or x.shape[1] != d or f.dim() != 2 or f.shape[1] != c or f.shape[0] != x.shape[0]:
            raise ValueError(f"sample {k}: expected xyz (n, {d}) and features (n, {c}) with the same n; "
                             f"got {tuple(x.shape)} and {tuple(f.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"sample {k} is an empty set (0 points)")
        lengths.append(x.shape[0])
    batch, n_max = len(samples), max(lengths)
    xyz = torch.zeros(batch, n_max, d, dtype=torch.float32)
    features = torch.zeros(batch, n_max, c, dtype=torch.float32)
    for b, s in enumerate(samples):
        xyz[b, : lengths[b]] = s["xyz"]
        features[b, : lengths[b]] = s["features"]
    labels = torch.stack([torch.as_tensor(s["label"]).long().reshape(()) for s in samples])
    return {"xyz": xyz, "features": features, "lengths": torch.tensor(lengths, dtype=torch.long), "label": labels}
