"""Per-Gaussian shading (flat, Lambert, Phong under a directional light) and background compositing."""

from __future__ import annotations

import torch

from physmorph.errors import InputError
from physmorph.render.config import LightingConfig


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    length = torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)
    return vectors / length.clamp_min(torch.finfo(vectors.dtype).tiny ** 0.5)


def require_normals(normals: torch.Tensor | None, lighting: LightingConfig | None) -> None:
    """Raise InputError when `lighting` shades by normal and there are none."""
    if normals is None and lighting is not None and lighting.model != "flat":
        raise InputError(
            f"{lighting.model} shading needs per-Gaussian normals, but the Gaussians have none; "
            "give Gaussians.normals or use lighting model 'flat'"
        )


def shade(
    albedo: torch.Tensor,
    means: torch.Tensor,
    normals: torch.Tensor | None,
    camera_positions: torch.Tensor,
    lighting: LightingConfig | None,
) -> torch.Tensor:
    """Colour each Gaussian as seen from each camera.

    albedo: [M, 3] in [0, 1]; means: [M, 3] world; normals: [M, 3] world (need not be unit
    length; required unless flat); camera_positions: [C, 3] world.
    lighting: None or model "flat" gives the albedo. "lambert": albedo·(ambient + diffuse·max(n·l, 0)).
    "phong": Lambert plus a white highlight specular·max(r·v, 0)^shininess, r = 2(n·l)n − l the
    mirrored light direction and v the unit vector from the Gaussian to the camera. l is the unit
    `lighting.direction` (from the scene toward the light). With two_sided, a normal facing away
    from the camera is flipped first. Colours are not clipped (they can exceed 1 for bright
    settings; image writers clip).
    Returns [C, M, 3].
    """
    count = camera_positions.shape[0]
    require_normals(normals, lighting)
    if lighting is None or lighting.model == "flat":
        return albedo.expand(count, *albedo.shape)
    light = _unit(torch.as_tensor(lighting.direction, dtype=albedo.dtype, device=albedo.device))
    view = _unit(camera_positions[:, None, :] - means[None, :, :])
    normal = _unit(normals).expand_as(view)
    if lighting.two_sided:
        facing = (normal * view).sum(-1, keepdim=True)
        normal = torch.where(facing < 0, -normal, normal)
    n_dot_l = (normal * light).sum(-1, keepdim=True)
    color = albedo * (lighting.ambient + lighting.diffuse * n_dot_l.clamp_min(0.0))
    if lighting.model == "phong":
        reflected = 2.0 * n_dot_l * normal - light
        r_dot_v = (reflected * view).sum(-1, keepdim=True).clamp_min(0.0)
        highlight = torch.where(n_dot_l > 0, r_dot_v**lighting.shininess, 0.0)
        color = color + lighting.specular * highlight
    return color


def check_background(background: torch.Tensor, shape: torch.Size) -> None:
    """Raise InputError unless `background` is a colour [3], an image [H, W, 3] or images
    [C, H, W, 3] for rgb images of `shape` [C, H, W, 3]."""
    if background.shape not in ((3,), shape[1:], shape):
        raise InputError(
            f"background has shape {tuple(background.shape)}; expected [3], {list(shape[1:])} or {list(shape)}"
        )


def composite_background(color: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """rgb = color + (1 − alpha)·background.

    color: [C, H, W, 3] premultiplied (Σ w_i c_i); alpha: [C, H, W];
    background: [3] colour, [H, W, 3] image or [C, H, W, 3] per-camera images.
    """
    check_background(background, color.shape)
    return color + (1.0 - alpha).unsqueeze(-1) * background
