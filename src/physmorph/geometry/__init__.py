"""Geometry: meshes and procedural shapes -> material points (positions, volumes, masses)."""

from physmorph.geometry.config import ShapeConfig, build_shape
from physmorph.geometry.fill import (
    MaterialPoints,
    fill_mesh,
    lattice_inside,
    solid_angle_winding_numbers,
)
from physmorph.geometry.meshes import (
    MeshError,
    MeshRepairWarning,
    fit_to_box,
    load_mesh,
    recenter,
)
from physmorph.geometry.shapes import SHAPES, make_shape

__all__ = [
    "SHAPES",
    "MaterialPoints",
    "MeshError",
    "MeshRepairWarning",
    "ShapeConfig",
    "build_shape",
    "fill_mesh",
    "fit_to_box",
    "lattice_inside",
    "load_mesh",
    "make_shape",
    "recenter",
    "solid_angle_winding_numbers",
]
