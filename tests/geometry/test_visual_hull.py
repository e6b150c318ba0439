"""The visual hull carved from ray-cast images of known solids: it holds the solid, depth tightens it,
and cameras that see no object are refused."""

from __future__ import annotations

import pytest
import torch
import trimesh

from physmorph.errors import InputError
from physmorph.geometry.visual_hull import carve_visual_hull
from physmorph.io.targets import TargetImages
from physmorph.render import intrinsics_from_fov, orbit_cameras
from physmorph.render.mesh_raycast import raycast_mesh

BOX = ((-6.0,) * 3, (6.0,) * 3)
SPACING = 0.25


def _targets(mesh: trimesh.Trimesh, count: int = 4, elevation: float = 20.0, depth: bool = True) -> TargetImages:
    K = intrinsics_from_fov(40.0, 128, 128, dtype=torch.float64)
    cameras = orbit_cameras(K, 128, 128, radius=20.0, elevation=elevation, count=count, start_azimuth=10.0)
    images = raycast_mesh(mesh, cameras)
    return TargetImages(cameras, images.alpha.double(), images.depth.double() if depth else None, None, [])


def _inside(mesh: trimesh.Trimesh, points: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(mesh.contains(points.numpy()))


def _carve(targets: TargetImages):
    return carve_visual_hull(targets, box_min=BOX[0], box_max=BOX[1], spacing=SPACING, density=2.0)


def test_the_hull_of_a_convex_solid_holds_it_and_little_more() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=2.0)
    hull = _carve(_targets(sphere))
    inside = _inside(sphere, hull.positions)
    solid_count = 4 / 3 * torch.pi * 2.0**3 / SPACING**3
    # every lattice point of the solid survives (misses only where a pixel straddles the outline)
    assert inside.sum() > 0.97 * solid_count
    # four views at 20° elevation leave the wedges under and over the ball that no camera sees into
    assert hull.count < 1.5 * solid_count
    assert torch.allclose(hull.masses, torch.full_like(hull.masses, 2.0 * SPACING**3))
    assert hull.volumes.sum() == pytest.approx(hull.count * SPACING**3)


def _box(low: tuple[float, float, float], high: tuple[float, float, float]) -> trimesh.Trimesh:
    centre = [(a + b) / 2 for a, b in zip(low, high)]
    extents = [b - a for a, b in zip(low, high)]
    return trimesh.creation.box(extents=extents, transform=trimesh.transformations.translation_matrix(centre))


# A bowl: a slab with four walls around a pit open to cameras above it. Its silhouettes are a
# full box from every side, so only depth can tell that the pit is empty.
BOWL_PARTS = [
    ((-2.0, -2.0, -1.5), (2.0, 2.0, -0.5)),
    ((1.2, -2.0, -0.5), (2.0, 2.0, 1.5)),
    ((-2.0, -2.0, -0.5), (-1.2, 2.0, 1.5)),
    ((-1.2, 1.2, -0.5), (1.2, 2.0, 1.5)),
    ((-1.2, -2.0, -0.5), (1.2, -1.2, 1.5)),
]


def test_depth_carves_a_concavity_that_silhouettes_cannot() -> None:
    bowl = trimesh.util.concatenate([_box(low, high) for low, high in BOWL_PARTS])
    with_depth = _carve(_targets(bowl, count=6, elevation=60.0))
    silhouettes = _carve(_targets(bowl, count=6, elevation=60.0, depth=False))

    def in_pit(points: torch.Tensor) -> torch.Tensor:
        return (points[:, :2].abs() < 0.9).all(dim=1) & (points[:, 2] > -0.3) & (points[:, 2] < 1.3)

    def in_bowl(points: torch.Tensor) -> torch.Tensor:
        low, high = torch.tensor([part[0] for part in BOWL_PARTS]), torch.tensor([part[1] for part in BOWL_PARTS])
        return ((points[:, None] > low) & (points[:, None] < high)).all(dim=2).any(dim=1)

    assert in_pit(silhouettes.positions).sum() > 300  # the whole pit: 1.8 × 1.8 × 1.6 / h³ ≈ 330
    assert in_pit(with_depth.positions).sum() < 0.1 * in_pit(silhouettes.positions).sum()
    # depth carves only empty space: the walls and the floor stay
    assert in_bowl(with_depth.positions).sum() > 0.97 * in_bowl(silhouettes.positions).sum()


def test_cameras_that_miss_the_object_are_refused() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=2.0)
    targets = _targets(sphere)
    # shift one mask to the image corner: no point projects inside every view's mask
    targets.alpha[0] = 0.0
    targets.alpha[0, :5, :5] = 1.0
    with pytest.raises(InputError, match="carve away every point"):
        _carve(targets)
