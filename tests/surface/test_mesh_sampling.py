"""Surfels sampled from the body's mesh: even by area, smooth normals, thin parts, binding, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from physmorph.errors import InputError
from physmorph.geometry import make_shape
from physmorph.surface import MeshSurface, SurfaceConfig, bind_surface, nearest_neighbors, synthesize_surface
from physmorph.surface.mesh_sampling import neighbour_thickness

from .helpers import identity_gradients, lattice_ball


def _faces_of(mesh: trimesh.Trimesh, points: torch.Tensor) -> np.ndarray:
    """The triangle each of `points` [P, 3] lies on (closest point query)."""
    _, distances, faces = trimesh.proximity.closest_point(mesh, points.numpy())
    assert distances.max() < 1e-9
    return faces


def test_each_triangle_gets_its_share_of_the_area():
    mesh = make_shape("box", extents=(16.0, 10.0, 8.0))  # 12 triangles of three sizes
    surface = MeshSurface.from_trimesh(mesh)
    count = 9_000
    points, _ = surface.sample(count, torch.Generator().manual_seed(0))
    counts = np.bincount(_faces_of(mesh, points), minlength=len(mesh.faces))
    expected = mesh.area_faces / mesh.area * count
    # systematic sampling: the floor or the ceiling of the expected count (a point on a shared
    # edge may be attributed to the neighbour)
    assert np.abs(counts - expected).max() <= 2.0
    assert surface.area() == pytest.approx(mesh.area)


def test_samples_are_even_and_reproducible():
    surface = MeshSurface.from_trimesh(make_shape("sphere", radius=5.0, subdivisions=4))
    count = 8_000
    points, _ = surface.sample(count, torch.Generator().manual_seed(3))
    again, _ = surface.sample(count, torch.Generator().manual_seed(3))
    other, _ = surface.sample(count, torch.Generator().manual_seed(4))
    assert torch.equal(points, again) and not torch.equal(points, other)
    spacing = math.sqrt(surface.area() / count)
    distances, _ = nearest_neighbors(points, points, 2)
    # independent uniform samples put ~18% of points within a quarter spacing of another
    assert (distances[:, 1] < 0.25 * spacing).double().mean() < 0.06
    octant = ((points > 0).long() * torch.tensor([4, 2, 1])).sum(dim=1)
    counts = torch.bincount(octant, minlength=8).double()
    assert (counts / counts.mean() - 1).abs().max() < 0.02


def test_normals_interpolate_the_vertex_normals_the_ray_caster_uses():
    mesh = make_shape("sphere", radius=5.0, subdivisions=1)  # coarse: smooth ≠ face normals
    points, normals = MeshSurface.from_trimesh(mesh).sample(2_000, torch.Generator().manual_seed(1))
    faces = _faces_of(mesh, points)
    weights = trimesh.triangles.points_to_barycentric(mesh.triangles[faces], points.numpy())
    expected = np.einsum("pk,pkc->pc", weights, mesh.vertex_normals[mesh.faces[faces]])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(normals.numpy(), expected, atol=1e-9)
    face_cosine = (normals.numpy() * mesh.face_normals[faces]).sum(1)
    assert face_cosine.min() < 0.95  # they really vary over each triangle
    radial = (normals * points / points.norm(dim=1, keepdim=True)).sum(1)
    assert radial.min() > 0.98


@pytest.fixture(scope="module")
def ball_with_mesh():
    """Lattice ball (radius 6, spacing 0.5), its sphere mesh and a mesh binding at F = I."""
    x = lattice_ball()
    F = identity_gradients(x.shape[0])
    mesh = make_shape("sphere", radius=6.0, subdivisions=4)
    config = SurfaceConfig(M=4000, seed=2)
    return x, F, mesh, config, bind_surface(x, F, config, mesh=mesh)


def test_binding_at_rest_reproduces_the_mesh_surface(ball_with_mesh):
    x, F, mesh, config, binding = ball_with_mesh
    gaussians = synthesize_surface(x, F, binding)
    inset = 0.75 * float(binding.tangent_scales[0])
    assert float(binding.tangent_scales[0]) == pytest.approx(config.coverage * math.sqrt(mesh.area / config.M))
    _, depth, faces = trimesh.proximity.closest_point(mesh, gaussians.means.numpy())
    # each centre sits `inset` inside the mesh along its smooth normal (≤ 3.7° off the face's)
    assert depth.max() < inset + 1e-9 and depth.min() > 0.998 * inset
    surface = gaussians.means + inset * gaussians.normals
    _, on_mesh, _ = trimesh.proximity.closest_point(mesh, surface.numpy())
    assert on_mesh.max() < 1e-6
    inside = mesh.contains(gaussians.means.numpy())
    assert inside.all()
    assert (gaussians.normals.numpy() * mesh.face_normals[faces]).sum(1).min() > 0.998


def test_mesh_binding_is_deterministic(ball_with_mesh):
    x, F, mesh, config, binding = ball_with_mesh
    again = bind_surface(x, F, config, mesh=mesh)
    assert torch.equal(again.rest_offsets, binding.rest_offsets)
    assert torch.equal(again.neighbor_indices, binding.neighbor_indices)


def _block_with_fin() -> tuple[torch.Tensor, trimesh.Trimesh]:
    """Particles (spacing 0.5) of a block x in [-3, 0] and the mesh of the block with a fin, a
    flat ellipsoid reaching x = 1.8, at most 0.24 thick (less than the spacing): no particle
    lies in the part of the fin outside the block."""
    axis = torch.arange(-2.75, 0.0, 0.5, dtype=torch.float64)
    side = torch.arange(-2.75, 3.0, 0.5, dtype=torch.float64)
    x = torch.stack(torch.meshgrid(axis, side, side, indexing="ij"), dim=-1).reshape(-1, 3)
    block = make_shape("box", extents=(3.0, 6.0, 6.0), center=(-1.5, 0.0, 0.0))
    fin = make_shape("ellipsoid", radii=(1.2, 2.0, 0.12), center=(0.6, 0.0, 0.0))
    return x, trimesh.util.concatenate([block, fin])


@pytest.mark.parametrize("embree", [True, False])
def test_a_fin_thinner_than_the_spacing_gets_surfels_with_outward_normals(embree, monkeypatch):
    if embree and not trimesh.ray.has_embree:
        pytest.skip("embreex is not installed")
    monkeypatch.setattr(trimesh.ray, "has_embree", embree)
    x, mesh = _block_with_fin()
    F = identity_gradients(x.shape[0])
    binding = bind_surface(x, F, SurfaceConfig(M=6000, seed=0), mesh=mesh)
    gaussians = synthesize_surface(x, F, binding)
    means, normals = gaussians.means, gaussians.normals
    on_faces = (means[:, 0] > 0.3) & (means[:, 0] < 1.2) & (means[:, 1].abs() < 1.0)
    assert on_faces.sum() > 0.5 * 6000 * (2 * 0.9 * 2.0) / mesh.area
    above, below = on_faces & (means[:, 2] > 0), on_faces & (means[:, 2] < 0)
    assert above.sum() > 0.4 * on_faces.sum() and below.sum() > 0.4 * on_faces.sum()
    assert (normals[above, 2] > 0.99).all() and (normals[below, 2] < -0.99).all()
    assert means[on_faces, 2].abs().max() < 0.12  # inside the fin, which no particle holds
    # an affine motion of the particles carries the fin exactly (rest offsets through F)
    A = torch.tensor([[1.1, 0.2, 0.0], [0.0, 0.9, 0.1], [0.05, 0.0, 1.2]], dtype=torch.float64)
    moved = synthesize_surface(x @ A.T + 1.0, A.expand_as(F).contiguous(), binding)
    torch.testing.assert_close(moved.means, means @ A.T + 1.0)
    nanson = normals @ torch.linalg.inv(A)
    torch.testing.assert_close(moved.normals, nanson / nanson.norm(dim=1, keepdim=True))


def test_thickness_by_rays_and_by_neighbours_agree_on_a_thin_disc(monkeypatch):
    mesh = make_shape("ellipsoid", radii=(3.0, 3.0, 0.06), subdivisions=5)  # 0.12 thick: 1.2 spacings
    surface = MeshSurface.from_trimesh(mesh)
    points, normals = surface.sample(6000, torch.Generator().manual_seed(0))
    central = points[:, :2].norm(dim=1) < 1.5
    expected = 0.12 * (1 - points[central, :2].norm(dim=1) ** 2 / 9).sqrt()  # through the middle plane
    by_neighbours = neighbour_thickness(points, normals)[central]
    torch.testing.assert_close(by_neighbours, expected, rtol=0.15, atol=0.0)
    if trimesh.ray.has_embree:
        torch.testing.assert_close(surface.thickness(points, normals)[central], expected, rtol=0.05, atol=0.0)
    monkeypatch.setattr(trimesh.ray, "has_embree", False)
    assert torch.equal(surface.thickness(points, normals)[central], by_neighbours)
    # a thick body: nothing within reach faces the other way
    ball = MeshSurface.from_trimesh(make_shape("sphere", radius=5.0))
    points, normals = ball.sample(4000, torch.Generator().manual_seed(0))
    assert torch.isinf(neighbour_thickness(points, normals)).all()


def test_an_empty_mesh_is_an_input_error():
    x = lattice_ball(radius=3.0)
    with pytest.raises(InputError, match="no faces"):
        bind_surface(x, identity_gradients(x.shape[0]), SurfaceConfig(M=100), mesh=trimesh.Trimesh())


def test_a_mesh_that_is_not_a_trimesh_is_an_input_error():
    x = lattice_ball(radius=3.0)
    with pytest.raises(InputError, match=r"trimesh\.Trimesh"):
        bind_surface(x, identity_gradients(x.shape[0]), SurfaceConfig(M=100), mesh=np.zeros((3, 3)))


def test_a_mesh_of_other_units_or_place_is_an_input_error():
    x = lattice_ball(radius=3.0)
    F = identity_gradients(x.shape[0])
    for wrong in (make_shape("sphere", radius=30.0), make_shape("sphere", radius=3.0, center=(10.0, 0.0, 0.0))):
        with pytest.raises(InputError, match="does not match the particles"):
            bind_surface(x, F, SurfaceConfig(M=500), mesh=wrong)


def test_a_mesh_with_bad_faces_is_an_input_error():
    x = lattice_ball(radius=3.0)
    broken = trimesh.Trimesh(np.eye(3), np.array([[0, 1, 7]]), process=False, validate=False)
    with pytest.raises(InputError, match="outside"):
        bind_surface(x, identity_gradients(x.shape[0]), SurfaceConfig(M=100), mesh=broken)


@pytest.mark.gpu
def test_gpu_mesh_binding_matches_the_cpu_surface():
    x = lattice_ball(radius=3.0)
    F = identity_gradients(x.shape[0])
    mesh = make_shape("sphere", radius=3.0)
    config = SurfaceConfig(M=500)
    cpu = synthesize_surface(x, F, bind_surface(x, F, config, mesh=mesh))
    gpu = synthesize_surface(x.cuda(), F.cuda(), bind_surface(x.cuda(), F.cuda(), config, mesh=mesh))
    # the same samples (drawn on the CPU); at F = I the means are the sampled centres
    torch.testing.assert_close(gpu.means.cpu(), cpu.means)
    torch.testing.assert_close(gpu.normals.cpu(), cpu.normals)
