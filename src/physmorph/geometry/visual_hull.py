"""The visual hull of calibrated target images as material points: what every view's mask and depth allow."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from physmorph.errors import InputError
from physmorph.geometry.fill import MaterialPoints
from physmorph.io.targets import TargetImages

COVERED = 0.5  # mask value above which a pixel shows the object (as the image losses use it)
# Lattice points carved per batch: bounds the [C, batch] projection temporaries to a few MiB.
_BATCH = 1 << 18


@torch.no_grad()
def carve_visual_hull(
    targets: TargetImages,
    *,
    box_min: Sequence[float],
    box_max: Sequence[float],
    spacing: float,
    density: float,
    margin: float = 0.0,
) -> MaterialPoints:
    """The material points of the target that the images alone determine (space carving).

    A point of the lattice of `spacing` (grid units) filling [box_min + margin, box_max − margin]
    is kept when, in every view, it projects inside the image, in front of the camera, onto a
    pixel whose mask is covered and, where the view has depth there, no nearer than half a spacing
    in front of the seen surface (the lattice sample of a surface lies up to h/2 outside it). A
    point that some view sees as background, or as empty space in front of the object, is not
    material. What no camera can see (concavities hidden in every view, the underside of an
    object seen only from above) stays filled, as a solid of the same silhouettes would be.

    Each point carries volume h³ and mass density · h³, like `fill_mesh`'s, so the hull's mass
    field compares with the source body's. Points are on the targets' device and dtype.
    """
    device, dtype = targets.alpha.device, targets.alpha.dtype
    cameras = targets.cameras.to(device, dtype)
    low = torch.as_tensor(box_min, dtype=torch.float64) + margin
    high = torch.as_tensor(box_max, dtype=torch.float64) - margin
    counts = torch.floor((high - low) / spacing + 1e-9).long() + 1
    axes = [(low[k] + spacing * torch.arange(int(counts[k]), dtype=torch.float64)).to(device, dtype) for k in range(3)]
    plane = torch.stack(torch.meshgrid(axes[1], axes[2], indexing="ij"), dim=-1).reshape(-1, 2)
    covered = targets.alpha > COVERED
    depth = targets.depth
    width, height = cameras.width, cameras.height
    kept = []
    per_batch = max(1, _BATCH // plane.shape[0])
    for start in range(0, len(axes[0]), per_batch):
        xs = axes[0][start : start + per_batch]
        points = torch.cat([xs.repeat_interleave(plane.shape[0])[:, None], plane.repeat(len(xs), 1)], dim=1)
        pixels, z = cameras.project(points)
        column, row = pixels[..., 0].floor().long(), pixels[..., 1].floor().long()
        inside = (column >= 0) & (column < width) & (row >= 0) & (row < height) & (z > cameras.znear)
        index = row.clamp(0, height - 1) * width + column.clamp(0, width - 1)
        allowed = inside & covered.flatten(1).gather(1, index)
        if depth is not None:
            seen = depth.flatten(1).gather(1, index)
            allowed &= (seen <= 0) | (z >= seen - 0.5 * spacing)
        kept.append(points[allowed.all(dim=0)])
    positions = torch.cat(kept)
    if positions.shape[0] == 0:
        raise InputError(
            f"the target images carve away every point of the grid box at spacing {spacing:g}: no point "
            "projects inside the object's mask in all views; check that the cameras (cameras.json's "
            "world_to_camera, fx, fy, cx, cy) match the masks and that the object lies inside the grid box"
        )
    volume = spacing**3
    return MaterialPoints(
        positions=positions,
        volumes=torch.full((positions.shape[0],), volume, dtype=dtype, device=device),
        masses=torch.full((positions.shape[0],), density * volume, dtype=dtype, device=device),
        spacing=spacing,
    )
