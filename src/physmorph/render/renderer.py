"""The `render` entry point: shade Gaussians, splat them per camera (PyTorch or gsplat), composite."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from physmorph.device_constants import device_constant
from physmorph.errors import InputError
from physmorph.render.cameras import Cameras
from physmorph.render.config import LightingConfig
from physmorph.render.rasterize import MAX_ALPHA, project_gaussians, rasterize
from physmorph.render.shading import check_background, composite_background, shade
from physmorph.surface.gaussians import Gaussians

Backend = Literal["auto", "torch", "gsplat"]
DEFAULT_COLOR = (0.27, 0.51, 0.71)  # reference `render.particle_color`
_COVERED = 0.5 / 255.0  # any contributing Gaussian adds at least 1/255 alpha


@dataclass
class Images:
    """Rendered images of C cameras.

    rgb:    [C, H, W, 3] colour composited over the background
    alpha:  [C, H, W] accumulated opacity Σ w_i in [0, 1]
    depth:  [C, H, W] expected camera z of the surface, Σ w_i z_i / alpha (normalised, world
            units); 0 where alpha is 0 (no Gaussian contributes)
    normal: [C, H, W, 3] world-space normal Σ w_i n_i normalised to unit length where alpha > 0,
            zero elsewhere; None when the Gaussians have no normals
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    normal: torch.Tensor | None


def gsplat_available() -> bool:
    """Whether the optional gsplat package can be imported."""
    return importlib.util.find_spec("gsplat") is not None


def _choose_backend(backend: str, means: torch.Tensor) -> str:
    if backend not in ("auto", "torch", "gsplat"):
        raise InputError(f"render backend {backend!r} is not one of 'auto', 'torch', 'gsplat'")
    usable = gsplat_available() and means.is_cuda and means.dtype == torch.float32
    if backend == "auto":
        return "gsplat" if usable else "torch"
    if backend == "gsplat" and not usable:
        raise InputError(
            "render backend 'gsplat' needs the gsplat package and float32 tensors on a CUDA "
            f"device (got {means.dtype} on {means.device}); install gsplat or use backend 'torch'"
        )
    return backend


def _check(gaussians: Gaussians) -> int:
    means = gaussians.means
    if means.ndim != 2 or means.shape[-1] != 3:
        raise InputError(
            f"Gaussian means have shape {tuple(means.shape)}; render expects [M, 3] "
            "(render batched Gaussians one set at a time)"
        )
    count = means.shape[0]
    expected = {
        "covariances": (count, 3, 3),
        "normals": (count, 3),
        "colors": (count, 3),
        "opacities": (count,),
    }
    for name, shape in expected.items():
        value = getattr(gaussians, name)
        if value is not None and tuple(value.shape) != shape:
            raise InputError(f"Gaussian {name} have shape {tuple(value.shape)}; expected {list(shape)}")
    return count


