"""Registered model configurations (``pointcoc.list_models()``).

Point clouds (published configurations): ``pointmlp``, ``pointmlp_elite``,
``pointmlp_coc``, ``pointmlp_elite_coc``.

Pixel sets (coord_dim 2, in_channels 1 grey value; pass in_channels=3 for RGB,
coord_dim=3 and one more channel with depth):
``pointmlp_pixels_small`` / ``pointmlp_coc_pixels_small`` for sets of up to
~100 points (8x8 digits: 64 -> 32 -> 16 anchors), ``pointmlp_pixels`` /
``pointmlp_coc_pixels`` for ~784 points (28x28: 784 -> 196 -> 98 -> 49).
The CoC pixel models use the set-level context cluster before each
pos-extraction block, so their clustering can be recorded and drawn
(:func:`pointcoc.layers.record_assignments`).

Ragged pixel sets: a set needs at least ``k_neighbors[0]`` points
(``model.min_points``: 8 for the small models, 16 for the others; the model
raises a ValueError naming the smallest set otherwise). Past the first
grouping, fewer anchors than k or than cluster centers are fine (groups are
masked, a set gets ``min(centers, points)`` centers). So the small models take
8x8 digits at keep >= 0.125 (64, 32, 16 points at keep 1, 0.5, 0.25, not 6 at
0.1: pass ``k_neighbors=(6, 6)`` for that), the others 28x28 sets down to 16
points (784, 392, 196, 78 at keep 1, 0.5, 0.25, 0.1). ``train_pixels.py``
checks this before training.
"""
from .pointmlp import ELITE_CONFIG, PointMLP, PointMLPCoC, PointMLPElite
from .registry import register_model

PIXELS_SMALL = dict(coord_dim=2, in_channels=1, embed_dim=32, k_neighbors=(8, 8), reducers=(2, 2),
                    dim_expansion=(2, 2), pre_blocks=(1, 1), pos_blocks=(1, 1), classifier_dims=(256,))
PIXELS = dict(coord_dim=2, in_channels=1, embed_dim=32, k_neighbors=(16, 16, 16), reducers=(4, 2, 2),
              dim_expansion=(2, 2, 2), pre_blocks=(1, 1, 1), pos_blocks=(1, 1, 1), classifier_dims=(256,))


@register_model
def pointmlp(**kwargs) -> PointMLP:
    """PointMLP, published configuration."""
    return PointMLP(**kwargs)


@register_model
def pointmlp_elite(**kwargs) -> PointMLPElite:
    """PointMLP-elite, published configuration."""
    return PointMLPElite(**kwargs)


@register_model
def pointmlp_coc(**kwargs) -> PointMLPCoC:
    """PointMLP-CoC, published configuration (grouped context clusters)."""
    return PointMLPCoC(**kwargs)


@register_model
def pointmlp_elite_coc(**kwargs) -> PointMLPCoC:
    """PointMLP-elite with a grouped context cluster before each pre-extraction block (not published)."""
    return PointMLPCoC(**{**ELITE_CONFIG, **kwargs})


@register_model
def pointmlp_pixels_small(**kwargs) -> PointMLP:
    """Two-stage PointMLP for pixel sets of up to ~100 points (8x8 images)."""
    return PointMLP(**{**PIXELS_SMALL, **kwargs})


@register_model
def pointmlp_coc_pixels_small(**kwargs) -> PointMLPCoC:
    """pointmlp_pixels_small with a set-level context cluster (8, then 4 centers) before each pos block."""
    return PointMLPCoC(**{**PIXELS_SMALL, "cluster": "set", "cluster_centers": (8, 4), "cluster_k": 4, **kwargs})


@register_model
def pointmlp_pixels(**kwargs) -> PointMLP:
    """Three-stage PointMLP for pixel sets of ~784 points (28x28 images)."""
    return PointMLP(**{**PIXELS, **kwargs})


@register_model
def pointmlp_coc_pixels(**kwargs) -> PointMLPCoC:
    """pointmlp_pixels with a set-level context cluster (16, 8, 4 centers) before each pos block."""
    return PointMLPCoC(**{**PIXELS, "cluster": "set", "cluster_centers": (16, 8, 4), "cluster_k": 8, **kwargs})
