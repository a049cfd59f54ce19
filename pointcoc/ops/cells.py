"""Uniform cell lists over point sets: the space partition behind the grid kNN kernels.

Each set of a batch gets its own grid of cubic cells over its bounding box,
sized so that a cell holds about ``per_cell`` points on average; the points
are then sorted by cell (counting sort, done here in torch so that it runs on
the CPU and on CUDA alike). A kNN kernel visits the cells around a query and
stops when a lower bound on the distance of every unvisited point exceeds the
k-th distance found (:func:`distance_bound`): the results are exact.

Cells of set ``b``: cell ``(cx, cy, cz)`` covers ``t = (x - origin[b]) * inv[b]`` in
``[cx, cx + 1) x [cy, cy + 1) x [cz, cz + 1)``; points outside the grid's range are
clamped into its boundary cells, which is safe because a kernel treats a side whose
boundary cell it has visited as covered. 2-D sets use ``dims[:, 2] == 1``.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch

__all__ = ["CellGrid", "build_cells", "cell_order", "cell_steps", "distance_margin"]

# Rounding of the cell coordinates t (float64, |t| < 2**22): far below this many cells. Every gap in
# cells is shrunk by it (here, and as the literal 1e-7 in the numba and Triton kernels).
GAP_MARGIN = 1e-7


class CellGrid(NamedTuple):
    """Cells of a batch of sets, all sets' cells in one flat range.

    origin: float64 (B, 3) corner of cell (0, 0, 0); inv: float64 (B,) cells per unit length;
    dims: long (B, 3) cells per axis (1 on an axis the set does not spread along, and on z for 2-D);
    offset: long (B,) first flat cell of each set; starts: long (C + 1,), cell c holds sorted points
    starts[c] .. starts[c + 1] - 1; coords: (P, D) the valid points in cell order (input dtype);
    index: long (P,) each sorted point's index in its set. Cell (cx, cy, cz) of set b is flat cell
    ``offset[b] + (cx * dims[b, 1] + cy) * dims[b, 2] + cz``.
    """

    origin: torch.Tensor
    inv: torch.Tensor
    dims: torch.Tensor
    offset: torch.Tensor
    starts: torch.Tensor
    coords: torch.Tensor
    index: torch.Tensor


def build_cells(points: torch.Tensor, lengths: torch.Tensor, per_cell: float) -> CellGrid:
    """Sort each set's valid points into a uniform grid of cubic cells.

    Args:
        points: Tensor (B, N, D), D in {2, 3}, finite.
        lengths: LongTensor (B,) with values in [1, N]; padding is left out of the grid.
        per_cell: average number of points per cell to aim for (> 0).

    Returns:
        :class:`CellGrid`. About ``lengths[b] / per_cell`` cells per set and at most
        ``2.5**D`` times that (an axis narrower than a cell gets a single cell).
    """
    batch, n, dim = points.shape
    device = points.device
    valid = torch.arange(n, device=device)[None, :] < lengths[:, None]
    p64 = points.detach().to(torch.float64)
    lo = p64.masked_fill(~valid[..., None], float("inf")).amin(1)
    hi = p64.masked_fill(~valid[..., None], float("-inf")).amax(1)
    extent = hi - lo
    target = (lengths.to(torch.float64) / per_cell).clamp_min(1.0)
    # Cubic cells of side s with prod(extent / s) = target over the axes at least s wide; an axis
    # narrower than s gets one cell (so a flat or thin set does not get absurdly many cells).
    active = extent > 0
    side = torch.ones(batch, dtype=torch.float64, device=device)
    for _ in range(dim):
        count = active.sum(-1)
        log_volume = torch.where(active, extent.clamp_min(1e-300).log(), torch.zeros_like(extent)).sum(-1)
        side = torch.where(count > 0, ((log_volume - target.log()) / count.clamp_min(1)).exp(), side)
        active = active & (extent >= side[:, None])
    inv = 1.0 / side
    # Half a cell below the lowest point: a lattice whose pitch is the side has its points at cell centres.
    origin = torch.where(active, lo - 0.5 * side[:, None], lo)
    dims = torch.where(active, (extent * inv[:, None] + 0.5).floor() + 1, torch.ones_like(extent)).long()
    if dim == 2:
        origin = torch.cat([origin, origin.new_zeros(batch, 1)], 1)
        dims = torch.cat([dims, dims.new_ones(batch, 1)], 1)
    cells_per_set = dims.prod(-1)
    offset = torch.cumsum(cells_per_set, 0) - cells_per_set
    total = int(cells_per_set.sum())
    key = _cell_keys(p64, valid, origin, inv, dims, offset, total)
    order = torch.sort(key, stable=True).indices[: int(lengths.sum())]
    counts = torch.bincount(key, minlength=total + 1)[:total]
    starts = torch.zeros(total + 1, dtype=torch.long, device=device)
    torch.cumsum(counts, 0, out=starts[1:])
    return CellGrid(origin, inv, dims, offset, starts, points.detach().reshape(-1, dim)[order].contiguous(),
                    order % n)


def _cell_keys(x64, valid, origin, inv, dims, offset, total):
    """LongTensor (B * N,): each point's flat cell (clamped into its set's grid); ``total`` where not valid."""
    dim = x64.shape[-1]
    cell = ((x64 - origin[:, None, :dim]) * inv[:, None, None]).floor()
    cell = torch.minimum(cell.clamp_min(0), (dims[:, None, :dim] - 1).to(cell.dtype)).long()
    flat = cell[..., 0] * dims[:, None, 1] + cell[..., 1]
    flat = flat * dims[:, None, 2] + (cell[..., 2] if dim == 3 else 0)
    return torch.where(valid, flat + offset[:, None], torch.full_like(flat, total)).reshape(-1)


def cell_order(query: torch.Tensor, lengths: torch.Tensor, grid: CellGrid) -> torch.Tensor:
    """LongTensor (B * M,) of flat query indices ``b * M + i``, valid queries by cell of ``grid``, padding last.

    Queries that are near in space are then near in the order (a kernel visiting them in
    this order reuses the cells it has just read).
    """
    batch, m, _ = query.shape
    valid = torch.arange(m, device=query.device)[None, :] < lengths[:, None]
    total = grid.starts.shape[0] - 1
    key = _cell_keys(query.detach().to(torch.float64), valid, grid.origin, grid.inv, grid.dims, grid.offset, total)
    return torch.sort(key, stable=True).indices


@functools.lru_cache(maxsize=None)
def cell_steps(dim: int, radius: int):
    """Cell offsets to search around a query's cell, nearest first, and a lower bound on each one's gap.

    Returns (steps, step_gap): steps LongTensor (S, 3) (z = 0 for 2-D), the offsets of
    Chebyshev norm <= radius whose bound ``sum_d max(|o_d| - 1, 0)**2`` (squared cells)
    is below ``radius**2``, sorted by it; step_gap float64 (S + 1,) those bounds, less the
    rounding margin, then ``radius**2`` less the margin, a bound for every offset left out.
    """
    axis = torch.arange(-radius, radius + 1)
    zs = axis if dim == 3 else torch.zeros(1, dtype=torch.long)
    steps = torch.cartesian_prod(axis, axis, zs).reshape(-1, 3)
    gap = ((steps.abs() - 1).clamp_min(0).to(torch.float64) - GAP_MARGIN).clamp_min(0)
    bound = (gap * gap).sum(-1)
    keep = bound < radius * radius
    bound, order = torch.sort(bound[keep], stable=True)
    tail = torch.tensor([(radius - GAP_MARGIN) ** 2], dtype=torch.float64)
    return steps[keep][order].contiguous(), torch.cat([bound, tail])


def distance_margin(dtype: torch.dtype):
    """(shrink, floor): ``shrink * r**2 - floor`` is at most any squared distance >= r computed in ``dtype``.

    The reference sums at most three rounded squares of rounded differences
    (relative error below 8 units of roundoff); 64 covers it with room.
    """
    info = torch.finfo(dtype)
    return 1.0 - 64 * info.eps, 64 * info.tiny
