"""Local grouper of PointMLP: FPS anchors, kNN groups, anchor normalisation."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .mlp import MaskedBatchNorm, get_activation, none_if_all

from ..ops import farthest_point_sample, gather, knn

__all__ = ["LocalGrouper", "GroupIndex", "Groups", "GroupTransfer", "masked_std"]


class GroupIndex(NamedTuple):
    """Which points form each group (:meth:`LocalGrouper.index`).

    xyz: (B, S, D) anchor positions (zeros past ``lengths``).
    lengths: (B,) long, number of anchors of each set (S = lengths.max()); None when
        the input had no lengths (every set has S anchors).
    anchor_idx: (B, S) long indices of the anchors in the input set, -1 past ``lengths``.
    idx: (B, S, k) long indices of each anchor's k nearest points, -1 where missing.
    mask: (B, S, k) bool, True on real neighbours of real anchors; None when every
        neighbour is real.
    """

    xyz: torch.Tensor
    lengths: Optional[torch.Tensor]
    anchor_idx: torch.Tensor
    idx: torch.Tensor
    mask: Optional[torch.Tensor]


class Groups(NamedTuple):
    """Output of :class:`LocalGrouper`.

    xyz: (B, S, D) anchor positions (zeros past ``lengths``).
    lengths: (B,) long, number of anchors of each set (S = lengths.max()); None when
        the input had no lengths (every set has S anchors).
    anchors: (B, S, C) anchor features.
    grouped: (B, S, k, C_norm) normalised neighbour features (C_norm = C, + D with use_xyz).
        The published grouper also concatenates the anchor's features to each
        neighbour; :class:`GroupTransfer` applies the following layer to that
        concatenation without forming it.
    mask: (B, S, k) bool, True on real neighbours of real anchors; None when every
        neighbour is real.
    anchor_idx: (B, S) long indices of the anchors in the input set, -1 past ``lengths``.
    """

    xyz: torch.Tensor
    lengths: Optional[torch.Tensor]
    anchors: torch.Tensor
    grouped: torch.Tensor
    mask: Optional[torch.Tensor]
    anchor_idx: torch.Tensor


def masked_std(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased standard deviation per set over every real entry and channel.

    Args:
        x: Tensor (B, ..., C); mask: BoolTensor (B, ...) of real entries.

    Returns:
        Tensor (B,): the std of set b over all ``x[b][mask[b]]`` values (as
        ``torch.std(x.reshape(B, -1), dim=-1)`` when nothing is padding).
    """
    batch, channels = x.shape[0], x.shape[-1]
    weight = mask.unsqueeze(-1).to(x.dtype)
    count = weight.reshape(batch, -1).sum(1) * channels
    mean = (x * weight).reshape(batch, -1).sum(1) / count
    centred = (x - mean.reshape(batch, *([1] * (x.dim() - 1)))) * weight
    var = centred.pow(2).reshape(batch, -1).sum(1) / (count - 1).clamp_min(1)
    return _sqrt_finite_gradient(var)


def _sqrt_finite_gradient(var: torch.Tensor) -> torch.Tensor:
    """sqrt(var), with a zero gradient where var is 0: a set whose entries are all equal (a cloud with every point at
    one position) would otherwise get 0 / 0 = NaN gradients from the sqrt's derivative. The value is unchanged
    (sqrt of the smallest normal number is 0 next to the 1e-5 added to the std)."""
    return var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()


