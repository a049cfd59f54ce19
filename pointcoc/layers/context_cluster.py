"""Context cluster (Ma et al., "Image as Set of Points", ICLR 2023): functional core and module.

For one head, with point features projected to a similarity space ``s`` and a
value space ``v``, and centers with their own ``s_c``, ``v_c``:

1. cosine similarity ``S[i, c]`` between every point and every center;
2. hard assignment ``assign[i] = argmax_c S[i, c]`` (one cluster per point);
3. aggregation ``g_c = (v_c + sum_i w_i v_i) / (1 + sum_i w_i)`` over the
   points of cluster c, with ``w_i = sigmoid(alpha * S[i, assign[i]] + beta)``;
4. dispatch ``out_i = w_i * g_{assign[i]}``.

:func:`context_cluster` computes 3 with segment sums (``index_add``): memory
O(B·N·(Ds + Dv)) plus a bounded chunk of similarities, never a (B, M, N, Dv)
tensor. :func:`context_cluster_dense`
is the dense-mask reference (as the published image code), O(B·M·N·Dv).

Note: the published image code takes the argmax of ``sigmoid(alpha*S + beta)``,
which equals the argmax of ``S`` while alpha > 0 (alpha starts at 1); we
assign by ``S`` itself, the "most similar center".

Recording assignments for drawing (set-level modules only)::

    with record_assignments(model):
        model(xyz, features, lengths)
    for cc in model.modules():
        if isinstance(cc, ContextCluster) and cc.last_assignment is not None:
            cc.last_assignment   # (B, N) long, center slot of each point (0..M-1), -1 on padding
            cc.last_center_idx   # (B, M) long, index into the N points of each center, -1 if none
            cc.last_xyz          # (B, N, D) positions of the points that were clustered
            cc.last_lengths      # (B,) long, real points per set
            cc.last_assignment_heads  # (B, heads, N) long, every head's assignment

``last_assignment`` is head 0's. The recorded tensors are detached and kept
after the ``with`` block until the next recorded forward.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import farthest_point_sample, gather, knn
from ..ops.validation import check_lengths, check_points, check_positive_int, check_same_batch

__all__ = ["context_cluster", "context_cluster_dense", "ContextCluster", "record_assignments"]


def _check_inputs(point_sim, point_val, center_sim, center_val, alpha, beta, lengths) -> torch.Tensor:
    check_points("point_sim", point_sim, dims=None, finite=False)
    check_points("point_val", point_val, dims=None, finite=False)
    check_points("center_sim", center_sim, dims=None, finite=False)
    check_points("center_val", center_val, dims=None, finite=False)
    batch, n, ds = point_sim.shape
    m = center_sim.shape[1]
    for name, t in (("point_val", point_val), ("center_sim", center_sim), ("center_val", center_val)):
        check_same_batch("point_sim", point_sim, name, t)
    if point_val.shape[1] != n:
        raise ValueError(f"point_val must have shape (B, N, Dv) with N = {n} as point_sim; got {tuple(point_val.shape)}")
    if center_sim.shape[2] != ds:
        raise ValueError(f"center_sim must have shape (B, M, Ds) with Ds = {ds} as point_sim; "
                         f"got {tuple(center_sim.shape)}")
    if center_val.shape[1] != m or center_val.shape[2] != point_val.shape[2]:
        raise ValueError(f"center_val must have shape (B, M, Dv) = ({batch}, {m}, {point_val.shape[2]}); "
                         f"got {tuple(center_val.shape)}")
    for name, t in (("alpha", alpha), ("beta", beta)):
        if not isinstance(t, torch.Tensor) or t.numel() != 1:
            raise ValueError(f"{name} must be a tensor with one element; got {t!r}")
    return check_lengths("lengths", lengths, batch, n, device=point_sim.device)


# Similarities are formed for this many (point, center) pairs at a time, so the
# assignment never holds the whole (B, N, M) matrix.
_SIM_CHUNK_ELEMENTS = 1 << 20


def _cosine_best(point_sim, center_sim, center_valid):
    """(B, N) cosine similarity to the most similar center and (B, N) its index; padded centers never win.

    The argmax runs without autograd in chunks of points; the chosen similarity is
    then recomputed from the chosen center alone, which has the gradient of the
    max. Memory O(B·N·Ds + chunk) instead of O(B·N·M).
    """
    ps = F.normalize(point_sim, dim=-1)
    cs = F.normalize(center_sim, dim=-1)
    batch, n, _ = ps.shape
    m = cs.shape[1]
    if m == 1 and center_valid is None:
        assign = torch.zeros((batch, n), dtype=torch.long, device=ps.device)
        return (ps * cs).sum(-1), assign
    # under torch.export the chunk must not depend on the batch size, which may be a dynamic dimension
    chunk = max(1, _SIM_CHUNK_ELEMENTS // max(1, m if torch.compiler.is_exporting() else batch * m))
    parts = []
    with torch.no_grad():
        cs_t = cs.transpose(1, 2)
        for start in range(0, n, chunk):
            sim = torch.bmm(ps[:, start : start + chunk], cs_t)
            if center_valid is not None:
                allowed = center_valid[:, start : start + chunk] if center_valid.dim() == 3 else center_valid[:, None]
                sim = sim.masked_fill(~allowed, float("-inf"))
            parts.append(sim.argmax(-1))
    assign = torch.cat(parts, 1)
    chosen = torch.gather(cs, 1, assign.unsqueeze(-1).expand(-1, -1, cs.shape[-1]))
    return (ps * chosen).sum(-1), assign


def cluster_core(point_sim, point_val, center_sim, center_val, alpha, beta,
                 point_valid: Optional[torch.Tensor] = None,
                 center_valid: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-4 with segment sums, without input checks (used by every form of the layer).

    Args as :func:`context_cluster`, except masks instead of lengths:
        point_valid: BoolTensor (B, N) of real points, or None.
        center_valid: BoolTensor (B, M) of real centers (at least one per set), or
            (B, N, M) of the centers each point may join (region partition), or None.

    Returns:
        out (B, N, Dv) and assign (B, N) long (-1 on padded points).
    """
    batch, n, dv = point_val.shape
    m = center_val.shape[1]
    best, assign = _cosine_best(point_sim, center_sim, center_valid)
    w = torch.sigmoid(alpha * best + beta)
    # Under autocast alpha (float32) promotes w: sum in w's dtype, never in a half type.
    point_val, center_val = point_val.to(w.dtype), center_val.to(w.dtype)
    if point_valid is not None:
        w = w * point_valid.to(w.dtype)
        assign = assign.masked_fill(~point_valid, -1)
    wv = w.unsqueeze(-1) * point_val
    if m == 1:
        num = center_val + wv.sum(1, keepdim=True)
        den = 1.0 + w.sum(1, keepdim=True).unsqueeze(-1)
        return w.unsqueeze(-1) * (num / den), assign
    rows = (assign.clamp_min(0) + torch.arange(batch, device=assign.device)[:, None] * m).reshape(-1)
    num = center_val.reshape(batch * m, dv).index_add(0, rows, wv.reshape(batch * n, dv))
    den = torch.ones(batch * m, dtype=w.dtype, device=w.device).index_add(0, rows, w.reshape(-1))
    g = num / den.unsqueeze(-1)
    out = w.unsqueeze(-1) * g.index_select(0, rows).reshape(batch, n, dv)
    return out, assign


