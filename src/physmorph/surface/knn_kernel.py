"""The nearest-neighbour search's k = 1 kernels in Triton: the grid's two passes (the 27 cells around
each query, then a depth-first walk of the Morton blocks) and a comparison of every pair.

Imported only when a CUDA search runs (or under TRITON_INTERPRET=1 in tests): importing
`physmorph.surface.knn` never needs Triton. The PyTorch passes they replace launch tens of
kernels per pass or level and sync with the host for their ragged candidate lists; here each
query keeps its best candidate in registers while it reads runs of sorted points.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 128  # queries per program of the first pass
_TRAVERSAL_BLOCK = 32  # queries per program of the walk (they diverge: fewer lanes wait on the slowest)
_PAIRS_QUERIES = 32  # queries per program of the all-pairs kernel (11k queries: 349 programs)
_PAIRS_POINTS = 64  # points it compares them with at a time


@triton.jit
def _load_rows(values, rows, mask, other):
    """The three columns of rows `rows` of a [R, 3] tensor (`other` where `mask` is false)."""
    x = tl.load(values + 3 * rows, mask=mask, other=other)
    y = tl.load(values + 3 * rows + 1, mask=mask, other=other)
    z = tl.load(values + 3 * rows + 2, mask=mask, other=other)
    return x, y, z


@triton.jit
def _nearest_in_runs(points, start, count, qx, qy, qz, best, best_at):
    """Each lane's best (squared distance, sorted index) after also reading its run of `count`
    sorted points from `start` (the smaller index among equal distances)."""
    for j in range(0, tl.max(count, 0)):
        valid = j < count
        point = start + j
        px, py, pz = _load_rows(points, point, valid, 0.0)
        dx, dy, dz = px - qx, py - qy, pz - qz
        squared = dx * dx + dy * dy + dz * dz
        better = valid & ((squared < best) | ((squared == best) & (point < best_at)))
        best = tl.where(better, squared, best)
        best_at = tl.where(better, point, best_at)
    return best, best_at


# The sizes are not specialised on (Triton would compile a variant per size class: a cold start pays
# each), and the 27 cells are a loop, not unrolled (27 copies of the body took 5.6 s to compile).
@triton.jit(do_not_specialize=["query_count", "shape_x", "shape_y", "shape_z"])
def _nearest_in_neighbouring_cells(
    queries,  # [Q, 3] positions, sorted by cell
    query_cells,  # [Q, 3] int64 clamped cells of the queries
    points,  # [P, 3] the grid's points, sorted by cell
    counts,  # [C] points per cell
    starts,  # [C] first sorted point of each cell
    best_squared,  # [Q] out: squared distance of the nearest point (inf if none)
    best_index,  # [Q] out: its sorted index (smallest among equal distances)
    query_count,
    shape_x,
    shape_y,
    shape_z,
    BLOCK: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = rows < query_count
    qx, qy, qz = _load_rows(queries, rows, live, 0.0)
    cx, cy, cz = _load_rows(query_cells, rows, live, 0)
    best = tl.zeros([BLOCK], dtype=qx.dtype) + float("inf")
    best_at = tl.zeros([BLOCK], dtype=tl.int64)
    for offset in tl.range(0, 27):
        x = cx + (offset // 9 - 1)
        y = cy + ((offset // 3) % 3 - 1)
        z = cz + (offset % 3 - 1)
        inside = live & (x >= 0) & (x < shape_x) & (y >= 0) & (y < shape_y) & (z >= 0) & (z < shape_z)
        key = (x * shape_y + y) * shape_z + z
        count = tl.load(counts + key, mask=inside, other=0)
        start = tl.load(starts + key, mask=inside, other=0)
        best, best_at = _nearest_in_runs(points, start, count, qx, qy, qz, best, best_at)
    tl.store(best_squared + rows, best, mask=live)
    tl.store(best_index + rows, best_at, mask=live)


def nearest_in_neighbouring_cells(
    queries: torch.Tensor,
    query_cells: torch.Tensor,
    points: torch.Tensor,
    counts: torch.Tensor,
    starts: torch.Tensor,
    shape: tuple[int, int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest sorted point among the 27 cells around each query's cell.

    queries [Q, 3] and points [P, 3] (one dtype), query_cells [Q, 3] (clamped to the grid),
    counts and starts [C] of the dense cell table of `shape`. Returns squared distances [Q]
    (inf where those cells are empty) and sorted point indices [Q] int64.
    """
    count = queries.shape[0]
    best_squared = torch.empty(count, dtype=queries.dtype, device=queries.device)
    best_index = torch.empty(count, dtype=torch.int64, device=queries.device)
    if count:
        _nearest_in_neighbouring_cells[(triton.cdiv(count, _BLOCK),)](
            queries.contiguous(),
            query_cells.to(torch.int64).contiguous(),
            points.contiguous(),
            counts.contiguous(),
            starts.contiguous(),
            best_squared,
            best_index,
            count,
            *shape,
            BLOCK=_BLOCK,
        )
    return best_squared, best_index


