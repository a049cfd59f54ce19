"""The surface every pointcoc classifier shares (timm-style): forward = forward_head(forward_features(...)).

Every model has ``num_classes``, ``num_features`` (width of :meth:`~PointSetClassifier.forward_features`),
``head_hidden_size`` (width of ``forward_head(..., pre_logits=True)``), ``feature_info`` (one dict per
intermediate: ``num_chs``, ``reduction``, ``module``), ``pretrained_cfg`` (set by
:func:`pointcoc.create_model`), :meth:`~PointSetClassifier.get_classifier`,
:meth:`~PointSetClassifier.reset_classifier` and :meth:`~PointSetClassifier.forward_intermediates`.

Unlike timm's image models, ``forward_features`` returns the *pooled* embedding (B, num_features): a point
set has no fixed grid to return unpooled, and the pooling is part of the model (a masked max for ragged
sets). The unpooled per-stage features come from ``forward_intermediates``.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = ["PointSetClassifier", "StageFeatures", "take_indices"]


class StageFeatures(NamedTuple):
    """One intermediate of :meth:`PointSetClassifier.forward_intermediates`.

    xyz: (B, S, D) positions of the stage's S points (anchors; zeros past ``lengths``).
    features: (B, S, C) their features, C = ``feature_info[i]["num_chs"]`` (zeros past ``lengths``).
    lengths: (B,) long, number of real points of each set, or None when every set has S points.
    """

    xyz: torch.Tensor
    features: torch.Tensor
    lengths: Optional[torch.Tensor]


def take_indices(count: int, indices: Union[int, Sequence[int], None]) -> List[int]:
    """Which of ``count`` intermediates to return, as timm's ``feature_take_indices``: None -> all, an int n ->
    the last n, a sequence -> those (negative counts from the end). Returns sorted non-negative indices."""
    if indices is None:
        return list(range(count))
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 1 <= indices <= count:
            raise ValueError(f"indices as an int takes the last n intermediates, 1 <= n <= {count}; got {indices}")
        return list(range(count - indices, count))
    taken = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not -count <= i < count:
            raise ValueError(f"indices must be ints in [-{count}, {count - 1}] ({count} intermediates); "
                             f"got {indices!r}")
        taken.append(i % count)
    if not taken:
        raise ValueError("indices must name at least one intermediate; got []")
    return sorted(set(taken))


class PointSetClassifier(nn.Module):
    """Base class: subclasses define ``forward_features``, ``_intermediates`` and ``self.classifier``
    (a Sequential ending in Linear).

    ``model(xyz (B, N, D), features (B, N, C) or None, lengths (B,) or None) -> logits (B, num_classes)``.
    """

    num_classes: int
    num_features: int
    classifier: nn.Sequential
    feature_info: List[dict]
    #: set by :func:`pointcoc.create_model` (a dict: architecture, input description, tag, ...); None for a model
    #: built from its class directly.
    pretrained_cfg: Optional[dict] = None

    @property
    def default_cfg(self) -> Optional[dict]:
        """Alias of ``pretrained_cfg`` (timm's older name)."""
        return self.pretrained_cfg

    @property
    def head_hidden_size(self) -> int:
        """Width of ``forward_head(x, pre_logits=True)``: the input of the last Linear."""
        last = self.classifier[-1]
        if isinstance(last, nn.Linear):
            return last.in_features
        hidden = [m for m in list(self.classifier)[:-1] if isinstance(m, nn.Linear)]
        return hidden[-1].out_features if hidden else self.num_features

    def forward_features(self, xyz: torch.Tensor, features: Optional[torch.Tensor] = None,
                         lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    def _intermediates(self, xyz: torch.Tensor, features: Optional[torch.Tensor], lengths: Optional[torch.Tensor],
                       last: int) -> Tuple[List[StageFeatures], torch.Tensor]:
        """Intermediates 0..last (as :class:`StageFeatures`) and the pooled features of intermediate ``last``."""
        raise NotImplementedError

    def forward_intermediates(self, xyz: torch.Tensor, features: Optional[torch.Tensor] = None,
                              lengths: Optional[torch.Tensor] = None, indices: Union[int, Sequence[int], None] = None,
                              stop_early: bool = False, intermediates_only: bool = False):
        """The features after each stage (timm's ``forward_intermediates`` for point sets).

        Args:
            xyz, features, lengths: as ``forward``.
            indices: which intermediates (``len(model.feature_info)`` of them): None all, an int n the last n,
                a list of indices (negative from the end).
            stop_early: stop after the last intermediate asked for (the pooled result is then that one's).
            intermediates_only: return only the list.

        Returns:
            ``(pooled (B, num_features), [StageFeatures, ...])``, or only the list with ``intermediates_only``.
            Without ``stop_early`` the pooled tensor equals ``forward_features(...)``, so
            ``forward_head(pooled)`` gives the logits. Each :class:`StageFeatures` holds xyz (B, S, D),
            features (B, S, C) and lengths (B,) or None; entries past ``lengths`` are zeros.
        """
        count = len(self.feature_info)
        taken = take_indices(count, indices)
        last = taken[-1] if stop_early else count - 1
        stages, pooled = self._intermediates(xyz, features, lengths, last)
        out = [stages[i] for i in taken]
        return out if intermediates_only else (pooled, out)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooled features (B, num_features) -> logits (B, num_classes); with ``pre_logits`` the features
        before the last Linear, (B, head_hidden_size): after the hidden Linear-BN-activation-dropout layers."""
        if pre_logits:
            for layer in list(self.classifier)[:-1]:
                x = layer(x)
            return x
        return self.classifier(x)

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

    def get_classifier(self) -> nn.Module:
        """The final classifier layer: ``nn.Linear(head_hidden_size, num_classes)``, or ``nn.Identity`` after
        ``reset_classifier(0)``. The hidden layers before it stay in ``model.classifier[:-1]``."""
        return self.classifier[-1]

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the last linear layer by a fresh one with ``num_classes`` outputs; 0 replaces it by
        ``nn.Identity``, so the model returns the pre-logits (B, head_hidden_size), as timm does.

        ``global_pool`` is accepted for timm's signature; the pooling of a point set is fixed (masked max for
        the point models, mean for the ConvNet), so anything but None raises a ValueError.
        """
        if global_pool is not None:
            raise ValueError(f"global_pool cannot be changed (pointcoc models pool in a fixed way); "
                             f"got {global_pool!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0 (0: no classifier, pre-logits out); got {num_classes!r}")
        width = self.head_hidden_size
        ref = next(self.parameters())
        self.num_classes = num_classes
        self.classifier[-1] = nn.Linear(width, num_classes).to(ref.device, ref.dtype) if num_classes else nn.Identity()