def context_cluster(point_sim: torch.Tensor, point_val: torch.Tensor, center_sim: torch.Tensor,
                    center_val: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                    lengths: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cluster points around centers by cosine similarity, aggregate, dispatch (segment sums).

    Args:
        point_sim: Tensor (B, N, Ds), points in the similarity space.
        point_val: Tensor (B, N, Dv), points in the value space.
        center_sim: Tensor (B, M, Ds), centers in the similarity space.
        center_val: Tensor (B, M, Dv), centers in the value space.
        alpha, beta: one-element tensors, the learnable scale and shift of the similarity.
        lengths: LongTensor (B,) with values in [1, N], or None; points at
            index >= lengths[b] are padding: they join no cluster and get 0.

    Returns:
        out: Tensor (B, N, Dv), ``sigmoid(alpha*S_i + beta) * g_{assign_i}``; 0 on padding.
        assign: LongTensor (B, N), index of each point's most similar center; -1 on padding.

    Memory O(B·N·(Ds + Dv)) (similarities are formed in bounded chunks); matches
    :func:`context_cluster_dense` in values and gradients.
    """
    lengths = _check_inputs(point_sim, point_val, center_sim, center_val, alpha, beta, lengths)
    n = point_sim.shape[1]
    valid = torch.arange(n, device=point_sim.device)[None, :] < lengths[:, None]
    return cluster_core(point_sim, point_val, center_sim, center_val, alpha, beta, valid)


def context_cluster_dense(point_sim: torch.Tensor, point_val: torch.Tensor, center_sim: torch.Tensor,
                          center_val: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                          lengths: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference :func:`context_cluster` with a dense (B, M, N) mask, as the published image code.

    Same arguments and results; memory O(B·M·N·Dv) (it forms the (B, M, N, Dv)
    products). Kept as the reference that tests and benchmarks compare against.
    """
    lengths = _check_inputs(point_sim, point_val, center_sim, center_val, alpha, beta, lengths)
    batch, n, _ = point_sim.shape
    m = center_sim.shape[1]
    valid = torch.arange(n, device=point_sim.device)[None, :] < lengths[:, None]
    sim = torch.bmm(F.normalize(point_sim, dim=-1), F.normalize(center_sim, dim=-1).transpose(1, 2))
    sim = sim.transpose(1, 2)  # (B, M, N)
    assign = sim.argmax(dim=1)
    mask = F.one_hot(assign, m).transpose(1, 2).to(sim.dtype) * valid[:, None, :].to(sim.dtype)
    w = torch.sigmoid(alpha * sim + beta) * mask  # (B, M, N)
    agg = (w.unsqueeze(-1) * point_val.unsqueeze(1)).sum(2) + center_val  # (B, M, Dv)
    g = agg / (w.sum(2, keepdim=True) + 1.0)
    out = (g.unsqueeze(2) * w.unsqueeze(-1)).sum(1)  # (B, N, Dv)
    return out, assign.masked_fill(~valid, -1)


def _repeats_earlier_set(nbr: torch.Tensor) -> torch.Tensor:
    """(B, M, k) neighbour indices -> (B, M) bool: the same set of neighbours as an earlier center.

    Such a center has exactly the features of the earlier one; two equal
    columns of similarities would make the assignment depend on rounding.
    """
    key = nbr.sort(dim=-1).values
    same = (key[:, :, None, :] == key[:, None, :, :]).all(-1)  # (B, M, M)
    earlier = torch.ones(same.shape[1:], dtype=torch.bool, device=nbr.device).tril(-1)
    return (same & earlier).any(-1)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    weight = mask.unsqueeze(-1).to(x.dtype)
    return (x * weight).sum(dim) / weight.sum(dim).clamp_min(1)


class ContextCluster(nn.Module):
    """Context-cluster block with a residual connection: ``x + W_o(concat_heads(cluster(W_s x, W_v x)))``.

    Two forms, chosen by ``n_centers``:

    * grouped (``n_centers=None``, as in PointMLP-CoC): ``forward(x, mask=None)``
      with x (G, K, C) a batch of kNN groups and mask (G, K) bool of real
      neighbours; each group is one cluster whose center is the group mean
      (over real neighbours) in both spaces.
    * set-level (``n_centers=M``): ``forward(x, xyz, lengths=None)`` with x
      (B, N, C), xyz (B, N, D), lengths (B,) long. ``min(M, lengths[b])``
      centers per set are proposed by FPS over ``xyz`` (fixed start, so
      deterministic, unless ``random_start`` and training); a center's
      similarity/value features are the mean of its ``center_k`` nearest
      points' (a center whose k nearest points are those of an earlier
      center is dropped: it would be the same center, and exact ties would
      make the assignment depend on rounding). With ``regions=r`` > 1 the set
      is cut into r equal-width slabs along each coordinate axis of the set's
      bounding box (r**D cells) and a point may only join a center of its own
      cell; points of a cell that holds no center may join any center.

    Args:
        in_channels: C.
        out_channels: output channels (default C); a bias-free linear shortcut is used when they differ.
        heads: number of heads.
        head_dim: channels per head (default ``max(out_channels // 4, 32)``).
        n_centers, center_k, regions, random_start: the set-level form (see above).

    Parameters: ``alpha`` (init 1) and ``beta`` (init 0), shared by the heads,
    as published. Returns (B, N, C_out) (grouped: (G, K, C_out)); padded rows are 0.
    Set ``record = True`` (or use :func:`record_assignments`) to keep the last
    hard assignment; see the module docstring for the recorded attributes.
    """

    def __init__(self, in_channels: int, out_channels: Optional[int] = None, heads: int = 1,
                 head_dim: Optional[int] = None, n_centers: Optional[int] = None, center_k: int = 8,
                 regions: int = 1, random_start: bool = False):
        super().__init__()
        out_channels = out_channels or in_channels
        self.heads = check_positive_int("heads", heads)
        self.head_dim = check_positive_int("head_dim", head_dim or max(out_channels // 4, 32))
        self.n_centers = None if n_centers is None else check_positive_int("n_centers", n_centers)
        self.center_k = check_positive_int("center_k", center_k)
        self.regions = check_positive_int("regions", regions)
        self.random_start = bool(random_start)
        inner = self.heads * self.head_dim
        self.fc_sim = nn.Linear(in_channels, inner)
        self.fc_val = nn.Linear(in_channels, inner)
        self.fc_out = nn.Linear(inner, out_channels)
        self.alpha = nn.Parameter(torch.ones(1))
        self.beta = nn.Parameter(torch.zeros(1))
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Linear(in_channels, out_channels, bias=False)
        self.record = False
        self.last_assignment = self.last_assignment_heads = None
        self.last_center_idx = self.last_xyz = self.last_lengths = None

    def extra_repr(self) -> str:
        form = "grouped" if self.n_centers is None else f"set-level, n_centers={self.n_centers}, center_k={self.center_k}"
        return f"heads={self.heads}, head_dim={self.head_dim}, {form}"

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        """(B, N, H*d) -> (B*H, N, d)."""
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2).reshape(b * self.heads, n, self.head_dim)

    def _merge(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        """(B*H, N, d) -> (B, N, H*d)."""
        n = t.shape[1]
        return t.reshape(batch, self.heads, n, self.head_dim).transpose(1, 2).reshape(batch, n, -1)

    def _repeat(self, t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if t is None else t.repeat_interleave(self.heads, dim=0)

    def forward(self, x: torch.Tensor, xyz: Optional[torch.Tensor] = None, lengths: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None, return_assignment: bool = False):
        """Grouped: ``x`` (G, K, C), ``mask`` (G, K). Set-level: ``x`` (B, N, C), ``xyz`` (B, N, D), ``lengths`` (B,).

        Returns (B, N, C_out); with ``return_assignment`` (set-level only) also
        the hard assignment (B, heads, N) long, -1 on padding.
        """
        if self.n_centers is None:
            if return_assignment:
                raise ValueError("return_assignment needs the set-level form (n_centers set); "
                                 "in the grouped form every point joins its group's single center")
            return self._forward_grouped(x, mask)
        out, assign = self._forward_set(x, xyz, lengths)
        return (out, assign) if return_assignment else out

    def _forward_grouped(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """x (G, K, C), mask (G, K) bool or None -> (G, K, C_out); the closed form of a one-center cluster.

        With a single center per group every point joins it, so steps 3-6 need
        no argmax and no segment sums, and the value projection and the output
        projection are linear in quantities that are the same for every point
        of a group: ``sum_i w_i W_v x_i = W_v (sum_i w_i x_i)`` and
        ``W_o (w_i g) = w_i (W_o g)``. Both are applied once per group instead
        of once per point; only the similarity projection (needed for each
        point's cosine) runs per point. Same values as projecting every point
        (``tests/test_reference_model.py`` compares with the published block).
        """
        check_points("x", x, dims=None, finite=False)
        if mask is not None and mask.shape != x.shape[:2]:
            raise ValueError(f"mask must have shape (G, K) = {tuple(x.shape[:2])}; got {tuple(mask.shape)}")
        groups, k, _ = x.shape
        heads, d = self.heads, self.head_dim
        x_mean = x.mean(1) if mask is None else _masked_mean(x, mask, 1)  # (G, C)
        sim = self.fc_sim(x).view(groups, k, heads, d)
        center = self.fc_sim(x_mean).view(groups, heads, d)  # the mean of the points' projections
        eps = 1e-12  # as F.normalize
        dot = torch.einsum("gkhd,ghd->gkh", sim, center)
        norms = torch.linalg.vector_norm(sim, dim=-1).clamp_min(eps) * \
            torch.linalg.vector_norm(center, dim=-1).clamp_min(eps)[:, None, :]
        w = torch.sigmoid(self.alpha * (dot / norms) + self.beta)  # (G, K, H)
        if mask is not None:
            w = w * mask[..., None].to(w.dtype)
        weight_sum = w.sum(1)  # (G, H)
        x_weighted = torch.bmm(w.transpose(1, 2), x.to(w.dtype))  # (G, H, C): sum_i w_ih x_i
        w_val = self.fc_val.weight.view(heads, d, -1)
        b_val = self.fc_val.bias.view(heads, d)
        weighted_val = torch.einsum("ghc,hdc->ghd", x_weighted, w_val.to(w.dtype)) + weight_sum[..., None] * b_val
        center_val = self.fc_val(x_mean).view(groups, heads, d).to(w.dtype)
        g = (center_val + weighted_val) / (1.0 + weight_sum)[..., None]  # (G, H, d)
        # fc_out(concat_h w_ih g_h) = sum_h w_ih (W_o,h g_h) + b_o: one batched product with a column
        # of ones for the bias.
        projected = torch.einsum("ghd,chd->ghc", g, self.fc_out.weight.view(-1, heads, d).to(w.dtype))
        projected = torch.cat([projected, self.fc_out.bias.to(w.dtype).expand(groups, 1, -1)], 1)
        w1 = torch.cat([w, w.new_ones(groups, k, 1)], 2)
        out = torch.baddbmm(self.shortcut(x).to(w.dtype), w1, projected)
        return out if mask is None else out * mask.unsqueeze(-1).to(out.dtype)

    def _region_ids(self, xyz: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, N) cell index of each point in an r**D grid over each set's bounding box."""
        big = torch.finfo(xyz.dtype).max
        lo = xyz.masked_fill(~valid.unsqueeze(-1), big).amin(1, keepdim=True)
        hi = xyz.masked_fill(~valid.unsqueeze(-1), -big).amax(1, keepdim=True)
        rel = (xyz - lo) / (hi - lo).clamp_min(1e-12)
        cell = (rel * self.regions).long().clamp(0, self.regions - 1)
        ids = torch.zeros(xyz.shape[:2], dtype=torch.long, device=xyz.device)
        for d in range(xyz.shape[-1]):
            ids = ids * self.regions + cell[..., d]
        return ids

    def _forward_set(self, x: torch.Tensor, xyz: Optional[torch.Tensor], lengths: Optional[torch.Tensor]) -> torch.Tensor:
        check_points("x", x, dims=None, finite=False)
        if xyz is None:
            raise ValueError("xyz (B, N, D) is required by the set-level context cluster (n_centers is set)")
        check_points("xyz", xyz)
        check_same_batch("x", x, "xyz", xyz)
        if xyz.shape[1] != x.shape[1]:
            raise ValueError(f"x and xyz must have the same number of points; got {x.shape[1]} and {xyz.shape[1]}")
        batch, n, _ = x.shape
        lengths = check_lengths("lengths", lengths, batch, n, device=x.device)
        valid = torch.arange(n, device=x.device)[None, :] < lengths[:, None]
        m = min(self.n_centers, n)
        geo = xyz.detach()
        center_idx = farthest_point_sample(geo, m, lengths, random_start=self.random_start and self.training)
        center_valid = center_idx >= 0
        n_centers = center_valid.sum(1)
        nbr = knn(gather(geo, center_idx), geo, self.center_k, query_lengths=n_centers, point_lengths=lengths).idx
        center_valid = center_valid & ~_repeats_earlier_set(nbr)
        sim, val = self.fc_sim(x), self.fc_val(x)
        nbr_mask = nbr >= 0
        c_sim = _masked_mean(gather(sim, nbr), nbr_mask, 2)
        c_val = _masked_mean(gather(val, nbr), nbr_mask, 2)
        allowed = center_valid
        point_sim = self._split(sim)
        if self.regions > 1:
            cells = self._region_ids(geo, valid)
            center_cells = torch.gather(cells, 1, center_idx.clamp_min(0)).masked_fill(~center_valid, -1)
            same = cells[:, :, None] == center_cells[:, None, :]  # (B, N, M)
            same = same | ~same.any(-1, keepdim=True)
            allowed = same & center_valid[:, None, :]
        out, assign = cluster_core(point_sim, self._split(val), self._split(c_sim), self._split(c_val),
                                   self.alpha, self.beta, self._repeat(valid), self._repeat(allowed))
        if self.record:
            heads = assign.reshape(batch, self.heads, n).detach()
            self.last_assignment_heads = heads
            self.last_assignment = heads[:, 0]
            self.last_center_idx = center_idx.detach()
            self.last_xyz = xyz.detach()
            self.last_lengths = lengths.detach()
        out = self.shortcut(x) + self.fc_out(self._merge(out, batch))
        return out * valid.unsqueeze(-1).to(out.dtype), assign.reshape(batch, self.heads, n)


@contextmanager
def record_assignments(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, every set-level :class:`ContextCluster` in ``model`` records its last assignment.

    Usage and the recorded attributes: see the module docstring. Yields ``model``.
    """
    layers = [m for m in model.modules() if isinstance(m, ContextCluster) and m.n_centers is not None]
    previous = [m.record for m in layers]
    for m in layers:
        m.record = enabled
    try:
        yield model
    finally:
        for m, p in zip(layers, previous):
            m.record = p
