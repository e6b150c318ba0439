"""2D Chamfer distance between projected Gaussian centres and target silhouettes (pulls from any distance)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as nnf
from scipy import ndimage

from physmorph.losses.render_losses import COVERED
from physmorph.render.cameras import Cameras
from physmorph.surface.knn import nearest_neighbors

MAX_TARGET_PIXELS = 8192  # covered pixels per view that look for their nearest centre
# Centres they look among: a regular subsample keeps the search cheap at M = 10⁶; the surfels are
# stored along a space-filling curve, so every s-th one still covers the whole surface.
MAX_SEARCHED_CENTRES = 32_768


@dataclass
class SilhouettePixels:
    """What the loss needs from target masks, per camera (no gradient).

    outside: [C, H, W] distance in pixels from each pixel centre to the nearest covered pixel
             centre, 0 on covered pixels
    covered: per camera, [P, 2] pixel coordinates (x right, y down) of covered pixel centres,
             a regular subsample of at most MAX_TARGET_PIXELS
    """

    outside: torch.Tensor
    covered: list[torch.Tensor]


@torch.no_grad()
def silhouette_pixels(target_alpha: torch.Tensor, max_pixels: int = MAX_TARGET_PIXELS) -> SilhouettePixels:
    """Distance fields and covered pixels of masks target_alpha [C, H, W] > 0.5."""
    masks = (target_alpha > COVERED).cpu().numpy()
    outside = []
    covered = []
    for mask in masks:
        if mask.any():
            outside.append(ndimage.distance_transform_edt(~mask))
        else:
            outside.append(np.zeros(mask.shape))
        rows, columns = np.nonzero(mask)
        stride = max(1, -(-rows.size // max_pixels))
        centres = np.stack((columns[::stride] + 0.5, rows[::stride] + 0.5), axis=1)
        covered.append(torch.from_numpy(centres).to(device=target_alpha.device, dtype=target_alpha.dtype))
    field = torch.from_numpy(np.stack(outside)).to(device=target_alpha.device, dtype=target_alpha.dtype)
    return SilhouettePixels(field, covered)


def _outside_distance(field: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Bilinear `field` [H, W] at pixel coordinates [M, 2] inside the image."""
    height, width = field.shape
    grid = (2.0 * pixels / pixels.new_tensor([width, height]) - 1.0).view(1, 1, -1, 2)
    sampled = nnf.grid_sample(field.view(1, 1, height, width), grid, mode="bilinear", align_corners=False)
    return sampled.view(-1)


def silhouette_chamfer_loss(means: torch.Tensor, cameras: Cameras, target: SilhouettePixels) -> torch.Tensor:
    """Mean over cameras of ½ (mean over centres of their pixel distance to the target
    silhouette + mean over covered target pixels of their pixel distance to the nearest centre of
    a regular subsample of at most MAX_SEARCHED_CENTRES), in image widths. Only centres that lie
    in front of the camera and project onto the image count (a mask says nothing about what lies
    outside its frame).

    means [M, 3] (differentiable); `target` from `silhouette_pixels` for the same cameras. Hidden
    centres count as much as seen ones, because the silhouette is the projection of the whole body.
    Unlike the per-pixel silhouette term, a missing part pulls the nearest centres from any
    distance, and a protruding part is pushed back however far it sticks out.
    """
    cameras = cameras.to(device=means.device, dtype=means.dtype)
    projected, depth = cameras.project(means)
    stride = max(1, -(-means.shape[0] // MAX_SEARCHED_CENTRES))
    total = means.new_zeros(())
    for view in range(len(cameras)):
        on_image = (depth[view] > cameras.znear) & (projected[view] >= 0).all(-1)
        on_image &= (projected[view, :, 0] <= cameras.width) & (projected[view, :, 1] <= cameras.height)
        pixels = projected[view][on_image]
        searched = projected[view, ::stride][on_image[::stride]]
        covered = target.covered[view]
        if searched.shape[0] == 0 or covered.shape[0] == 0:
            continue
        outward = _outside_distance(target.outside[view], pixels).mean()
        # the 2D search runs on the 3D one with every point in the plane z = 0
        _, nearest = nearest_neighbors(nnf.pad(covered, (0, 1)), nnf.pad(searched.detach(), (0, 1)), 1)
        reached = searched.index_select(0, nearest[:, 0].to(searched.device))
        inward = torch.linalg.vector_norm(covered - reached, dim=-1).mean()
        total = total + 0.5 * (outward + inward)
    return total / (len(cameras) * cameras.width)
