"""Ray-cast mesh images against the analytic sphere, and Embree against trimesh's own intersector."""

from __future__ import annotations

import math

import pytest
import torch
import trimesh

from physmorph.errors import InputError
from physmorph.render import Cameras, LightingConfig, intrinsics_from_fov, look_at, mesh_raycast, orbit_cameras
from physmorph.render.mesh_raycast import raycast_mesh

RADIUS = 5.0
DISTANCE = 30.0


def _sphere() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=5, radius=RADIUS)


def _cameras(size: int = 96, count: int = 3):
    K = intrinsics_from_fov(40.0, size, size, dtype=torch.float64)
    return orbit_cameras(K, size, size, center=[0, 0, 0], radius=DISTANCE, elevation=20.0, up=(0, 0, 1), count=count)


def test_sphere_depth_normals_and_outline_match_the_analytic_sphere() -> None:
    cameras = _cameras()
    images = raycast_mesh(_sphere(), cameras)
    hit = images.alpha > 0.5
    # The outline: the sphere subtends a cone of half-angle asin(r / d) around the view axis.
    fx = float(cameras.Ks[0, 0, 0])
    disc_radius_px = fx * math.tan(math.asin(RADIUS / DISTANCE))
    expected_area = math.pi * disc_radius_px**2
    assert hit[0].sum().item() == pytest.approx(expected_area, rel=0.03)
    # Depth at the image centre is the distance to the near pole.
    centre = images.depth[:, cameras.height // 2, cameras.width // 2]
    assert torch.allclose(centre, torch.full_like(centre, DISTANCE - RADIUS), atol=0.02)
    # Normals are radial: n = p / r with p the hit point reconstructed from depth.
    camtoworld = cameras.camtoworlds[0]
    rows, cols = torch.nonzero(hit[0], as_tuple=True)
    pixels = torch.stack((cols + 0.5, rows + 0.5, torch.ones_like(rows, dtype=torch.float64)), -1)
    rays = pixels @ torch.linalg.inv(cameras.Ks[0]).T
    points_camera = rays * images.depth[0, rows, cols, None].double()
    points = points_camera @ camtoworld[:3, :3].T + camtoworld[:3, 3]
    radial = points / points.norm(dim=1, keepdim=True)
    cosine = (radial * images.normal[0, rows, cols].double()).sum(1).clamp(-1, 1)
    assert torch.rad2deg(torch.acos(cosine)).max() < 1.0
    assert (images.normal[~hit] == 0).all() and (images.depth[~hit] == 0).all()


def test_shaded_rgb_uses_the_lighting_and_background() -> None:
    cameras = _cameras(size=48, count=1)
    flat = raycast_mesh(_sphere(), cameras, color=(0.2, 0.4, 0.6), background=(1.0, 0.0, 0.0))
    hit = flat.alpha[0] > 0.5
    assert torch.allclose(flat.rgb[0][hit], torch.tensor([0.2, 0.4, 0.6]), atol=1e-6)
    assert torch.allclose(flat.rgb[0][~hit], torch.tensor([1.0, 0.0, 0.0]))
    lit = raycast_mesh(_sphere(), cameras, shading=LightingConfig(model="lambert"))
    brightness = lit.rgb[0][hit].sum(-1)
    assert brightness.max() > 2.0 * brightness.min()  # lit and shadowed sides differ


def test_supersampling_gives_fractional_alpha_only_on_the_outline() -> None:
    cameras = _cameras(size=48, count=1)
    images = raycast_mesh(_sphere(), cameras, samples=3)
    partial = (images.alpha > 0) & (images.alpha < 1)
    assert partial.sum() > 0
    single = raycast_mesh(_sphere(), cameras)
    # Partial pixels sit next to the single-sample outline, never deep inside or outside.
    inside = single.alpha[0] > 0.5
    eroded = torch.nn.functional.max_pool2d((~inside).float()[None, None], 5, 1, 2)[0, 0] == 0
    assert not (partial[0] & eroded).any()


def test_embree_and_trimesh_intersectors_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    if not mesh_raycast.embree_available():
        pytest.skip("needs embreex")
    mesh = trimesh.creation.torus(major_radius=5.0, minor_radius=2.0)
    K = intrinsics_from_fov(40.0, 40, 32, dtype=torch.float64)
    viewmats = look_at([[20.0, -14.0, 9.0]], [0.0, 0.0, 0.0], dtype=torch.float64)
    cameras = Cameras(viewmats, K[None], 40, 32)
    embree = raycast_mesh(mesh, cameras)
    monkeypatch.setattr(mesh_raycast, "embree_available", lambda: False)
    plain = raycast_mesh(mesh, cameras)
    agree = (embree.alpha == plain.alpha).float().mean()
    assert agree > 0.995
    both = (embree.alpha > 0) & (plain.alpha > 0)
    assert torch.allclose(embree.depth[both], plain.depth[both], atol=1e-3)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(InputError, match="samples"):
        raycast_mesh(_sphere(), _cameras(size=8, count=1), samples=0)
    broken = _sphere()
    broken.vertices[0, 0] = float("nan")
    with pytest.raises(InputError, match="non-finite"):
        raycast_mesh(broken, _cameras(size=8, count=1))