def _render_torch(
    means: torch.Tensor,
    covariances: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    normals: torch.Tensor | None,
    cameras: Cameras,
    width: int,
    height: int,
    tile_size: int | None,
    chunk_elements: int,
    antialias: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Premultiplied features [C, H, W, D] (rgb, depth, normals) and alpha [C, H, W]."""
    images, alphas = [], []
    for index in range(len(cameras)):
        projection = project_gaussians(
            means,
            covariances,
            opacities,
            cameras.viewmats[index],
            cameras.Ks[index],
            width,
            height,
            cameras.znear,
            cameras.zfar,
            antialias,
        )
        ids = projection.ids
        channels = [colors[index, ids], projection.depths[:, None]]
        if normals is not None:
            channels.append(normals[ids])
        image, alpha = rasterize(
            projection,
            projection.opacities,
            torch.cat(channels, -1),
            width,
            height,
            tile_size,
            chunk_elements,
        )
        images.append(image)
        alphas.append(alpha)
    return torch.stack(images), torch.stack(alphas)


def _render_gsplat(
    means: torch.Tensor,
    covariances: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    normals: torch.Tensor | None,
    cameras: Cameras,
    width: int,
    height: int,
    tile_size: int | None,
    antialias: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same outputs as _render_torch through gsplat's CUDA rasteriser."""
    import gsplat

    features = colors
    if normals is not None:
        features = torch.cat([colors, normals.expand(colors.shape[0], *normals.shape)], -1)
    # gsplat clamps alpha at 0.999; clamping the opacity keeps alpha <= 0.99 as in 3DGS.
    rendered, alpha, _ = gsplat.rasterization(
        means,
        None,
        None,
        opacities.clamp(max=MAX_ALPHA),
        features,
        cameras.viewmats,
        cameras.Ks,
        width,
        height,
        near_plane=cameras.znear,
        far_plane=cameras.zfar,
        eps2d=0.3,
        packed=False,
        tile_size=16 if tile_size is None else tile_size,
        render_mode="RGB+D",
        rasterize_mode="antialiased" if antialias else "classic",
        covars=covariances,
    )
    image = torch.cat([rendered[..., :3], rendered[..., -1:], rendered[..., 3:-1]], -1)
    return image, alpha[..., 0]


def _render_gsplat_fused(
    gaussians: Gaussians,
    albedo: torch.Tensor,
    opacities: torch.Tensor,
    cameras: Cameras,
    width: int,
    height: int,
    background: torch.Tensor,
    shading: LightingConfig | None,
    tile_size: int | None,
    antialias: bool,
) -> Images:
    """`render` through gsplat's projection and rasteriser (the steps of `gsplat.rasterization`,
    without its covariance gather and depth concatenation), with the shading, the depth
    channel and the normalisation in Triton kernels (fused.py)."""
    import gsplat

    from physmorph.render import fused as fused_kernels

    check_background(background, torch.Size((len(cameras), height, width, 3)))
    means = gaussians.means
    features, covariances, clamped = fused_kernels.prepare_gaussians(
        albedo, means, gaussians.normals, gaussians.covariances, opacities, cameras.viewmats, shading, MAX_ALPHA
    )
    radii, means2d, depths, conics, compensations = gsplat.fully_fused_projection(
        means,
        covariances,
        None,
        None,
        cameras.viewmats,
        cameras.Ks,
        width,
        height,
        eps2d=0.3,
        near_plane=cameras.znear,
        far_plane=cameras.zfar,
        packed=False,
        calc_compensations=antialias,
        opacities=clamped,
    )
    count = len(cameras)
    projected = clamped * compensations if antialias else clamped.expand(count, -1)
    tile = 16 if tile_size is None else tile_size
    tiles_x, tiles_y = -(-width // tile), -(-height // tile)
    _, intersections, flatten_ids = gsplat.isect_tiles(
        means2d, radii, depths, tile, tiles_x, tiles_y, packed=False, n_images=count
    )
    offsets = gsplat.isect_offset_encode(intersections, count, tiles_x, tiles_y).reshape(count, tiles_y, tiles_x)
    rendered, alpha = gsplat.rasterize_to_pixels(
        means2d, conics, features, projected, width, height, tile, offsets, flatten_ids
    )
    rgb, depth, normal = fused_kernels.finish_images(rendered, alpha, background, _COVERED)
    return Images(rgb, alpha[..., 0], depth, normal)


def finish_images(features: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> dict:
    """rgb, depth and normal (None without normal channels) of `Images` from premultiplied
    features [C, H, W, 4 or 7] (colour, Σ w z, then Σ w n) and alpha [C, H, W]."""
    covered = alpha > _COVERED
    safe_alpha = torch.where(covered, alpha, 1.0)
    normal = None
    if features.shape[-1] == 7:
        summed = features[..., 4:7]
        length = torch.linalg.vector_norm(summed, dim=-1, keepdim=True)
        safe_length = torch.where(covered[..., None], length, 1.0).clamp_min(1e-12)
        normal = torch.where(covered[..., None], summed / safe_length, 0.0)
    return {
        "rgb": composite_background(features[..., :3], alpha, background),
        "depth": torch.where(covered, features[..., 3] / safe_alpha, 0.0),
        "normal": normal,
    }


def _constant(values: torch.Tensor | Sequence[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A colour or image as a tensor on the device; host numbers through the shared constants,
    since each host-to-device copy would wait for the GPU."""
    if isinstance(values, torch.Tensor):
        return values.to(dtype=dtype, device=device)
    return device_constant(tuple(float(v) for v in values), dtype, device)


def render(
    gaussians: Gaussians,
    cameras: Cameras,
    width: int | None = None,
    height: int | None = None,
    *,
    background: torch.Tensor | Sequence[float] = (1.0, 1.0, 1.0),
    shading: LightingConfig | None = None,
    default_color: Sequence[float] = DEFAULT_COLOR,
    default_opacity: float = 1.0,
    backend: Backend = "auto",
    tile_size: int | None = None,
    chunk_elements: int = 1 << 20,
    antialias: bool = True,
    fused: bool = True,
) -> Images:
    """Render M Gaussians into C cameras; differentiable w.r.t. means, covariances, colours,
    opacities and normals.

    gaussians: means [M, 3], covariances [M, 3, 3] (symmetrised here), optional normals [M, 3]
      (needed for lambert/phong and the normal map), colors [M, 3] (else `default_color`),
      opacities [M] (else `default_opacity`). Output follows the means' device and dtype.
    cameras: the batch to render; width/height default to the cameras' size.
    background: colour [3], image [H, W, 3] or images [C, H, W, 3]; rgb = Σ w_i c_i + (1−α)·bg.
    shading: lighting applied per Gaussian and camera before splatting (None: flat albedo).
    backend: "torch" (pure PyTorch, any device and dtype), "gsplat" (CUDA, float32) or "auto"
      (gsplat when importable and the tensors are float32 on CUDA, else torch).
    tile_size: pixels per tile side (None: 16 for gsplat; for torch 4, 8 or 16 from the median
      footprint); chunk_elements: work-block size (tiles × pixels × Gaussians) of the torch backend.
    antialias: scale opacities by √(det Σ₂ / det(Σ₂ + 0.3·I)) for the 0.3 px² low-pass filter
      (gsplat's "antialiased" mode; `rasterize.project_gaussians`); False gives classic 3DGS.
    fused: with gsplat, shade and normalise in Triton kernels (render/fused.py; the same images
      and gradients in one kernel per side) where Triton is installed; False runs the PyTorch
      reference ops around gsplat.
    """
    count = _check(gaussians)
    means = gaussians.means
    dtype, device = means.dtype, means.device
    width = cameras.width if width is None else int(width)
    height = cameras.height if height is None else int(height)
    cameras = cameras.to(device=device, dtype=dtype)
    albedo = gaussians.colors
    if albedo is None:
        albedo = _constant(default_color, dtype, device).expand(count, 3)
    opacities = gaussians.opacities
    if opacities is None:
        opacities = _constant((default_opacity,), dtype, device).expand(count)
    background = _constant(background, dtype, device)
    chosen = _choose_backend(backend, means)
    # Triton ships with CUDA PyTorch on Linux, not everywhere gsplat builds (Windows)
    fusable = fused and importlib.util.find_spec("triton") is not None
    if chosen == "gsplat" and fusable and not (cameras.viewmats.requires_grad or background.requires_grad):
        return _render_gsplat_fused(
            gaussians, albedo, opacities, cameras, width, height, background, shading, tile_size, antialias
        )
    covariances = 0.5 * (gaussians.covariances + gaussians.covariances.transpose(-1, -2))
    colors = shade(albedo, means, gaussians.normals, cameras.positions, shading)
    if chosen == "gsplat":
        features, alpha = _render_gsplat(
            means,
            covariances,
            opacities,
            colors,
            gaussians.normals,
            cameras,
            width,
            height,
            tile_size,
            antialias,
        )
    else:
        features, alpha = _render_torch(
            means,
            covariances,
            opacities,
            colors,
            gaussians.normals,
            cameras,
            width,
            height,
            tile_size,
            chunk_elements,
            antialias,
        )
    return Images(alpha=alpha, **finish_images(features, alpha, background))