def _inverse_std(diff: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """1 / (std + 1e-5) per set over every real entry and channel: diff (B, ..., C), mask (B, ...) or None -> (B,).
    The gradient is finite for a set of equal entries (see :func:`_sqrt_finite_gradient`)."""
    if mask is None:
        std = _sqrt_finite_gradient(torch.var(diff.reshape(diff.shape[0], -1), dim=-1))  # one fused pass
    else:
        std = masked_std(diff, mask)
    return 1.0 / (std + 1e-5)


class LocalGrouper(nn.Module):
    """Sample anchors by FPS, group each anchor's k nearest points, normalise (PointMLP).

    Each set of ``lengths[b]`` points gets ``max(lengths[b] // reducer, 1)``
    anchors, so a padded batch gives each set what it would get alone. FPS
    starts at index 0 (deterministic) unless ``random_start`` and training;
    ``skip_near_origin`` gives it the rule of the authors' CUDA FPS (see
    :func:`pointcoc.ops.farthest_point_sample`).
    Groups of anchors with fewer than k real points are masked, never filled.

    With ``normalize="anchor"`` (published) the neighbour features minus the
    anchor's are divided by their std over the whole set (real entries only)
    and scaled by a learnable per-channel affine; ``"center"`` subtracts the
    group mean instead; None skips it. With ``use_xyz`` the neighbours'
    positions are appended to their features before normalising.

    Args:
        channels: C, the feature channels of the input points.
        k: neighbours per group.
        reducer: anchors = points // reducer.
        coord_dim: D, 2 or 3.

    Forward: xyz (B, N, D), features (B, N, C), lengths (B,) long or None (every
    set has N points) -> :class:`Groups` with ``grouped`` of ``norm_channels`` =
    C (+ D with use_xyz) channels.
    """

    def __init__(self, channels: int, k: int, reducer: int = 2, coord_dim: int = 3, use_xyz: bool = False,
                 normalize: Optional[str] = "anchor", random_start: bool = False, skip_near_origin: bool = False):
        super().__init__()
        if normalize not in ("anchor", "center", None):
            raise ValueError(f"normalize must be 'anchor', 'center' or None; got {normalize!r}")
        self.k, self.reducer, self.use_xyz, self.normalize = int(k), int(reducer), bool(use_xyz), normalize
        self.random_start, self.skip_near_origin = bool(random_start), bool(skip_near_origin)
        normed = channels + (coord_dim if use_xyz else 0)
        self.norm_channels = normed
        if normalize is not None:
            self.affine_alpha = nn.Parameter(torch.ones(normed))
            self.affine_beta = nn.Parameter(torch.zeros(normed))

    def index(self, xyz: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> GroupIndex:
        """FPS anchors and their kNN groups: xyz (B, N, D), lengths (B,) or None -> :class:`GroupIndex`."""
        n = xyz.shape[1]
        if lengths is None:  # every set has N points: sizes and masks follow from shapes (one graph when compiled)
            n_anchors, s = None, max(n // self.reducer, 1)
        else:
            n_anchors = torch.clamp(lengths // self.reducer, min=1)
            # torch.export cannot size a tensor by a value: there every set gets N // reducer slots (the
            # surplus masked), which changes no result of a real anchor
            s = max(n // self.reducer, 1) if torch.compiler.is_exporting() else int(n_anchors.max())
        anchor_idx = farthest_point_sample(xyz.detach(), s, lengths, random_start=self.random_start and self.training,
                                           skip_near_origin=self.skip_near_origin)
        if n_anchors is not None:
            slots = torch.arange(s, device=xyz.device)[None, :]
            anchor_idx = anchor_idx.masked_fill(slots >= n_anchors[:, None], -1)
        new_xyz = gather(xyz, anchor_idx)
        idx = knn(new_xyz.detach(), xyz.detach(), self.k, query_lengths=n_anchors, point_lengths=lengths).idx
        mask = None if lengths is None and self.k <= n else none_if_all(idx >= 0)
        return GroupIndex(new_xyz, n_anchors, anchor_idx, idx, mask)

    def point_inputs(self, xyz: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """What is grouped and normalised, per point: features (B, N, C), with use_xyz ``[features, xyz]``
        -> (B, N, norm_channels)."""
        return torch.cat([features, xyz], dim=-1) if self.use_xyz else features

    def _reference(self, values: torch.Tensor, grouped: torch.Tensor, index: GroupIndex) -> torch.Tensor:
        """What normalisation subtracts from each group: its anchor's ``values`` ("anchor") or the mean of
        its real ``grouped`` entries ("center"). values (B, N, C), grouped (B, S, k, C) -> (B, S, 1, C)."""
        if self.normalize == "anchor":
            return gather(values, index.anchor_idx).unsqueeze(2)
        if index.mask is None:
            return grouped.sum(2, keepdim=True) / grouped.shape[2]
        weight = index.mask.unsqueeze(-1).to(grouped.dtype)
        return (grouped * weight).sum(2, keepdim=True) / weight.sum(2, keepdim=True).clamp_min(1)

    def _differences(self, u: torch.Tensor, index: GroupIndex) -> torch.Tensor:
        """Grouped point inputs minus their reference: u (B, N, C_norm) -> (B, S, k, C_norm)."""
        grouped = gather(u, index.idx)
        return grouped - self._reference(u, grouped, index)

    def inverse_std(self, u: torch.Tensor, index: GroupIndex) -> torch.Tensor:
        """1 / (std + 1e-5) of each set's grouped differences over every real entry and channel:
        u (B, N, C_norm) -> (B,). Requires ``normalize`` ("anchor" or "center").

        The same function as ``_inverse_std(self._differences(u, index), index.mask)`` computed from sums
        over points and groups, so the (B, S, k, C_norm) differences are never formed. With ``w`` = 1 on the
        real neighbours of real anchors, ``cnt_n`` the weight of the groups that hold point n, ``G_s`` =
        sum_j w u_idx(s,j) and ``m_s`` = sum_j w (sums over channels implied)::

            anchor: sum d = sum_n cnt_n u_n - sum_s m_s u_a(s)
                    sum d^2 = sum_n cnt_n u_n^2 - 2 sum_s u_a(s) G_s + sum_s m_s u_a(s)^2
            center: sum d = 0,  sum d^2 = sum_n cnt_n u_n^2 - sum_s G_s^2 / m_s

        u is shifted by one of its points per set first (no difference changes): the sums then cancel
        little, and a set of equal points gives exactly 0. Computed in float32 at least (also under
        bfloat16 autocast, where the differences' own variance lost most digits).
        """
        if self.normalize is None:
            raise ValueError("inverse_std needs normalize='anchor' or 'center'; this grouper has normalize=None")
        work = u.to(torch.promote_types(u.dtype, torch.float32))
        batch, _, channels = work.shape
        work = work - gather(work, index.anchor_idx[:, :1]).detach()  # the first anchor: a real point of each set
        idx = index.idx
        weight = None if index.mask is None else index.mask.to(work.dtype)
        flat_idx = idx.reshape(batch, -1).clamp_min(0)
        counts = torch.zeros(work.shape[:2], dtype=work.dtype, device=work.device).scatter_add_(
            1, flat_idx, torch.ones_like(flat_idx, dtype=work.dtype) if weight is None else weight.reshape(batch, -1))
        group_sums = gather(work, idx).sum(2)  # G (B, S, C); gather gives zeros where idx is -1 (mask False)
        group_sizes = (torch.full(idx.shape[:2], idx.shape[2], dtype=work.dtype, device=work.device)
                       if weight is None else weight.sum(2))  # m (B, S)
        square_sum = (counts * work.pow(2).sum(-1)).sum(1)
        if self.normalize == "anchor":
            anchors = gather(work, index.anchor_idx)  # zeros past the anchor count, where m_s = 0
            total = (counts * work.sum(-1)).sum(1) - (group_sizes * anchors.sum(-1)).sum(1)
            square_sum = square_sum - 2 * (anchors * group_sums).sum((1, 2)) \
                + (group_sizes * anchors.pow(2).sum(-1)).sum(1)
        else:
            total = torch.zeros_like(square_sum)
            square_sum = square_sum - (group_sums.pow(2).sum(-1) / group_sizes.clamp_min(1)).sum(1)
        count = group_sizes.sum(1) * channels
        var = (square_sum - total * total / count) / (count - 1).clamp_min(1)
        return (1.0 / (_sqrt_finite_gradient(var) + 1e-5)).to(u.dtype)

    def linear_of_groups(self, weight: torch.Tensor, u: torch.Tensor, index: GroupIndex,
                         scale: Optional[torch.Tensor], offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``F.linear(normalised groups, weight) + offset`` with the matrix product run once per point, then gathered.

        Normalisation is affine per set, ``alpha * (u_j - ref) * scale + beta``, so
        ``W (alpha * (u_j - ref) * scale + beta) = P_j - P_ref + W beta`` with
        ``P = scale * u (W diag(alpha))^T``: the product runs on N rows instead of S * k
        (k / reducer = 12 times fewer for PointMLP) and no normalised (B, S, k, C_norm)
        tensor is formed. Padded neighbours get arbitrary values (masked downstream).

        Args:
            weight: (C_out, C_norm). u: (B, N, C_norm) from :meth:`point_inputs`.
            index: the groups. scale: (B,) from :meth:`inverse_std`, or None when ``normalize`` is None.
            offset: (B, S, C_out) added to each group's k rows (in the same pass), or None.

        Returns:
            (B, S, k, C_out).
        """
        if (scale is None) != (self.normalize is None):
            raise ValueError(f"scale must be {'None' if self.normalize is None else 'a (B,) tensor from inverse_std'} "
                             f"for normalize={self.normalize!r}; got {'None' if scale is None else 'a tensor'}")
        shift = 0.0 if offset is None else offset.unsqueeze(2)
        if self.normalize is None:
            return gather(F.linear(u, weight), index.idx) + shift
        per_point = F.linear(u, weight * self.affine_alpha) * scale[:, None, None]
        grouped = gather(per_point, index.idx)
        # a sum, not a difference: the difference's backward negates the whole (B, S, k, C_out) gradient first
        return grouped + (F.linear(self.affine_beta, weight) + shift - self._reference(per_point, grouped, index))

    def forward(self, xyz: torch.Tensor, features: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> Groups:
        index = self.index(xyz, lengths)
        u = self.point_inputs(xyz, features)
        if self.normalize is None:
            grouped = gather(u, index.idx)
        else:
            diff = self._differences(u, index)
            # alpha * diff * scale + beta in one pass over the groups
            scale = _inverse_std(diff, index.mask).reshape(-1, 1, 1, 1)
            grouped = torch.addcmul(self.affine_beta, diff, self.affine_alpha * scale)
        anchors = gather(features, index.anchor_idx)
        return Groups(index.xyz, index.lengths, anchors, grouped, index.mask, index.anchor_idx)


class GroupTransfer(nn.Module):
    """The first layer after grouping: Linear -> BN -> act on ``[normalised neighbour, anchor]`` per neighbour.

    The published model applies one pointwise layer to each neighbour's
    normalised features concatenated with its anchor's features (repeated k
    times). Its weight is split in two: the neighbour part runs once per point
    (:meth:`LocalGrouper.linear_of_groups`), the anchor part (with the bias)
    once per group, added to its k neighbours in the same pass: the same map
    and the same parameter count (one weight split in two, one bias).

    Args:
        norm_channels: channels of the normalised groups; anchor_channels: C; out_channels.

    Forward: grouper (the stage's :class:`LocalGrouper`), u (B, N, norm_channels) from its
    ``point_inputs``, anchors (B, S, C), index (:class:`GroupIndex`), scale (B,) from its
    ``inverse_std`` or None -> (B, S, k, out_channels).
    """

    def __init__(self, norm_channels: int, anchor_channels: int, out_channels: int, bias: bool = False,
                 activation: str = "relu"):
        super().__init__()
        self.neighbour = nn.Linear(norm_channels, out_channels, bias=bias)
        self.anchor = nn.Linear(anchor_channels, out_channels, bias=False)
        self.norm = MaskedBatchNorm(out_channels)
        self.act = get_activation(activation, inplace=True)

    def forward(self, grouper: LocalGrouper, u: torch.Tensor, anchors: torch.Tensor, index: GroupIndex,
                scale: Optional[torch.Tensor]) -> torch.Tensor:
        per_group = F.linear(anchors, self.anchor.weight, self.neighbour.bias)
        h = grouper.linear_of_groups(self.neighbour.weight, u, index, scale, offset=per_group)
        flat_mask = None if index.mask is None else index.mask.reshape(-1)
        return self.act(self.norm(h.reshape(-1, h.shape[-1]), flat_mask)).reshape(h.shape)
