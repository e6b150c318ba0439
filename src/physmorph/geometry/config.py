"""The shape config section (a mesh file or a procedural shape placed in the grid) and its builder."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from physmorph.errors import ConfigError
from physmorph.geometry.meshes import MeshError, load_mesh, recenter
from physmorph.geometry.shapes import MAX_SIZE, check_shape_parameters, make_shape
from physmorph.settings import require


@dataclass
class ShapeConfig:
    """Where a body's geometry comes from, and how it is placed in the grid.

    Exactly one of `mesh` or `shape` is set. YAML examples::

        source:                          # a mesh file, used as it is (reference behaviour)
          mesh: meshes/isosphere.obj
        target:                          # a mesh file rescaled and moved to the grid centre
          mesh: /data/dragon.ply
          rotate_deg: [90, 0, 0]         # y-up file into the z-up grid
          size: 20                       # longest side 20 grid units
          recenter: true
        target:                          # a procedural shape (see geometry.shapes.SHAPES)
          shape: dumbbell
          params: {radius: 5, bar_radius: 2, length: 14}

    The mesh or shape is transformed in this order: rotate (about the origin), scale (by
    `scale`, or to `size`, about the origin), then move its bounding-box centre to `center`
    if `recenter`.
    """

    mesh: str | None = None  # .obj/.ply/.stl/.off path; relative paths start at the config's folder
    shape: str | None = None  # procedural shape name: sphere, ellipsoid, box, capsule, torus, ...
    params: dict[str, Any] = field(default_factory=dict)  # the shape's parameters, grid units
    allow_open: bool = False  # accept a mesh with large holes (filled by winding number)
    rotate_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)  # degrees about x, then y, then z
    scale: float = 1.0  # uniform factor, file units -> grid units
    size: float | None = None  # instead of scale: longest bounding-box side, grid units
    recenter: bool = False  # move the bounding-box centre to `center`
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)  # grid units, used when recenter

    def validate(self) -> None:
        if (self.mesh is None) == (self.shape is None):
            raise ConfigError(
                "shape config: set exactly one of 'mesh' (a mesh file) or 'shape' "
                f"(a procedural shape), got mesh={self.mesh!r} and shape={self.shape!r}"
            )
        if self.mesh is not None:
            require(bool(self.mesh.strip()), "mesh", "must be a file path, got an empty string")
            require(not self.params, "params", "applies to a procedural 'shape', not to a 'mesh'")
        else:
            check_shape_parameters(self.shape, self.params)
        require(all(math.isfinite(a) for a in self.rotate_deg), "rotate_deg", "must be finite numbers")
        require(
            math.isfinite(self.scale) and self.scale > 0,
            "scale",
            f"must be a positive number, got {self.scale}",
        )
        if self.size is not None:
            require(
                math.isfinite(self.size) and self.size > 0,
                "size",
                f"must be a positive number of grid units, got {self.size}",
            )
            require(self.scale == 1.0, "size", "and 'scale' exclude each other; set only one")
        require(all(math.isfinite(c) for c in self.center), "center", "must be finite numbers")


def build_shape(config: ShapeConfig, base_dir: str | Path) -> trimesh.Trimesh:
    """The closed mesh described by `config`, in grid units.

    A relative `config.mesh` is resolved against `base_dir` (the config file's folder).
    Raises MeshError for a missing or unusable mesh file, ConfigError for bad shape parameters.
    """
    if config.mesh is not None:
        path = Path(config.mesh).expanduser()
        if not path.is_absolute():
            path = Path(base_dir) / path
        if not path.exists():
            raise MeshError(
                f"mesh file '{config.mesh}' not found (looked for '{path}'; relative paths start "
                "at the config file's folder); fix the 'mesh' path"
            )
        mesh = load_mesh(path, allow_open=config.allow_open)
    else:
        mesh = make_shape(config.shape, **config.params)
    if any(config.rotate_deg):
        angles = np.radians(config.rotate_deg)
        mesh.apply_transform(trimesh.transformations.euler_matrix(*angles, axes="sxyz"))
    if config.size is not None:
        mesh.apply_scale(config.size / mesh.extents.max())
    elif config.scale != 1.0:
        mesh.apply_scale(config.scale)
    if config.recenter:
        mesh = recenter(mesh, config.center)
    reach = np.abs(mesh.vertices).max()
    if not reach <= MAX_SIZE:
        raise ConfigError(
            f"the shape reaches {reach:g} grid units from the origin after rotate/scale/size; that cannot be "
            "simulated: check the units (scale, size) or the mesh file"
        )
    return mesh
