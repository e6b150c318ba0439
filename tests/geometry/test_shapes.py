"""Tests for the procedural shapes: closed, outward, the right size, and non-convex where claimed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import trimesh

from physmorph.errors import ConfigError
from physmorph.geometry.meshes import find_holes
from physmorph.geometry.shapes import SHAPES, make_shape, shape_parameters

# Exact volumes of the default shapes; the meshes are polyhedral approximations from inside.
EXACT_VOLUMES = {
    "sphere": 4 / 3 * math.pi * 8.0**3,
    "ellipsoid": 4 / 3 * math.pi * 10.0 * 7.0 * 5.0,
    "box": 16.0 * 10.0 * 8.0,
    "capsule": math.pi * 4.0**2 * 10.0 + 4 / 3 * math.pi * 4.0**3,
    "torus": 2 * math.pi**2 * 8.0 * 3.0**2,
    # Two spheres, minus the caps the bar replaces, plus the bar between the caps.
    "dumbbell": 2 * (4 / 3 * math.pi * 125 - math.pi * (5 - math.sqrt(21)) ** 2 * (10 + math.sqrt(21)) / 3)
    + math.pi * 4.0 * (14.0 - 2 * math.sqrt(21)),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shape_is_closed_outward_and_inside_the_default_grid(name: str) -> None:
    mesh = make_shape(name)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert find_holes(mesh.vertices, mesh.faces).count == 0
    assert mesh.volume > 0
    # Defaults fit the reference grid [-16, 16]³ with a 3-cell margin.
    assert np.abs(mesh.bounds).max() <= 13.0


@pytest.mark.parametrize("name", sorted(EXACT_VOLUMES))
def test_shape_volume_matches_its_formula(name: str) -> None:
    assert make_shape(name).volume == pytest.approx(EXACT_VOLUMES[name], rel=0.01)


@pytest.mark.parametrize("name", ["torus", "dumbbell", "blob"])
def test_non_convex_shapes_are_non_convex(name: str) -> None:
    mesh = make_shape(name)
    assert mesh.volume < 0.9 * mesh.convex_hull.volume


def test_center_moves_the_shape() -> None:
    moved = make_shape("dumbbell", center=(1.0, -2.0, 3.0))
    np.testing.assert_allclose(moved.bounds.mean(axis=0), [1.0, -2.0, 3.0], atol=1e-9)
    np.testing.assert_allclose(moved.extents, [10.0, 10.0, 24.0], atol=1e-3)


def test_blob_radius_follows_its_harmonic_lobes() -> None:
    mesh = make_shape("blob", radius=5.0, amplitude=0.5, lobes=3, center=(0.0, 0.0, 0.0))
    u = mesh.vertices / np.linalg.norm(mesh.vertices, axis=1, keepdims=True)
    lobes = np.real((u[:, 0] + 1j * u[:, 1]) ** 3) + np.real((u[:, 1] + 1j * u[:, 2]) ** 3)
    np.testing.assert_allclose(np.linalg.norm(mesh.vertices, axis=1), 5.0 * (1 + 0.25 * lobes))


def test_box_is_exact() -> None:
    mesh = make_shape("box", extents=(2.0, 4.0, 6.0), center=(1.0, 1.0, 1.0))
    np.testing.assert_allclose(mesh.bounds, [[0, -1, -2], [2, 3, 4]])
    assert isinstance(mesh, trimesh.Trimesh)


def test_unknown_shape_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown shape 'cube'; choose one of sphere, ellipsoid, box"):
        make_shape("cube")


def test_unknown_parameter_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"shape 'torus' has no parameter 'radius'.*major_radius"):
        make_shape("torus", radius=3.0)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("sphere", {"radius": -1.0}, "radius must be positive"),
        ("sphere", {"subdivisions": 2.5}, "subdivisions must be an integer"),
        ("ellipsoid", {"radii": (1.0, 2.0)}, "radii must be 3 finite numbers"),
        ("box", {"center": "middle"}, "center must be 3 finite numbers"),
        ("torus", {"major_radius": 2.0, "minor_radius": 3.0}, "minor_radius .* must be smaller than major_radius"),
        ("dumbbell", {"length": 4.0}, "length .* must exceed"),
        ("dumbbell", {"bar_radius": 6.0}, "bar_radius .* must be smaller than radius"),
        ("blob", {"amplitude": 1.0}, r"amplitude must be in \[0, 1\)"),
    ],
)
def test_bad_parameter_values_are_named(name: str, params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=f"shape '{name}': {message}"):
        make_shape(name, **params)


def test_parameters_are_listed_with_defaults() -> None:
    assert shape_parameters("capsule") == {
        "radius": 4.0,
        "length": 10.0,
        "center": (0.0, 0.0, 0.0),
        "sections": 48,
    }
