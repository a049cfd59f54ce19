"""Clustering maps: which context cluster every pixel of an image belongs to, layer by layer.

As the clustering maps of "Image as Set of Points" (Ma et al., ICLR 2023): for
each set-level :class:`~pointcoc.layers.ContextCluster` of a pixel-set model,
the image with each pixel coloured by its cluster and the cluster centers marked.

Later stages cluster FPS-subsampled anchors, not pixels. A pixel takes the
cluster of its nearest anchor of that stage (Euclidean distance in the model's
coordinates, so with depth the third coordinate counts; ties go to the anchor
listed first). At an anchor itself this is the recorded assignment. Head 0's
assignment is drawn (the pixel models have one head).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .._atomic import save_png
from ..layers import ContextCluster, record_assignments
from ..models.convnet import pixel_cells

__all__ = ["ClusterMap", "cluster_maps", "colorize_clusters", "layer_labels", "cluster_maps_figure",
           "plot_cluster_maps", "MISSING_RGB", "STAGES_NOTE"]


@dataclass
class ClusterMap:
    """The clustering of one context-cluster layer, mapped back to the pixels of an image.

    layer: the module's name in the model (e.g. ``stages.0.pos_blocks.0``).
    labels: (h, w) long, cluster slot of each pixel (0..M-1), -1 where the pixel is not in the set.
    centers: (m, 2) float, (column, row) of each center in pixels (may be fractional only if the
        coordinates were).
    center_slots: (m,) long, the slot of each center (its colour in the map).
    num_points: how many points (pixels or anchors) this layer clustered.
    """

    layer: str
    labels: torch.Tensor
    centers: torch.Tensor
    center_slots: torch.Tensor
    num_points: int


def _nearest(queries: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(n, D), (m, D) -> (n,) index of the nearest point (first one on ties)."""
    return torch.cdist(queries.double(), points.double()).argmin(dim=1)


@torch.no_grad()
def cluster_maps(model: nn.Module, xyz: torch.Tensor, features: Optional[torch.Tensor],
                 image_size: Tuple[int, int]) -> Tuple[List[ClusterMap], torch.Tensor]:
    """Run ``model`` (in eval mode) on one pixel set and map every context cluster's assignment to pixels.

    Args:
        model: a pointcoc model with set-level context clusters (``pointmlp_coc_pixels*``).
        xyz: (N, D) or (1, N, D) pixel coordinates ``(i / w - 0.5, j / h - 0.5[, depth])``.
        features: (N, C) or (1, N, C), or None for a model without features.
        image_size: (h, w) of the image the pixels come from.

    Returns:
        (one :class:`ClusterMap` per recorded layer, in forward order; logits (num_classes,)).

    Raises ValueError when the model has no set-level context cluster or a point is off the grid.
    """
    if xyz.dim() == 2:
        xyz = xyz[None]
        features = None if features is None else features[None]
    if xyz.dim() != 3 or xyz.shape[0] != 1:
        raise ValueError(f"xyz must be one pixel set, (N, D) or (1, N, D); got shape {tuple(xyz.shape)}")
    h, w = image_size
    cells = pixel_cells(xyz, (h, w))[0]
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, ContextCluster) and m.n_centers is not None]
    if not layers:
        raise ValueError(f"model {type(model).__name__} has no set-level ContextCluster to draw "
                         "(use a pointmlp_coc_pixels* model)")
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with record_assignments(model):
            logits = model(xyz.to(param), None if features is None else features.to(param))
    finally:
        model.train(was_training)
    maps = []
    points = xyz[0].double().cpu()
    for name, layer in layers:
        n = int(layer.last_lengths[0])
        anchors = layer.last_xyz[0, :n].double().cpu()
        assign = layer.last_assignment[0, :n].cpu()
        labels = torch.full((h * w,), -1, dtype=torch.long)
        labels[cells] = assign[_nearest(points, anchors)]
        center_idx = layer.last_center_idx[0].cpu()
        slots = torch.nonzero(center_idx >= 0).flatten()
        where = anchors[center_idx[slots]]
        centers = torch.stack([(where[:, 0] + 0.5) * w, (where[:, 1] + 0.5) * h], dim=1).float()
        maps.append(ClusterMap(name, labels.view(h, w), centers, slots, n))
    return maps, logits[0].cpu()


