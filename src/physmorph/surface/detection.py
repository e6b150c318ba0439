"""Surface detection on a particle cloud: local PCA normals, spacing, soft surface probability."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from physmorph import batched
from physmorph.surface.knn import nearest_neighbors

# Neighbours whose mean distance defines the local particle spacing h (6 = the faces of a cube
# lattice cell, so h equals the lattice spacing on a regular fill).
_SPACING_NEIGHBOURS = 6


@dataclass
class SurfaceDetection:
    """Per-particle surface quantities of a cloud of N particles (no gradient).

    normals:     [N, 3] unit normals, oriented away from the local neighbourhood's centroid
    probability: [N] soft surface probability in [0, 1]
    spacing:     [N] local particle spacing h, grid units
    variation:   [N] surface variation λ_min / (λ_0 + λ_1 + λ_2) of the local PCA, in [0, 1/3]
    """

    normals: torch.Tensor
    probability: torch.Tensor
    spacing: torch.Tensor
    variation: torch.Tensor


@torch.no_grad()
def detect_surface(
    positions: torch.Tensor,
    k_surface: int,
    thr_percentile: float,
    soft_tau: float,
    surface_power: float,
) -> SurfaceDetection:
    """Weighted local PCA over the `k_surface` nearest neighbours of each particle.

    positions: [N, 3] grid units. The normal is the smallest-eigenvalue eigenvector of the
    neighbourhood covariance (Gaussian weights, bandwidth = mean neighbour distance), oriented
    away from the weighted neighbourhood centroid, or from the cloud's centroid where the
    particle sits at its neighbourhood's centroid (deep inside). Surface probability:
    p = sigmoid((t - variation) / soft_tau) ** surface_power, where t is the `thr_percentile`
    percentile of the variation over all particles (flat neighbourhoods have low variation).
    """
    x = positions.detach()
    distances, indices = nearest_neighbors(x, x, min(k_surface + 1, x.shape[0]))
    # Column 0 is the particle itself.
    distances, indices = distances[:, 1:], indices[:, 1:]
    spacing = distances[:, :_SPACING_NEIGHBOURS].mean(dim=1)

    work = x.to(torch.float64)
    neighbours = work[indices]
    d = distances.to(torch.float64)
    bandwidth = d.mean(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    weights = torch.exp(-((d / bandwidth) ** 2))
    weights = weights / weights.sum(dim=1, keepdim=True)
    centroid = torch.einsum("nk,nkc->nc", weights, neighbours)
    centred = neighbours - centroid[:, None, :]
    covariance = torch.einsum("nk,nki,nkj->nij", weights, centred, centred)
    eigenvalues, eigenvectors = batched.eigh(covariance)
    normals = eigenvectors[:, :, 0]
    variation = eigenvalues[:, 0] / eigenvalues.sum(dim=1).clamp_min(1e-300)

    local_side = ((work - centroid) * normals).sum(dim=1)
    global_side = ((work - work.mean(dim=0)) * normals).sum(dim=1)
    undecided = local_side.abs() < 0.05 * spacing.to(torch.float64)
    side = torch.where(undecided, global_side, local_side)
    normals = torch.where((side < 0)[:, None], -normals, normals)

    threshold = torch.quantile(variation, thr_percentile / 100.0)
    probability = torch.sigmoid((threshold - variation) / soft_tau) ** surface_power
    return SurfaceDetection(
        normals=normals.to(x.dtype),
        probability=probability.to(x.dtype),
        spacing=spacing.to(x.dtype),
        variation=variation.to(x.dtype),
    )
