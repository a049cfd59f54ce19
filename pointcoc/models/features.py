"""``create_model(name, features_only=True)``: a model without its head that returns per-stage features (timm's
``features_only``, for point sets).

The feature model calls :meth:`~pointcoc.models.classifier.PointSetClassifier.forward_intermediates` of the
classifier it wraps (stopping after the last stage asked for) and returns a list of
:class:`~pointcoc.models.classifier.StageFeatures`, one per entry of ``out_indices``. The classifier's head is
removed (its weights are not part of the feature model); the remaining weights keep their names under
``model.``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
from torch import nn

from .classifier import PointSetClassifier, StageFeatures, take_indices

__all__ = ["FeatureInfo", "PointSetFeatures"]


class FeatureInfo(list):
    """The ``feature_info`` of a feature model: one dict (``num_chs``, ``reduction``, ``module``) per returned
    stage, with timm's accessors."""

    def channels(self) -> List[int]:
        """Channels C of each returned stage's features (B, S, C)."""
        return [info["num_chs"] for info in self]

    def reduction(self) -> List[int]:
        """How many input points each returned stage's point stands for (N / S for full sets)."""
        return [info["reduction"] for info in self]

    def module_name(self) -> List[str]:
        """The module of the classifier whose output each returned stage is."""
        return [info["module"] for info in self]


class PointSetFeatures(nn.Module):
    """Per-stage features of a point-set classifier.

    ``features(xyz (B, N, D), features (B, N, C_in) or None, lengths (B,) or None)`` -> list of
    :class:`StageFeatures` (xyz (B, S_i, D), features (B, S_i, C_i), lengths (B,) or None), one per
    ``out_indices`` entry (index 0 is the embedding of the N input points, i >= 1 stage i's anchors).

    Args:
        model: the classifier (its head is removed).
        out_indices: which stages, as :meth:`PointSetClassifier.forward_intermediates`'s ``indices``: None all,
            an int n the last n, a sequence of indices (negative from the end).
    """

    def __init__(self, model: PointSetClassifier, out_indices: Union[int, Sequence[int], None] = None):
        super().__init__()
        if not isinstance(model, PointSetClassifier):
            raise ValueError(f"features_only needs a pointcoc point-set classifier; got {type(model).__name__}")
        self.out_indices = take_indices(len(model.feature_info), out_indices)
        self.feature_info = FeatureInfo(model.feature_info[i] for i in self.out_indices)
        self.pretrained_cfg = getattr(model, "pretrained_cfg", None)
        model.classifier = nn.Sequential()  # the head is not part of a feature model
        self.model = model

    def forward(self, xyz: torch.Tensor, features: Optional[torch.Tensor] = None,
                lengths: Optional[torch.Tensor] = None) -> List[StageFeatures]:
        return self.model.forward_intermediates(xyz, features, lengths, indices=self.out_indices, stop_early=True,
                                                intermediates_only=True)
