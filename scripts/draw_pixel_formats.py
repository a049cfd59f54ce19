#!/usr/bin/env python
"""Draw the pixel-set formats on a real MNIST digit and the RGB-D conversion on real frames (PNG).

    python scripts/draw_pixel_formats.py --output docs/images

Writes pixel_formats.png (one mnist5k test digit as regular, discrete 50/25/10 %, masked 50 % and
irregular 50 % pixel sets) and pixel_rgbd.png (TUM, NYU and Middlebury motorcycle frames and a
modelnet_depth rendering: colour, depth, and the RGB-D point set in 3-D). Every panel shows the points that the models receive.
"""
import argparse
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pointcoc.data import image_to_point_set, keep_mask, load_image_dataset, load_rgbd_frame  # noqa: E402


def draw_set(ax, xyz, features, title):
    """Points at their (x, y) pixel coordinates, grey value as colour, y growing downwards as in the image."""
    ax.scatter(xyz[:, 0], xyz[:, 1], c=features[:, 0], cmap="gray", vmin=0, vmax=1, s=9, marker="s",
               edgecolors="none")
    ax.set_xlim(-0.52, 0.5)
    ax.set_ylim(0.5, -0.52)
    ax.set_facecolor("#3b6ea5")
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title}\n{len(xyz)} points", fontsize=8)


def formats_figure(path: Path, index: int, seed: int) -> None:
    splits = load_image_dataset("mnist5k")
    image = splits.test_images[index]
    panels = [("regular", 1.0), ("discrete", 0.5), ("discrete", 0.25), ("discrete", 0.1), ("masked", 0.5),
              ("irregular", 0.5)]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.0 * len(panels), 2.4))
    for k, (ax, (fmt, keep)) in enumerate(zip(axes, panels)):
        mask = keep_mask(fmt, 28, 28, keep, generator=torch.Generator().manual_seed(seed + k))
        xyz, feats = image_to_point_set(image, keep=mask)
        draw_set(ax, xyz.numpy(), feats.numpy(), fmt if fmt == "regular" else f"{fmt} {keep:.0%}")
    fig.suptitle(f"mnist5k test digit {index} (label {splits.test_labels[index]}) as pixel sets; "
                 "blue = absent", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _downscale(image, depth, factor):
    """Average colour over factor x factor blocks; depth = median of the block's valid pixels (NaN if none)."""
    c, h, w = image.shape
    h, w = h // factor * factor, w // factor * factor
    img = image[:, :h, :w].reshape(c, h // factor, factor, w // factor, factor).mean((2, 4))
    blocks = depth[:h, :w].reshape(h // factor, factor, w // factor, factor).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(h // factor, w // factor, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks: median NaN, as wanted
        d = np.nanmedian(blocks, axis=-1)
    return img.astype(np.float32), d.astype(np.float32)


def rgbd_figure(path: Path) -> None:
    rows = []
    for name, title in (("tum", "TUM RGB-D frame"), ("nyu", "NYU Depth v2 frame"),
                        ("motorcycle", "Middlebury motorcycle")):
        image, depth = load_rgbd_frame(name)
        rows.append((f"{title}, 8x down-sampled", *_downscale(image, depth, 8)))
    mn = load_image_dataset("modelnet_depth")
    k = 5 * 8 + 1
    rows.append((f"modelnet_depth test image {k} ({mn.class_names[mn.test_labels[k]]})",
                 mn.test_images[k], mn.test_depth[k]))
    fig = plt.figure(figsize=(10, 3.1 * len(rows)))
    for r, (title, image, depth) in enumerate(rows):
        shown = image.transpose(1, 2, 0)
        ax = fig.add_subplot(len(rows), 3, 3 * r + 1)
        ax.imshow(shown if shown.shape[2] == 3 else shown[..., 0], cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
        ax = fig.add_subplot(len(rows), 3, 3 * r + 2)
        im = ax.imshow(depth, cmap="viridis")
        fig.colorbar(im, ax=ax, fraction=0.04).set_label("depth (sphere radii)" if "modelnet" in title else "depth (m)",
                                                         fontsize=7)
        ax.set_title("depth (white = invalid, absent)", fontsize=8)
        ax.axis("off")
        xyz, feats = image_to_point_set(image, depth=depth)
        xyz, feats = xyz.numpy(), feats.numpy()
        colours = feats[:, :3] if image.shape[0] == 3 else np.repeat(feats[:, :1], 3, 1)
        ax = fig.add_subplot(len(rows), 3, 3 * r + 3, projection="3d")
        ax.scatter(xyz[:, 0], xyz[:, 2], -xyz[:, 1], c=np.clip(colours, 0, 1), s=2, depthshade=False)
        ax.set_xlabel("x", fontsize=7)
        ax.set_ylabel("scaled depth", fontsize=7)
        ax.set_zlabel("-y", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.view_init(elev=20, azim=-60)
        ax.set_title(f"RGB-D point set, {len(xyz)} points", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=56)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", default="docs/images", help="folder for the PNG files")
    p.add_argument("--index", type=int, default=3, help="mnist5k test image to draw")
    p.add_argument("--seed", type=int, default=0, help="seed of the masks")
    args = p.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    formats_figure(out / "pixel_formats.png", args.index, args.seed)
    rgbd_figure(out / "pixel_rgbd.png")
    print(f"wrote {out / 'pixel_formats.png'} and {out / 'pixel_rgbd.png'}")


if __name__ == "__main__":
    main()
