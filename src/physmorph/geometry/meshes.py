"""Load triangle meshes from files, check that they enclose a volume, and place or rescale them."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from physmorph.errors import ConfigError, InputError

SUPPORTED_SUFFIXES = (".obj", ".ply", ".stl", ".off")

# Holes whose capping areas add up to at most this fraction of the surface area are closed
# implicitly by the generalised winding number during the fill (bunny.obj: 1.8%); larger holes
# make "inside" ill-defined (a hemisphere: 50%) and are an error unless allowed.
MAX_HOLE_FRACTION = 0.05
# A mesh thinner than this fraction of its longest side along some axis is flat: no volume to fill.
FLAT_EXTENT = 1e-6


class MeshError(InputError):
    """A mesh file or mesh is missing, unreadable, empty, open, or does not fit the grid."""


class MeshRepairWarning(UserWarning):
    """A mesh was repaired or will be closed implicitly; the result may differ from the file."""


@dataclass(frozen=True)
class Holes:
    """The open boundary of a triangle mesh, as directed edges grouped into closed loops.

    edges:      [B, 2] vertex indices, each directed as in the face that owns it
    loop_ids:   [B]    index of the loop each edge belongs to, in [0, L)
    perimeters: [L]    loop lengths, mesh units
    areas:      [L]    |vector area| of each loop (area of a flat cap), mesh units²
    centroids:  [L, 3] mean of each loop's edge start points (apex of a fan cap)
    """

    edges: np.ndarray
    loop_ids: np.ndarray
    perimeters: np.ndarray
    areas: np.ndarray
    centroids: np.ndarray

    @property
    def count(self) -> int:
        return len(self.perimeters)


def boundary_edges(faces: np.ndarray) -> np.ndarray:
    """Directed boundary edges [B, 2] of the triangle chain `faces` [F, 3].

    An undirected edge used k times as (a, b) and l times as (b, a) contributes |k − l| copies,
    directed the way of the majority. The result is empty exactly when the faces form a closed
    oriented surface (self-intersecting or non-manifold surfaces included).
    """
    faces = np.asarray(faces, dtype=np.int64)
    directed = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    low = directed.min(axis=1)
    high = directed.max(axis=1)
    sign = np.where(directed[:, 0] < directed[:, 1], 1, -1)
    stride = int(faces.max()) + 1 if faces.size else 1
    keys, inverse = np.unique(low * stride + high, return_inverse=True)
    net = np.bincount(inverse.ravel(), weights=sign, minlength=len(keys)).astype(np.int64)
    open_keys = np.nonzero(net)[0]
    multiplicity = np.abs(net[open_keys])
    low_open = np.repeat(keys[open_keys] // stride, multiplicity)
    high_open = np.repeat(keys[open_keys] % stride, multiplicity)
    forward = np.repeat(net[open_keys] > 0, multiplicity)
    return np.where(forward[:, None], np.stack([low_open, high_open], 1), np.stack([high_open, low_open], 1))


def find_holes(vertices: np.ndarray, faces: np.ndarray) -> Holes:
    """Group the boundary edges of a mesh (vertices [V, 3], faces [F, 3]) into loops."""
    vertices = np.asarray(vertices, dtype=np.float64)
    edges = boundary_edges(faces)
    if len(edges) == 0:
        empty = np.zeros(0)
        return Holes(edges, np.zeros(0, dtype=np.int64), empty, empty, np.zeros((0, 3)))
    n = len(vertices)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    _, loop_ids = np.unique(labels[edges[:, 0]], return_inverse=True)
    loop_ids = loop_ids.ravel()
    count = int(loop_ids.max()) + 1
    start, end = vertices[edges[:, 0]], vertices[edges[:, 1]]
    perimeters = np.bincount(loop_ids, weights=np.linalg.norm(end - start, axis=1), minlength=count)
    half_cross = 0.5 * np.cross(start, end)
    vector_areas = np.stack([np.bincount(loop_ids, weights=half_cross[:, k], minlength=count) for k in range(3)], 1)
    edges_per_loop = np.bincount(loop_ids, minlength=count)[:, None]
    centroids = (
        np.stack([np.bincount(loop_ids, weights=start[:, k], minlength=count) for k in range(3)], 1) / edges_per_loop
    )
    return Holes(edges, loop_ids, perimeters, np.linalg.norm(vector_areas, axis=1), centroids)


def load_mesh(path: str | Path, *, allow_open: bool = False) -> trimesh.Trimesh:
    """Read one closed triangle mesh (OBJ, PLY, STL or OFF) in its file's units.

    All parts of the file are merged into one mesh and coincident vertices are welded, so files
    exported with split vertices (per-face normals or UVs) come out watertight. Inconsistent or
    inverted face orientation is fixed so that normals point outward. Holes: triangle and quad
    holes are filled (with a MeshRepairWarning); remaining holes whose flat caps cover at most
    MAX_HOLE_FRACTION of the surface are kept (with a warning) because the fill's generalised
    winding number closes them smoothly; larger holes raise MeshError unless `allow_open`.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise MeshError(f"mesh file '{path}' does not exist; check the path and the file name")
    if not path.is_file():
        raise MeshError(f"mesh path '{path}' is not a file; give the path of a mesh file")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise MeshError(
            f"mesh file '{path}' has unsupported format '{path.suffix}'; convert it to one of "
            f"{', '.join(SUPPORTED_SUFFIXES)} (for instance by exporting from Blender)"
        )
    try:
        # unprocessed first: processing would silently drop non-finite vertices and open the mesh
        mesh = trimesh.load(path, force="mesh", process=False, skip_materials=True)
    except Exception as error:
        raise MeshError(
            f"could not read mesh file '{path}' ({type(error).__name__}: {_one_line(error)}); check that it "
            f"is a valid {suffix} file, e.g. by opening it in Blender or MeshLab"
        ) from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise MeshError(
            f"mesh file '{path}' contains no triangles; export the surface as a triangle mesh "
            "(points or lines alone cannot be filled with material)"
        )
    if not np.isfinite(mesh.vertices).all():
        bad = int((~np.isfinite(mesh.vertices).all(axis=1)).sum())
        raise MeshError(
            f"mesh file '{path}' has {bad} vertices with non-finite coordinates (NaN or inf); repair the file"
        )
    extents = mesh.vertices.max(axis=0) - mesh.vertices.min(axis=0)
    if not extents.min() > FLAT_EXTENT * extents.max():
        raise MeshError(
            f"mesh file '{path}' is flat or degenerate (extent {_fmt(extents)} in file units), so it encloses "
            "no volume; export a closed surface around a solid"
        )
    # degenerate triangles make trimesh divide by zero in its face normals (it marks them itself)
    with np.errstate(divide="ignore", invalid="ignore"):
        mesh.process(validate=False)
    mesh.merge_vertices(merge_tex=True, merge_norm=True)
    _orient_outward(mesh)
    _check_closed(mesh, path.name, allow_open)
    return mesh


