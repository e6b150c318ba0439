"""Fill a mesh with material points: lattice points its generalised winding number calls inside."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from physmorph.errors import ConfigError
from physmorph.geometry.meshes import MeshError, find_holes

# Bounds the temporary arrays of the vectorised loops to about this many (point, triangle) pairs.
_CHUNK_PAIRS = 1 << 20


@dataclass
class MaterialPoints:
    """N material points of one body at rest.

    positions: [N, 3] grid units
    volumes:   [N]    rest volumes, grid units³
    masses:    [N]    mass units (density · volume)
    spacing:   lattice spacing h = dx / points_per_cell_cuberoot, grid units
    """

    positions: torch.Tensor
    volumes: torch.Tensor
    masses: torch.Tensor
    spacing: float

    @property
    def count(self) -> int:
        return int(self.positions.shape[0])


def fill_mesh(
    mesh: trimesh.Trimesh,
    *,
    dx: float,
    points_per_cell_cuberoot: int,
    density: float,
    box_min: Sequence[float],
    box_max: Sequence[float],
    margin_cells: float = 3.0,
    name: str = "mesh",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> MaterialPoints:
    """Material points filling `mesh` (grid units), as the reference does it (SPEC §2).

    The lattice has spacing h = dx / points_per_cell_cuberoot, starts at the mesh's bounding-box
    minimum corner and covers its box; a point is kept when the generalised winding number w of
    the mesh there has |w| > 1/2 (inside for either face orientation; small holes are bridged).
    Each point gets volume h³ and mass density · h³. The mesh must lie inside the grid box
    [box_min, box_max] ([3] each, grid units) with `margin_cells` cells (of size dx) to spare on
    every side, room that the MPM kernel stencil (2 cells) and the walls need.
    `name` labels the mesh in error messages. Points are ordered by lattice index (x slowest).
    """
    if not dx > 0:
        raise ConfigError(f"fill_mesh: dx must be positive, got {dx!r}")
    if isinstance(points_per_cell_cuberoot, bool) or not isinstance(points_per_cell_cuberoot, int):
        raise ConfigError(f"fill_mesh: points_per_cell_cuberoot must be an integer, got {points_per_cell_cuberoot!r}")
    if points_per_cell_cuberoot < 1:
        raise ConfigError(f"fill_mesh: points_per_cell_cuberoot must be at least 1, got {points_per_cell_cuberoot}")
    if not density > 0:
        raise ConfigError(f"fill_mesh: density must be positive, got {density!r}")
    if not margin_cells >= 0:
        raise ConfigError(f"fill_mesh: margin_cells must be non-negative, got {margin_cells!r}")
    grid_low = np.asarray(box_min, dtype=np.float64)
    grid_high = np.asarray(box_max, dtype=np.float64)
    if grid_low.shape != (3,) or grid_high.shape != (3,) or not (grid_high > grid_low).all():
        raise ConfigError(
            f"fill_mesh: box_min {tuple(box_min)} and box_max {tuple(box_max)} must be 3 numbers "
            "each with box_min < box_max on every axis"
        )
    if len(mesh.faces) == 0:
        raise MeshError(f"mesh '{name}' has no triangles; give a closed triangle mesh")

    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    margin = margin_cells * dx
    inner_low, inner_high = grid_low + margin, grid_high - margin
    if (low < inner_low).any() or (high > inner_high).any():
        raise MeshError(
            f"mesh '{name}' spans {_fmt(low)} to {_fmt(high)} but must lie within "
            f"{_fmt(inner_low)} to {_fmt(inner_high)}: the grid box [{_fmt(grid_low)}, "
            f"{_fmt(grid_high)}] less a margin of {margin_cells:g} cells ({margin:g} grid units) "
            "that the MPM kernel and the walls need; scale or move the mesh (shape config keys "
            "scale, size, recenter, center) or enlarge the grid"
        )

    spacing = dx / points_per_cell_cuberoot
    counts = np.floor((high - low) / spacing + 1e-9).astype(np.int64) + 1
    index = np.argwhere(lattice_inside(vertices, faces, low, spacing, counts))
    if len(index) == 0:
        raise MeshError(
            f"mesh '{name}' produced no material points at lattice spacing {spacing:g} "
            f"(extent {_fmt(high - low)} grid units): it is thinner than the spacing; increase "
            "points_per_cell_cuberoot or scale the mesh up"
        )
    positions = low + spacing * index
    cell_volume = spacing**3
    count = len(index)
    return MaterialPoints(
        positions=torch.as_tensor(positions, dtype=dtype, device=device),
        volumes=torch.full((count,), cell_volume, dtype=dtype, device=device),
        masses=torch.full((count,), density * cell_volume, dtype=dtype, device=device),
        spacing=spacing,
    )


def lattice_inside(
    vertices: np.ndarray,
    faces: np.ndarray,
    origin: Sequence[float],
    spacing: float,
    counts: Sequence[int],
) -> np.ndarray:
    """Where the generalised winding number w of a triangle mesh has |w| > 1/2, on a lattice.

    vertices [V, 3], faces [F, 3]; the lattice points are origin + spacing · (i, j, k) with
    0 ≤ i, j, k < counts. Returns bool [nx, ny, nz].
    Each hole of an open mesh is closed by a fan cap C from its centroid. The capped surface
    M ∪ C is closed, so its winding number is an integer, counted exactly by +z ray crossings
    in O(F + points) time, and w_M = w_{M∪C} − w_C. A cap's solid angle is at most
    area / (distance − radius)², so |w_C| < 1/2 away from the caps, where |w_M| > 1/2 exactly
    when w_{M∪C} ≠ 0; w_C is summed exactly (solid angles) only at the points near the caps.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    origin = np.asarray(origin, dtype=np.float64)
    counts = tuple(int(n) for n in counts)
    holes = find_holes(vertices, faces)
    cap_apexes = len(vertices) + holes.loop_ids
    caps = np.stack([holes.edges[:, 1], holes.edges[:, 0], cap_apexes], axis=1)
    all_vertices = np.concatenate([vertices, holes.centroids])
    closed_winding = _ray_crossing_counts(all_vertices[np.concatenate([faces, caps])], origin, spacing, counts)
    if len(caps) == 0:
        return closed_winding != 0

    cap_triangles = all_vertices[caps]
    cap_areas = 0.5 * np.linalg.norm(
        np.cross(cap_triangles[:, 1] - cap_triangles[:, 0], cap_triangles[:, 2] - cap_triangles[:, 0]),
        axis=1,
    )
    loop_areas = np.bincount(holes.loop_ids, weights=cap_areas, minlength=holes.count)
    loop_radii = np.zeros(holes.count)
    np.maximum.at(
        loop_radii,
        holes.loop_ids,
        np.linalg.norm(vertices[holes.edges[:, 0]] - holes.centroids[holes.loop_ids], axis=1),
    )
    axes = [origin[k] + spacing * np.arange(counts[k]) for k in range(3)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    bound = np.zeros(len(points))
    step = max(1, _CHUNK_PAIRS // holes.count)
    for start in range(0, len(points), step):
        distance = np.linalg.norm(points[start : start + step, None, :] - holes.centroids[None], axis=-1)
        clearance = np.maximum(distance - loop_radii, 0.0)
        with np.errstate(divide="ignore"):
            bound[start : start + step] = (loop_areas / (4 * np.pi * clearance**2)).sum(axis=1)
    # Margin below 1/2 so that round-off in the bound cannot misclassify a point.
    near = np.nonzero(bound >= 0.45)[0]
    cap_winding = solid_angle_winding_numbers(cap_triangles, points[near])
    winding = closed_winding.reshape(-1).astype(np.float64)
    winding[near] -= cap_winding
    return (np.abs(winding) > 0.5).reshape(counts)


def solid_angle_winding_numbers(triangles: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Generalised winding number of triangles [F, 3, 3] at points [P, 3]: Σ solid angles / 4π.

    Direct O(P·F) sum of each triangle's solid angle (Van Oosterom–Strackee formula), chunked
    over points; returns [P] float64.
    """
    triangles = np.asarray(triangles, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    result = np.zeros(len(points))
    if len(triangles) == 0:
        return result
    corner = [[np.ascontiguousarray(triangles[:, c, k]) for k in range(3)] for c in range(3)]
    step = max(1, _CHUNK_PAIRS // len(triangles))
    for start in range(0, len(points), step):
        chunk = points[start : start + step]
        ax, ay, az, bx, by, bz, cx, cy, cz = (
            corner[c][k][None, :] - chunk[:, k, None] for c in range(3) for k in range(3)
        )
        la = np.sqrt(ax * ax + ay * ay + az * az)
        lb = np.sqrt(bx * bx + by * by + bz * bz)
        lc = np.sqrt(cx * cx + cy * cy + cz * cz)
        triple = ax * (by * cz - bz * cy) + ay * (bz * cx - bx * cz) + az * (bx * cy - by * cx)
        denominator = (
            la * lb * lc
            + (ax * bx + ay * by + az * bz) * lc
            + (bx * cx + by * cy + bz * cz) * la
            + (cx * ax + cy * ay + cz * az) * lb
        )
        result[start : start + step] = np.arctan2(triple, denominator).sum(axis=1) / (2 * np.pi)
    return result


def _ray_crossing_counts(
    triangles: np.ndarray, origin: np.ndarray, spacing: float, counts: tuple[int, int, int]
) -> np.ndarray:
    """Signed count of triangles [F, 3, 3] crossed by the +z ray from each lattice point.

    A crossing counts +1 where the triangle runs counter-clockwise seen from +z (outward normal
    up) and −1 otherwise; for a closed oriented surface the sum is its winding number.
    Lattice columns that pass exactly through an edge or vertex are decided as if shifted by an
    infinitesimal (ε, ε²) in (x, y), evaluated identically for both triangles of each edge,
    so every crossing is counted exactly once. Returns [nx, ny, nz] int64.
    """
    nx, ny, nz = counts
    xs = origin[0] + spacing * np.arange(nx)
    ys = origin[1] + spacing * np.arange(ny)
    zs = origin[2] + spacing * np.arange(nz)
    planar = triangles[:, :, :2]
    i_first = np.clip(np.floor((planar[:, :, 0].min(1) - origin[0]) / spacing), 0, nx)
    i_last = np.clip(np.ceil((planar[:, :, 0].max(1) - origin[0]) / spacing), -1, nx - 1)
    j_first = np.clip(np.floor((planar[:, :, 1].min(1) - origin[1]) / spacing), 0, ny)
    j_last = np.clip(np.ceil((planar[:, :, 1].max(1) - origin[1]) / spacing), -1, ny - 1)
    i_count = np.maximum(i_last - i_first + 1, 0).astype(np.int64)
    j_count = np.maximum(j_last - j_first + 1, 0).astype(np.int64)
    pairs = i_count * j_count

    # Difference array over z: a crossing at height z adds its sign to every point below it.
    steps = np.zeros(nx * ny * (nz + 1), dtype=np.int64)
    cumulative = np.cumsum(pairs)
    total = int(cumulative[-1]) if len(pairs) else 0
    chunk_starts = np.searchsorted(cumulative, np.arange(_CHUNK_PAIRS, total, _CHUNK_PAIRS))
    for triangle_range in np.split(np.arange(len(pairs)), chunk_starts):
        chunk = triangle_range[pairs[triangle_range] > 0]
        if len(chunk) == 0:
            continue
        owner = np.repeat(chunk, pairs[chunk])
        offsets = np.cumsum(pairs[chunk]) - pairs[chunk]
        local = np.arange(len(owner)) - np.repeat(offsets, pairs[chunk])
        column_i = i_first[owner].astype(np.int64) + local // j_count[owner]
        column_j = j_first[owner].astype(np.int64) + local % j_count[owner]
        point = np.stack([xs[column_i], ys[column_j]], axis=1)
        corners = triangles[owner]
        sides = np.stack([_side(corners[:, k, :2], corners[:, (k + 1) % 3, :2], point) for k in range(3)], 1)
        covered = (sides[:, 0] != 0) & (sides[:, 0] == sides[:, 1]) & (sides[:, 1] == sides[:, 2])
        z = _plane_height(corners[covered], point[covered])
        below = np.searchsorted(zs, z, side="left")
        column = column_i[covered] * ny + column_j[covered]
        sign = sides[covered, 0]
        np.add.at(steps, column * (nz + 1), sign)
        np.add.at(steps, column * (nz + 1) + below, -sign)
    return np.cumsum(steps.reshape(nx, ny, nz + 1), axis=2)[:, :, :nz]


def _side(start: np.ndarray, end: np.ndarray, point: np.ndarray) -> np.ndarray:
    """+1 where `point` lies left of the 2D edge start→end, −1 right, 0 for a degenerate edge.

    start, end, point: [P, 2]. The determinant is evaluated with the edge's endpoints in
    lexicographic order, so the two triangles sharing an edge get exactly opposite answers;
    a point exactly on the line is shifted by (ε, ε²).
    """
    swap = (end[:, 0] < start[:, 0]) | ((end[:, 0] == start[:, 0]) & (end[:, 1] < start[:, 1]))
    first = np.where(swap[:, None], end, start)
    second = np.where(swap[:, None], start, end)
    edge = second - first
    rel = point - first
    determinant = edge[:, 0] * rel[:, 1] - edge[:, 1] * rel[:, 0]
    # d/dε of the determinant at point + (ε, ε²): −edge_y, or +edge_x when the edge is horizontal.
    tie = np.where(edge[:, 1] != 0, -np.sign(edge[:, 1]), np.sign(edge[:, 0]))
    side = np.where(determinant != 0, np.sign(determinant), tie).astype(np.int64)
    return np.where(swap, -side, side)


def _plane_height(corners: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Height z [P] of the triangles' planes (corners [P, 3, 3]) above the 2D points [P, 2]."""
    origin = corners[:, 0]
    u = corners[:, 1] - origin
    v = corners[:, 2] - origin
    rel = point - origin[:, :2]
    area = u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = (rel[:, 0] * v[:, 1] - rel[:, 1] * v[:, 0]) / area
        gamma = (u[:, 0] * rel[:, 1] - u[:, 1] * rel[:, 0]) / area
    # Covered triangles have nonzero projected area; the guard only protects against round-off.
    return np.where(area != 0, origin[:, 2] + beta * u[:, 2] + gamma * v[:, 2], -np.inf)


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"
