"""Exact k-nearest-neighbour search without gradient: all pairs for small sets, a sorted grid on GPU, cKDTree on CPU."""

from __future__ import annotations

import importlib.util
import math
import os
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from physmorph.errors import InputError

# Below this many points the all-pairs search is both exact and the fastest.
ALL_PAIRS_POINTS = 4096
# For k = 1 on CUDA, up to this many (query, point) pairs are compared by one Triton kernel: no
# host synchronisation (a CUDA graph can capture it) and 20k × 20k pairs in well under a millisecond.
KERNEL_ALL_PAIRS = 1 << 29
# Bounds the [chunk, P] distance block of the all-pairs search to about 256 MiB of float32.
_ALL_PAIRS_BLOCK = 1 << 26
# Points per occupied cell the grid aims for (times max(1, k/2)): about 27 × this many
# candidates per query in the first pass, and the k-th neighbour usually within it.
_POINTS_PER_CELL = 2.0
# The cell table is dense; at most this many cells per point (it bounds its memory).
_CELLS_PER_POINT = 8
# Bounds one pass's (query, cell) pairs and (query, point) candidates (int64 each).
_PAIR_BUDGET = 1 << 24
_CANDIDATE_BUDGET = 1 << 25
# Morton codes of int64 hold 21 bits per axis; finer grids search by rings alone.
_MORTON_BITS = 21
# The descent starts from every block of the first level with at most this many.
_TOP_BLOCKS = 64
# Queries that the first rings leave open descend in groups of this many.
_DESCENT_CHUNK = 1 << 16
# Before the Triton walk, those queries are compared with one point of each block of one Morton
# level (at most this many blocks): the nearest gives the walk a bound from its first block. (The
# PyTorch descent bounds itself level by level; on the CPU the comparison cost more than it saved.)
_REPRESENTATIVES = 4096
# Grids of the last point sets searched, reused while the same tensor is searched unchanged: a
# Chamfer term searches the same target points at every evaluation of an episode.
_RECENT_GRIDS: deque[tuple[weakref.ref, int, int, _Grid]] = deque(maxlen=4)


