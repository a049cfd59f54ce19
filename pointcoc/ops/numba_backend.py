"""Fast CPU kernels compiled with numba, run on torch's number of threads over sets (FPS) or queries (kNN).

Brute-force kernels for small sets; above measured sizes (``CELLS_CROSSOVER``, ``FPS_CELLS_CROSSOVER``)
kNN and FPS search a uniform cell list instead (:mod:`pointcoc.ops.cells`; :func:`knn_cells`,
:func:`fps_cells`, also forced as backend ``"cells"``), with the very same results. Sets whose points
crowd into few cells (density far from uniform) go to balanced k-d trees (:func:`knn_kdtree`, forced
as backend ``"kdtree"``), again with the same results.

Both return exactly what the torch references return: the same float
operations in the same order (squared distances summed x, then y, then z, in
the input's own precision), ties going to the lowest index, padding never
picked, -1 / inf past the lengths. Registered as backend ``"numba"`` on the
CPU when numba imports; dtypes other than float32 / float64 go to the
reference. FPS starts from the reference's running minimum
(:func:`pointcoc.ops.fps.initial_min_dist2`), so the near-origin rule is the
reference's own. Kernels are compiled once per dtype and cached on disk
(``cache=True``), so only the first run on a machine pays the compile time.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import torch

from . import backends
from .fps import fps_torch, initial_min_dist2
from .cells import cell_steps, distance_margin
from .knn import KNNResult, knn_torch

__all__ = ["WITH_NUMBA", "fps_numba", "fps_cells", "fps_kdtree", "knn_numba", "knn_cells", "knn_kdtree",
           "CELLS_CROSSOVER", "CELLS_PER_CELL", "CELLS_CROWDING", "TREE_LEAF", "FPS_TREE_LEAF"]

try:  # numba is optional: without it the torch backends do the work.
    import numba
    import numpy as np

    WITH_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    WITH_NUMBA = False

_DTYPES = (torch.float32, torch.float64)
# knn_numba searches a cell list (knn_cells) for sets of at least this many points, by coordinate
# dimension; below, brute force is as fast (docs/benchmarks.md, "kNN at large N").
CELLS_CROSSOVER = {2: 256, 3: 256}
# Average points per cell of that list, by coordinate dimension (measured, docs/benchmarks.md).
CELLS_PER_CELL = {2: 2.0, 3: 3.0}
# fps_numba uses the cell list (fps_cells) for sets of at least this many points and picks (measured), with
# this many points per cell.
FPS_CELLS_CROSSOVER = 2048
FPS_CELLS_MIN_SAMPLES = 64
FPS_PER_CELL = 256.0
# knn_cells / fps_cells hand a set to a k-d tree when a point's cell holds on average more than this many times
# the points per cell aimed at (:func:`_crowding`): the grid, sized from the bounding box, is then far from
# uniform (measured, docs/benchmarks.md "kNN and FPS on non-uniform density").
CELLS_CROWDING = 3.0
# Leaves of those k-d trees hold at most this many points (at least half as many), for kNN and for FPS (measured,
# same section).
TREE_LEAF = 32
FPS_TREE_LEAF = 256

if WITH_NUMBA:

    @numba.njit(cache=True, nogil=True)
    def _fps_sets(coords, init, lengths, start, n_samples, out, first, stop):
        """FPS of sets first..stop-1: coords (B, D, N) coordinate-major, writes out (B, n_samples).

        ``init`` (B, N) is the starting running minimum of
        :func:`pointcoc.ops.fps.initial_min_dist2` (-1 on points never picked).
        Each step runs three simple loops (distances, running minimum and its
        maximum, first index of the maximum) that the compiler can vectorise.
        """
        dim, n = coords.shape[1], coords.shape[2]
        min_dist2 = np.empty(n, dtype=coords.dtype)
        dist2 = np.empty(n, dtype=coords.dtype)
        for b in range(first, stop):
            n_valid = lengths[b]
            min_dist2[:n_valid] = init[b, :n_valid]
            farthest = start[b]
            for i in range(n_samples):
                if i >= n_valid:
                    out[b, i] = -1
                    continue
                out[b, i] = farthest
                axis = coords[b, 0]
                at = axis[farthest]
                for j in range(n_valid):
                    diff = axis[j] - at
                    dist2[j] = diff * diff
                for c in range(1, dim):  # summed x, then y, then z, as the reference
                    axis = coords[b, c]
                    at = axis[farthest]
                    for j in range(n_valid):
                        diff = axis[j] - at
                        dist2[j] = dist2[j] + diff * diff
                best = -1.0
                for j in range(n_valid):
                    nearest = min(min_dist2[j], dist2[j])
                    min_dist2[j] = nearest
                    best = max(best, nearest)
                farthest = 0  # no candidate left (all -1): index 0, as the reference
                if best >= 0:
                    for j in range(n_valid):  # ties go to the lowest index
                        if min_dist2[j] == best:
                            farthest = j
                            break

    @numba.njit(cache=True, nogil=True)
    def _knn_queries(query, points, query_lengths, point_lengths, out_d, out_i, first, stop):
        """kNN of flat queries first..stop-1 (t = b * M + i) into out_d, out_i (B, M, k).

        out_d must hold inf and out_i -1. Each query keeps its best k in a sorted
        list (insertion); equal distances keep the lower index first.
        """
        m, dim = query.shape[1], query.shape[2]
        k = out_d.shape[2]
        for t in range(first, stop):
            b = t // m
            i = t - b * m
            if i >= query_lengths[b]:
                continue
            best_d = out_d[b, i]
            best_i = out_i[b, i]
            worst = best_d[k - 1]
            for j in range(point_lengths[b]):
                diff = query[b, i, 0] - points[b, j, 0]
                d = diff * diff
                for c in range(1, dim):
                    diff = query[b, i, c] - points[b, j, c]
                    d = d + diff * diff
                if d < worst:
                    pos = k - 1
                    while pos > 0 and best_d[pos - 1] > d:
                        best_d[pos] = best_d[pos - 1]
                        best_i[pos] = best_i[pos - 1]
                        pos -= 1
                    best_d[pos] = d
                    best_i[pos] = j
                    worst = best_d[k - 1]

    @numba.njit(cache=True, nogil=True, inline="always")
    def _sq_dist(query, b, i, coords, p, dim):
        """Squared distance of query[b, i] to coords[p], summed x, then y, then z, as the reference (the cell
        kernels' one sum; the brute-force kernel keeps its own loop)."""
        diff = query[b, i, 0] - coords[p, 0]
        d = diff * diff
        for c in range(1, dim):
            diff = query[b, i, c] - coords[p, c]
            d = d + diff * diff
        return d

    @numba.njit(cache=True, nogil=True, inline="always")
    def _keep_ordered(best_d, best_i, d, j):
        """Insert candidate (d, j) into the sorted best list if it comes before its last entry in (distance,
        index) order; returns whether it was inserted."""
        k = best_d.shape[0]
        if not (d < best_d[k - 1] or (d == best_d[k - 1] and j < best_i[k - 1])):
            return False
        pos = k - 1
        while pos > 0 and (best_d[pos - 1] > d or (best_d[pos - 1] == d and best_i[pos - 1] > j)):
            best_d[pos] = best_d[pos - 1]
            best_i[pos] = best_i[pos - 1]
            pos -= 1
        best_d[pos] = d
        best_i[pos] = j
        return True

    @numba.njit(cache=True, nogil=True, inline="always")
    def _cell_of(point, dim, origin, inv, dims):
        """Flat cell (within its set) of one point, clamped into the grid: as :func:`pointcoc.ops.cells.build_cells`."""
        flat = 0
        for d in range(3):
            c = 0
            if d < dim:
                c = int(np.floor((np.float64(point[d]) - origin[d]) * inv))
                c = min(max(c, 0), dims[d] - 1)
            flat = flat * dims[d] + c
        return flat

    @numba.njit(cache=True, nogil=True)
    def _cell_params(points, lengths, per_cell, origin, inv, dims, first, stop):
        """Grid of sets first..stop-1 into origin (B, 3), inv (B,), dims (B, 3): the rule of
        :func:`pointcoc.ops.cells.build_cells`, in float64."""
        dim = points.shape[2]
        lo = np.empty(3)
        extent = np.empty(3)
        active = np.zeros(3, dtype=np.bool_)
        for b in range(first, stop):
            n = lengths[b]
            for d in range(dim):
                low, high = np.inf, -np.inf
                for j in range(n):
                    v = np.float64(points[b, j, d])
                    low, high = min(low, v), max(high, v)
                lo[d], extent[d] = low, high - low
                active[d] = extent[d] > 0
            target = max(n / per_cell, 1.0)
            side = 1.0
            for _ in range(dim):
                count, log_volume = 0, 0.0
                for d in range(dim):
                    if active[d]:
                        count += 1
                        log_volume += np.log(max(extent[d], 1e-300))
                if count > 0:
                    side = np.exp((log_volume - np.log(target)) / count)
                for d in range(dim):
                    active[d] = active[d] and extent[d] >= side
            inv[b] = 1.0 / side
            for d in range(3):
                if d >= dim:
                    origin[b, d], dims[b, d] = 0.0, 1
                elif active[d]:
                    origin[b, d] = lo[d] - 0.5 * side
                    dims[b, d] = int(np.floor(extent[d] * inv[b] + 0.5)) + 1
                else:
                    origin[b, d], dims[b, d] = lo[d], 1

    @numba.njit(cache=True, nogil=True)
    def _cell_sort(points, lengths, origin, inv, dims, offset, first_point, starts, coords, index, first, stop):
        """Counting sort of the valid points of sets first..stop-1 by cell (stable: index order within a cell)."""
        dim = points.shape[2]
        for b in range(first, stop):
            n = lengths[b]
            cells = dims[b, 0] * dims[b, 1] * dims[b, 2]
            keys = np.empty(n, dtype=np.int64)
            count = np.zeros(cells + 1, dtype=np.int64)
            for j in range(n):
                keys[j] = _cell_of(points[b, j], dim, origin[b], inv[b], dims[b])
                count[keys[j] + 1] += 1
            for c in range(cells):
                count[c + 1] += count[c]
            base = first_point[b]
            for c in range(cells):
                starts[offset[b] + c] = base + count[c]
            for j in range(n):
                pos = base + count[keys[j]]
                count[keys[j]] += 1
                for d in range(dim):
                    coords[pos, d] = points[b, j, d]
                index[pos] = j

    @numba.njit(cache=True, nogil=True)
    def _order_by_key(keys, buckets, order, b, m):
        """order[b * M:(b + 1) * M] = set b's flat query indices b * M + i sorted by keys[i] in [0, buckets) (a
        stable counting sort: equal keys keep index order), then its padding rows n..M-1 (n = len(keys))."""
        n = keys.shape[0]
        count = np.zeros(buckets + 1, dtype=np.int64)
        for i in range(n):
            count[keys[i] + 1] += 1
        for c in range(buckets):
            count[c + 1] += count[c]
        for i in range(n):
            order[b * m + count[keys[i]]] = b * m + i
            count[keys[i]] += 1
        for i in range(n, m):
            order[b * m + i] = b * m + i

    @numba.njit(cache=True, nogil=True)
    def _query_order(query, query_lengths, origin, inv, dims, order, first, stop):
        """order[b * M:(b + 1) * M] = set b's flat query indices, valid ones by cell, padding after."""
        m, dim = query.shape[1], query.shape[2]
        for b in range(first, stop):
            n = query_lengths[b]
            cells = dims[b, 0] * dims[b, 1] * dims[b, 2]
            keys = np.empty(n, dtype=np.int64)
            for i in range(n):
                keys[i] = _cell_of(query[b, i], dim, origin[b], inv[b], dims[b])
            _order_by_key(keys, cells, order, b, m)

    @numba.njit(cache=True, nogil=True)
    def _fps_cells_sets(points, init, lengths, start, n_samples, origin, inv, dims, offset, starts, coords, index,
                        shrink, floor, skip, out, first, stop):
        """Exact FPS of sets first..stop-1 (but those where ``skip``) through the cells of :func:`_build_cells`;
        writes out (B, n_samples).

        The picks are :func:`_fps_sets`'s: the same distances (x, then y, then z) and running minimum,
        the first maximum (lowest index). A pick only lowers the minimum of points nearer to it than
        their current minimum, so a cell whose box is, by a rounding-safe lower bound, farther from
        the pick than its largest minimum is left as it is; each cell keeps its largest minimum and
        the lowest index holding it, and the next pick is the best over cells.
        """
        dim = points.shape[2]
        for b in range(first, stop):
            if skip[b]:
                continue
            n_valid = lengths[b]
            cells = dims[b, 0] * dims[b, 1] * dims[b, 2]
            lo_p = starts[offset[b]]
            mins = np.empty(n_valid, dtype=points.dtype)  # by sorted position
            for p in range(n_valid):
                mins[p] = init[b, index[lo_p + p]]
            cell_max = np.empty(cells, dtype=points.dtype)
            cell_at = np.empty(cells, dtype=np.int64)
            for c in range(cells):
                best, at = -2.0, n_valid
                for p in range(starts[offset[b] + c] - lo_p, starts[offset[b] + c + 1] - lo_p):
                    if mins[p] > best or (mins[p] == best and index[lo_p + p] < at):
                        best, at = mins[p], index[lo_p + p]
                cell_max[c], cell_at[c] = best, at
            scale = inv[b]
            ny, nz = dims[b, 1], dims[b, 2]
            farthest = start[b]
            for i in range(n_samples):
                if i >= n_valid:
                    out[b, i] = -1
                    continue
                out[b, i] = farthest
                tx = (np.float64(points[b, farthest, 0]) - origin[b, 0]) * scale
                ty = (np.float64(points[b, farthest, 1]) - origin[b, 1]) * scale
                tz = (np.float64(points[b, farthest, 2]) - origin[b, 2]) * scale if dim == 3 else 0.5
                for c in range(cells):
                    if cell_max[c] < 0:  # empty, or every point excluded (-1 stays -1)
                        continue
                    gz = c % nz
                    gy = (c // nz) % ny
                    gx = c // (nz * ny)
                    ex = max(max(gx - tx, tx - gx - 1.0) - 1e-7, 0.0)
                    ey = max(max(gy - ty, ty - gy - 1.0) - 1e-7, 0.0)
                    ez = max(max(gz - tz, tz - gz - 1.0) - 1e-7, 0.0)
                    bound = (ex * ex + ey * ey + ez * ez) / (scale * scale) * shrink - floor
                    if bound >= cell_max[c]:
                        continue  # every point of the cell is at least as far as its own minimum
                    best, at = -2.0, n_valid
                    for p in range(starts[offset[b] + c] - lo_p, starts[offset[b] + c + 1] - lo_p):
                        # (p - f)^2 as (f - p)^2: the same squares, bit for bit
                        nearest = min(mins[p], _sq_dist(points, b, farthest, coords, lo_p + p, dim))
                        mins[p] = nearest
                        if nearest > best or (nearest == best and index[lo_p + p] < at):
                            best, at = nearest, index[lo_p + p]
                    cell_max[c], cell_at[c] = best, at
                best, farthest = -1.0, -1
                for c in range(cells):
                    if cell_max[c] > best or (cell_max[c] == best and best >= 0 and cell_at[c] < farthest):
                        best, farthest = cell_max[c], cell_at[c]
                if best < 0:
                    farthest = 0  # no candidate left (all -1): index 0, as the reference

    @numba.njit(cache=True, nogil=True)
    def _knn_cells(query, order, query_lengths, origin, inv, dims, offset, starts, coords, index, steps, step_gap,
                   shrink, floor, out_d, out_i, first, stop):
        """kNN of the queries order[first:stop] (flat t = b * M + i) through the cells of
        :func:`pointcoc.ops.cells.build_cells`.

        ``steps`` (S, 3) are cell offsets sorted by ``step_gap`` (S + 1,), a lower bound in cells
        on the gap between a query and any cell that far from its own (the last entry bounds every
        offset past the table). A cell is searched unless a lower bound on its points' distances
        exceeds the k-th distance found; the search stops at the first offset whose bound does; a
        query the table does not settle scans its whole set. Candidates are kept in (distance,
        index) order, so the result is the brute-force kernel's, ties included.
        out_d must hold inf and out_i -1.
        """
        m, dim = query.shape[1], query.shape[2]
        k = out_d.shape[2]
        n_steps = steps.shape[0]
        for u in range(first, stop):
            t = order[u]
            b = t // m
            i = t - b * m
            if i >= query_lengths[b]:
                continue
            best_d = out_d[b, i]
            best_i = out_i[b, i]
            scale = inv[b]
            nx, ny, nz = dims[b, 0], dims[b, 1], dims[b, 2]
            tx = (np.float64(query[b, i, 0]) - origin[b, 0]) * scale
            ty = (np.float64(query[b, i, 1]) - origin[b, 1]) * scale
            tz = (np.float64(query[b, i, 2]) - origin[b, 2]) * scale if dim == 3 else 0.5
            # The query's cell, clamped into the grid: offsets from it still bound the gaps from below.
            cx = min(max(int(np.floor(tx)), 0), nx - 1)
            cy = min(max(int(np.floor(ty)), 0), ny - 1)
            cz = min(max(int(np.floor(tz)), 0), nz - 1)
            base = offset[b]
            limit = np.inf  # the k-th distance in squared cells, widened by the rounding margin
            settled = False
            for s in range(n_steps + 1):
                if step_gap[s] > limit:
                    settled = True
                    break
                if s == n_steps:
                    break
                gx, gy, gz = cx + steps[s, 0], cy + steps[s, 1], cz + steps[s, 2]
                if gx < 0 or gx >= nx or gy < 0 or gy >= ny or gz < 0 or gz >= nz:
                    continue
                cell = base + (gx * ny + gy) * nz + gz
                lo, hi = starts[cell], starts[cell + 1]
                if lo == hi:
                    continue
                if limit < np.inf:
                    ex = max(gx - tx, tx - gx - 1.0, 0.0)
                    ey = max(gy - ty, ty - gy - 1.0, 0.0)
                    ez = max(gz - tz, tz - gz - 1.0, 0.0)
                    ex, ey, ez = max(ex - 1e-7, 0.0), max(ey - 1e-7, 0.0), max(ez - 1e-7, 0.0)
                    if ex * ex + ey * ey + ez * ez > limit:
                        continue
                for p in range(lo, hi):
                    if _keep_ordered(best_d, best_i, _sq_dist(query, b, i, coords, p, dim), index[p]) \
                            and best_i[k - 1] >= 0:
                        limit = (np.float64(best_d[k - 1]) + floor) / shrink * scale * scale
            if not settled:  # the table ran out: every point of the set, from scratch
                best_d[:] = np.inf
                best_i[:] = -1
                for p in range(starts[base], starts[base + nx * ny * nz]):
                    _keep_ordered(best_d, best_i, _sq_dist(query, b, i, coords, p, dim), index[p])

    @numba.njit(cache=True, nogil=True)
    def _select(coords, index, lo, hi, kth, axis):
        """Reorder rows lo..hi-1 of coords (and index alike) so that row ``kth`` holds the value it would hold
        sorted along ``axis``, rows before it no larger and rows after it no smaller (quickselect)."""
        dim = coords.shape[1]
        while hi - lo > 1:
            a, b, c = coords[lo, axis], coords[(lo + hi - 1) // 2, axis], coords[hi - 1, axis]
            pivot = max(min(a, b), min(max(a, b), c))  # the median of three
            i, j = lo, hi - 1
            while i <= j:
                while coords[i, axis] < pivot:
                    i += 1
                while coords[j, axis] > pivot:
                    j -= 1
                if i <= j:
                    for d in range(dim):
                        coords[i, d], coords[j, d] = coords[j, d], coords[i, d]
                    index[i], index[j] = index[j], index[i]
                    i += 1
                    j -= 1
            if kth <= j:
                hi = j + 1
            elif kth >= i:
                lo = i
            else:
                return

    @numba.njit(cache=True, nogil=True)
    def _tree_build(points, lengths, node_off, node_count, first_point, box, bounds, coords, index, first, stop):
        """Balanced k-d trees of sets first..stop-1 (those with ``node_count[b] > 0``), in heap order.

        Node j of set b (flat ``node_off[b] + j``; children 2j + 1 and 2j + 2) holds the sorted points
        bounds[flat, 0] .. bounds[flat, 1] - 1 and box[flat] (2, 3) float64, their lowest and highest
        coordinates (0 on the axes a 2-D set lacks). An inner node splits its points at the median of
        its box's widest axis; the last half of a set's nodes are leaves. coords / index as the grid's.
        """
        dim = points.shape[2]
        for b in range(first, stop):
            count = node_count[b]
            if count == 0:
                continue
            n, base, nb = lengths[b], first_point[b], node_off[b]
            for j in range(n):
                for d in range(dim):
                    coords[base + j, d] = points[b, j, d]
                index[base + j] = j
            bounds[nb, 0], bounds[nb, 1] = base, base + n
            for node in range(count):
                flat = nb + node
                lo, hi = bounds[flat, 0], bounds[flat, 1]
                for d in range(3):
                    box[flat, 0, d], box[flat, 1, d] = (np.inf, -np.inf) if d < dim else (0.0, 0.0)
                for p in range(lo, hi):
                    for d in range(dim):
                        v = np.float64(coords[p, d])
                        box[flat, 0, d] = min(box[flat, 0, d], v)
                        box[flat, 1, d] = max(box[flat, 1, d], v)
                if node >= count // 2:
                    continue
                axis = 0
                for d in range(1, dim):
                    if box[flat, 1, d] - box[flat, 0, d] > box[flat, 1, axis] - box[flat, 0, axis]:
                        axis = d
                mid = lo + (hi - lo) // 2
                _select(coords, index, lo, hi, mid, axis)
                left = nb + 2 * node + 1
                bounds[left, 0], bounds[left, 1] = lo, mid
                bounds[left + 1, 0], bounds[left + 1, 1] = mid, hi

    @numba.njit(cache=True, nogil=True, inline="always")
    def _box_gap2(box, flat, qx, qy, qz):
        """Squared distance (float64) from (qx, qy, qz) to box[flat]: at most any point's in it, up to rounding."""
        ex = max(box[flat, 0, 0] - qx, qx - box[flat, 1, 0], 0.0)
        ey = max(box[flat, 0, 1] - qy, qy - box[flat, 1, 1], 0.0)
        ez = max(box[flat, 0, 2] - qz, qz - box[flat, 1, 2], 0.0)
        return ex * ex + ey * ey + ez * ez

    @numba.njit(cache=True, nogil=True)
    def _tree_query_order(query, query_lengths, node_off, node_count, box, order, first, stop):
        """order[b * M:(b + 1) * M] = set b's flat query indices by the leaf each falls in, padding after
        (sets with a tree only); a query goes down to the child whose box is nearer."""
        m, dim = query.shape[1], query.shape[2]
        for b in range(first, stop):
            count = node_count[b]
            if count == 0:
                continue
            n, nb = query_lengths[b], node_off[b]
            leaves = count - count // 2
            keys = np.empty(n, dtype=np.int64)
            for i in range(n):
                qx, qy = np.float64(query[b, i, 0]), np.float64(query[b, i, 1])
                qz = np.float64(query[b, i, 2]) if dim == 3 else 0.0
                node = 0
                while node < count // 2:
                    left = 2 * node + 1
                    node = left if _box_gap2(box, nb + left, qx, qy, qz) <= _box_gap2(box, nb + left + 1, qx, qy,
                                                                                        qz) else left + 1
                keys[i] = node - count // 2
            _order_by_key(keys, leaves, order, b, m)

    @numba.njit(cache=True, nogil=True)
    def _knn_tree(query, order, query_lengths, node_off, node_count, box, bounds, coords, index, shrink, floor,
                  out_d, out_i, first, stop):
        """kNN of the queries order[first:stop] (flat t = b * M + i) through the trees of :func:`_tree_build`.

        Depth first, the nearer child first; a node is skipped when a rounding-safe lower bound on its
        points' distances (its box's, shrunk by ``distance_margin``) exceeds the k-th distance found.
        Candidates are kept in (distance, index) order, so the result is the brute-force kernel's,
        ties included. out_d must hold inf and out_i -1.
        """
        m, dim = query.shape[1], query.shape[2]
        k = out_d.shape[2]
        stack = np.empty(128, dtype=np.int64)
        gaps = np.empty(128)
        for u in range(first, stop):
            t = order[u]
            b = t // m
            i = t - b * m
            if i >= query_lengths[b]:
                continue
            best_d = out_d[b, i]
            best_i = out_i[b, i]
            nb, inner = node_off[b], node_count[b] // 2
            qx, qy = np.float64(query[b, i, 0]), np.float64(query[b, i, 1])
            qz = np.float64(query[b, i, 2]) if dim == 3 else 0.0
            limit = np.inf  # the k-th distance, widened by the rounding margin
            stack[0], gaps[0], top = 0, 0.0, 1
            while top > 0:
                top -= 1
                node = stack[top]
                if gaps[top] > limit:
                    continue
                if node >= inner:
                    for p in range(bounds[nb + node, 0], bounds[nb + node, 1]):
                        if _keep_ordered(best_d, best_i, _sq_dist(query, b, i, coords, p, dim), index[p]) \
                                and best_i[k - 1] >= 0:
                            limit = (np.float64(best_d[k - 1]) + floor) / shrink
                    continue
                left = 2 * node + 1
                g_left, g_right = _box_gap2(box, nb + left, qx, qy, qz), _box_gap2(box, nb + left + 1, qx, qy, qz)
                near, g_near, far, g_far = left, g_left, left + 1, g_right
                if g_right < g_left:
                    near, g_near, far, g_far = left + 1, g_right, left, g_left
                if g_far <= limit:
                    stack[top], gaps[top] = far, g_far
                    top += 1
                if g_near <= limit:
                    stack[top], gaps[top] = near, g_near
                    top += 1

    @numba.njit(cache=True, nogil=True)
    def _fps_tree_sets(points, init, lengths, start, n_samples, node_off, node_count, box, bounds, coords, index,
                       shrink, floor, out, first, stop):
        """Exact FPS of sets first..stop-1 (those with a tree) through the leaves of :func:`_tree_build`; writes
        out (B, n_samples).

        The picks are :func:`_fps_sets`'s: the same distances (x, then y, then z) and running minimum,
        the first maximum (lowest index). A pick only lowers the minimum of points nearer to it than
        their current minimum, so a leaf whose box is, by a rounding-safe lower bound, no nearer to
        the pick than its largest minimum is left as it is; each leaf keeps its largest minimum and
        the lowest index holding it, and the next pick is the best over leaves.
        """
        dim = points.shape[2]
        for b in range(first, stop):
            n_valid, count = lengths[b], node_count[b]
            if count == 0:
                continue
            leaf0, leaves = node_off[b] + count // 2, count - count // 2
            base = bounds[node_off[b], 0]
            mins = np.empty(n_valid, dtype=points.dtype)  # by sorted position
            for p in range(n_valid):
                mins[p] = init[b, index[base + p]]
            leaf_max = np.empty(leaves, dtype=points.dtype)
            leaf_at = np.empty(leaves, dtype=np.int64)
            for c in range(leaves):
                best, at = -2.0, n_valid
                for p in range(bounds[leaf0 + c, 0], bounds[leaf0 + c, 1]):
                    if mins[p - base] > best or (mins[p - base] == best and index[p] < at):
                        best, at = mins[p - base], index[p]
                leaf_max[c], leaf_at[c] = best, at
            farthest = start[b]
            for i in range(n_samples):
                if i >= n_valid:
                    out[b, i] = -1
                    continue
                out[b, i] = farthest
                fx, fy = np.float64(points[b, farthest, 0]), np.float64(points[b, farthest, 1])
                fz = np.float64(points[b, farthest, 2]) if dim == 3 else 0.0
                for c in range(leaves):
                    if leaf_max[c] < 0:  # empty, or every point excluded (-1 stays -1)
                        continue
                    if _box_gap2(box, leaf0 + c, fx, fy, fz) * shrink - floor >= leaf_max[c]:
                        continue  # every point of the leaf is at least as far as its own minimum
                    best, at = -2.0, n_valid
                    for p in range(bounds[leaf0 + c, 0], bounds[leaf0 + c, 1]):
                        # (p - f)^2 as (f - p)^2: the same squares, bit for bit
                        nearest = min(mins[p - base], _sq_dist(points, b, farthest, coords, p, dim))
                        mins[p - base] = nearest
                        if nearest > best or (nearest == best and index[p] < at):
                            best, at = nearest, index[p]
                    leaf_max[c], leaf_at[c] = best, at
                best, farthest = -1.0, -1
                for c in range(leaves):
                    if leaf_max[c] > best or (leaf_max[c] == best and best >= 0 and leaf_at[c] < farthest):
                        best, farthest = leaf_max[c], leaf_at[c]
                if best < 0:
                    farthest = 0  # no candidate left (all -1): index 0, as the reference


_POOLS = {}  # one thread pool per process id: a forked child never uses its parent's threads


def _run_split(kernel, total: int, *args) -> None:
    """Run ``kernel(*args, first, stop)`` over [0, total) in ``torch.get_num_threads()`` parts.

    The kernels release the GIL, so Python threads run them in parallel. Plain
    threads instead of numba's ``parallel=True``: its GNU OpenMP layer aborts
    a forked child (DataLoader workers), and this follows torch's thread setting.
    """
    parts = max(1, min(torch.get_num_threads(), total))
    if parts == 1:
        kernel(*args, 0, total)
        return
    pool = _POOLS.get(os.getpid())
    if pool is None or pool._max_workers < parts:
        pool = _POOLS[os.getpid()] = ThreadPoolExecutor(max_workers=parts, thread_name_prefix="pointcoc")
    bounds = [total * p // parts for p in range(parts + 1)]
    futures = [pool.submit(kernel, *args, bounds[p], bounds[p + 1]) for p in range(parts)]
    for future in futures:
        future.result()


def fps_numba(xyz: torch.Tensor, n_samples: int, lengths: torch.Tensor, start: torch.Tensor,
              skip_near_origin: bool) -> torch.Tensor:
    """Numba FPS with the signature and results of :func:`pointcoc.ops.fps.fps_torch`.

    Args:
        xyz: Tensor (B, N, D) on the CPU.
        n_samples: number of points to pick per set.
        lengths: LongTensor (B,) with values in [1, N].
        start: LongTensor (B,) giving the first pick of each set.
        skip_near_origin: the CUDA kernel's rule (see :func:`pointcoc.ops.farthest_point_sample`).

    Returns:
        LongTensor (B, n_samples); entries past lengths[b] are -1.
    """
    if xyz.dtype not in _DTYPES:
        return fps_torch(xyz, n_samples, lengths, start, skip_near_origin)
    if xyz.shape[1] >= FPS_CELLS_CROSSOVER and n_samples >= FPS_CELLS_MIN_SAMPLES:
        return fps_cells(xyz, n_samples, lengths, start, skip_near_origin)
    batch = xyz.shape[0]
    xyz = xyz.detach()
    out = np.empty((batch, n_samples), dtype=np.int64)
    coords = xyz.transpose(1, 2).contiguous().numpy()
    init = initial_min_dist2(xyz, lengths, skip_near_origin).numpy()
    _run_split(_fps_sets, batch, coords, init, lengths.numpy(), start.numpy(), n_samples, out)
    return torch.from_numpy(out)


def fps_cells(xyz: torch.Tensor, n_samples: int, lengths: torch.Tensor, start: torch.Tensor,
              skip_near_origin: bool) -> torch.Tensor:
    """Exact FPS through a uniform cell list: :func:`fps_numba`'s indices, less work once picks are dense.

    Each pick updates only the cells that may hold a point nearer to it than that point's
    running minimum (most of them once the picks are dense), and the next pick is the best of
    the cells' maxima; see ``_fps_cells_sets``. Same signature and results as :func:`fps_numba`
    (ties to the lowest index, -1 past the lengths, ``skip_near_origin`` as the reference).
    A set whose points crowd into few cells (:func:`_crowding` above ``CELLS_CROWDING * FPS_PER_CELL``:
    one far outlier, tight clusters) uses the leaves of a k-d tree as its cells instead (as
    :func:`fps_kdtree`). :func:`fps_numba` calls it for sets of at least ``FPS_CELLS_CROSSOVER``
    points and at least ``FPS_CELLS_MIN_SAMPLES`` picks.
    """
    if xyz.dtype not in _DTYPES:
        return fps_torch(xyz, n_samples, lengths, start, skip_near_origin)
    batch = xyz.shape[0]
    xyz = xyz.detach()
    points, pl = xyz.contiguous().numpy(), lengths.numpy()
    init = initial_min_dist2(xyz, lengths, skip_near_origin).numpy()
    origin, inv, dims, offset, starts, coords, index = _build_cells(points, pl, FPS_PER_CELL)
    crowded = _crowding(starts, dims, pl) > CELLS_CROWDING * FPS_PER_CELL
    shrink, floor = distance_margin(xyz.dtype)
    out = np.empty((batch, n_samples), dtype=np.int64)
    if crowded.any():
        _fps_tree(points, init, pl, start.numpy(), n_samples, crowded, (shrink, floor), out)
    if not crowded.all():
        _run_split(_fps_cells_sets, batch, points, init, pl, start.numpy(), n_samples, origin, inv, dims, offset,
                   starts, coords, index, shrink, floor, crowded, out)
    return torch.from_numpy(out)


def fps_kdtree(xyz: torch.Tensor, n_samples: int, lengths: torch.Tensor, start: torch.Tensor,
               skip_near_origin: bool) -> torch.Tensor:
    """Exact FPS through the leaves of a k-d tree per set (``_fps_tree_sets``): :func:`fps_cells` with leaves of
    ``FPS_TREE_LEAF / 2`` to ``FPS_TREE_LEAF`` points in place of grid cells. Same signature and results;
    forced as backend ``"kdtree"`` (:func:`fps_cells` uses it for crowded sets)."""
    if xyz.dtype not in _DTYPES:
        return fps_torch(xyz, n_samples, lengths, start, skip_near_origin)
    batch = xyz.shape[0]
    xyz = xyz.detach()
    init = initial_min_dist2(xyz, lengths, skip_near_origin).numpy()
    out = np.empty((batch, n_samples), dtype=np.int64)
    _fps_tree(xyz.contiguous().numpy(), init, lengths.numpy(), start.numpy(), n_samples,
              np.ones(batch, dtype=np.bool_), distance_margin(xyz.dtype), out)
    return torch.from_numpy(out)


def _fps_tree(points, init, lengths, start, n_samples, sets, margin, out) -> None:
    """FPS of the sets where ``sets`` (bool (B,)) is true through k-d tree leaves, into out (B, n_samples)."""
    tree = _build_tree(points, lengths, sets, FPS_TREE_LEAF)
    _run_split(_fps_tree_sets, points.shape[0], points, init, lengths, start, n_samples, *tree, margin[0], margin[1],
               out)


def knn_numba(
    query: torch.Tensor,
    points: torch.Tensor,
    k: int,
    query_lengths: torch.Tensor,
    point_lengths: torch.Tensor,
) -> KNNResult:
    """Numba kNN with the signature and results of :func:`pointcoc.ops.knn.knn_torch`.

    Memory is O(B * M * k), allocated by torch. dist2 is not differentiable (:func:`pointcoc.ops.knn`
    recomputes it when autograd needs it).
    """
    if query.dtype not in _DTYPES:
        return knn_torch(query, points, k, query_lengths, point_lengths)
    if points.shape[1] >= CELLS_CROSSOVER[query.shape[-1]]:
        return knn_cells(query, points, k, query_lengths, point_lengths)
    batch, m, _ = query.shape
    q, p = query.detach().contiguous().numpy(), points.detach().contiguous().numpy()
    dist2, idx = _empty_result(batch, m, k, query.dtype)
    _run_split(_knn_queries, batch * m, q, p, query_lengths.numpy(), point_lengths.numpy(), dist2.numpy(),
               idx.numpy())
    return KNNResult(dist2, idx)


def _empty_result(batch: int, m: int, k: int, dtype: torch.dtype):
    """(dist2 inf, idx -1) of shape (B, M, k), allocated by torch and filled by numpy: a parallel torch fill
    would leave torch's OpenMP threads spinning beside the numba kernels' threads."""
    dist2 = torch.empty((batch, m, k), dtype=dtype)
    idx = torch.empty((batch, m, k), dtype=torch.long)
    dist2.numpy().fill(np.inf)
    idx.numpy().fill(-1)
    return dist2, idx


def knn_cells(
    query: torch.Tensor,
    points: torch.Tensor,
    k: int,
    query_lengths: torch.Tensor,
    point_lengths: torch.Tensor,
) -> KNNResult:
    """Exact kNN through a uniform cell list (:mod:`pointcoc.ops.cells`): O(N log N) for N spread-out points.

    Same signature and the same results as the brute-force :func:`knn_numba`
    (distances bit for bit, ties to the lowest indices): only the order in
    which points are visited changes, and a query stops only when no unvisited
    point can come first. Sets far from uniform (one far outlier, a dense blob
    in sparse surroundings, tight clusters) crowd their points into few cells
    of a grid sized from the bounding box; a set whose crowding (:func:`_crowding`)
    exceeds ``CELLS_CROWDING * CELLS_PER_CELL[D]`` is searched through a k-d tree
    instead (:func:`knn_kdtree`, the same results). :func:`knn_numba` calls it for
    sets of at least ``CELLS_CROSSOVER[D]`` points.
    """
    if query.dtype not in _DTYPES:
        return knn_torch(query, points, k, query_lengths, point_lengths)
    batch, m, dim = query.shape
    per_cell = CELLS_PER_CELL[dim]
    q, p = query.detach().contiguous().numpy(), points.detach().contiguous().numpy()
    ql, pl = query_lengths.numpy(), point_lengths.numpy()
    origin, inv, dims, offset, starts, coords, index = _build_cells(p, pl, per_cell)
    crowded = _crowding(starts, dims, pl) > CELLS_CROWDING * per_cell
    shrink, floor = distance_margin(query.dtype)
    dist2, idx = _empty_result(batch, m, k, query.dtype)
    order = np.empty(batch * m, dtype=np.int64)
    _run_split(_query_order, batch, q, ql, origin, inv, dims, order)
    if crowded.any():
        _knn_tree_sets(q, ql, p, pl, crowded, (shrink, floor), dist2.numpy(), idx.numpy())
        order = order.reshape(batch, m)[~crowded].reshape(-1)  # the grid's queries
    # Search offsets out to a few cells past the radius that holds k points on average.
    reach = (k / (per_cell * (math.pi if dim == 2 else 4 * math.pi / 3))) ** (1 / dim)
    steps, step_gap = cell_steps(dim, int(math.ceil(reach)) + 2)
    _run_split(_knn_cells, order.shape[0], q, order, ql, origin, inv, dims, offset, starts, coords, index,
               steps.numpy(), step_gap.numpy(), shrink, floor, dist2.numpy(), idx.numpy())
    return KNNResult(dist2, idx)


def _crowding(starts: "np.ndarray", dims: "np.ndarray", lengths: "np.ndarray") -> "np.ndarray":
    """float64 (B,): per set, the mean number of points in a point's cell (sum of squared counts / points).

    About ``per_cell + 1`` for uniform points; as large as the set when one far point stretches the grid.
    """
    counts = np.diff(starts).astype(np.float64)
    cells = dims.prod(1)
    return np.bincount(np.repeat(np.arange(len(cells)), cells), counts * counts, len(cells)) / lengths


def knn_kdtree(
    query: torch.Tensor,
    points: torch.Tensor,
    k: int,
    query_lengths: torch.Tensor,
    point_lengths: torch.Tensor,
) -> KNNResult:
    """Exact kNN through a balanced k-d tree per set: O(N log N) whatever the density.

    Same signature and the same results as the brute-force :func:`knn_numba` (distances
    bit for bit, ties to the lowest indices). :func:`knn_cells` hands it the sets whose
    cells are crowded (``CELLS_CROWDING``); forced as backend ``"kdtree"``.
    """
    if query.dtype not in _DTYPES:
        return knn_torch(query, points, k, query_lengths, point_lengths)
    batch, m, _ = query.shape
    dist2, idx = _empty_result(batch, m, k, query.dtype)
    _knn_tree_sets(query.detach().contiguous().numpy(), query_lengths.numpy(), points.detach().contiguous().numpy(),
                   point_lengths.numpy(), np.ones(batch, dtype=np.bool_), distance_margin(query.dtype),
                   dist2.numpy(), idx.numpy())
    return KNNResult(dist2, idx)


def _knn_tree_sets(q, query_lengths, points, point_lengths, sets, margin, out_d, out_i) -> None:
    """kNN of the sets where ``sets`` (bool (B,)) is true through k-d trees, into out_d / out_i (B, M, k).

    q (B, M, D), points (B, N, D) numpy arrays; the other sets' rows are left as they are.
    """
    batch, m, _ = q.shape
    node_off, node_count, box, bounds, coords, index = _build_tree(points, point_lengths, sets, TREE_LEAF)
    order = np.empty(batch * m, dtype=np.int64)
    _run_split(_tree_query_order, batch, q, query_lengths, node_off, node_count, box, order)
    order = order.reshape(batch, m)[sets].reshape(-1)
    _run_split(_knn_tree, order.shape[0], q, order, query_lengths, node_off, node_count, box, bounds, coords, index,
               margin[0], margin[1], out_d, out_i)


def _build_tree(points: "np.ndarray", lengths: "np.ndarray", sets: "np.ndarray", leaf: int):
    """Balanced k-d trees (``_tree_build``) of the sets where ``sets`` is true, leaves of at most ``leaf``
    points: numpy arrays (node_off, node_count, box, bounds, coords, index); a set without a tree has 0 nodes."""
    levels = np.ceil(np.log2(np.maximum(lengths / leaf, 1.0))).astype(np.int64)
    levels += (lengths > leaf * 2**levels)  # float rounding of the logarithm
    node_count = np.where(sets, 2 ** (levels + 1) - 1, 0)
    node_off = np.cumsum(node_count) - node_count
    first_point = np.cumsum(lengths) - lengths
    nodes, n_valid = int(node_count.sum()), int(lengths.sum())
    box, bounds = np.empty((nodes, 2, 3)), np.empty((nodes, 2), dtype=np.int64)
    coords = np.empty((n_valid, points.shape[2]), dtype=points.dtype)
    index = np.empty(n_valid, dtype=np.int64)
    _run_split(_tree_build, points.shape[0], points, lengths, node_off, node_count, first_point, box, bounds, coords,
               index)
    return node_off, node_count, box, bounds, coords, index


def _build_cells(points: "np.ndarray", lengths: "np.ndarray", per_cell: float):
    """numba's :func:`pointcoc.ops.cells.build_cells` (the same grid; no torch ops): numpy arrays
    (origin, inv, dims, offset, starts, coords, index) as the fields of :class:`pointcoc.ops.cells.CellGrid`."""
    batch = points.shape[0]
    origin, inv, dims = np.empty((batch, 3)), np.empty(batch), np.empty((batch, 3), dtype=np.int64)
    _run_split(_cell_params, batch, points, lengths, float(per_cell), origin, inv, dims)
    cells = dims.prod(1)
    offset = np.cumsum(cells) - cells
    first_point = np.cumsum(lengths) - lengths
    total, n_valid = int(cells.sum()), int(lengths.sum())
    starts = np.empty(total + 1, dtype=np.int64)
    starts[total] = n_valid
    coords = np.empty((n_valid, points.shape[2]), dtype=points.dtype)
    index = np.empty(n_valid, dtype=np.int64)
    _run_split(_cell_sort, batch, points, lengths, origin, inv, dims, offset, first_point, starts, coords, index)
    return origin, inv, dims, offset, starts, coords, index


if WITH_NUMBA:
    backends.register("fps", "numba", fps_numba, devices=("cpu",), priority=10)
    backends.register("knn", "numba", knn_numba, devices=("cpu",), priority=10)
    # The cell list at every size: forced only (tests, benchmarks); knn_numba uses it above the crossover.
    backends.register("knn", "cells", knn_cells, devices=(), priority=9, forced_devices=("cpu",))
    backends.register("fps", "cells", fps_cells, devices=(), priority=9, forced_devices=("cpu",))
    backends.register("knn", "kdtree", knn_kdtree, devices=(), priority=8, forced_devices=("cpu",))
    backends.register("fps", "kdtree", fps_kdtree, devices=(), priority=8, forced_devices=("cpu",))
else:  # pragma: no cover - exercised only where numba is missing
    for _op in ("fps", "knn"):
        backends.note_unavailable(_op, "numba", "not importable")
    for _op in ("fps", "knn"):
        backends.note_unavailable(_op, "cells", "needs numba (not importable)")
    for _op in ("fps", "knn"):
        backends.note_unavailable(_op, "kdtree", "needs numba (not importable)")
