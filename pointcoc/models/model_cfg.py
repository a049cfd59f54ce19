"""``model.pretrained_cfg``: what a registered model is and what input it expects (timm's pretrained_cfg).

:func:`pointcoc.create_model` sets ``model.pretrained_cfg = default_pretrained_cfg(name, model)``. Keys:

- ``architecture``: the registered name; ``class``: the model's class name.
- ``tag``: None (untrained weights); trained weights fill it, with their own keys (checksum, source).
- ``num_classes``, ``num_features`` (pooled width), ``head_hidden_size`` (pre-logits width).
- ``coord_dim`` (D of ``xyz``), ``in_channels`` (C of ``features``; 0: ``features=None``),
  ``num_points`` (the set size the configuration is meant for: 1024 for the point-cloud models, the
  published ScanObjectNN recipe; 64 / 784 pixels for the 8x8 / 28x28 pixel models),
  ``min_points`` (smallest set it accepts), ``image_size`` ((h, w) for pixel models, else None),
  ``input``: the call in words.
- ``first_layer`` and ``classifier``: module names of the first layer and of the last Linear (timm's
  ``first_conv`` / ``classifier``), for code that adapts input channels or the head.
"""
from __future__ import annotations

from torch import nn

__all__ = ["default_pretrained_cfg"]

# the set size (and image) each registered configuration is meant for
_INPUTS = {
    "pointmlp": dict(num_points=1024), "pointmlp_elite": dict(num_points=1024),
    "pointmlp_coc": dict(num_points=1024), "pointmlp_elite_coc": dict(num_points=1024),
    "pointmlp_pixels_small": dict(num_points=64, image_size=(8, 8)),
    "pointmlp_coc_pixels_small": dict(num_points=64, image_size=(8, 8)),
    "pointmlp_pixels": dict(num_points=784, image_size=(28, 28)),
    "pointmlp_coc_pixels": dict(num_points=784, image_size=(28, 28)),
}


def default_pretrained_cfg(name: str, model: nn.Module) -> dict:
    """The ``pretrained_cfg`` dict of model ``model`` built as registered name ``name`` (keys: module docstring)."""
    image_size = getattr(model, "image_size", None) or _INPUTS.get(name, {}).get("image_size")
    num_points = _INPUTS.get(name, {}).get("num_points")
    if num_points is None and image_size is not None:
        num_points = image_size[0] * image_size[1]
    coord_dim, in_channels = getattr(model, "coord_dim", None), getattr(model, "in_channels", None)
    feats = f"features (B, N, {in_channels})" if in_channels else "features None"
    classifier = getattr(model, "classifier", None)
    first = next((n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))), None)
    return {
        "architecture": name,
        "class": type(model).__name__,
        "tag": None,
        "num_classes": getattr(model, "num_classes", None),
        "num_features": getattr(model, "num_features", None),
        "head_hidden_size": getattr(model, "head_hidden_size", None),
        "coord_dim": coord_dim,
        "in_channels": in_channels,
        "num_points": num_points,
        "min_points": getattr(model, "min_points", None),
        "image_size": None if image_size is None else tuple(image_size),
        "input": f"xyz (B, N, {coord_dim}), {feats}, lengths (B,) long or None",
        "first_layer": first,
        "classifier": None if classifier is None else f"classifier.{len(classifier) - 1}",
    }
