"""The implicit surface of filled bodies: position, normals, area, thin parts, even sampling."""

from __future__ import annotations

import math

import pytest
import torch

from physmorph.geometry import fill_mesh, make_shape
from physmorph.surface import implicit_surface


def _filled(mesh):
    points = fill_mesh(mesh, dx=1.0, points_per_cell_cuberoot=2, density=75.0, box_min=(-16,) * 3, box_max=(16,) * 3)
    return points.positions.double(), points.volumes.double()


@pytest.fixture(scope="module")
def sphere_surface():
    x, volumes = _filled(make_shape("sphere", radius=5.0))
    return implicit_surface(x, volumes, spacing=0.5, smoothing=1.3)


def test_sphere_samples_lie_on_the_mesh_with_radial_normals(sphere_surface):
    points = sphere_surface.sample(20_000, torch.Generator().manual_seed(0))
    radius = points.norm(dim=1)
    # The blur's shrinkage (blur² / R ≈ 0.08) is undone by the curvature shift.
    assert abs(radius.mean().item() - 5.0) < 0.04
    assert radius.std() < 0.06
    cosine = (sphere_surface.normals(points) * points / radius[:, None]).sum(1).clamp(-1, 1)
    angles = torch.rad2deg(torch.acos(cosine))
    assert angles.mean() < 3.0 and torch.quantile(angles, 0.9) < 6.0


def test_area_by_the_coarea_formula(sphere_surface):
    assert sphere_surface.area() == pytest.approx(4 * math.pi * 25.0, rel=0.1)


def test_a_plate_one_particle_thick_is_kept_with_normals_away_from_it():
    x, volumes = _filled(make_shape("box", extents=(10.0, 10.0, 0.5)))
    assert len(x[:, 2].unique()) == 1  # a single layer of particles
    surface = implicit_surface(x, volumes, spacing=0.5, smoothing=1.3)
    points = surface.sample(5000, torch.Generator().manual_seed(1))
    middle = points[(points[:, :2].abs() < 3.0).all(dim=1)]
    plane = x[0, 2]
    above, below = middle[middle[:, 2] > plane], middle[middle[:, 2] < plane]
    assert len(above) > 0.3 * len(middle) and len(below) > 0.3 * len(middle)
    assert (surface.normals(above)[:, 2] > 0.95).all() and (surface.normals(below)[:, 2] < -0.95).all()
    assert (middle[:, 2] - plane).abs().max() < 1.0


def test_sampling_is_even_and_reproducible(sphere_surface):
    first = sphere_surface.sample(8000, torch.Generator().manual_seed(3))
    again = sphere_surface.sample(8000, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    octant = ((first > 0).long() * torch.tensor([4, 2, 1])).sum(dim=1)
    counts = torch.bincount(octant, minlength=8).double()
    assert (counts / counts.mean() - 1).abs().max() < 0.05
