"""A straightforward PointMLP-CoC written the way the authors' code is laid out: the benchmark's reference.

This module is the yardstick for ``scripts/benchmark.py --only model_vs_reference``
and for the tests that show pointcoc's model computes the same function. It
follows the structure of the published PointMLP / PointMLP-CoC code
(``pointcloud/models/contextcluster.py`` and ``model_utils.py`` in the
Context-Cluster repository), written anew:

* features are (B, C, N); every pointwise layer is ``Conv1d(kernel_size=1)``
  followed by ``BatchNorm1d`` and an in-place ReLU;
* the local grouper samples anchors with a Python loop of farthest point
  sampling in torch, finds neighbours with the full ``square_distance`` matrix
  (``-2 q.p + |q|^2 + |p|^2``) and ``topk``, gathers with advanced indexing
  (``points[batch_indices, idx]``), subtracts the anchor and divides by one
  ``torch.std`` per set, then concatenates each anchor's features, repeated k
  times, to its neighbours';
* the pre-extraction reshapes the groups to (B*S, C, k), applies the transfer
  layer and [context cluster, residual block] pairs, and max-pools each group;
* the grouped context cluster (one head, ``head_dim = max(C // 4, 32)``) takes
  each group's mean as its single center.

Two deliberate choices, both about reproducibility rather than speed:

* FPS is the authors' Python-loop fallback (distances start at 1e10) but
  starts at index 0, as the CUDA FPS of pointnet2_ops that their training
  used (their fallback starts at a random index); :func:`farthest_point_sample`
  takes the start as an argument. The CUDA FPS also never picks a point with
  ``x^2 + y^2 + z^2 <= 1e-3`` after the first: ``fps_skip_near_origin=True``
  adds that rule (pointcoc's models: the same argument). Without it, this
  FPS differs from the CUDA one on sets with points near the origin; with
  it, only in how exact distance ties are broken (the kernel's thread
  reduction order; see :func:`pointcoc.ops.farthest_point_sample`).
* Only fixed-size batches (no ``lengths``): the published model has none.

Its module and parameter names are the authors' (``embedding.net.0``,
``local_grouper_list``, ``pre_blocks_list.i.operation.j.fc1``, ...), so its
state dict has the keys of their checkpoints.

:func:`pointcoc.models.authors_keys.state_dict_from_pointcoc` maps a
:class:`pointcoc.PointMLPCoC` (or PointMLP) state dict onto this model's keys, so
both hold the same parameters (:func:`reference_from_pointcoc`); the inverse,
:func:`pointcoc.models.authors_keys.state_dict_to_pointcoc`, is what
:func:`pointcoc.load_authors_checkpoint` uses.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models.authors_keys import state_dict_from_pointcoc

__all__ = [
    "ReferencePointMLP", "square_distance", "index_points", "farthest_point_sample", "knn_point",
    "reference_from_pointcoc",
]


def square_distance(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """(B, N, D), (B, M, D) -> (B, N, M) squared distances by the expansion ``|s|^2 + |d|^2 - 2 s.d``."""
    batch, n, _ = src.shape
    m = dst.shape[1]
    dist = -2 * torch.matmul(src, dst.permute(0, 2, 1))
    dist += torch.sum(src ** 2, -1).view(batch, n, 1)
    dist += torch.sum(dst ** 2, -1).view(batch, 1, m)
    return dist


def index_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """points (B, N, C), idx (B, ...) long -> (B, ..., C) by advanced indexing with a repeated batch index."""
    batch = points.shape[0]
    view_shape = [batch] + [1] * (idx.dim() - 1)
    repeat_shape = [1] + list(idx.shape[1:])
    batch_indices = torch.arange(batch, dtype=torch.long, device=points.device).view(view_shape).repeat(repeat_shape)
    return points[batch_indices, idx, :]


@torch.compiler.disable  # the authors' FPS is a CUDA extension op, opaque to torch.compile; Dynamo would unroll this loop
def farthest_point_sample(xyz: torch.Tensor, npoint: int, start: Optional[torch.Tensor] = None,
                          skip_near_origin: bool = False) -> torch.Tensor:
    """xyz (B, N, 3) -> (B, npoint) long: the authors' Python-loop FPS; ``start`` (B,) long, default index 0.

    ``skip_near_origin``: as the CUDA kernel, a point with squared norm <= 1e-3
    is never picked after the first (its distance stays -1; if every point is
    such, the pick is index 0).
    """
    batch, n, _ = xyz.shape
    centroids = torch.zeros(batch, npoint, dtype=torch.long, device=xyz.device)
    distance = torch.ones(batch, n, device=xyz.device) * 1e10
    if skip_near_origin:
        distance[torch.sum(xyz ** 2, -1).double() <= 1e-3] = -1.0
    farthest = torch.zeros(batch, dtype=torch.long, device=xyz.device) if start is None else start.clone()
    batch_indices = torch.arange(batch, dtype=torch.long, device=xyz.device)
    for i in range(npoint):
        centroids[:, i] = farthest
        centroid = xyz[batch_indices, farthest, :].view(batch, 1, -1)
        dist = torch.sum((xyz - centroid) ** 2, -1)
        distance = torch.min(distance, dist)
        farthest = torch.max(distance, -1)[1]
    return centroids


def knn_point(k: int, xyz: torch.Tensor, new_xyz: torch.Tensor) -> torch.Tensor:
    """xyz (B, N, 3), new_xyz (B, S, 3) -> (B, S, k) long: indices of each query's k nearest points (unsorted)."""
    sqrdists = square_distance(new_xyz, xyz)
    return torch.topk(sqrdists, k, dim=-1, largest=False, sorted=False)[1]


