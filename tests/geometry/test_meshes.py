"""Tests for loading meshes (formats, repairs, error messages) and placing them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import trimesh

from physmorph.errors import ConfigError, InputError
from physmorph.geometry.meshes import (
    MeshError,
    MeshRepairWarning,
    boundary_edges,
    find_holes,
    fit_to_box,
    load_mesh,
    recenter,
)
from physmorph.geometry.shapes import sphere


def _hemisphere() -> trimesh.Trimesh:
    ball = sphere(radius=4.0, subdivisions=3)
    keep = ball.triangles_center[:, 2] > 0
    return trimesh.Trimesh(ball.vertices, ball.faces[keep])


@pytest.mark.parametrize("suffix", [".obj", ".ply", ".stl", ".off"])
def test_each_format_loads_closed_with_the_same_volume(tmp_path: Path, suffix: str) -> None:
    ball = sphere(radius=3.0, subdivisions=2)
    path = tmp_path / f"ball{suffix}"
    ball.export(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mesh = load_mesh(path)
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(ball.volume, rel=1e-6)


def test_split_vertices_are_welded(tmp_path: Path) -> None:
    ball = sphere(radius=3.0, subdivisions=1)
    # Every face gets its own three vertices, as OBJ exporters with per-face normals write them.
    split = ball.vertices[ball.faces].reshape(-1, 3)
    lines = [f"v {x:.17g} {y:.17g} {z:.17g}" for x, y, z in split]
    lines += [f"f {3 * i + 1} {3 * i + 2} {3 * i + 3}" for i in range(len(ball.faces))]
    path = tmp_path / "split.obj"
    path.write_text("\n".join(lines) + "\n")
    mesh = load_mesh(path)
    assert len(mesh.vertices) == len(ball.vertices)
    assert mesh.is_watertight


def test_inverted_mesh_is_turned_outward(tmp_path: Path) -> None:
    ball = sphere(radius=3.0, subdivisions=2)
    ball.invert()
    path = tmp_path / "inverted.ply"
    ball.export(path)
    assert load_mesh(path).volume == pytest.approx(-ball.volume, rel=1e-6)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(MeshError, match=r"nope\.obj' does not exist; check the path"):
        load_mesh(tmp_path / "nope.obj")


def test_unsupported_format_lists_the_supported_ones(tmp_path: Path) -> None:
    path = tmp_path / "shape.fbx"
    path.write_text("whatever")
    with pytest.raises(MeshError, match=r"unsupported format '\.fbx'.*\.obj, \.ply, \.stl, \.off"):
        load_mesh(path)


def test_garbage_file_is_reported_as_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "garbage.ply"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(MeshError, match=r"could not read mesh file '.*garbage\.ply'"):
        load_mesh(path)


def test_file_without_triangles_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "points.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with pytest.raises(MeshError, match=r"points\.obj' contains no triangles"):
        load_mesh(path)


def test_open_hemisphere_is_an_error_naming_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "dome.stl"
    _hemisphere().export(path)
    with pytest.raises(MeshError, match=r"mesh 'dome\.stl' is open \(\d+ boundary edges") as info:
        load_mesh(path)
    assert "Fill" in str(info.value) and "allow_open: true" in str(info.value)
    assert isinstance(info.value, InputError)


def test_open_mesh_loads_with_a_warning_when_allowed(tmp_path: Path) -> None:
    path = tmp_path / "dome.obj"
    _hemisphere().export(path)
    with pytest.warns(MeshRepairWarning, match="dome.obj' is open"):
        mesh = load_mesh(path, allow_open=True)
    assert not mesh.is_watertight


def test_flat_patch_is_open() -> None:
    patch = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], [[0, 1, 2], [0, 2, 3]])
    holes = find_holes(patch.vertices, patch.faces)
    assert holes.count == 1
    assert holes.perimeters[0] == pytest.approx(4.0)
    assert holes.areas[0] == pytest.approx(1.0)


def test_one_missing_triangle_is_filled_with_a_warning(tmp_path: Path) -> None:
    ball = sphere(radius=3.0, subdivisions=2)
    path = tmp_path / "chipped.obj"
    trimesh.Trimesh(ball.vertices, ball.faces[1:]).export(path)
    with pytest.warns(MeshRepairWarning, match="filled with new triangles"):
        mesh = load_mesh(path)
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(ball.volume, rel=1e-9)


def test_boundary_edges_are_empty_for_closed_and_a_loop_for_open_meshes() -> None:
    assert len(boundary_edges(sphere(subdivisions=2).faces)) == 0
    # A lone triangle's boundary is its three edges, directed like the triangle.
    edges = boundary_edges(np.array([[0, 1, 2]]))
    assert sorted(map(tuple, edges.tolist())) == [(0, 1), (1, 2), (2, 0)]


def test_shared_meshes_load(shared_dir: Path) -> None:
    isosphere = load_mesh(shared_dir / "meshes" / "isosphere.obj")
    assert isosphere.is_watertight and len(isosphere.vertices) == 42
    with pytest.warns(MeshRepairWarning, match=r"223 boundary edges around 5 holes"):
        bunny = load_mesh(shared_dir / "meshes" / "bunny.obj")
    assert bunny.volume > 0


def test_recenter_moves_the_box_centre_and_leaves_the_input() -> None:
    ball = sphere(radius=2.0, center=(1.0, 2.0, 3.0), subdivisions=1)
    moved = recenter(ball, (-1.0, 0.0, 5.0))
    np.testing.assert_allclose(moved.bounds.mean(axis=0), [-1.0, 0.0, 5.0], atol=1e-12)
    np.testing.assert_allclose(ball.bounds.mean(axis=0), [1.0, 2.0, 3.0], atol=1e-12)


def test_fit_to_box_scales_to_the_tightest_axis() -> None:
    box = trimesh.creation.box(extents=(2.0, 1.0, 1.0))
    fitted = fit_to_box(box, (-16, -16, -16), (16, 16, 16), margin=4.0)
    np.testing.assert_allclose(fitted.bounds, [[-12, -6, -6], [12, 6, 6]], atol=1e-12)
    with pytest.raises(ConfigError, match="margin of 20"):
        fit_to_box(box, (-16, -16, -16), (16, 16, 16), margin=20.0)
