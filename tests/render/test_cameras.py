"""Tests for cameras: look-at conventions, intrinsics, orbits, batching, OpenGL conversion."""

from __future__ import annotations

import math

import pytest
import torch

from physmorph.errors import ConfigError, InputError
from physmorph.render.cameras import (
    CameraConfig,
    Cameras,
    concatenate,
    intrinsics,
    intrinsics_from_fov,
    look_at,
    opencv_to_opengl,
    opengl_to_opencv,
    orbit_cameras,
)
from physmorph.settings import from_mapping

REFERENCE_CAMERA = {
    "width": 1280,
    "height": 720,
    "fx": 475.0,
    "fy": 475.0,
    "cx": 640.0,
    "cy": 360.0,
    "znear": 0.01,
    "zfar": 100.0,
    "lookat": {"eye": [20.0, -25.0, 15.0], "target": [0.0, 0.0, 0.0], "up": [0.0, 0.0, 1.0]},
}


def test_reference_camera_target_projects_to_principal_point_and_up_is_smaller_y():
    cameras = from_mapping(CameraConfig, REFERENCE_CAMERA, "camera").to_cameras(torch.float64)
    pixels, depth = cameras.project(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 3.0]], dtype=torch.float64))
    assert torch.allclose(pixels[0, 0], torch.tensor([640.0, 360.0], dtype=torch.float64), atol=1e-9)
    assert depth[0, 0] == pytest.approx(math.sqrt(20**2 + 25**2 + 15**2))
    assert pixels[0, 1, 1] < 360.0 - 10.0  # world up appears higher in the image
    assert torch.allclose(cameras.positions[0], torch.tensor([20.0, -25.0, 15.0], dtype=torch.float64))


def test_look_at_right_hand_side_and_other_up_axis():
    # y-up world, camera on +z looking at the origin: world +x is image right, +y image up.
    viewmat = look_at((0.0, 0.0, 5.0), (0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0), dtype=torch.float64)
    cameras = Cameras(viewmat[None], intrinsics(100, 100, 50, 50, torch.float64)[None], 100, 100)
    pixels, _ = cameras.project(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64))
    assert pixels[0, 0, 0] > 50 and pixels[0, 0, 1] == pytest.approx(50)
    assert pixels[0, 1, 1] < 50 and pixels[0, 1, 0] == pytest.approx(50)
    rotation = viewmat[:3, :3]
    assert torch.allclose(rotation @ rotation.T, torch.eye(3, dtype=torch.float64))
    assert torch.linalg.det(rotation) == pytest.approx(1.0)


def test_look_at_rejects_up_parallel_to_view():
    with pytest.raises(InputError, match="parallel"):
        look_at((0.0, 0.0, 5.0), (0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0))


def test_fov_intrinsics_put_the_image_edge_at_half_the_field_of_view():
    K = intrinsics_from_fov(90.0, 200, 100, dtype=torch.float64)
    assert K[0, 0] == pytest.approx(100.0) and K[0, 2] == 100.0 and K[1, 2] == 50.0
    K = intrinsics_from_fov(60.0, 200, 100, axis="y", dtype=torch.float64)
    assert K[1, 1] * math.tan(math.radians(30.0)) == pytest.approx(50.0)


def test_orbit_cameras_look_at_centre_from_radius_and_elevation():
    K = intrinsics(50, 50, 32, 24, torch.float64)
    cameras = orbit_cameras(K, 64, 48, center=(1.0, 2.0, 3.0), radius=10.0, elevation=30.0, count=5)
    assert len(cameras) == 5
    offsets = cameras.positions - torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert torch.allclose(offsets.norm(dim=-1), torch.full((5,), 10.0, dtype=torch.float64))
    assert torch.allclose(offsets[:, 2], torch.full((5,), 5.0, dtype=torch.float64))
    pixels, _ = cameras.project(torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64))
    assert torch.allclose(pixels[:, 0], torch.tensor([32.0, 24.0], dtype=torch.float64).expand(5, 2))


def test_concatenate_and_index():
    K = intrinsics(50, 50, 32, 24)
    a = orbit_cameras(K, 64, 48, count=2)
    b = orbit_cameras(K, 64, 48, count=3, start_azimuth=10.0)
    joined = concatenate([a, b])
    assert len(joined) == 5 and torch.equal(joined[3].viewmats, b.viewmats[1:2])
    with pytest.raises(InputError, match="different width"):
        concatenate([a, orbit_cameras(K, 32, 48, count=1)])


def test_opengl_conversion_flips_camera_y_and_z():
    viewmat = look_at((3.0, 4.0, 5.0), (0.0, 0.0, 0.0), dtype=torch.float64)
    gl = opencv_to_opengl(viewmat)
    point = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    cv_point, gl_point = viewmat @ point, gl @ point
    assert gl_point[2] < 0 < cv_point[2]  # OpenGL cameras look down -z
    assert torch.allclose(gl_point[:3], cv_point[:3] * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    assert torch.allclose(opengl_to_opencv(gl), viewmat)


def test_camera_config_rejects_bad_values():
    with pytest.raises(ConfigError, match=r"camera\.zfar"):
        from_mapping(CameraConfig, {"znear": 1.0, "zfar": 0.5}, "camera")
    with pytest.raises(ConfigError, match=r"camera\.lookat\.eye"):
        from_mapping(CameraConfig, {"lookat": {"eye": [0, 0, 0]}}, "camera")
    with pytest.raises(ConfigError, match=r"unknown config key 'camera\.fov'"):
        from_mapping(CameraConfig, {"fov": 60}, "camera")