class LocalGrouper(nn.Module):
    """xyz (B, N, 3), points (B, N, C) -> anchors (B, S, 3) and groups (B, S, k, 2C) (anchor normalisation)."""

    def __init__(self, channel: int, groups: int, kneighbors: int, normalize: Optional[str] = "anchor",
                 skip_near_origin: bool = False):
        super().__init__()
        self.groups, self.kneighbors, self.normalize = groups, kneighbors, normalize
        self.skip_near_origin = skip_near_origin
        if normalize is not None:
            self.affine_alpha = nn.Parameter(torch.ones([1, 1, 1, channel]))
            self.affine_beta = nn.Parameter(torch.zeros([1, 1, 1, channel]))

    def forward(self, xyz: torch.Tensor, points: torch.Tensor):
        batch = xyz.shape[0]
        xyz = xyz.contiguous()
        fps_idx = farthest_point_sample(xyz, self.groups, skip_near_origin=self.skip_near_origin).long()
        new_xyz = index_points(xyz, fps_idx)
        new_points = index_points(points, fps_idx)
        idx = knn_point(self.kneighbors, xyz, new_xyz)
        grouped_points = index_points(points, idx)
        if self.normalize is not None:
            if self.normalize == "center":
                mean = torch.mean(grouped_points, dim=2, keepdim=True)
            else:
                mean = new_points.unsqueeze(dim=-2)
            std = torch.std((grouped_points - mean).reshape(batch, -1), dim=-1, keepdim=True)
            std = std.unsqueeze(-1).unsqueeze(-1)
            grouped_points = (grouped_points - mean) / (std + 1e-5)
            grouped_points = self.affine_alpha * grouped_points + self.affine_beta
        repeated = new_points.view(batch, self.groups, 1, -1).repeat(1, 1, self.kneighbors, 1)
        return new_xyz, torch.cat([grouped_points, repeated], dim=-1)


