"""Bind-time density equalisation of Gaussian centres over a surface and MLS projection onto it."""

from __future__ import annotations

import math

import torch

from physmorph.surface.config import PostEqualizeConfig
from physmorph.surface.detection import SurfaceDetection
from physmorph.surface.knn import nearest_neighbors


@torch.no_grad()
def equalize_density(
    centres: torch.Tensor,
    normals: torch.Tensor,
    particle_positions: torch.Tensor,
    detection: SurfaceDetection,
    config: PostEqualizeConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spread Gaussian centres toward uniform density along the surface, then project them back.

    centres, normals: [M, 3] (grid units; unit normals); particle_positions: [N, 3].
    Repulsion: each centre moves, within its tangent plane, along the mean offset from its
    `config.k` nearest centres weighted by (1 - d/R)², R = radius_mul × the mean centre spacing
    (estimated from the k-th neighbour distance of a uniform 2D density); the step starts at
    `config.step` and is multiplied by `config.annealing` per iteration. Neighbour lists are
    found once (moves are a fraction of the spacing). MLS projection: the plane through the
    surface-probability-weighted centroid of the nearest particles (kernel
    exp(-d² / (knn_tau h²))) with their blended normal; each iteration moves `mls_step` of the
    way to it. Returns (centres [M, 3], normals [M, 3]).
    """
    x = centres.clone()
    n = normals.clone()
    k = min(config.k, x.shape[0] - 1)
    if config.iters > 0 and k >= 2:
        distances, indices = nearest_neighbors(x, x, k + 1)
        distances, indices = distances[:, 1:], indices[:, 1:]
        spacing = distances[:, -1].median() * math.sqrt(math.pi / k)
        radius = config.radius_mul * spacing
        step = config.step
        for _ in range(config.iters):
            offsets = x[:, None, :] - x[indices]
            weights = (1.0 - offsets.norm(dim=-1) / radius).clamp_min(0.0) ** 2
            shift = (weights[..., None] * offsets).sum(dim=1) / (
                weights.sum(dim=1, keepdim=True) + 1e-12
            )
            shift = shift - (shift * n).sum(dim=1, keepdim=True) * n
            x = x + step * shift
            step *= config.annealing
    if config.use_mls_projection and config.mls_iters > 0:
        k_mls = min(config.k, particle_positions.shape[0])
        for _ in range(config.mls_iters):
            distances, indices = nearest_neighbors(x, particle_positions, k_mls)
            h = detection.spacing[indices[:, 0]][:, None]
            logits = -(distances**2) / (config.knn_tau * h**2)
            kernel = torch.softmax(logits - logits.amax(dim=1, keepdim=True), dim=1)
            weights = kernel * detection.probability[indices]
            weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-30)
            centroid = torch.einsum("mk,mkc->mc", weights, particle_positions[indices])
            blended = torch.einsum("mk,mkc->mc", weights, detection.normals[indices])
            length = blended.norm(dim=1, keepdim=True)
            # Opposing normals (a thin sheet) cancel; keep the previous normal there.
            n = torch.where(length > 1e-6, blended / length.clamp_min(1e-6), n)
            x = x - config.mls_step * ((x - centroid) * n).sum(dim=1, keepdim=True) * n
    return x, n
