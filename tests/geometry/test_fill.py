"""Tests for filling meshes with material points: counts, volumes, inside-ness and error messages."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from physmorph.errors import ConfigError
from physmorph.geometry.fill import fill_mesh, lattice_inside, solid_angle_winding_numbers
from physmorph.geometry.meshes import MeshError, MeshRepairWarning, load_mesh
from physmorph.geometry.shapes import make_shape, sphere

GRID = {"box_min": (-16.0, -16.0, -16.0), "box_max": (16.0, 16.0, 16.0)}


def _lattice(mesh: trimesh.Trimesh, spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    low = mesh.vertices.min(axis=0)
    counts = np.floor((mesh.vertices.max(axis=0) - low) / spacing + 1e-9).astype(int) + 1
    axes = [low[k] + spacing * np.arange(counts[k]) for k in range(3)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    return low, counts, points


@pytest.mark.parametrize(("radius", "ppc"), [(3.0, 2), (4.0, 2), (5.0, 3), (7.5, 1)])
def test_sphere_volume_is_close_to_the_exact_ball(radius: float, ppc: int) -> None:
    points = fill_mesh(sphere(radius=radius), dx=1.0, points_per_cell_cuberoot=ppc, density=2.0, **GRID)
    exact = 4 / 3 * math.pi * radius**3
    assert points.volumes.sum().item() == pytest.approx(exact, rel=0.05)
    assert points.masses.sum().item() == pytest.approx(2.0 * points.volumes.sum().item())


def test_box_on_the_lattice_is_counted_exactly() -> None:
    # Faces lie exactly on lattice planes: lower faces count as inside, upper faces as outside.
    box = make_shape("box", extents=(4.0, 3.0, 2.0), center=(0.0, 0.5, 1.0))
    points = fill_mesh(box, dx=0.5, points_per_cell_cuberoot=2, density=1.0, **GRID)
    assert points.count == 16 * 12 * 8
    assert points.spacing == 0.25
    np.testing.assert_allclose(points.positions.min(0).values.numpy(), [-2.0, -1.0, 0.0])
    np.testing.assert_allclose(points.positions.max(0).values.numpy(), [1.75, 1.75, 1.75])


@pytest.mark.parametrize("name", ["torus", "dumbbell", "blob", "capsule"])
def test_lattice_classification_matches_direct_winding_numbers(name: str) -> None:
    mesh = make_shape(name, sections=12) if name != "blob" else make_shape(name, subdivisions=2)
    low, counts, points = _lattice(mesh, 0.9)
    inside = lattice_inside(mesh.vertices, mesh.faces, low, 0.9, counts).reshape(-1)
    winding = solid_angle_winding_numbers(mesh.vertices[mesh.faces], points)
    np.testing.assert_array_equal(inside, np.abs(winding) > 0.5)
    assert inside.any() and not inside.all()


def test_open_mesh_uses_the_exact_generalised_winding_number() -> None:
    ball = sphere(radius=5.0, subdivisions=2)
    keep = ball.triangles_center[:, 2] > -3.0  # a ball with a wide hole in the bottom
    cup = trimesh.Trimesh(ball.vertices, ball.faces[keep])
    low, counts, points = _lattice(cup, 0.6)
    inside = lattice_inside(cup.vertices, cup.faces, low, 0.6, counts).reshape(-1)
    winding = solid_angle_winding_numbers(cup.vertices[cup.faces], points)
    decided = np.abs(np.abs(winding) - 0.5) > 1e-9
    np.testing.assert_array_equal(inside[decided], np.abs(winding[decided]) > 0.5)
    # Near the hole, |w| falls below 1/2: the cup fills less than the ball.
    assert 0.5 * np.sum(np.abs(winding) > 0.9) < inside.sum() < np.sum(np.abs(winding) > 0.1)


def test_inverted_mesh_fills_the_same_points() -> None:
    ball = sphere(radius=4.0, subdivisions=3)
    inverted = ball.copy()
    inverted.invert()
    settings = {"dx": 1.0, "points_per_cell_cuberoot": 2, "density": 1.0, **GRID}
    np.testing.assert_array_equal(
        fill_mesh(ball, **settings).positions.numpy(), fill_mesh(inverted, **settings).positions.numpy()
    )


def test_fill_is_deterministic_and_follows_dtype() -> None:
    blob = make_shape("blob", radius=5.0)
    settings = {"dx": 1.0, "points_per_cell_cuberoot": 2, "density": 3.0, **GRID}
    first = fill_mesh(blob, **settings, dtype=torch.float64)
    second = fill_mesh(blob, **settings, dtype=torch.float64)
    assert first.positions.dtype == torch.float64 and first.masses.dtype == torch.float64
    assert torch.equal(first.positions, second.positions)
    assert torch.all(first.masses == 3.0 * 0.125) and torch.all(first.volumes == 0.125)
    assert fill_mesh(blob, **settings).positions.dtype == torch.float32


def test_positions_lie_inside_the_mesh_on_the_lattice() -> None:
    mesh = make_shape("dumbbell", sections=10)
    points = fill_mesh(mesh, dx=1.0, points_per_cell_cuberoot=2, density=1.0, **GRID, dtype=torch.float64)
    positions = points.positions.numpy()
    winding = solid_angle_winding_numbers(mesh.vertices[mesh.faces], positions)
    assert np.all(winding > 0.5)
    offsets = (positions - mesh.vertices.min(axis=0)) / points.spacing
    np.testing.assert_allclose(offsets, np.round(offsets), atol=1e-9)


def test_mesh_outside_the_grid_names_the_margin() -> None:
    ball = sphere(radius=4.0, center=(10.0, 0.0, 0.0), subdivisions=2)
    with pytest.raises(MeshError, match=r"mesh 'ball' spans .* margin of 3 cells .*scale or move"):
        fill_mesh(ball, dx=1.0, points_per_cell_cuberoot=2, density=1.0, name="ball", **GRID)
    # The same ball fits once the margin allows it.
    fill_mesh(ball, dx=1.0, points_per_cell_cuberoot=1, density=1.0, margin_cells=2.0, **GRID)


def test_mesh_thinner_than_the_lattice_gives_no_points() -> None:
    # The lattice starts at the bounding-box corner; the next points (0.7 further) are outside.
    speck = sphere(radius=0.3, subdivisions=2)
    with pytest.raises(MeshError, match=r"no material points.*increase points_per_cell_cuberoot or scale"):
        fill_mesh(speck, dx=1.0, points_per_cell_cuberoot=1, density=1.0, name="speck", **GRID)
    assert fill_mesh(speck, dx=1.0, points_per_cell_cuberoot=4, density=1.0, **GRID).count > 0


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("dx", 0.0, "dx must be positive"),
        ("points_per_cell_cuberoot", 1.5, "must be an integer"),
        ("points_per_cell_cuberoot", 0, "must be at least 1"),
        ("density", -1.0, "density must be positive"),
        ("box_max", (16.0, -16.0, 16.0), "box_min < box_max"),
    ],
)
def test_bad_fill_arguments_are_named(key: str, value: object, message: str) -> None:
    settings = {"dx": 1.0, "points_per_cell_cuberoot": 2, "density": 1.0, **GRID, key: value}
    with pytest.raises(ConfigError, match=message):
        fill_mesh(sphere(radius=3.0, subdivisions=1), **settings)


def test_shared_meshes_fill_like_the_reference(shared_dir: Path) -> None:
    settings = {"dx": 1.0, "points_per_cell_cuberoot": 2, "density": 75.0, **GRID}
    isosphere = fill_mesh(load_mesh(shared_dir / "meshes" / "isosphere.obj"), **settings)
    assert isosphere.count == 11166  # the count the reference prints for this config
    with pytest.warns(MeshRepairWarning):
        bunny_mesh = load_mesh(shared_dir / "meshes" / "bunny.obj")
    bunny = fill_mesh(bunny_mesh, **settings)
    # Five small holes in the base: the filled volume is within 2% of the mesh's enclosed volume.
    assert bunny.volumes.sum().item() == pytest.approx(bunny_mesh.volume, rel=0.02)
    assert bunny.count == 9262