@torch.no_grad()
def nearest_neighbors(queries: torch.Tensor, points: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest `points` of every query, nearest first.

    queries: [Q, 3], points: [P, 3] (same device). Returns (distances [Q, k] in the inputs'
    dtype and units, indices [Q, k] int64 into `points`), both on the inputs' device and
    detached. A query that is also a point finds itself first (distance 0). Exact: the
    distances equal the all-pairs search's; indices differ only among equidistant points.
    """
    _check(queries, points, k)
    if _all_pairs_kernel_searches(queries, points, k):
        from physmorph.surface.knn_kernel import nearest_of_all

        _, index = nearest_of_all(queries, points)
        return (points[index] - queries).norm(dim=-1, keepdim=True), index[:, None]
    if _few(queries.shape[0], points.shape[0]):
        return all_pairs_nearest_neighbors(queries, points, k)
    if points.device.type == "cpu":
        # cKDTree is 3-10x faster than the grid on the CPU (BENCHMARKS.md, issue 14)
        tree = cKDTree(points.detach().double().numpy())
        distances, indices = tree.query(queries.detach().double().numpy(), k=k, workers=-1)
        distances = np.asarray(distances).reshape(queries.shape[0], k)
        indices = np.asarray(indices).reshape(queries.shape[0], k)
        return (
            torch.from_numpy(distances).to(points.dtype),
            torch.from_numpy(indices).to(torch.int64),
        )
    return grid_nearest_neighbors(queries, points, k)


def searches_without_host_sync(queries: torch.Tensor, points: torch.Tensor, k: int) -> bool:
    """Whether nearest_neighbors(queries, points, k) runs without waiting for the GPU (so a CUDA
    graph can capture it): the all-pairs searches do, the grid search does not."""
    if not queries.is_cuda:
        return False
    if _all_pairs_kernel_searches(queries, points, k):
        return True
    return _few(queries.shape[0], points.shape[0])


def _all_pairs_kernel_searches(queries: torch.Tensor, points: torch.Tensor, k: int) -> bool:
    """Whether nearest_neighbors takes the all-pairs Triton kernel (knn_kernel.nearest_of_all)."""
    return _kernel_available(queries) and _all_pairs_kernel_fits(queries.shape[0], points.shape[0], k)


def _all_pairs_kernel_fits(queries: int, points: int, k: int) -> bool:
    """Whether a search of these sizes is small enough for the all-pairs Triton kernel (k = 1 only)."""
    return k == 1 and queries * points <= KERNEL_ALL_PAIRS


def _few(queries: int, points: int) -> bool:
    """Whether a search of these sizes compares every pair in PyTorch rather than searching a grid or tree."""
    return points <= ALL_PAIRS_POINTS or queries == 0


def _check(queries: torch.Tensor, points: torch.Tensor, k: int) -> None:
    if k < 1 or k > points.shape[0]:
        raise InputError(
            f"nearest-neighbour search asks for k={k} neighbours among {points.shape[0]} "
            "points; lower k (k_F) or use more particles"
        )
    if queries.ndim != 2 or points.ndim != 2 or queries.shape[1] != 3 or points.shape[1] != 3:
        raise InputError(
            f"nearest-neighbour search takes [Q, 3] queries and [P, 3] points, got "
            f"{tuple(queries.shape)} and {tuple(points.shape)}; pass 3-D positions"
        )


@torch.no_grad()
def all_pairs_nearest_neighbors(
    queries: torch.Tensor, points: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """nearest_neighbors by comparing every pair (for small point sets and as the reference)."""
    _check(queries, points, k)
    chunk = max(1, _ALL_PAIRS_BLOCK // max(points.shape[0], 1))
    all_distances, all_indices = [], []
    for start in range(0, queries.shape[0], chunk):
        block = queries[start : start + chunk]
        squared = ((block[:, None, :] - points[None, :, :]) ** 2).sum(-1)
        _, indices = torch.topk(squared, k, dim=1, largest=False, sorted=True)
        all_distances.append((points[indices] - block[:, None, :]).norm(dim=-1))
        all_indices.append(indices)
    if not all_indices:
        return queries.new_zeros(0, k), torch.zeros(0, k, dtype=torch.int64, device=queries.device)
    return torch.cat(all_distances), torch.cat(all_indices)


class _Grid:
    """Points sorted by the cell of a uniform grid over their bounding box (cells in Morton
    order), with a dense cell table and, for the descent, the octree levels above the cells."""

    def __init__(self, points: torch.Tensor, k: int) -> None:
        self.lower = points.min(dim=0).values
        extent = (points.max(dim=0).values - self.lower).tolist()
        self.cell = _cell_size(extent, points.shape[0], _POINTS_PER_CELL * max(1.0, k / 2))
        for _ in range(2):
            # Point sets on surfaces or curves fill few of their box's cells: shrink the cells
            # until the occupied ones hold about the intended number of points.
            shape = self._shape(extent)
            keys = self.keys(self.coordinates(points), shape)
            per_occupied = points.shape[0] / torch.unique(keys).numel()
            target = _POINTS_PER_CELL * max(1.0, k / 2)
            smaller = self.cell / math.sqrt(per_occupied / target)
            if per_occupied < 2 * target or math.prod(self._shape(extent, smaller)) > _CELLS_PER_POINT * len(points):
                break
            self.cell = smaller
        self.shape = self._shape(extent)
        self.shape_tensor = torch.tensor(self.shape, device=points.device)
        self.upper = torch.tensor(extent, dtype=points.dtype, device=points.device) / self.cell
        cells = torch.minimum(torch.floor(self.coordinates(points)).clamp_min(0).long(), self.shape_tensor - 1)
        keys = (cells[:, 0] * self.shape[1] + cells[:, 1]) * self.shape[2] + cells[:, 2]
        # Morton order keeps every cell, and every block of 2^l × 2^l × 2^l cells, contiguous
        self.morton_bits = max(s - 1 for s in self.shape).bit_length()
        self.order = torch.argsort(morton_codes(cells) if self.morton_bits <= _MORTON_BITS else keys)
        self.points = points[self.order]
        self.cells = cells[self.order]
        counts = torch.bincount(keys, minlength=math.prod(self.shape))
        self.counts = counts
        self.starts = torch.zeros_like(counts).scatter_reduce_(
            0, keys[self.order], torch.arange(len(points), device=points.device), "amin", include_self=False
        )
        # Rounding in the cell assignment may put a point up to a few ulp outside its cell.
        scale = max(abs(v) for v in [*self.lower.tolist(), *(points.max(dim=0).values.tolist())])
        self.slack = 64 * torch.finfo(points.dtype).eps * (scale + self.cell)
        self._levels: list[_Level] | None = None
        self._depth_first: tuple[torch.Tensor, ...] | None = None

    def levels(self) -> list[_Level]:
        """The Morton levels above the cells, for the descent (built at the first call)."""
        if self._levels is None:
            self._levels = _levels(self, _TOP_BLOCKS)
        return self._levels

    def depth_first(self) -> tuple[torch.Tensor, ...]:
        """The levels' blocks in depth-first order, for the Triton walk (built at the first call)."""
        if self._depth_first is None:
            self._depth_first = _depth_first_blocks(self.levels())
        return self._depth_first

    def _shape(self, extent: list[float], cell: float | None = None) -> tuple[int, int, int]:
        cell = self.cell if cell is None else cell
        return tuple(max(1, math.floor(e / cell) + 1) for e in extent)

    def coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """Each position's cell in cell units [N, 3] (float, not clamped)."""
        return (x - self.lower) / self.cell

    @staticmethod
    def keys(u: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        limits = torch.tensor(shape, device=u.device) - 1
        c = torch.minimum(torch.floor(u).clamp_min(0).long(), limits)
        return (c[:, 0] * shape[1] + c[:, 1]) * shape[2] + c[:, 2]


def _spread(x: torch.Tensor) -> torch.Tensor:
    """The bits of x (< 2^21) spread three apart: bit i moves to bit 3i."""
    x = (x | x << 32) & 0x1F00000000FFFF
    x = (x | x << 16) & 0x1F0000FF0000FF
    x = (x | x << 8) & 0x100F00F00F00F00F
    x = (x | x << 4) & 0x10C30C30C30C30C3
    return (x | x << 2) & 0x1249249249249249


def morton_codes(cells: torch.Tensor) -> torch.Tensor:
    """Morton (Z-order) codes [N] of integer cells [N, 3] below 2^21 per axis."""
    return _spread(cells[:, 0]) | _spread(cells[:, 1]) << 1 | _spread(cells[:, 2]) << 2


@dataclass
class _Level:
    """The occupied blocks of 2^l cells per axis, in Morton order: each holds a contiguous run
    of the grid's sorted points."""

    keys: torch.Tensor  # [B] Morton code of the block (the cells' codes >> 3l)
    starts: torch.Tensor  # [B] its first point
    counts: torch.Tensor  # [B] its number of points
    corners: torch.Tensor  # [B, 3] its lowest cell, in cell units


def _levels(grid: _Grid, top_blocks: int) -> list[_Level]:
    """Levels 0 (the cells), 1, ... up to the first with at most `top_blocks` blocks."""
    codes = morton_codes(grid.cells)
    levels = []
    for level in range(grid.morton_bits + 1):
        keys, counts = torch.unique_consecutive(codes >> (3 * level), return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        corners = (grid.cells[starts] >> level) << level
        levels.append(_Level(keys, starts, counts, corners))
        if keys.numel() <= top_blocks:
            break
    return levels


def _cell_size(extent: list[float], n_points: int, per_cell: float) -> float:
    """The cell edge that puts about `per_cell` points in each cell of the points' box.

    Flat or thin boxes (a plane, a line, one point) are filled in the dimensions they have.
    """
    cells = max(1.0, n_points / per_cell)
    sides = sorted((e for e in extent if e > 0), reverse=True)
    for dims in range(len(sides), 0, -1):
        cell = (math.prod(sides[:dims]) / cells) ** (1 / dims)
        if dims == len(sides) or sides[dims] <= cell:
            return cell
    return 1.0  # every point coincides: one cell


def _shell(radius: int, device: torch.device) -> torch.Tensor:
    """Integer offsets [S, 3] at Chebyshev distance exactly `radius` (all of them within 1 at radius 1)."""
    span = torch.arange(-radius, radius + 1, device=device)
    offsets = torch.cartesian_prod(span, span, span)
    if radius <= 1:
        return offsets
    return offsets[offsets.abs().amax(dim=1) == radius]


def _searched_radius(u: torch.Tensor, cell: torch.Tensor, radius: int, grid: _Grid) -> torch.Tensor:
    """Distance (cell units) [A] from each query (u [A, 3], clamped cell [A, 3]) within which
    every point lies in a cell at Chebyshev distance ≤ `radius` of its cell; inf when those
    cells cover the grid.

    The points outside the searched cells lie in up to six slabs of the points' box; this is
    the distance to the nearest one.
    """
    shape = grid.shape_tensor
    outside = torch.maximum(-u, u - grid.upper).clamp_min(0)  # per-axis distance to the points' box
    total = (outside**2).sum(dim=1, keepdim=True)
    low = cell - radius  # the searched box is [low, high) per axis
    high = cell + radius + 1
    gap_low = torch.where(low > 0, torch.maximum(u - low, outside), torch.inf)
    gap_high = torch.where(high < shape, torch.maximum(high - u, outside), torch.inf)
    gaps = torch.cat((gap_low, gap_high), dim=1)
    rest = total - torch.cat((outside, outside), dim=1) ** 2
    return (rest + gaps**2).min(dim=1).values.sqrt()


@torch.no_grad()
def grid_nearest_neighbors(queries: torch.Tensor, points: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """nearest_neighbors on a sorted uniform grid (any device; the GPU path).

    Each query first searches the 27 cells around its own. One that this does not settle (its
    k-th distance may lie beyond them: a query in empty space) then, for k = 1, descends the
    octree of Morton blocks, keeping the blocks that may hold a point nearer than the best seen;
    for k > 1 it searches one ring of cells further each pass, until it holds k points and its
    k-th distance lies within the radius the rings cover. For k = 1 on CUDA the first pass and the
    descent are Triton kernels (`knn_kernel`); the descent is then a depth-first walk that starts
    from the nearest of one point per block of a coarse Morton level.
    """
    _check(queries, points, k)
    grid = _grid_of(points, k)
    u = grid.coordinates(queries)
    cell = torch.minimum(torch.floor(u).clamp_min(0).long(), grid.shape_tensor - 1)
    # queries sorted by cell read neighbouring memory
    query_order = torch.argsort(_Grid.keys(u, grid.shape))
    u, cell = u[query_order], cell[query_order]
    sorted_queries = queries[query_order]
    n = queries.shape[0]
    best_squared = torch.full((n, k), torch.inf, dtype=queries.dtype, device=queries.device)
    best_index = torch.zeros((n, k), dtype=torch.int64, device=queries.device)
    active = torch.arange(n, device=queries.device)
    radius = 1
    while active.numel():
        if radius == 1 and k == 1 and _kernel_available(queries):
            from physmorph.surface.knn_kernel import nearest_in_neighbouring_cells

            squared, index = nearest_in_neighbouring_cells(
                sorted_queries, cell, grid.points, grid.counts, grid.starts, grid.shape
            )
            best_squared[:, 0], best_index[:, 0] = squared, index
        else:
            offsets = _shell(radius, queries.device)
            offsets = offsets[(offsets.abs() < grid.shape_tensor).all(dim=1)]  # flat grids: only the cells they have
            chunk = max(1, _PAIR_BUDGET // max(1, offsets.shape[0]))
            for start in range(0, active.numel() if offsets.numel() else 0, chunk):
                _search_cells(
                    grid, sorted_queries, u, cell, active[start : start + chunk], offsets, best_squared, best_index
                )
        reach = _searched_radius(u[active], cell[active], radius, grid) * grid.cell - grid.slack
        kth = best_squared[active, k - 1]
        done = kth <= reach.clamp_min(0) ** 2
        active = active[~done]
        radius += 1
        if k == 1 and grid.morton_bits <= _MORTON_BITS and active.numel():
            levels = grid.levels()
            if _kernel_available(queries):
                from physmorph.surface.knn_kernel import nearest_by_traversal

                # the walk visits children in a fixed order: it needs a tight bound from the start
                _bound_by_representatives(grid, levels, sorted_queries, active, best_squared, best_index)
                squared, index = nearest_by_traversal(
                    sorted_queries[active],
                    u[active],
                    best_squared[active, 0],
                    best_index[active, 0],
                    grid.points,
                    grid.depth_first(),
                    grid.cell,
                    float(grid.slack),
                )
                best_squared[active, 0], best_index[active, 0] = squared, index
                break
            for start in range(0, active.numel(), _DESCENT_CHUNK):
                _descend(
                    grid, levels, sorted_queries, u, active[start : start + _DESCENT_CHUNK], best_squared, best_index
                )
            break
    distances = torch.empty_like(best_squared)
    indices = torch.empty_like(best_index)
    indices[query_order] = grid.order[best_index]
    distances[query_order] = (points[indices[query_order]] - sorted_queries[:, None, :]).norm(dim=-1)
    return distances, indices


def _grid_of(points: torch.Tensor, k: int) -> _Grid:
    """The grid of `points` for k neighbours: a recent one if this tensor was searched before and
    has not changed since (same object, same in-place version), else a new one."""
    for reference, version, neighbours, grid in _RECENT_GRIDS:
        if reference() is points and version == points._version and neighbours == k:
            return grid
    grid = _Grid(points, k)
    _RECENT_GRIDS.appendleft((weakref.ref(points), points._version, k, grid))
    return grid


def launch_kernels(like: torch.Tensor, searches: Sequence[tuple[int, int]] | None = None) -> None:
    """Launch, once on a few points of `like`'s dtype and device, the k = 1 kernels that searches of
    (queries, points) sizes `searches` take (None: every kernel), as a search does: what
    physmorph.mpm.fused.warmup records to compile them ahead of the first search; nothing where they
    would not run."""
    if not _kernel_available(like):
        return
    from physmorph.surface.knn_kernel import nearest_by_traversal, nearest_in_neighbouring_cells, nearest_of_all

    fits = None if searches is None else [_all_pairs_kernel_fits(*sizes, 1) for sizes in searches]
    all_pairs = fits is None or any(fits)
    by_grid = fits is None or any(not fit and not _few(*sizes) for fit, sizes in zip(fits, searches))
    points = torch.linspace(0.0, 1.0, 3 * 64, dtype=like.dtype, device=like.device).reshape(64, 3)
    if all_pairs:
        nearest_of_all(points, points)
    if not by_grid:
        return
    grid = _Grid(points, 1)
    nearest_in_neighbouring_cells(grid.points, grid.cells, grid.points, grid.counts, grid.starts, grid.shape)
    best_squared = torch.full((64,), torch.inf, dtype=like.dtype, device=like.device)
    best_index = torch.zeros(64, dtype=torch.int64, device=like.device)
    coordinates = grid.coordinates(grid.points)
    nearest_by_traversal(
        grid.points, coordinates, best_squared, best_index, grid.points, grid.depth_first(), grid.cell, 0.0
    )


def _kernel_available(queries: torch.Tensor) -> bool:
    """Whether the k = 1 passes run as Triton kernels (`knn_kernel`): CUDA tensors (or Triton's
    CPU interpreter, for tests) and Triton installed."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return (queries.is_cuda or interpreted) and importlib.util.find_spec("triton") is not None


def _bound_by_representatives(
    grid: _Grid,
    levels: list[_Level],
    queries: torch.Tensor,
    active: torch.Tensor,
    best_squared: torch.Tensor,
    best_index: torch.Tensor,
) -> None:
    """Lowers best_squared, best_index [Q, 1] of the active queries to their nearest among the
    middle points of the finest level's blocks that number at most _REPRESENTATIVES (real
    points, so the bound stays exact)."""
    level = next((level for level in levels if level.keys.numel() <= _REPRESENTATIVES), levels[-1])
    representatives = level.starts + level.counts // 2
    positions = grid.points[representatives]
    chunk = max(1, _ALL_PAIRS_BLOCK // positions.shape[0])
    for start in range(0, active.numel(), chunk):
        rows = active[start : start + chunk]
        # cdist may take the matrix-product route: pick with it, then measure the pick exactly
        nearest = torch.cdist(queries[rows], positions).argmin(dim=1)
        squared = ((positions[nearest] - queries[rows]) ** 2).sum(dim=-1)
        closer = squared < best_squared[rows, 0]
        best_squared[rows[closer], 0] = squared[closer]
        best_index[rows[closer], 0] = representatives[nearest[closer]]


def _depth_first_blocks(levels: list[_Level]) -> tuple[torch.Tensor, ...]:
    """The blocks of every level in depth-first order (each block before the blocks inside it,
    siblings in Morton order, the top level's blocks one after another), as (corners [N, 3],
    levels [N], starts [N], counts [N], skips [N]); a block's skip is the first block after
    everything inside it."""
    first_codes = torch.cat([level.keys << (3 * depth) for depth, level in enumerate(levels)])
    depths = torch.cat([torch.full_like(level.keys, depth) for depth, level in enumerate(levels)])
    keys = torch.cat([level.keys for level in levels])
    order = torch.sort(-depths, stable=True).indices
    order = order[torch.sort(first_codes[order], stable=True).indices]
    first_codes, depths, keys = first_codes[order], depths[order], keys[order]
    # (key + 1) << 3l, the first code after the block, has no room in 63 bits only for the last
    # block a code can name, after which nothing follows.
    last = ((keys + 1) >> (63 - 3 * depths)) != 0
    ends = torch.where(last, 0, (keys + 1) << (3 * depths))
    skips = torch.where(last, len(order), torch.searchsorted(first_codes, ends))
    corners = torch.cat([level.corners for level in levels])[order]
    starts = torch.cat([level.starts for level in levels])[order]
    counts = torch.cat([level.counts for level in levels])[order]
    return corners, depths, starts, counts, skips


def _descend(
    grid: _Grid,
    levels: list[_Level],
    queries: torch.Tensor,
    u: torch.Tensor,
    active: torch.Tensor,
    best_squared: torch.Tensor,
    best_index: torch.Tensor,
) -> None:
    """The nearest point (k = 1) of each active query, by descending the Morton blocks from the
    top level to the cells; writes best_squared, best_index [Q, 1] (sorted point indices).

    At each level the distance to each kept block's middle point bounds the nearest distance
    from above; a block whose box lies farther than that bound cannot hold the nearest point.
    """
    device = queries.device
    position, q_u = queries[active], u[active]
    bound = best_squared[active, 0].clone()
    top = levels[-1]
    owner = torch.arange(active.numel(), device=device).repeat_interleave(top.keys.numel())
    block = torch.arange(top.keys.numel(), device=device).repeat(active.numel())
    for depth in range(len(levels) - 1, -1, -1):
        level = levels[depth]
        lower = level.corners[block]
        gap = (lower - q_u[owner]).clamp_min(0) + (q_u[owner] - lower - (1 << depth)).clamp_min(0)
        reach = (gap**2).sum(dim=-1) * grid.cell**2
        middle = grid.points[level.starts[block] + level.counts[block] // 2]
        bound = bound.scatter_reduce(0, owner, ((middle - position[owner]) ** 2).sum(dim=-1), "amin")
        keep = reach.sqrt() <= bound[owner].sqrt() + grid.slack
        owner, block = owner[keep], block[keep]
        if owner.numel() > _CANDIDATE_BUDGET and active.numel() > 1:
            # many blocks equally near (points on a sphere around the queries, say): fewer queries at once
            half = active.numel() // 2
            for part in (active[:half], active[half:]):
                _descend(grid, levels, queries, u, part, best_squared, best_index)
            return
        if depth == 0:
            break
        # the (up to eight) occupied blocks one level down
        finer = levels[depth - 1]
        children = (level.keys[block][:, None] << 3 | torch.arange(8, device=device)).reshape(-1)
        found = torch.searchsorted(finer.keys, children).clamp_max(finer.keys.numel() - 1)
        exists = finer.keys[found] == children
        owner = owner.repeat_interleave(8)[exists]
        block = found[exists]
    cells = levels[0]
    counts = cells.counts[block]
    total = int(counts.sum())
    pair = torch.repeat_interleave(torch.arange(block.numel(), device=device), counts, output_size=total)
    first = torch.cumsum(counts, 0) - counts
    candidate = cells.starts[block][pair] + torch.arange(total, device=device) - first[pair]
    candidate_owner = owner[pair]
    squared = ((grid.points[candidate] - position[candidate_owner]) ** 2).sum(dim=-1)
    _merge_one(active, candidate_owner, candidate, squared, best_squared, best_index)


def _search_cells(
    grid: _Grid,
    queries: torch.Tensor,
    u: torch.Tensor,
    cell: torch.Tensor,
    active: torch.Tensor,
    offsets: torch.Tensor,
    best_squared: torch.Tensor,
    best_index: torch.Tensor,
) -> None:
    """Merges the points in the cells at `offsets` from each active query's cell into its
    best k (best_squared, best_index [Q, k], in place; indices into the grid's sorted points).

    queries [Q, 3] and their cell coordinates u [Q, 3] and clamped cells [Q, 3] are sorted by
    cell; `active` [A] indexes them.
    """
    cells = cell[active][:, None, :] + offsets[None]
    inside = ((cells >= 0) & (cells < grid.shape_tensor)).all(dim=-1)
    # cells farther than the current k-th neighbour cannot improve it
    position = u[active][:, None, :]
    gap = (cells - position).clamp_min(0) + (position - cells - 1).clamp_min(0)
    kth = best_squared[active, -1].sqrt() + grid.slack
    inside &= (gap**2).sum(dim=-1) * grid.cell**2 <= (kth**2)[:, None]
    shape = grid.shape
    keys = (cells[..., 0] * shape[1] + cells[..., 1]) * shape[2] + cells[..., 2]
    keys = torch.where(inside, keys, 0)
    counts = torch.where(inside, grid.counts[keys], 0)
    per_query = counts.sum(dim=1)
    total = int(per_query.sum())
    if total > _CANDIDATE_BUDGET and active.numel() > 1:
        half = active.numel() // 2
        for part in (active[:half], active[half:]):
            _search_cells(grid, queries, u, cell, part, offsets, best_squared, best_index)
        return
    if total == 0:
        return
    pair_query, pair_cell = counts.nonzero(as_tuple=True)  # grouped by query
    pair_counts = counts[pair_query, pair_cell]
    pair_starts = grid.starts[keys[pair_query, pair_cell]]
    pair = torch.repeat_interleave(
        torch.arange(pair_counts.numel(), device=queries.device), pair_counts, output_size=total
    )
    first = torch.cumsum(pair_counts, 0) - pair_counts
    candidate = pair_starts[pair] + torch.arange(total, device=queries.device) - first[pair]
    owner = pair_query[pair]  # local index into `active`
    squared = ((grid.points[candidate] - queries[active][owner]) ** 2).sum(dim=-1)
    k = best_squared.shape[1]
    if k == 1:
        _merge_one(active, owner, candidate, squared, best_squared, best_index)
    else:
        _merge_k(active, owner, candidate, squared, per_query, best_squared, best_index)


def _merge_one(active, owner, candidate, squared, best_squared, best_index) -> None:
    """k = 1: the nearest candidate by a scatter-min (ties: the smaller sorted index)."""
    old = best_squared[active, 0]
    new = old.scatter_reduce(0, owner, squared, reduce="amin", include_self=True)
    sentinel = torch.iinfo(torch.int64).max
    index = torch.where(new < old, sentinel, best_index[active, 0])
    hit = squared == new[owner]
    index = index.scatter_reduce(0, owner[hit], candidate[hit], reduce="amin", include_self=True)
    best_squared[active, 0] = new
    best_index[active, 0] = index


def _merge_k(active, owner, candidate, squared, per_query, best_squared, best_index) -> None:
    """k > 1: the k nearest of the previous best and the candidates, by a segmented sort."""
    k = best_squared.shape[1]
    n_active = active.numel()
    local = torch.arange(n_active, device=active.device)
    owner = torch.cat((local.repeat_interleave(k), owner))
    candidate = torch.cat((best_index[active].reshape(-1), candidate))
    squared = torch.cat((best_squared[active].reshape(-1), squared))
    order = torch.argsort(squared, stable=True)
    order = order[torch.argsort(owner[order], stable=True)]
    counts = per_query + k
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=active.device) - first[owner[order]]
    keep = order[rank < k]
    rows = active[owner[keep]]
    columns = rank[rank < k]
    best_squared[rows, columns] = squared[keep]
    best_index[rows, columns] = candidate[keep]
