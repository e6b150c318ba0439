"""Tests for the shape config section: parsing, validation messages, path resolution, placement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from physmorph.errors import ConfigError
from physmorph.geometry.config import ShapeConfig, build_shape
from physmorph.geometry.meshes import MeshError
from physmorph.geometry.shapes import sphere
from physmorph.settings import from_mapping


def _config(mapping: dict) -> ShapeConfig:
    return from_mapping(ShapeConfig, mapping, "target")


def test_relative_mesh_path_resolves_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "meshes").mkdir()
    sphere(radius=3.0, subdivisions=2).export(tmp_path / "meshes" / "ball.obj")
    mesh = build_shape(_config({"mesh": "meshes/ball.obj"}), base_dir=tmp_path)
    assert mesh.is_watertight
    np.testing.assert_allclose(mesh.bounds, [[-3, -3, -3], [3, 3, 3]], atol=1e-6)


def test_missing_mesh_names_both_paths(tmp_path: Path) -> None:
    with pytest.raises(MeshError, match=r"'meshes/none\.obj' not found \(looked for '.*meshes/none\.obj'"):
        build_shape(_config({"mesh": "meshes/none.obj"}), base_dir=tmp_path)


def test_procedural_shape_with_params() -> None:
    config = _config({"shape": "capsule", "params": {"radius": 2, "length": 6, "center": [1, 0, 0]}})
    mesh = build_shape(config, base_dir=".")
    np.testing.assert_allclose(mesh.bounds[:, 2], [-5.0, 5.0], atol=1e-9)
    assert mesh.bounds.mean(axis=0)[0] == pytest.approx(1.0)


def test_rotate_then_size_then_recenter() -> None:
    config = _config(
        {
            "shape": "box",
            "params": {"extents": [4, 2, 1], "center": [5, 5, 5]},
            "rotate_deg": [0, 0, 90],
            "size": 8,
            "recenter": True,
            "center": [1, 2, 3],
        }
    )
    mesh = build_shape(config, base_dir=".")
    # The 4-long x side turns to y, is scaled to 8, and the box centre moves to (1, 2, 3).
    np.testing.assert_allclose(mesh.extents, [4.0, 8.0, 2.0], atol=1e-9)
    np.testing.assert_allclose(mesh.bounds.mean(axis=0), [1.0, 2.0, 3.0], atol=1e-9)


def test_scale_is_about_the_origin() -> None:
    config = _config({"shape": "sphere", "params": {"radius": 1, "center": [2, 0, 0]}, "scale": 3})
    mesh = build_shape(config, base_dir=".")
    np.testing.assert_allclose(mesh.bounds, [[3, -3, -3], [9, 3, 3]], atol=1e-9)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({}, "set exactly one of 'mesh'"),
        ({"mesh": "a.obj", "shape": "sphere"}, "set exactly one of 'mesh'"),
        ({"mesh": "a.obj", "params": {"radius": 2}}, r"'params' applies to a procedural 'shape'"),
        ({"shape": "sphere", "params": {"size": 2}}, r"shape 'sphere' has no parameter 'size'.*radius"),
        ({"shape": "cube"}, r"unknown shape 'cube'; choose one of sphere"),
        ({"shape": "sphere", "scale": 0}, r"'scale' must be a positive number"),
        ({"shape": "sphere", "size": 4, "scale": 2}, r"'size' and 'scale' exclude each other"),
        ({"shape": "sphere", "shpae": "box"}, r"unknown config key 'target\.shpae'"),
        ({"shape": "sphere", "center": [0, 0]}, r"target\.center: expected 3 numbers"),
    ],
)
def test_bad_config_is_named(mapping: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(mapping)
