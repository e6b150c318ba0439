"""The deformation gradient a particle's neighbourhood shows: a least-squares affine fit of how its neighbours moved.

The state's F is a material variable: with the reference's F smoothing (`smoothing_factor`
0.955) it follows only 4.5% of the motion, and a surfel that follows its particles through that
F lags behind the body wherever the body has moved far (ears that stay stubby, discs that do not
stretch with the material and open gaps). The fit measures the deformation from the particles'
own positions instead: with the k nearest neighbours j of particle i at binding time,
dX_j = X_j − X_i, and now dx_j = x_j − x_i,

    F_i = (Σ_j dx_j dX_jᵀ) A_i⁺ + P_i,   A_i = Σ_j dX_j dX_jᵀ,   P_i = I − A_i A_i⁺,

times the F the particle had when it was bound. It is exact for every affine motion of the
neighbourhood (rigid ones included); P_i keeps the identity along rest directions a flat
neighbourhood does not span.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from physmorph.surface.knn import nearest_neighbors

# Rest moments with an eigenvalue below this fraction of the largest count as flat along it.
_FLAT = 1e-6


@dataclass
class NeighbourhoodFrames:
    """Each particle's neighbours at binding time and what its fit needs of them (N particles, k neighbours).

    neighbors:         [N, k] int64, the nearest particles at binding time (the particle first)
    rest_differences:  [N, k, 3] dX_j = X_j − X_i, grid units
    inverse_moments:   [N, 3, 3] A_i⁺, the pseudo-inverse of Σ_j dX_j dX_jᵀ
    null_projectors:   [N, 3, 3] P_i = I − A_i A_i⁺ (zero where the neighbourhood spans 3D)
    rest_deformation:  [N, 3, 3] the particles' F at binding time
    """

    neighbors: torch.Tensor
    rest_differences: torch.Tensor
    inverse_moments: torch.Tensor
    null_projectors: torch.Tensor
    rest_deformation: torch.Tensor

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> NeighbourhoodFrames:
        """A copy on `device` with floating-point tensors in `dtype` (indices stay int64)."""
        return replace(
            self,
            neighbors=self.neighbors.to(device),
            rest_differences=self.rest_differences.to(device, dtype),
            inverse_moments=self.inverse_moments.to(device, dtype),
            null_projectors=self.null_projectors.to(device, dtype),
            rest_deformation=self.rest_deformation.to(device, dtype),
        )


@torch.no_grad()
def neighbourhood_frames(x_rest: torch.Tensor, F_rest: torch.Tensor, k: int) -> NeighbourhoodFrames:
    """The frames of particles at x_rest [N, 3] with deformation gradients F_rest [N, 3, 3], each
    fitted over its k nearest particles (itself included); computed in float64, returned in
    x_rest's dtype."""
    x = x_rest.detach().to(torch.float64)
    _, neighbors = nearest_neighbors(x, x, min(k, x.shape[0]))
    differences = x[neighbors] - x[:, None, :]
    moments = differences.transpose(1, 2) @ differences
    # On the CPU: cuSOLVER's batched eigensolver behind pinv fails with an internal error on
    # CUDA at ~90k particles (H200, torch 2.11), and N 3×3 solves once per binding are cheap here.
    inverse = torch.linalg.pinv(moments.cpu(), rtol=_FLAT, hermitian=True).to(x.device)
    eye = torch.eye(3, dtype=torch.float64, device=x.device)
    null = eye - moments @ inverse
    dtype = x_rest.dtype
    return NeighbourhoodFrames(
        neighbors=neighbors,
        rest_differences=differences.to(dtype),
        inverse_moments=inverse.to(dtype),
        null_projectors=null.to(dtype),
        rest_deformation=F_rest.detach().to(dtype),
    )


def measured_deformation(x: torch.Tensor, frames: NeighbourhoodFrames) -> torch.Tensor:
    """Deformation gradients [N, 3, 3] that the particles at x [N, 3] show relative to their
    frames (differentiable in x)."""
    moved = x[frames.neighbors] - x[:, None, :]
    fit = moved.transpose(1, 2) @ frames.rest_differences @ frames.inverse_moments + frames.null_projectors
    return fit @ frames.rest_deformation