# Pixels not in the set: a neutral light grey in the maps (the palette has no grey), a pale red
# checkerboard in the input panel (where the image itself may be grey).
MISSING_RGB = (0.86, 0.86, 0.86)
INPUT_MISSING_RGB = (1.0, 0.75, 0.75)


def _palette(count: int) -> np.ndarray:
    """(count, 3) distinct RGB colours in [0, 1]: matplotlib's tab20 without its two greys (grey means "not in
    the set"), strong shades first, repeated if needed."""
    from matplotlib import colormaps

    tab20 = np.asarray(colormaps["tab20"].colors)
    coloured = [c for c in tab20 if np.ptp(c) > 0.05]  # drop the neutral (r = g = b) pair
    colours = np.concatenate([coloured[0::2], coloured[1::2]])
    return colours[np.arange(count) % len(colours)]


def colorize_clusters(labels: torch.Tensor, image: Optional[torch.Tensor] = None, alpha: float = 0.75,
                      missing: Sequence[float] = MISSING_RGB) -> np.ndarray:
    """(h, w) labels (-1: missing) [+ (C, h, w) image in [0, 1]] -> (h, w, 3) RGB array in [0, 1].

    Pixels of cluster s get palette colour s, blended with the image's grey value
    (``alpha`` of colour, ``1 - alpha`` of grey); missing pixels get ``missing`` (default
    :data:`MISSING_RGB`, a light grey: the palette has no grey, so no cluster looks missing).
    """
    labels = torch.as_tensor(labels)
    if labels.dim() != 2:
        raise ValueError(f"labels must have shape (h, w); got {tuple(labels.shape)}")
    lab = labels.numpy()
    colour = _palette(max(int(lab.max()) + 1, 1))[np.clip(lab, 0, None)]
    if image is not None:
        if image.dim() != 3 or tuple(image.shape[1:]) != tuple(labels.shape):
            raise ValueError(f"image must have shape (C, h, w) with (h, w) = {tuple(labels.shape)}; "
                             f"got {tuple(image.shape)}")
        grey = image.float().mean(0).clamp(0, 1).numpy()[..., None]
        colour = alpha * colour + (1 - alpha) * grey
    colour[lab < 0] = missing
    return colour


def _show_image(image: torch.Tensor, present: Optional[torch.Tensor]) -> np.ndarray:
    """(C, h, w) -> (h, w, 3) for imshow; pixels not present drawn as a pale red checkerboard."""
    img = image.float().clamp(0, 1)
    rgb = img[:3].permute(1, 2, 0).numpy() if img.shape[0] >= 3 else img[0, :, :, None].repeat(1, 1, 3).numpy()
    if present is not None:
        h, w = present.shape
        checker = 0.1 * ((np.arange(h)[:, None] + np.arange(w)[None, :]) % 2)[..., None]
        pale_red = np.array(INPUT_MISSING_RGB) - checker
        rgb = np.where(present.numpy()[..., None], rgb, pale_red)
    return rgb


LEGEND_HEIGHT = 0.7  # inches below the panels for the legend and the line that says what a stage is
# Under the legend: what the panel titles' stages are.
STAGES_NOTE = ("stage s: the clustering in the model's s-th stage, over the pixels in stage 1 and over fewer "
               "FPS-sampled anchors later (a pixel takes the cluster of its nearest anchor)")
_LAYER_NAME = re.compile(r"stages\.(\d+)\.\w+\.(\d+)$")


def layer_labels(layers: Sequence[str]) -> List[str]:
    """Panel titles for layer names: ``stages.0.pos_blocks.0`` -> ``stage 1``; with several clustering blocks in one
    stage, ``stage 1, block 2``. A name of another form is kept."""
    parsed = [_LAYER_NAME.match(name) for name in layers]
    stages = [int(m.group(1)) for m in parsed if m]
    labels = []
    for name, m in zip(layers, parsed):
        if m is None:
            labels.append(name)
            continue
        stage, block = int(m.group(1)), int(m.group(2))
        labels.append(f"stage {stage + 1}" + (f", block {block + 1}" if stages.count(stage) > 1 else ""))
    return labels


