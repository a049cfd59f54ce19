"""The surface every pointcoc classifier shares (timm-style): forward = forward_head(forward_features(...))."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..ops.validation import check_positive_int

__all__ = ["PointSetClassifier"]


class PointSetClassifier(nn.Module):
    """Base class: subclasses define ``forward_features`` and ``self.classifier`` (a Sequential ending in Linear).

    ``model(xyz (B, N, D), features (B, N, C) or None, lengths (B,) or None) -> logits (B, num_classes)``.
    """

    num_classes: int
    classifier: nn.Sequential

    def forward_features(self, xyz: torch.Tensor, features: Optional[torch.Tensor] = None,
                         lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, num_features) -> logits (B, num_classes)."""
        return self.classifier(feats)

    def forward(self, xyz: torch.Tensor, features: Optional[torch.Tensor] = None,
                lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """xyz (B, N, D), features (B, N, C) or None, lengths (B,) or None -> logits (B, num_classes).

        A (B,) integer tensor given as ``features`` (``model(xyz, lengths)``) raises a ValueError saying to
        pass ``lengths=`` by name.
        """
        if isinstance(features, torch.Tensor) and features.dim() == 1 and not features.is_floating_point():
            raise ValueError(f"features got a ({features.shape[0]},) integer tensor, which looks like lengths: "
                             "lengths is the third argument; call model(xyz, lengths=lengths) (or "
                             "model(xyz, features, lengths) for a model with input features)")
        return self.forward_head(self.forward_features(xyz, features, lengths))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last linear layer by a fresh one with ``num_classes`` outputs."""
        self.num_classes = check_positive_int("num_classes", num_classes)
        last = self.classifier[-1]
        self.classifier[-1] = nn.Linear(last.in_features, self.num_classes).to(last.weight.device, last.weight.dtype)
