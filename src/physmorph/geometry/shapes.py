"""Procedural closed meshes in grid units (sphere, box, torus, dumbbell, blob, ...) by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import trimesh

from physmorph.errors import ConfigError

Vector = Sequence[float]

# Sizes beyond this overflow the float32 positions of the simulation; no grid is that large.
MAX_SIZE = 1e15


def sphere(radius: float = 8.0, center: Vector = (0.0, 0.0, 0.0), subdivisions: int = 4) -> trimesh.Trimesh:
    """Sphere of `radius` (grid units): a subdivided icosahedron (20·4^subdivisions faces)."""
    _check_positive("sphere", radius=radius)
    _check_range("sphere", "subdivisions", subdivisions, 1, 7)
    return _placed(trimesh.creation.icosphere(subdivisions, radius), center, "sphere")


def ellipsoid(
    radii: Vector = (10.0, 7.0, 5.0), center: Vector = (0.0, 0.0, 0.0), subdivisions: int = 4
) -> trimesh.Trimesh:
    """Axis-aligned ellipsoid with semi-axes `radii` [3] (grid units)."""
    radii = _vector("ellipsoid", "radii", radii)
    _check_positive("ellipsoid", radii=radii.min())
    _check_range("ellipsoid", "subdivisions", subdivisions, 1, 7)
    mesh = trimesh.creation.icosphere(subdivisions, 1.0)
    mesh.vertices = mesh.vertices * radii
    return _placed(mesh, center, "ellipsoid")


def box(extents: Vector = (16.0, 10.0, 8.0), center: Vector = (0.0, 0.0, 0.0)) -> trimesh.Trimesh:
    """Axis-aligned box with side lengths `extents` [3] (grid units)."""
    extents = _vector("box", "extents", extents)
    _check_positive("box", extents=extents.min())
    return _placed(trimesh.creation.box(extents=extents), center, "box")


def capsule(
    radius: float = 4.0,
    length: float = 10.0,
    center: Vector = (0.0, 0.0, 0.0),
    sections: int = 48,
) -> trimesh.Trimesh:
    """Cylinder of `radius` and `length` along z, closed by two hemispheres (total length + 2r)."""
    _check_positive("capsule", radius=radius, length=length)
    _check_range("capsule", "sections", sections, 8, 512)
    lower = _arc(radius, -length / 2, -np.pi / 2, 0.0, sections)
    upper = _arc(radius, length / 2, 0.0, np.pi / 2, sections)
    profile = np.concatenate([lower, upper])
    return _placed(_revolve(profile, sections), center, "capsule")


def torus(
    major_radius: float = 8.0,
    minor_radius: float = 3.0,
    center: Vector = (0.0, 0.0, 0.0),
    sections: int = 48,
) -> trimesh.Trimesh:
    """Torus around the z axis: tube of `minor_radius` whose centre line has `major_radius`."""
    _check_positive("torus", major_radius=major_radius, minor_radius=minor_radius)
    if not minor_radius < major_radius:
        raise ConfigError(
            f"shape 'torus': minor_radius ({minor_radius:g}) must be smaller than major_radius "
            f"({major_radius:g}), otherwise the tube intersects itself"
        )
    _check_range("torus", "sections", sections, 8, 512)
    mesh = trimesh.creation.torus(major_radius, minor_radius, major_sections=2 * sections, minor_sections=sections)
    return _placed(mesh, center, "torus")


def dumbbell(
    radius: float = 5.0,
    bar_radius: float = 2.0,
    length: float = 14.0,
    center: Vector = (0.0, 0.0, 0.0),
    sections: int = 48,
) -> trimesh.Trimesh:
    """Two spheres of `radius` whose centres are `length` apart along z, joined by a bar.

    The bar is a cylinder of `bar_radius` < radius; the spheres must not touch
    (length > 2·sqrt(radius² − bar_radius²)) so that the bar is visible: a non-convex shape.
    """
    _check_positive("dumbbell", radius=radius, bar_radius=bar_radius, length=length)
    if not bar_radius < radius:
        raise ConfigError(f"shape 'dumbbell': bar_radius ({bar_radius:g}) must be smaller than radius ({radius:g})")
    neck = np.sqrt(radius**2 - bar_radius**2)
    if not length > 2 * neck:
        raise ConfigError(
            f"shape 'dumbbell': length ({length:g}) must exceed {2 * neck:.4g} "
            "(2·sqrt(radius² − bar_radius²)) so that the bar between the spheres is visible; "
            "increase length or bar_radius"
        )
    _check_range("dumbbell", "sections", sections, 8, 512)
    # The bar meets each sphere where the sphere's radius shrinks to bar_radius.
    meet = np.arcsin(bar_radius / radius)
    lower = _arc(radius, -length / 2, -np.pi / 2, np.pi / 2 - meet, sections)
    upper = _arc(radius, length / 2, -np.pi / 2 + meet, np.pi / 2, sections)
    return _placed(_revolve(np.concatenate([lower, upper]), sections), center, "dumbbell")


def blob(
    radius: float = 7.5,
    amplitude: float = 0.35,
    lobes: int = 4,
    center: Vector = (0.0, 0.0, 0.0),
    subdivisions: int = 5,
) -> trimesh.Trimesh:
    """Star-shaped blob: a sphere whose radius is modulated by spherical-harmonic lobes.

    In direction u (unit vector) the surface is at radius · (1 + amplitude · f(u)) with
    f(u) = [Re (u_x + i u_y)^n + Re (u_y + i u_z)^n] / 2, n = `lobes`: two degree-n spherical
    harmonics giving n bumps around the z axis and n around the x axis. |f| ≤ 1, so any
    amplitude in [0, 1) keeps the shape star-shaped about its centre (watertight, outward).
    """
    _check_positive("blob", radius=radius)
    if not 0 <= amplitude < 1:
        raise ConfigError(f"shape 'blob': amplitude must be in [0, 1), got {amplitude!r}")
    _check_range("blob", "lobes", lobes, 2, 12)
    _check_range("blob", "subdivisions", subdivisions, 1, 7)
    mesh = trimesh.creation.icosphere(subdivisions, 1.0)
    u = mesh.vertices
    lobes_z = np.real((u[:, 0] + 1j * u[:, 1]) ** lobes)
    lobes_x = np.real((u[:, 1] + 1j * u[:, 2]) ** lobes)
    mesh.vertices = u * (radius * (1 + amplitude * (lobes_z + lobes_x) / 2))[:, None]
    return _placed(mesh, center, "blob")


SHAPES: dict[str, Callable[..., trimesh.Trimesh]] = {
    "sphere": sphere,
    "ellipsoid": ellipsoid,
    "box": box,
    "capsule": capsule,
    "torus": torus,
    "dumbbell": dumbbell,
    "blob": blob,
}


def shape_parameters(name: str) -> dict[str, Any]:
    """The parameters of procedural shape `name` with their defaults; ConfigError if unknown."""
    if name not in SHAPES:
        raise ConfigError(f"unknown shape '{name}'; choose one of {', '.join(SHAPES)} or give a mesh file")
    signature = inspect.signature(SHAPES[name])
    return {key: p.default for key, p in signature.parameters.items()}


def check_shape_parameters(name: str, params: dict[str, Any]) -> None:
    """Raise ConfigError naming the first parameter in `params` that shape `name` lacks."""
    known = shape_parameters(name)
    for key in params:
        if key not in known:
            listing = ", ".join(f"{k} (default {v!r})" for k, v in known.items())
            raise ConfigError(f"shape '{name}' has no parameter '{key}'; its parameters are: {listing}")


def make_shape(name: str, **params: Any) -> trimesh.Trimesh:
    """Build procedural shape `name` (a key of SHAPES) from its parameters, grid units.

    All shapes are closed, consistently oriented with outward normals, and centred on their
    `center` parameter; elongated ones lie along z. Unknown names, unknown parameters and
    out-of-range values raise ConfigError.
    """
    check_shape_parameters(name, params)
    return SHAPES[name](**params)


def _placed(mesh: trimesh.Trimesh, center: Vector, shape: str) -> trimesh.Trimesh:
    mesh.apply_translation(_vector(shape, "center", center))
    return mesh


def _vector(shape: str, key: str, value: Any) -> np.ndarray:
    try:
        vector = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        vector = np.zeros(0)
    if vector.shape != (3,) or not np.isfinite(vector).all() or np.abs(vector).max() > MAX_SIZE:
        raise ConfigError(f"shape '{shape}': {key} must be 3 finite numbers of magnitude ≤ {MAX_SIZE:g}, got {value!r}")
    return vector


def _check_positive(shape: str, **values: Any) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
            raise ConfigError(f"shape '{shape}': {key} must be a number, got {value!r}")
        if not (np.isfinite(value) and value > 0):
            raise ConfigError(f"shape '{shape}': {key} must be positive, got {value!r}")
        if value > MAX_SIZE:
            raise ConfigError(f"shape '{shape}': {key} must be at most {MAX_SIZE:g} grid units, got {value!r}")


def _check_range(shape: str, key: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"shape '{shape}': {key} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"shape '{shape}': {key} must be in [{low}, {high}], got {value}")


def _arc(radius: float, height: float, start: float, stop: float, sections: int) -> np.ndarray:
    """Points (r, z) [n, 2] of a circle of `radius` centred at z = height, angles start to stop.

    Angles are measured from the equator (−π/2 is the bottom pole); `sections` points span π.
    """
    count = max(2, int(np.ceil(sections * (stop - start) / np.pi)) + 1)
    angle = np.linspace(start, stop, count)
    points = np.stack([radius * np.cos(angle), height + radius * np.sin(angle)], axis=1)
    points[np.isclose(np.abs(angle), np.pi / 2), 0] = 0.0
    return points


def _revolve(profile: np.ndarray, sections: int) -> trimesh.Trimesh:
    """Surface of revolution about z of the profile (r, z) [n, 2] running from bottom to top pole."""
    mesh = trimesh.creation.revolve(profile, sections=2 * sections)
    mesh.merge_vertices()
    return mesh