def cluster_maps_figure(rows: Sequence[Tuple[torch.Tensor, Sequence[ClusterMap], str]], panel_size: float = 2.6):
    """A matplotlib Figure with one row per image: the input, then one clustering map per context-cluster layer.

    Each pixel of a map has the colour of its cluster, blended with the image; the centers are white stars.
    Pixels not in the set are pale red (checkerboard) in the input panel and light grey
    (:data:`MISSING_RGB`) in the maps. A legend under the panels says so, and what the stages of the panel titles
    (:func:`layer_labels`) are. The figure's constrained layout keeps every title clear of the row above.

    Args:
        rows: (image (C, h, w) in [0, 1], its ClusterMaps, a title) per image.
        panel_size: inches per panel; the figure is ``panel_size * columns`` by
            ``panel_size * rows + 0.4 + LEGEND_HEIGHT`` inches.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if not rows:
        raise ValueError("rows must hold at least one (image, maps, title); got none")
    cols = 1 + max(len(maps) for _, maps, _ in rows)
    height = panel_size * len(rows) + 0.4 + LEGEND_HEIGHT
    fig = Figure(figsize=(panel_size * cols, height), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(rows) + 1, cols, height_ratios=[panel_size] * len(rows) + [LEGEND_HEIGHT])
    axes = np.array([[fig.add_subplot(grid[r, c]) for c in range(cols)] for r in range(len(rows))])
    any_missing = False
    for r, (image, maps, title) in enumerate(rows):
        present = maps[0].labels >= 0 if maps else None
        any_missing |= present is not None and not bool(present.all())
        axes[r, 0].imshow(_show_image(image, present), interpolation="nearest")
        axes[r, 0].set_title(title, fontsize=8)
        for c, (m, label) in enumerate(zip(maps, layer_labels([m.layer for m in maps])), start=1):
            ax = axes[r, c]
            ax.imshow(colorize_clusters(m.labels, image), interpolation="nearest")
            ax.scatter(m.centers[:, 0].numpy(), m.centers[:, 1].numpy(), s=70, marker="*", c="white",
                       edgecolors="black", linewidths=0.9)
            used = len(torch.unique(m.labels[m.labels >= 0]))
            ax.set_title(f"{label}\n{m.num_points} points, {used}/{len(m.center_slots)} clusters", fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in axes[r, 1 + len(maps):]:
            ax.axis("off")
    handles = [Patch(facecolor=(0.5, 0.5, 0.5, 0.0), edgecolor="none", label="map colour = the pixel's cluster"),
               Line2D([], [], linestyle="none", marker="*", markersize=10, markerfacecolor="white",
                      markeredgecolor="black", label="cluster center")]
    if any_missing:
        handles += [Patch(facecolor=MISSING_RGB, edgecolor="0.4", label="map: pixel not in the set"),
                    Patch(facecolor=INPUT_MISSING_RGB, edgecolor="0.4", label="input: pixel not in the set")]
    key = fig.add_subplot(grid[-1, :])
    key.axis("off")
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1.0), bbox_transform=key.transAxes,
               ncol=len(handles), frameon=False, fontsize=7, handlelength=1.2, columnspacing=1.2)
    key.text(0.5, 0.0, STAGES_NOTE, ha="center", va="bottom", fontsize=7, wrap=True, transform=key.transAxes)
    return fig


def plot_cluster_maps(rows: Sequence[Tuple[torch.Tensor, Sequence[ClusterMap], str]], path,
                      panel_size: float = 2.6) -> Path:
    """Write :func:`cluster_maps_figure` of ``rows`` as a PNG at ``path`` (folders are created); returns the path."""
    return save_png(cluster_maps_figure(rows, panel_size), Path(path), dpi=110)
