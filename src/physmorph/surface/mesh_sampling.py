"""A body's triangle mesh as the surface to place surfels on: even area sampling with smooth normals."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from physmorph.errors import InputError
from physmorph.surface.knn import morton_codes, nearest_neighbors

# The fractional part of the golden ratio: the second coordinate of the k samples one triangle
# gets, paired with the evenly spaced first, forms a rank-1 (Fibonacci) lattice in the triangle.
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
# Triangles are visited in Morton order of their centroids on cells of this many mean sample
# spacings, so that consecutive samples of the systematic draw are neighbours on the surface.
_ORDER_CELL_SPACINGS = 1.0
# Thickness rays start this many mean triangle sizes inside the surface (clear of rounding).
_RAY_START = 1e-3
# Neighbours searched for the far side of a thin part without Embree: they reach about 2.3 mean
# spacings (2.3 σ_t at coverage 1), beyond the 1.5 σ_t thickness below which inset layers swap.
_THICKNESS_NEIGHBOURS = 16
# Morton codes of int64 hold 21 bits per axis.
_MORTON_CELLS = (1 << 21) - 1


@dataclass
class MeshSurface:
    """A closed triangle mesh with smooth normals, in world (grid) units, on the CPU in float64.

    vertices:       [V, 3] positions
    faces:          [T, 3] int64 vertex indices, counter-clockwise seen from outside
    vertex_normals: [V, 3] unit normals, as trimesh gives them (each face's normal weighted by
                    its corner angle there): the normal `render.raycast_mesh` interpolates
    mesh:           the trimesh they come from (its ray intersector measures the thickness)
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    vertex_normals: torch.Tensor
    mesh: trimesh.Trimesh

    @staticmethod
    def from_trimesh(mesh: trimesh.Trimesh, name: str = "mesh") -> MeshSurface:
        """The surface of `mesh`; InputError (naming `name`) unless it has finite vertices and
        at least one triangle of positive area."""
        if not isinstance(mesh, trimesh.Trimesh):
            raise InputError(f"the {name} must be a trimesh.Trimesh, got {type(mesh).__name__}")
        faces = np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)
        vertices = np.asarray(mesh.vertices, dtype=np.float64).reshape(-1, 3)
        if len(faces) == 0:
            raise InputError(f"the {name} has no faces; pass the body's closed triangle mesh or no mesh")
        if faces.min() < 0 or faces.max() >= len(vertices):
            raise InputError(
                f"the {name} has faces that index vertices outside 0..{len(vertices) - 1}; repair or reload it"
            )
        if not np.isfinite(vertices).all():
            raise InputError(f"the {name} has non-finite vertices; repair or reload it")
        surface = MeshSurface(
            torch.from_numpy(vertices),
            torch.from_numpy(faces),
            torch.from_numpy(np.array(mesh.vertex_normals, dtype=np.float64)),
            mesh,
        )
        if not surface.area() > 0:
            raise InputError(f"the {name} has zero area (all its triangles are degenerate); repair or reload it")
        return surface

    def face_areas(self) -> torch.Tensor:
        """[T] triangle areas, world units²."""
        a, b, c = self.vertices[self.faces].unbind(1)
        return 0.5 * torch.linalg.cross(b - a, c - a).norm(dim=1)

    def area(self) -> float:
        """The mesh's total area, world units²."""
        return float(self.face_areas().sum())

    def sample(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`count` points [count, 3] spread evenly by area over the mesh and their smooth outward
        normals [count, 3] (vertex normals interpolated barycentrically, normalised), float64, CPU.

        Systematic sampling along a space-filling curve of the triangles: `count` equally spaced
        ticks over their cumulative area (one random offset) give each triangle the floor or
        ceiling of its expected count and neighbouring triangles complementary shares. A triangle's
        k samples sit on a rank-1 lattice of its area-preserving square-to-triangle map.
        Randomness (the offset and one rotation of each triangle's lattice) comes from
        `generator`, so the result is the same on every device.
        """
        areas = self.face_areas()
        corners = self.vertices[self.faces]
        spacing = math.sqrt(float(areas.sum()) / count)
        centroids = corners.mean(dim=1)
        cells = ((centroids - centroids.min(dim=0).values) / (_ORDER_CELL_SPACINGS * spacing)).long()
        order = torch.argsort(morton_codes(cells.clamp(max=_MORTON_CELLS)))
        ordered_areas = areas[order]
        cumulative = torch.cumsum(ordered_areas, 0)
        random = torch.rand(len(areas) + 1, generator=generator, dtype=torch.float64, device=generator.device).cpu()
        ticks = (torch.arange(count, dtype=torch.float64) + random[0]) * (float(cumulative[-1]) / count)
        slots = torch.searchsorted(cumulative, ticks, right=True).clamp(max=len(areas) - 1)
        # ticks are sorted, so the samples of one triangle are consecutive: their rank within it
        ranks = torch.arange(count) - torch.searchsorted(slots, slots)
        first = ((ticks - (cumulative[slots] - ordered_areas[slots])) / ordered_areas[slots].clamp_min(1e-300)).clamp(
            0.0, 1.0
        )
        second = torch.frac(ranks * _GOLDEN + random[1:][slots])
        faces = order[slots]
        root = first.sqrt()
        weights = torch.stack((1.0 - root, root * (1.0 - second), root * second), dim=1)  # barycentric
        points = (weights[:, :, None] * corners[faces]).sum(dim=1)
        normals = (weights[:, :, None] * self.vertex_normals[self.faces[faces]]).sum(dim=1)
        return points, normals / normals.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def thickness(self, points: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        """[P] distance from surface `points` [P, 3] inward along −`normals` [P, 3] to the next
        crossing of the mesh (inf where there is none), float64 on the points' device.

        By Embree rays (through trimesh and `embreex`) when available; trimesh's own intersector
        tests every ray against every triangle (out of memory for a bunny), so without Embree it
        is `neighbour_thickness` of the points instead.
        """
        if not trimesh.ray.has_embree:
            return neighbour_thickness(points.double(), normals.double())
        directions = -normals.detach().double().cpu().numpy()
        # rays start a little inside, so that they do not hit the triangle they start on
        start = _RAY_START * math.sqrt(self.area() / max(len(self.faces), 1))
        origins = points.detach().double().cpu().numpy() + start * directions
        locations, rays, _ = self.mesh.ray.intersects_location(origins, directions, multiple_hits=False)
        distance = np.full(len(origins), np.inf)
        distance[rays] = np.linalg.norm(locations - origins[rays], axis=1) + start
        return torch.from_numpy(distance).to(points.device)


def neighbour_thickness(points: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """The body's thickness [P] under each of P points [P, 3] spread evenly over its surface,
    with outward unit normals [P, 3]: the least depth (x_i − x_j)·n_i of a neighbouring point j
    below point i that faces the other way (n_i·n_j < 0), i.e. one on the far side of a thin
    part; inf where its nearest points hold none. It sees parts up to about 2 mean spacings
    thick, enough to keep the inset layers of a thin part apart."""
    count = min(_THICKNESS_NEIGHBOURS + 1, points.shape[0])
    if count < 2:
        return torch.full(points.shape[:1], math.inf, dtype=points.dtype, device=points.device)
    _, indices = nearest_neighbors(points, points, count)
    others = indices[:, 1:]  # column 0 is the point itself
    depth = ((points[:, None, :] - points[others]) * normals[:, None, :]).sum(-1)
    facing = (normals[:, None, :] * normals[others]).sum(-1)
    depth = torch.where((facing < 0) & (depth > 0), depth, math.inf)
    return depth.min(dim=1).values