@triton.jit(do_not_specialize=["query_count", "node_count"])
def _nearest_by_traversal(
    queries,  # [Q, 3] positions of the open queries
    query_cells,  # [Q, 3] their positions in cell units (not clamped)
    best_squared,  # [Q] in: a bound (a real point's squared distance, or inf); out: the nearest
    best_index,  # [Q] in/out: the sorted index of that point
    points,  # [P, 3] the grid's points, sorted
    node_corners,  # [N, 3] int64 lowest cell of each block, blocks in depth-first order
    node_levels,  # [N] int64 level l (the block spans 2^l cells per axis; 0: a cell)
    node_starts,  # [N] first sorted point of the block
    node_counts,  # [N] its number of points
    node_skips,  # [N] the next block after this one's subtree, in depth-first order
    query_count,
    node_count,
    cell,
    slack,
    BLOCK: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = rows < query_count
    qx, qy, qz = _load_rows(queries, rows, live, 0.0)
    ux, uy, uz = _load_rows(query_cells, rows, live, 0.0)
    best = tl.load(best_squared + rows, mask=live, other=0.0)
    best_at = tl.load(best_index + rows, mask=live, other=0)
    node = tl.where(live, 0, node_count).to(tl.int64)
    while tl.sum((node < node_count).to(tl.int32), 0) > 0:
        open_lane = node < node_count
        at = tl.where(open_lane, node, 0)
        level = tl.load(node_levels + at, mask=open_lane, other=0)
        size = (1 << level).to(qx.dtype)
        lx, ly, lz = _load_rows(node_corners, at, open_lane, 0)
        lx, ly, lz = lx.to(qx.dtype), ly.to(qx.dtype), lz.to(qx.dtype)
        gx = tl.maximum(lx - ux, 0.0) + tl.maximum(ux - lx - size, 0.0)
        gy = tl.maximum(ly - uy, 0.0) + tl.maximum(uy - ly - size, 0.0)
        gz = tl.maximum(lz - uz, 0.0) + tl.maximum(uz - lz - size, 0.0)
        reach = tl.sqrt(gx * gx + gy * gy + gz * gz) * cell
        visit = open_lane & (reach <= tl.sqrt(best) + slack)
        leaf = visit & (level == 0)
        count = tl.load(node_counts + at, mask=leaf, other=0)
        start = tl.load(node_starts + at, mask=leaf, other=0)
        best, best_at = _nearest_in_runs(points, start, count, qx, qy, qz, best, best_at)
        # into the first child when an inner block may hold a nearer point, else past the subtree
        skip = tl.load(node_skips + at, mask=open_lane, other=node_count)
        node = tl.where(visit & (level > 0), node + 1, tl.where(open_lane, skip, node))
    tl.store(best_squared + rows, best, mask=live)
    tl.store(best_index + rows, best_at, mask=live)


def nearest_by_traversal(
    queries: torch.Tensor,
    query_cells: torch.Tensor,
    best_squared: torch.Tensor,
    best_index: torch.Tensor,
    points: torch.Tensor,
    tree: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    cell: float,
    slack: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest sorted point of each query by a stackless depth-first walk of the Morton blocks.

    queries [Q, 3], their cell coordinates query_cells [Q, 3]; best_squared [Q] and best_index
    [Q] hold a starting bound (a real point's squared distance and index, or inf); tree =
    (corners [N, 3], levels [N], starts [N], counts [N], skips [N]) of the blocks in depth-first
    order (`knn._depth_first_blocks`). A block is entered only when its box may hold a point
    nearer than the best so far (plus `slack`, world units). Returns the updated copies.
    """
    count = queries.shape[0]
    best_squared = best_squared.clone().contiguous()
    best_index = best_index.clone().contiguous()
    corners, levels, starts, counts, skips = (t.contiguous() for t in tree)
    if count:
        _nearest_by_traversal[(triton.cdiv(count, _TRAVERSAL_BLOCK),)](
            queries.contiguous(),
            query_cells.contiguous(),
            best_squared,
            best_index,
            points.contiguous(),
            corners,
            levels,
            starts,
            counts,
            skips,
            count,
            levels.shape[0],
            float(cell),
            float(slack),
            BLOCK=_TRAVERSAL_BLOCK,
        )
    return best_squared, best_index


@triton.jit(do_not_specialize=["query_count", "point_count"])
def _nearest_of_all(
    queries,  # [Q, 3]
    points,  # [P, 3]
    best_squared,  # [Q] out: squared distance of the nearest point
    best_index,  # [Q] out: its index (smallest among equal distances)
    query_count,
    point_count,
    QUERIES: tl.constexpr,
    POINTS: tl.constexpr,
):
    rows = tl.program_id(0) * QUERIES + tl.arange(0, QUERIES)
    live = rows < query_count
    qx, qy, qz = _load_rows(queries, rows, live, 0.0)
    # each (query, column) slot keeps the nearest of the points it has seen, reduced once at the
    # end (a reduction per tile of points cost more than the distances)
    best = tl.zeros([QUERIES, POINTS], dtype=qx.dtype) + float("inf")
    best_at = tl.zeros([QUERIES, POINTS], dtype=tl.int32)
    for start in tl.range(0, point_count, POINTS):
        columns = start + tl.arange(0, POINTS)
        valid = columns < point_count
        px, py, pz = _load_rows(points, columns, valid, float("inf"))
        dx = px[None, :] - qx[:, None]
        dy = py[None, :] - qy[:, None]
        dz = pz[None, :] - qz[:, None]
        squared = dx * dx + dy * dy + dz * dz
        # strictly nearer: a slot keeps its earlier (smaller) index among equal distances
        better = squared < best
        best = tl.where(better, squared, best)
        best_at = tl.where(better, columns[None, :], best_at)
    nearest = tl.min(best, axis=1)
    tied = tl.where(best == nearest[:, None], best_at, point_count)
    tl.store(best_squared + rows, nearest, mask=live)
    tl.store(best_index + rows, tl.min(tied, axis=1).to(tl.int64), mask=live)


def nearest_of_all(queries: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest of `points` [P, 3] (P ≥ 1) to each of `queries` [Q, 3] (one dtype) by comparing every
    pair: squared distances [Q] and indices [Q] int64 (the smallest among equal distances). No
    host synchronisation, so a CUDA graph can capture it."""
    count = queries.shape[0]
    best_squared = torch.empty(count, dtype=queries.dtype, device=queries.device)
    best_index = torch.empty(count, dtype=torch.int64, device=queries.device)
    if count:
        _nearest_of_all[(triton.cdiv(count, _PAIRS_QUERIES),)](
            queries.contiguous(),
            points.contiguous(),
            best_squared,
            best_index,
            count,
            points.shape[0],
            QUERIES=_PAIRS_QUERIES,
            POINTS=_PAIRS_POINTS,
        )
    return best_squared, best_index