def _orient_outward(mesh: trimesh.Trimesh) -> None:
    """Make face winding consistent and the enclosed (signed) volume positive, in place."""
    if not mesh.is_winding_consistent:
        trimesh.repair.fix_winding(mesh)
    if mesh.volume < 0:
        mesh.invert()


def _check_closed(mesh: trimesh.Trimesh, name: str, allow_open: bool) -> None:
    """Apply the hole policy of `load_mesh` to `mesh` (repairing it in place)."""
    holes = find_holes(mesh.vertices, mesh.faces)
    if holes.count == 0:
        return
    trimesh.repair.fill_holes(mesh)
    remaining = find_holes(mesh.vertices, mesh.faces)
    if remaining.count == 0:
        warnings.warn(
            f"mesh '{name}' had {holes.count} small holes ({len(holes.edges)} boundary edges); "
            "they were filled with new triangles",
            MeshRepairWarning,
            stacklevel=3,
        )
        return
    fraction = remaining.areas.sum() / max(mesh.area, np.finfo(float).tiny)
    largest = int(np.argmax(remaining.areas))
    description = (
        f"{len(remaining.edges)} boundary edges around {remaining.count} holes, the largest with "
        f"perimeter {remaining.perimeters[largest]:.3g} and area {remaining.areas[largest]:.3g} "
        f"(holes together {fraction:.1%} of the surface area)"
    )
    if fraction <= MAX_HOLE_FRACTION or allow_open:
        warnings.warn(
            f"mesh '{name}' is open ({description}); the generalised winding number closes "
            "the holes when the mesh is filled with material points",
            MeshRepairWarning,
            stacklevel=3,
        )
        return
    raise MeshError(
        f"mesh '{name}' is open ({description}), so its inside is not well defined; close it "
        "(e.g. in Blender: select the boundary, Face > Fill) or set allow_open: true in its "
        "shape config to let the generalised winding number decide"
    )


def recenter(mesh: trimesh.Trimesh, center: Sequence[float] = (0.0, 0.0, 0.0)) -> trimesh.Trimesh:
    """A copy of `mesh` translated so that its bounding-box centre lies at `center` [3]."""
    moved = mesh.copy()
    moved.apply_translation(np.asarray(center, dtype=np.float64) - mesh.bounds.mean(axis=0))
    return moved


def fit_to_box(
    mesh: trimesh.Trimesh,
    box_min: Sequence[float],
    box_max: Sequence[float],
    margin: float = 0.0,
) -> trimesh.Trimesh:
    """A copy of `mesh` uniformly scaled and moved to fill the box shrunk by `margin` on each side.

    box_min, box_max: [3] corners in grid units; margin: grid units kept free on every side
    (for an MPM grid, at least 3·dx). The bounding-box centre lands on the box centre and the
    tightest axis touches the shrunk box.
    """
    low = np.asarray(box_min, dtype=np.float64) + margin
    high = np.asarray(box_max, dtype=np.float64) - margin
    if not (high > low).all():
        raise ConfigError(
            f"fit_to_box: the box [{_fmt(box_min)}, {_fmt(box_max)}] less a margin of {margin:g} "
            "on each side is empty; use a smaller margin or a larger box"
        )
    extents = mesh.extents
    if not (extents > 0).any():
        raise MeshError("fit_to_box: the mesh has zero size and cannot be scaled")
    with np.errstate(divide="ignore"):
        factor = np.min(np.where(extents > 0, (high - low) / extents, np.inf))
    fitted = mesh.copy()
    fitted.apply_scale(factor)
    return recenter(fitted, (low + high) / 2)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:200]


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"