class ConvBNReLU1D(nn.Module):
    """(B, C_in, L) -> (B, C_out, L): Conv1d(1x1) -> BatchNorm1d -> ReLU (in place)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(in_channels, out_channels, kernel_size=1, bias=bias),
                                 nn.BatchNorm1d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvBNReLURes1D(nn.Module):
    """(B, C, L) -> (B, C, L): ``relu(BN(conv(relu(BN(conv(x))))) + x)``."""

    def __init__(self, channel: int, res_expansion: float = 1.0, bias: bool = False):
        super().__init__()
        hidden = int(channel * res_expansion)
        self.act = nn.ReLU(inplace=True)
        self.net1 = nn.Sequential(nn.Conv1d(channel, hidden, kernel_size=1, bias=bias), nn.BatchNorm1d(hidden),
                                  nn.ReLU(inplace=True))
        self.net2 = nn.Sequential(nn.Conv1d(hidden, channel, kernel_size=1, bias=bias), nn.BatchNorm1d(channel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.net2(self.net1(x)) + x)


def pairwise_cos_sim(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """(B, M, D), (B, N, D) -> (B, M, N) cosine similarities."""
    return torch.matmul(F.normalize(x1, dim=-1), F.normalize(x2, dim=-1).transpose(-2, -1))


class GroupContextCluster(nn.Module):
    """(G, C, k) -> (G, C, k): each group is one cluster centred on its mean (the published point-cloud block)."""

    def __init__(self, dim: int, heads: int = 1, head_dim: int = 32):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.fc1 = nn.Linear(dim, heads * head_dim)
        self.fc2 = nn.Linear(heads * head_dim, dim)
        self.fc_v = nn.Linear(dim, heads * head_dim)
        self.sim_alpha = nn.Parameter(torch.ones(1))
        self.sim_beta = nn.Parameter(torch.zeros(1))

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        g, k, _ = t.shape
        return t.reshape(g, k, self.heads, self.head_dim).permute(0, 2, 1, 3).reshape(g * self.heads, k, self.head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = x
        x = x.permute(0, 2, 1)
        g, k, _ = x.shape
        value = self._split_heads(self.fc_v(x))
        x = self._split_heads(self.fc1(x))
        center = x.mean(dim=1, keepdim=True)
        value_center = value.mean(dim=1, keepdim=True)
        sim = torch.sigmoid(self.sim_beta + self.sim_alpha * pairwise_cos_sim(center, x))  # (G*h, 1, k)
        out = ((value.unsqueeze(1) * sim.unsqueeze(-1)).sum(dim=2) + value_center) / (sim.sum(-1, keepdim=True) + 1.0)
        out = out * sim.squeeze(1).unsqueeze(-1)  # (G*h, k, d)
        out = out.reshape(g, self.heads, k, self.head_dim).permute(0, 2, 1, 3).reshape(g, k, -1)
        return res + self.fc2(out).permute(0, 2, 1)


class PreExtraction(nn.Module):
    """(B, S, k, 2C) groups -> (B, C_out, S): transfer, [context cluster, residual block] x blocks, max over k."""

    def __init__(self, channels: int, out_channels: int, blocks: int, res_expansion: float = 1.0,
                 bias: bool = False, cluster: bool = True):
        super().__init__()
        self.transfer = ConvBNReLU1D(2 * channels, out_channels, bias=bias)
        operation = []
        for _ in range(blocks):
            if cluster:
                operation.append(GroupContextCluster(out_channels, heads=1, head_dim=max(out_channels // 4, 32)))
            operation.append(ConvBNReLURes1D(out_channels, res_expansion=res_expansion, bias=bias))
        self.operation = nn.Sequential(*operation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, s, d = x.size()
        x = x.permute(0, 1, 3, 2).reshape(-1, d, s)
        x = self.transfer(x)
        x = self.operation(x)
        x = F.adaptive_max_pool1d(x, 1).view(b * n, -1)
        return x.reshape(b, n, -1).permute(0, 2, 1)


class PosExtraction(nn.Module):
    """(B, C, S) -> (B, C, S): residual blocks."""

    def __init__(self, channels: int, blocks: int, res_expansion: float = 1.0, bias: bool = False):
        super().__init__()
        self.operation = nn.Sequential(*[ConvBNReLURes1D(channels, res_expansion, bias) for _ in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.operation(x)


class ReferencePointMLP(nn.Module):
    """PointMLP(-CoC) as published, for fixed-size sets: x (B, 3, N) -> logits (B, num_classes).

    Defaults are PointMLP-CoC for ScanObjectNN (``pointMLP_CoC`` in the
    authors' code): embedding 64, k 24, reducers 2, dim expansion 2, two pre-
    and two pos-extraction blocks per stage, no bias, anchor normalisation, a
    grouped context cluster before each pre-extraction block. ``cluster=False``
    gives PointMLP. ``points``: the N the model is built for (anchors per stage
    are ``points // reducer``, as in the authors' code). ``fps_skip_near_origin``:
    the CUDA FPS rule (see the module docstring).
    """

    def __init__(self, num_classes: int = 15, points: int = 1024, embed_dim: int = 64, res_expansion: float = 1.0,
                 bias: bool = False, normalize: Optional[str] = "anchor",
                 dim_expansion: Sequence[int] = (2, 2, 2, 2), pre_blocks: Sequence[int] = (2, 2, 2, 2),
                 pos_blocks: Sequence[int] = (2, 2, 2, 2), k_neighbors: Sequence[int] = (24, 24, 24, 24),
                 reducers: Sequence[int] = (2, 2, 2, 2), cluster: bool = True, fps_skip_near_origin: bool = False):
        super().__init__()
        if not len(pre_blocks) == len(pos_blocks) == len(k_neighbors) == len(reducers) == len(dim_expansion):
            raise ValueError("pre_blocks, pos_blocks, k_neighbors, reducers and dim_expansion must have one entry "
                             f"per stage; got lengths {len(pre_blocks)}, {len(pos_blocks)}, {len(k_neighbors)}, "
                             f"{len(reducers)}, {len(dim_expansion)}")
        self.stages = len(pre_blocks)
        self.points = points
        self.embedding = ConvBNReLU1D(3, embed_dim, bias=bias)
        self.local_grouper_list = nn.ModuleList()
        self.pre_blocks_list = nn.ModuleList()
        self.pos_blocks_list = nn.ModuleList()
        last_channel, anchor_points = embed_dim, points
        for i in range(self.stages):
            out_channel = last_channel * dim_expansion[i]
            anchor_points = anchor_points // reducers[i]
            self.local_grouper_list.append(LocalGrouper(last_channel, anchor_points, k_neighbors[i], normalize,
                                                        fps_skip_near_origin))
            self.pre_blocks_list.append(PreExtraction(last_channel, out_channel, pre_blocks[i], res_expansion, bias,
                                                      cluster))
            self.pos_blocks_list.append(PosExtraction(out_channel, pos_blocks[i], res_expansion, bias))
            last_channel = out_channel
        act = nn.ReLU(inplace=True)
        self.classifier = nn.Sequential(
            nn.Linear(last_channel, 512), nn.BatchNorm1d(512), act, nn.Dropout(0.5),
            nn.Linear(512, 256), nn.BatchNorm1d(256), act, nn.Dropout(0.5),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, N) with N = ``points`` -> logits (B, num_classes)."""
        if x.dim() != 3 or x.shape[1] != 3 or x.shape[2] != self.points:
            raise ValueError(f"x must have shape (B, 3, {self.points}); got {tuple(x.shape)}")
        xyz = x.permute(0, 2, 1)
        x = self.embedding(x)
        for i in range(self.stages):
            xyz, x = self.local_grouper_list[i](xyz, x.permute(0, 2, 1))
            x = self.pre_blocks_list[i](x)
            x = self.pos_blocks_list[i](x)
        x = F.adaptive_max_pool1d(x, 1).squeeze(dim=-1)
        return self.classifier(x)


def reference_from_pointcoc(model: nn.Module, points: int = 1024) -> ReferencePointMLP:
    """A :class:`ReferencePointMLP` with the configuration and parameters of a pointcoc PointMLP(-CoC).

    ``model`` must be positions-only (``in_channels=0``, D=3), ReLU, no bias,
    ``use_xyz=False``, 512-256 classifier, context cluster None or "grouped"
    with one head (the published configurations). The reference takes the
    model's ``fps_skip_near_origin``.
    """
    stages = list(model.stages)
    clusters = [m for s in stages for m in s.pre_blocks if type(m).__name__ == "ContextCluster"]
    unsupported = {
        "in_channels": model.in_channels != 0, "coord_dim": model.coord_dim != 3,
        "use_xyz": stages[0].grouper.use_xyz, "cluster_heads": any(m.heads != 1 for m in clusters),
        "cluster": any(m.n_centers is not None for s in stages for m in s.pos_blocks
                       if type(m).__name__ == "ContextCluster"),
    }
    if any(unsupported.values()):
        raise ValueError("model must be a published PointMLP / PointMLP-CoC configuration (in_channels=0, "
                         "coord_dim=3, use_xyz=False, cluster None or 'grouped' with one head); got different "
                         f"{[k for k, bad in unsupported.items() if bad]}")
    cluster = any(type(m).__name__ == "ContextCluster" for s in stages for m in s.pre_blocks)
    first = stages[0]
    embed_dim = model.embedding.linear.out_features
    dims, channels = [], embed_dim
    for s in stages:
        out = s.transfer.neighbour.out_features
        dims.append(out // channels)
        channels = out
    res_blocks = [[m for m in s.pre_blocks if type(m).__name__ == "ResidualPointBlock"] for s in stages]
    hidden = res_blocks[0][0].net1.linear.out_features
    reference = ReferencePointMLP(
        num_classes=model.num_classes, points=points, embed_dim=embed_dim,
        res_expansion=hidden / first.transfer.neighbour.out_features, bias=model.embedding.linear.bias is not None,
        normalize=first.grouper.normalize, dim_expansion=dims, pre_blocks=[len(r) for r in res_blocks],
        pos_blocks=[len(s.pos_blocks) for s in stages], k_neighbors=[s.grouper.k for s in stages],
        reducers=[s.grouper.reducer for s in stages], cluster=cluster,
        fps_skip_near_origin=first.grouper.skip_near_origin)
    weight = model.embedding.linear.weight
    reference = reference.to(weight.device, weight.dtype)
    reference.load_state_dict(state_dict_from_pointcoc(model.state_dict()))
    return reference
