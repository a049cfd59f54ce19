"""Inputs of ``pointcoc visualize-clusters``: an image file or ``DATASET:INDEX``, as the checkpoint's pixel set.

A checkpoint of ``pointcoc train-pixels`` stores ``dataset`` and ``extra = {"format", "keep",
"mask_seed", "image_shape"}`` in its config; the pictures use the same format, so a model trained
on discrete 50 % pixels is shown discrete 50 % pixels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, NamedTuple, Sequence

import numpy as np
import torch

from pointcoc.data.image_datasets import IMAGE_DATASETS, load_image_dataset
from pointcoc.data.pixels import PixelSetDataset, image_to_point_set, keep_mask
from pointcoc.engine.pixel_task import pixel_test_set

__all__ = ["PixelInput", "image_from_file", "load_pixel_input"]


class PixelInput(NamedTuple):
    """One picture's input: image (C, H, W) in [0, 1], its pixel set xyz (N, D) / features (N, C'), a title."""

    image: torch.Tensor
    xyz: torch.Tensor
    features: torch.Tensor
    title: str


def image_from_file(path, image_shape: Sequence[int], invert: bool = False) -> torch.Tensor:
    """Read an image with PIL, convert to grey (C = 1) or RGB (C = 3), resize to (H, W) by area averaging.

    Returns (C, H, W) float32 in [0, 1] (``1 - value`` with ``invert``, e.g. dark digits on white paper
    for a model trained on white digits on black).
    """
    from PIL import Image

    c, h, w = (int(s) for s in image_shape)
    if c not in (1, 3):
        raise ValueError(f"image files can be read as 1 (grey) or 3 (RGB) channels; the model expects {c}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.Resampling.BOX)
            array = np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, SyntaxError, ValueError) as err:  # PIL: unknown format, empty or truncated file
        raise ValueError(f"{path} is not a readable image ({type(err).__name__}: {err})") from None
    tensor = torch.from_numpy(array.reshape(h, w, c)).permute(2, 0, 1).contiguous()
    return 1.0 - tensor if invert else tensor


def _mask(fmt: str, keep: float, h: int, w: int, seed: int) -> torch.Tensor:
    return keep_mask(fmt, h, w, keep, generator=torch.Generator().manual_seed(seed))


def load_pixel_input(spec: str, config: Dict, invert: bool = False, mask_seed: int = 0) -> PixelInput:
    """Turn ``spec`` (an image path or ``DATASET:INDEX``) into the pixel set the checkpoint's model expects.

    ``DATASET:INDEX``: test image INDEX of a data set of ``IMAGE_DATASETS``; for the checkpoint's own data
    set it is exactly the evaluated test item (same format and mask); for another data set the format is
    ``regular``. An image file gets the checkpoint's format with a mask drawn from ``mask_seed``
    (``rgbd`` needs depth: use DATASET:INDEX).
    """
    extra = config.get("extra") or {}
    if extra.get("task") != "pixels" or "image_shape" not in extra:
        raise ValueError("the checkpoint is not from `pointcoc train-pixels` (config.extra.task must be 'pixels' "
                         f"with an image_shape); got extra {extra}")
    c, h, w = extra["image_shape"]
    fmt, keep = extra["format"], extra["keep"]
    name, sep, index = spec.rpartition(":")
    if sep and name in IMAGE_DATASETS:
        if not index.lstrip("-").isdigit():
            raise ValueError(f"DATASET:INDEX needs an integer index; got {spec!r}")
        if name == config.get("dataset"):
            test, names = pixel_test_set(config)  # the evaluated test set, masks included
        else:
            splits = load_image_dataset(name)
            test, names = PixelSetDataset(splits.test_images, splits.test_labels), splits.class_names
        i = int(index)
        if not -len(test) <= i < len(test):
            raise ValueError(f"index {i} is out of range for the {len(test)} test images of {name}")
        image = test.images[i]
        if tuple(image.shape) != (c, h, w):
            raise ValueError(f"{name} images have shape {tuple(image.shape)}; the model expects {(c, h, w)}")
        item = test[i]
        true = names[int(item["label"])]
        return PixelInput(image, item["xyz"], item["features"], f"{name} test #{i} (true {true})")
    if fmt == "rgbd":
        raise ValueError("this model was trained on RGB-D pixel sets; image files carry no depth: "
                         "give DATASET:INDEX of a data set with depth (e.g. modelnet_depth:0)")
    image = image_from_file(spec, (c, h, w), invert=invert)
    xyz, features = image_to_point_set(image, keep=_mask(fmt, keep, h, w, mask_seed), layout="CHW")
    return PixelInput(image, xyz, features, Path(spec).name)
