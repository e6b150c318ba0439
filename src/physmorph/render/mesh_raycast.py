"""Ground-truth images of a triangle mesh by ray casting (mask, depth, smooth normals, shaded rgb)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import trimesh

from physmorph.errors import InputError
from physmorph.render.cameras import Cameras
from physmorph.render.config import LightingConfig
from physmorph.render.renderer import DEFAULT_COLOR, Images
from physmorph.render.shading import shade

# Rays per batch handed to the intersector: bounds its temporary arrays to a few hundred MiB.
_RAYS_PER_BATCH = 1 << 20


def embree_available() -> bool:
    """Whether trimesh can use Embree (through the `embreex` package) for ray casting."""
    return bool(trimesh.ray.has_embree)


def _intersector(mesh: trimesh.Trimesh) -> trimesh.ray.ray_triangle.RayMeshIntersector:
    if embree_available():
        from trimesh.ray.ray_pyembree import RayMeshIntersector

        return RayMeshIntersector(mesh)
    return trimesh.ray.ray_triangle.RayMeshIntersector(mesh)


def _check_mesh(mesh: trimesh.Trimesh) -> None:
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise InputError("raycast_mesh needs a trimesh.Trimesh with at least one face")
    if not np.isfinite(mesh.vertices).all():
        raise InputError("raycast_mesh: the mesh has non-finite vertices; repair or reload it")


def _camera_rays(cameras: Cameras, index: int, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Origin [3] and unit world directions [H·s, W·s, 3] through a regular s×s grid in every pixel."""
    K = cameras.Ks[index].detach().double().cpu()
    viewmat = cameras.viewmats[index].detach().double().cpu()
    offsets = (torch.arange(samples, dtype=torch.float64) + 0.5) / samples
    u = (torch.arange(cameras.width, dtype=torch.float64)[:, None] + offsets).reshape(-1)
    v = (torch.arange(cameras.height, dtype=torch.float64)[:, None] + offsets).reshape(-1)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    pixels = torch.stack((uu, vv, torch.ones_like(uu)), dim=-1)
    directions_camera = pixels @ torch.linalg.inv(K).T
    directions = directions_camera @ viewmat[:3, :3]
    directions = directions / directions.norm(dim=-1, keepdim=True)
    return cameras.positions[index].detach().double().cpu().numpy(), directions.numpy()


def raycast_mesh(
    mesh: trimesh.Trimesh,
    cameras: Cameras,
    *,
    shading: LightingConfig | None = None,
    color: Sequence[float] = DEFAULT_COLOR,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    samples: int = 1,
) -> Images:
    """Images of `mesh` as `cameras` see it, by casting rays on the CPU (Embree when available).

    mesh: triangle mesh in world (grid) units; its vertex normals (trimesh's, angle-weighted; interpolated
      barycentrically over each hit triangle) are the smooth surface normal.
    cameras: any batch (OpenCV convention); images have the cameras' size.
    shading: lighting for rgb, applied with the same model as the Gaussian renderer (None: flat
      `color`); background: rgb where no ray hits.
    samples: rays per pixel side (s² per pixel, on a regular grid); alpha is the hit fraction,
      depth, normal and rgb are averaged over the hits of each pixel.
    Returns Images on the CPU in float32: alpha [C, H, W] in [0, 1], depth [C, H, W] camera z
    of the first hit (0 where none), normal [C, H, W, 3] unit world normals (0 where none), rgb
    [C, H, W, 3]. No gradient (the mesh is the ground truth).
    """
    _check_mesh(mesh)
    if samples < 1:
        raise InputError(f"raycast_mesh: samples must be >= 1 ray per pixel side, got {samples}")
    intersector = _intersector(mesh)
    vertex_normals = np.asarray(mesh.vertex_normals, dtype=np.float64)
    triangles = np.asarray(mesh.triangles, dtype=np.float64)
    albedo = torch.as_tensor(color, dtype=torch.float64)
    backdrop = torch.as_tensor(background, dtype=torch.float64)
    height, width = cameras.height * samples, cameras.width * samples
    alphas, depths, normals, colours = [], [], [], []
    for index in range(len(cameras)):
        origin, directions = _camera_rays(cameras, index, samples)
        flat = directions.reshape(-1, 3)
        hit = np.zeros(len(flat), dtype=bool)
        points = np.zeros((len(flat), 3))
        normal = np.zeros((len(flat), 3))
        for start in range(0, len(flat), _RAYS_PER_BATCH):
            batch = flat[start : start + _RAYS_PER_BATCH]
            origins = np.broadcast_to(origin, batch.shape)
            locations, rays, faces = intersector.intersects_location(origins, batch, multiple_hits=False)
            if len(rays) == 0:
                continue
            weights = trimesh.triangles.points_to_barycentric(triangles[faces], locations)
            smooth = np.einsum("rk,rkc->rc", weights, vertex_normals[mesh.faces[faces]])
            smooth /= np.linalg.norm(smooth, axis=1, keepdims=True).clip(1e-12)
            hit[start + rays] = True
            points[start + rays] = locations
            normal[start + rays] = smooth
        viewmat = cameras.viewmats[index].detach().double().cpu().numpy()
        z = points @ viewmat[2, :3] + viewmat[2, 3]
        position = torch.as_tensor(origin)[None]
        surface_points, surface_normals = torch.from_numpy(points), torch.from_numpy(normal)
        rgb = shade(albedo.expand(len(flat), 3), surface_points, surface_normals, position, shading)[0]
        rgb = torch.where(torch.from_numpy(hit)[:, None], rgb, backdrop)
        alphas.append(hit.reshape(height, width).astype(np.float64))
        depths.append(np.where(hit, z, 0.0).reshape(height, width))
        normals.append(normal.reshape(height, width, 3))
        colours.append(rgb.numpy().reshape(height, width, 3))
    return _pooled(np.stack(alphas), np.stack(depths), np.stack(normals), np.stack(colours), samples)


def _pooled(alpha: np.ndarray, depth: np.ndarray, normal: np.ndarray, rgb: np.ndarray, samples: int) -> Images:
    """Average s×s sub-pixel samples into pixels: alpha and rgb over all, depth and normal over hits."""
    count, height, width = alpha.shape[0], alpha.shape[1] // samples, alpha.shape[2] // samples

    def blocks(values: np.ndarray) -> np.ndarray:
        shaped = values.reshape(count, height, samples, width, samples, *values.shape[3:])
        return shaped.sum(axis=(2, 4))

    hits = blocks(alpha)
    safe = np.maximum(hits, 1.0)
    summed_normal = blocks(normal)
    length = np.linalg.norm(summed_normal, axis=-1, keepdims=True)
    unit_normal = np.where(length > 1e-12, summed_normal / np.maximum(length, 1e-12), 0.0)
    return Images(
        rgb=torch.from_numpy(blocks(rgb) / samples**2).float(),
        alpha=torch.from_numpy(hits / samples**2).float(),
        depth=torch.from_numpy(blocks(depth) / safe).float(),
        normal=torch.from_numpy(unit_normal).float(),
    )
