"""PointMLP, PointMLP-elite and PointMLP-CoC: one configurable class driven by per-stage lists.

Layout: public tensors are (B, N, D) / (B, N, C); inside, every layer is
channels-last ((B, N, C) or (B, S, k, C)) with pointwise Linear layers, which
compute the same maps as the published 1x1 Conv1d on (B, C, N).

Ragged batches: a set of ``lengths[b]`` points gets ``max(lengths[b] // r, 1)``
anchors at a stage with reducer r, FPS starts at index 0 in eval mode, groups
with fewer than k real points are masked, and padding never enters a
normalisation statistic or a max-pool; in eval mode a padded batch gives the
logits of each set run alone.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..layers import (ContextCluster, GroupIndex, GroupTransfer, LocalGrouper, PointwiseLayer, ResidualPointBlock,
                      get_activation, masked_max, recompute)
from ..layers.mlp import none_if_all
from ..ops import gather
from ..ops.library import check_point_inputs_op
from ..ops.validation import check_coordinates, check_lengths, check_points, check_positive_int
from .classifier import PointSetClassifier, StageFeatures

__all__ = ["PointMLP", "PointMLPElite", "PointMLPCoC", "PointMLPStage"]

POINTMLP_CONFIG = dict(
    embed_dim=64, k_neighbors=(24, 24, 24, 24), reducers=(2, 2, 2, 2), dim_expansion=(2, 2, 2, 2),
    pre_blocks=(2, 2, 2, 2), pos_blocks=(2, 2, 2, 2), res_expansion=1.0,
)
ELITE_CONFIG = dict(
    embed_dim=32, k_neighbors=(24, 24, 24, 24), reducers=(2, 2, 2, 2), dim_expansion=(2, 2, 2, 1),
    pre_blocks=(1, 1, 2, 1), pos_blocks=(1, 1, 2, 1), res_expansion=0.25,
)


class PointMLPStage(nn.Module):
    """One stage: local grouper -> transfer -> pre-extraction blocks -> max over each group -> pos-extraction blocks.

    ``cluster="grouped"`` puts a grouped :class:`ContextCluster` before each
    pre-extraction residual block (PointMLP-CoC); ``cluster="set"`` puts a
    set-level one (``cluster_centers`` centers by FPS over the stage's anchors)
    before each pos-extraction residual block (pixel-set models).

    The transfer layer's matrix product runs once per point, not once per
    grouped neighbour (:meth:`LocalGrouper.linear_of_groups`).

    ``memory_efficient=True`` keeps, for backward, only the per-point inputs of
    the grouper's std and the transfer layer and the input of each further
    [context cluster,] residual block pair of the pre-extraction, and recomputes their grouped
    (B, S, k, C) activations during backward (:func:`pointcoc.layers.recompute`):
    the same values and gradients, a fraction of the memory, one more forward
    of those blocks.

    Forward: xyz (B, N, D), x (B, N, C_in), lengths (B,) long or None (every set has N points) ->
    (anchor xyz (B, S, D), features (B, S, C_out), anchor lengths (B,) or None, mask (B, S) bool or None).
    """

    def __init__(self, in_channels: int, out_channels: int, k: int, reducer: int, pre_blocks: int, pos_blocks: int,
                 coord_dim: int = 3, res_expansion: float = 1.0, bias: bool = False, activation: str = "relu",
                 use_xyz: bool = False, normalize: Optional[str] = "anchor", random_start: bool = False,
                 cluster: Optional[str] = None, cluster_heads: int = 1, cluster_head_dim: Optional[int] = None,
                 cluster_centers: Optional[int] = None, cluster_k: int = 8, cluster_regions: int = 1,
                 fps_skip_near_origin: bool = False, memory_efficient: bool = False):
        super().__init__()
        self.memory_efficient = bool(memory_efficient)
        self.grouper = LocalGrouper(in_channels, k, reducer, coord_dim, use_xyz, normalize, random_start,
                                    skip_near_origin=fps_skip_near_origin)
        self.transfer = GroupTransfer(self.grouper.norm_channels, in_channels, out_channels, bias=bias,
                                      activation=activation)

        def block():
            return ResidualPointBlock(out_channels, res_expansion, bias=bias, activation=activation)

        pre, pos = [], []
        for _ in range(pre_blocks):
            if cluster == "grouped":
                pre.append(ContextCluster(out_channels, heads=cluster_heads, head_dim=cluster_head_dim))
            pre.append(block())
        for _ in range(pos_blocks):
            if cluster == "set":
                pos.append(ContextCluster(out_channels, heads=cluster_heads, head_dim=cluster_head_dim,
                                          n_centers=cluster_centers, center_k=cluster_k, regions=cluster_regions,
                                          random_start=random_start))
            pos.append(block())
        self.pre_blocks = nn.ModuleList(pre)
        self.pos_blocks = nn.ModuleList(pos)
        # The pre-extraction in segments that each end with a residual block (recomputed as a whole with
        # memory_efficient); the transfer layer joins the first one.
        self._segments, segment = [], []
        for layer in pre:
            segment.append(layer)
            if isinstance(layer, ResidualPointBlock):
                self._segments.append(tuple(segment))
                segment = []
        if segment or not self._segments:
            self._segments.append(tuple(segment))

    def _transfer(self, u: torch.Tensor, anchors: torch.Tensor, index: GroupIndex, scale: Optional[torch.Tensor],
                  layers) -> torch.Tensor:
        """Point inputs u (B, N, C_norm), anchor features (B, S, C_in) -> transfer layer, then ``layers``
        -> (B, S, k, C_out)."""
        return self._pre_extract(self.transfer(self.grouper, u, anchors, index, scale), index.mask, layers)

    @staticmethod
    def _pre_extract(h: torch.Tensor, mask: Optional[torch.Tensor], layers) -> torch.Tensor:
        """h (B, S, k, C), mask (B, S, k) or None -> (B, S, k, C) through ``layers`` (context clusters, blocks)."""
        for layer in layers:
            if isinstance(layer, ContextCluster):
                flat_mask = None if mask is None else mask.flatten(0, 1)
                h = layer(h.flatten(0, 1), mask=flat_mask).view_as(h)
            else:
                h = layer(h, mask)
        return h

    def forward(self, xyz: torch.Tensor, x: torch.Tensor, lengths: Optional[torch.Tensor]):
        index = self.grouper.index(xyz, lengths)
        u = self.grouper.point_inputs(xyz, x)
        anchors = gather(x, index.anchor_idx)
        mask = index.mask
        scale = None
        if self.grouper.normalize is not None:  # memory_efficient: recomputed in backward, no grouped differences kept
            scale = (recompute(self.grouper, self.grouper.inverse_std, u, index) if self.memory_efficient
                     else self.grouper.inverse_std(u, index))
        if self.memory_efficient:
            h = recompute(self, self._transfer, u, anchors, index, scale, self._segments[0])
            for segment in self._segments[1:]:
                h = recompute(self, self._pre_extract, h, mask, segment)
        else:
            h = self._transfer(u, anchors, index, scale, self.pre_blocks)
        h = masked_max(h, mask, dim=2)
        point_mask = None
        if index.lengths is not None:
            point_mask = none_if_all(torch.arange(h.shape[1], device=h.device)[None, :] < index.lengths[:, None])
        for layer in self.pos_blocks:
            if isinstance(layer, ContextCluster):
                h = layer(h, index.xyz, index.lengths)
            else:
                h = layer(h, point_mask)
        return index.xyz, h, index.lengths, point_mask


def _count(name: str, value) -> int:
    """A number of blocks: an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must hold ints >= 0 (blocks per stage); got {value!r}")
    return value


def _per_stage(name: str, value, stages: int) -> list:
    if isinstance(value, (int, float)) or value is None:
        return [value] * stages
    value = list(value)
    if len(value) != stages:
        raise ValueError(f"{name} must have one entry per stage ({stages}); got {len(value)}: {value}")
    return value


class PointMLP(PointSetClassifier):
    """PointMLP (Ma et al., ICLR 2022) for point clouds and pixel sets.

    Defaults are the published PointMLP: embedding 64, four stages with k=24,
    reducers 2, dim expansion 2, two pre- and two pos-extraction residual
    blocks, res_expansion 1, no bias, use_xyz False, anchor normalisation,
    classifier 512-256 with BatchNorm, ReLU and dropout 0.5.
    Parameters: 13,232,079 with 15 classes, 13,238,504 with 40 (the authors'
    configuration gives the same counts; see docs/models.md).

    Args:
        num_classes: classifier outputs (default 15, ScanObjectNN).
        in_channels: extra per-point feature channels (0: positions only).
        coord_dim: D, 2 (pixels) or 3.
        embed_dim, k_neighbors, reducers, dim_expansion, pre_blocks, pos_blocks:
            per-stage lists (an int repeats over stages; the number of stages is
            ``len(pre_blocks)``).
        res_expansion, bias, activation, use_xyz, normalize: as published.
        classifier_dims: hidden widths of the head; dropout: its dropout.
        cluster: None, "grouped" (PointMLP-CoC) or "set" (pixel-set models); see
            :class:`PointMLPStage`. cluster_heads, cluster_head_dim,
            cluster_centers (per stage), cluster_k, cluster_regions configure it.
        random_start: FPS starts at a random point in training mode (the
            authors' CUDA FPS starts at index 0, the default here).
        fps_skip_near_origin: the local groupers' FPS follows the authors'
            CUDA FPS (pointnet2_ops): after the first pick it never picks a
            point with x^2 + y^2 + z^2 <= 1e-3 (see
            :func:`pointcoc.ops.farthest_point_sample`). Off by default (every
            point is a candidate); on for models loaded with
            :func:`pointcoc.load_authors_checkpoint`, whose weights were
            trained with that rule. Exact distance ties still go to the
            lowest index (the kernel's thread order may pick another).
        memory_efficient: recompute the pre-extraction activations in backward
            instead of storing them (see :class:`PointMLPStage`): the same
            function and gradients, less memory, a slower training step
            (docs/benchmarks.md has both).

    Forward: ``model(xyz (B, N, D), features (B, N, in_channels) or None,
    lengths (B,) long or None) -> logits (B, num_classes)``. Every set needs
    at least ``k_neighbors[0]`` points (``model.min_points``).
    """

    def __init__(self, num_classes: int = 15, in_channels: int = 0, coord_dim: int = 3, embed_dim: int = 64,
                 k_neighbors: Union[int, Sequence[int]] = (24, 24, 24, 24),
                 reducers: Union[int, Sequence[int]] = (2, 2, 2, 2),
                 dim_expansion: Union[int, Sequence[int]] = (2, 2, 2, 2),
                 pre_blocks: Sequence[int] = (2, 2, 2, 2), pos_blocks: Union[int, Sequence[int]] = (2, 2, 2, 2),
                 res_expansion: float = 1.0, bias: bool = False, activation: str = "relu", use_xyz: bool = False,
                 normalize: Optional[str] = "anchor", classifier_dims: Sequence[int] = (512, 256),
                 dropout: float = 0.5, cluster: Optional[str] = None, cluster_heads: int = 1,
                 cluster_head_dim: Optional[int] = None, cluster_centers: Union[int, Sequence[int], None] = None,
                 cluster_k: int = 8, cluster_regions: int = 1, random_start: bool = False,
                 fps_skip_near_origin: bool = False, memory_efficient: bool = False):
        super().__init__()
        for name, value in (("bias", bias), ("use_xyz", use_xyz), ("random_start", random_start),
                            ("fps_skip_near_origin", fps_skip_near_origin), ("memory_efficient", memory_efficient)):
            if not isinstance(value, bool):  # "no" or 0.0 would silently count as True / False
                raise ValueError(f"{name} must be a bool (True or False); got {value!r}")
        if coord_dim not in (2, 3):
            raise ValueError(f"coord_dim must be 2 or 3; got {coord_dim!r}")
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 0:
            raise ValueError(f"in_channels must be an int >= 0; got {in_channels!r}")
        if cluster not in (None, "grouped", "set"):
            raise ValueError(f"cluster must be None, 'grouped' or 'set'; got {cluster!r}")
        if isinstance(pre_blocks, (int, float, str)) or pre_blocks is None:
            raise ValueError(f"pre_blocks must be a list with one entry per stage (it sets the number of stages); "
                             f"got {pre_blocks!r}")
        pre_blocks = [_count("pre_blocks", n) for n in pre_blocks]
        stages = len(pre_blocks)
        k_neighbors = [check_positive_int("k_neighbors", k) for k in _per_stage("k_neighbors", k_neighbors, stages)]
        reducers = [check_positive_int("reducers", r) for r in _per_stage("reducers", reducers, stages)]
        dim_expansion = [check_positive_int("dim_expansion", e)
                         for e in _per_stage("dim_expansion", dim_expansion, stages)]
        pos_blocks = [_count("pos_blocks", n) for n in _per_stage("pos_blocks", pos_blocks, stages)]
        embed_dim = check_positive_int("embed_dim", embed_dim)
        classifier_dims = [check_positive_int("classifier_dims", d) for d in classifier_dims]
        if isinstance(res_expansion, bool) or not isinstance(res_expansion, (int, float)) or \
                not 0 < res_expansion < float("inf") or int(embed_dim * res_expansion) < 1:
            raise ValueError(f"res_expansion must be a finite number > 0 that leaves embed_dim * res_expansion >= 1 "
                             f"hidden channels; got {res_expansion!r} (embed_dim {embed_dim})")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1); got {dropout!r}")
        centers = _per_stage("cluster_centers", cluster_centers, stages)
        if cluster == "set" and any(c is None for c in centers):
            raise ValueError(f"cluster='set' needs cluster_centers (one int per stage); got {cluster_centers!r}")
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.in_channels, self.coord_dim = in_channels, coord_dim
        self.min_points = k_neighbors[0]
        self.embedding = PointwiseLayer(coord_dim + in_channels, embed_dim, bias=bias, activation=activation)
        channels = embed_dim
        blocks = []
        for i in range(stages):
            out = channels * dim_expansion[i]
            blocks.append(PointMLPStage(
                channels, out, k_neighbors[i], reducers[i], pre_blocks[i], pos_blocks[i], coord_dim=coord_dim,
                res_expansion=res_expansion, bias=bias, activation=activation, use_xyz=use_xyz, normalize=normalize,
                random_start=random_start, cluster=cluster, cluster_heads=cluster_heads,
                cluster_head_dim=cluster_head_dim, cluster_centers=centers[i], cluster_k=cluster_k,
                cluster_regions=cluster_regions, fps_skip_near_origin=fps_skip_near_origin,
                memory_efficient=memory_efficient))
            channels = out
        self.stages = nn.ModuleList(blocks)
        self.num_features = channels
        reduction, self.feature_info = 1, [dict(num_chs=embed_dim, reduction=1, module="embedding")]
        for i, stage in enumerate(blocks):
            reduction *= reducers[i]
            self.feature_info.append(dict(num_chs=stage.transfer.neighbour.out_features, reduction=reduction,
                                          module=f"stages.{i}"))
        head = []
        for width in classifier_dims:
            head += [nn.Linear(channels, width), nn.BatchNorm1d(width), get_activation(activation), nn.Dropout(dropout)]
            channels = width
        head.append(nn.Linear(channels, self.num_classes))
        self.classifier = nn.Sequential(*head)

    @torch.compiler.disable  # it reads values (finite, lengths): under torch.compile it runs before the graph
    def _check(self, xyz, features, lengths):
        """Validate the inputs; returns (xyz, features or None, lengths or None when every set has N points).

        Under ``torch.export`` the checks that read values (skipped here while it traces) run inside the
        exported program, in the custom op ``pointcoc::check_point_inputs`` (same errors), and ``lengths``,
        when given, is kept even where every set is full: the exported program cannot branch on values.
        """
        check_points("xyz", xyz, dims=(self.coord_dim,), finite=False)
        check_coordinates("xyz", xyz)  # finite, and small enough for float squared distances
        weight = self.embedding.linear.weight
        if xyz.dtype != weight.dtype or xyz.device != weight.device:
            raise ValueError(f"xyz must be {weight.dtype} on {weight.device} like the model's parameters; "
                             f"got {xyz.dtype} on {xyz.device}")
        batch, n, _ = xyz.shape
        if self.training and batch == 1:
            raise ValueError("a batch of 1 set cannot be trained: the classifier's BatchNorm needs at least 2 sets "
                             "per batch in training mode; use a batch of >= 2, or model.eval() for inference")
        if self.in_channels == 0:
            if features is not None and features.shape[-1] != 0:
                raise ValueError(f"features must be None for a model built with in_channels=0; "
                                 f"got shape {tuple(features.shape)}")
            features = None
        else:
            if features is None:
                raise ValueError(f"features (B, N, {self.in_channels}) are required (in_channels={self.in_channels}); "
                                 "got None")
            check_points("features", features, dims=(self.in_channels,))
            if features.shape[:2] != xyz.shape[:2]:
                raise ValueError(f"features must have shape (B, N, C) = ({batch}, {n}, {self.in_channels}) as xyz; "
                                 f"got {tuple(features.shape)}")
        if torch.compiler.is_exporting():
            if lengths is None and n < self.min_points:
                raise ValueError(f"every set needs at least k_neighbors[0] = {self.min_points} points; "
                                 f"got a set of {n}")
            if lengths is not None:
                lengths = check_lengths("lengths", lengths, batch, n, device=xyz.device, values=False)
            return check_point_inputs_op(xyz, features, lengths, self.min_points), features, lengths
        lengths = check_lengths("lengths", lengths, batch, n, device=xyz.device)
        smallest = int(lengths.min())
        if smallest < self.min_points:
            raise ValueError(f"every set needs at least k_neighbors[0] = {self.min_points} points; "
                             f"got a set of {smallest}")
        return xyz, features, (None if smallest == n else lengths)

    def _run(self, xyz, features, lengths, last: int, keep: bool):
        """Embedding (intermediate 0), then stages 1..``last``: ([StageFeatures] if ``keep``, pooled (B, C))."""
        xyz, features, lengths = self._check(xyz, features, lengths)
        n = xyz.shape[1]
        x = xyz if features is None else torch.cat([xyz, features.to(xyz.dtype)], dim=-1)
        mask = None if lengths is None else torch.arange(n, device=xyz.device)[None, :] < lengths[:, None]
        h = self.embedding(x, mask)
        kept = []
        for i in range(last + 1):
            if i:
                xyz, h, lengths, mask = self.stages[i - 1](xyz, h, lengths)
            if keep:
                pad = None if mask is None else ~mask[..., None]
                kept.append(StageFeatures(xyz if pad is None else xyz.masked_fill(pad, 0),
                                          h if pad is None else h.masked_fill(pad, 0), lengths))
        return kept, masked_max(h, mask, dim=1)

    def forward_features(self, xyz: torch.Tensor, features: Optional[torch.Tensor] = None,
                         lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """xyz (B, N, D), features (B, N, C) or None, lengths (B,) or None -> pooled embedding (B, num_features)
        (masked max over each set's points after the last stage)."""
        return self._run(xyz, features, lengths, len(self.stages), keep=False)[1]

    def _intermediates(self, xyz, features, lengths, last):
        """Intermediate 0 is the embedding (the N input points, embed_dim channels, the input lengths);
        intermediate i >= 1 is stage i's anchors (by FPS, ``max(S_{i-1} // reducers[i - 1], 1)`` per set):
        positions, features after the pos-extraction blocks (``feature_info[i]["num_chs"]`` channels) and
        anchor counts (B,), or None when every set is full."""
        return self._run(xyz, features, lengths, last, keep=True)


class PointMLPElite(PointMLP):
    """PointMLP-elite: embedding 32, dim expansion [2, 2, 2, 1], blocks [1, 1, 2, 1], res_expansion 0.25.

    Parameters: 709,807 with 15 classes, 716,232 with 40 (see docs/models.md).
    Other arguments as :class:`PointMLP`.
    """

    def __init__(self, **kwargs):
        super().__init__(**{**ELITE_CONFIG, **kwargs})


class PointMLPCoC(PointMLP):
    """PointMLP-CoC: PointMLP with a one-head grouped context cluster before each pre-extraction block.

    head_dim = max(channels // 4, 32) as published; each kNN group is one
    cluster centred on its mean. Parameters: see docs/models.md.
    Other arguments as :class:`PointMLP` (``cluster="set"`` gives the
    set-level form used by the pixel-set models).
    """

    def __init__(self, **kwargs):
        super().__init__(**{"cluster": "grouped", **kwargs})
