"""Cameras around a morph, Gaussian renders of particle states, and the image files a run writes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import trimesh

from physmorph.config import E2EConfig, MorphConfig
from physmorph.io.figures import labelled_panels
from physmorph.io.images import write_depth_png, write_normal_png, write_png
from physmorph.io.npz import save_gaussians_npz
from physmorph.io.ply import write_gaussians_ply
from physmorph.io.targets import TargetImages
from physmorph.losses.render_losses import silhouette_iou
from physmorph.optimize.e2e import RenderSettings, render_state
from physmorph.render import Cameras, Images, RenderConfig, intrinsics_from_fov, orbit_cameras, raycast_mesh
from physmorph.surface import Gaussians, SurfaceBinding, SurfaceConfig, bind_surface

FIT_MARGIN = 1.2  # the object's bounding sphere fills 1/FIT_MARGIN of the field of view


def orbit_radius(points: torch.Tensor, fov_deg: float) -> tuple[list[float], float]:
    """Centre and camera distance at which the bounding sphere of `points` [N, 3] fits the view."""
    low, high = points.min(0).values, points.max(0).values
    centre = 0.5 * (low + high)
    extent = (points - centre).norm(dim=-1).max().item()
    return centre.tolist(), FIT_MARGIN * extent / math.sin(math.radians(fov_deg) / 2.0)


def orbit_views(
    settings: E2EConfig,
    points: torch.Tensor,
    count: int,
    elevation: float,
    start_azimuth: float = 0.0,
    size: tuple[int, int] | None = None,
) -> Cameras:
    """`count` z-up orbit cameras around `points` [N, 3] (the grid's up axis, like the reference)."""
    width, height = size or (settings.width, settings.height)
    centre, fitted = orbit_radius(points, settings.fov_deg)
    K = intrinsics_from_fov(settings.fov_deg, width, height, dtype=points.dtype, device=points.device)
    return orbit_cameras(
        K,
        width,
        height,
        center=centre,
        radius=settings.orbit_radius or fitted,
        elevation=elevation,
        up=(0.0, 0.0, 1.0),
        count=count,
        start_azimuth=start_azimuth,
        zfar=1e4,
    )


def train_and_heldout_cameras(settings: E2EConfig, points: torch.Tensor) -> tuple[Cameras, Cameras | None]:
    """The supervising orbit and the held-out orbit (higher, azimuths offset by half a step)."""
    train = orbit_views(settings, points, settings.num_train_views, settings.elevation_deg)
    heldout = None
    if settings.num_heldout_views:
        offset = 180.0 / max(settings.num_heldout_views, 1)
        heldout = orbit_views(settings, points, settings.num_heldout_views, settings.heldout_elevation_deg, offset)
    return train, heldout


def split_targets(targets: TargetImages, count: int) -> tuple[TargetImages, TargetImages | None]:
    """The first `count` views and the rest (None when there is no rest)."""

    def part(index: slice) -> TargetImages:
        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[index]

        return TargetImages(
            targets.cameras[index], targets.alpha[index], pick(targets.depth), pick(targets.rgb), targets.names[index]
        )

    rest = part(slice(count, None)) if len(targets) > count else None
    return part(slice(0, count)), rest


def render_settings(config: MorphConfig) -> RenderSettings:
    return RenderSettings(config.render, config.e2e.opacity, config.e2e.render_backend)


def write_view_images(folder: Path, images: Images, names: list[str]) -> None:
    """rgb, alpha, depth (16-bit mm) and normal PNGs of each view, named `<view>_<kind>.png`."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        write_png(folder / f"{name}_rgb.png", images.rgb[index])
        write_png(folder / f"{name}_alpha.png", images.alpha[index])
        write_depth_png(folder / f"{name}_depth.png", images.depth[index])
        if images.normal is not None:
            write_normal_png(folder / f"{name}_normal.png", images.normal[index])


def side_by_side(targets: TargetImages, images: Images, title: str = "") -> np.ndarray:
    """One labelled image: per view (columns) the target (its rgb, or its mask) over the
    prediction, with the view's name and the silhouette IoU."""

    def as_rgb(t: torch.Tensor) -> torch.Tensor:
        return t.unsqueeze(-1).expand(*t.shape, 3) if t.dim() == 3 else t

    top = as_rgb(targets.rgb if targets.rgb is not None else targets.alpha).detach().cpu().float()
    bottom = images.rgb.detach().cpu().float()
    iou = silhouette_iou(images.alpha.detach().cpu(), targets.alpha.detach().cpu().to(images.alpha.dtype))
    labels = [
        [f"target {name}" for name in targets.names],
        [f"prediction {name}, IoU {value:.3f}" for name, value in zip(targets.names, iou.tolist())],
    ]
    return labelled_panels([[t.numpy() for t in top], [b.numpy() for b in bottom]], labels, title)


def write_gaussians(folder: Path, gaussians: Gaussians) -> None:
    """The Gaussians as NPZ (mu, cov, rgb, opacity) and as a standard 3DGS PLY."""
    save_gaussians_npz(folder / "gaussians.npz", gaussians.detach())
    write_gaussians_ply(folder / "gaussians.ply", gaussians.detach())


def render_frames(
    positions: torch.Tensor,
    deformation_gradients: torch.Tensor,
    surface: SurfaceConfig,
    cameras: Cameras,
    settings: RenderSettings,
    binding: SurfaceBinding | None = None,
) -> tuple[list[Images], SurfaceBinding]:
    """Render every step of one episode ([T+1, N, 3], [T+1, N, 3, 3]) with one surface binding
    (`binding`, or bound here to the first state) so frames do not flicker; camera
    t % len(cameras) renders step t."""
    if binding is None:
        binding = bind_surface(positions[0], deformation_gradients[0], surface)
    frames = []
    with torch.no_grad():
        for t in range(positions.shape[0]):
            camera = cameras[t % len(cameras) : t % len(cameras) + 1]
            _, images = render_state(positions[t], deformation_gradients[t], binding, camera, settings)
            frames.append(images)
    return frames, binding


def mesh_images(mesh: trimesh.Trimesh, cameras: Cameras, render: RenderConfig) -> Images:
    """Ray-cast images of `mesh` shaded, coloured and backed like the Gaussian renders of `render`."""
    return raycast_mesh(mesh, cameras, shading=render.lighting, color=render.particle_color, background=render.bg)


def turntable(settings: E2EConfig, points: torch.Tensor, frames: int, size: int) -> Cameras:
    """Cameras circling once around `points` over `frames` frames (for videos)."""
    return orbit_views(settings, points, frames, settings.elevation_deg, size=(size, size))
