"""Per-frame runtime surface: particles (x, F) -> anisotropic Gaussians, differentiable."""

from __future__ import annotations

import torch

from physmorph.errors import InputError
from physmorph.mpm.materials import cofactor
from physmorph.surface.binding import SurfaceBinding, _check_state, bind_surface
from physmorph.surface.config import SurfaceConfig
from physmorph.surface.gaussians import Gaussians
from physmorph.surface.measured_deformation import measured_deformation

# Σ = F̄ Σ₀ F̄ᵀ + _SPD_EPSILON σ_t² I: keeps Σ strictly positive definite even for a singular F̄,
# at a relative cost of 1e-6 in variance.
_SPD_EPSILON = 1e-6


class _SparseRows(torch.autograd.Function):
    """values [N, C] -> W values [M, C] for a constant sparse W whose transpose is precomputed."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        values: torch.Tensor,
        matrix: torch.Tensor,
        transpose: torch.Tensor,
    ) -> torch.Tensor:
        ctx.matrices = (matrix, transpose)
        return matrix @ values

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor, None, None]:
        matrix, transpose = ctx.matrices
        # Applying the (linear) function again keeps higher derivatives available.
        return _SparseRows.apply(grad_output.contiguous(), transpose, matrix), None, None


def synthesize_surface(
    x: torch.Tensor,
    F: torch.Tensor,
    binding: SurfaceBinding,
    scale: torch.Tensor | float = 1.0,
    flatness: torch.Tensor | None = None,
) -> Gaussians:
    """The bound Gaussians of particle state (x, F); differentiable in x and F.

    x: [N, 3] particle positions, grid units; F: [N, 3, 3] deformation gradients. A binding
    with neighbourhood frames (SurfaceConfig.deformation "measured") replaces F by the
    deformation the positions show (`measured_deformation`; F is then unused). With the
    binding's fixed kernel weights w (rows sum to 1), per Gaussian:
      x̄ = Σ_k w_k x_k,  F̄ = Σ_k w_k F_k                  (one sparse product for both)
      μ = x̄ + F̄ r                                        (r: rest offset, material frame)
      Σ = F̄ Σ₀ F̄ᵀ + 1e-6 σ_t² I,  Σ₀ = σ_t² (I − N Nᵀ) + σ_n² N Nᵀ   (a disc in the tangent plane)
      n = cof(F̄) N / |cof(F̄) N|,  cof F̄ = det(F̄) F̄⁻ᵀ     (Nanson; N: material normal)
    μ is exact for any affine motion of the neighbourhood, the disc stays tangent to the
    deformed surface (F̄ maps tangents to tangents) and Σ, n follow rigid motions exactly.
    `scale` multiplies σ_t and σ_n, `flatness` (if given) replaces σ_n / σ_t: scalars or [M]
    tensors that may require grad, to train the surfels' size and thickness.
    Returns Gaussians(means [M, 3], covariances [M, 3, 3], normals [M, 3]) on x's device and
    dtype (the binding is moved there if needed).
    """
    _check_state(x, F)
    if x.shape[0] != binding.particle_count:
        raise InputError(
            f"the surface was bound to {binding.particle_count} particles but the state has "
            f"{x.shape[0]}; call bind_surface again for this particle set"
        )
    if binding.rest_offsets.device != x.device or binding.rest_offsets.dtype != x.dtype:
        binding = binding.to(x.device, x.dtype)
    n = x.shape[0]
    if binding.frames is not None:
        F = measured_deformation(x, binding.frames)
    stacked = torch.cat((x, F.reshape(n, 9).to(x.dtype)), dim=1)
    averaged = _SparseRows.apply(stacked, binding.interpolation, binding.interpolation_t)
    x_mean = averaged[:, :3]
    F_mean = averaged[:, 3:].reshape(-1, 3, 3)
    means = x_mean + (F_mean @ binding.rest_offsets[:, :, None])[:, :, 0]
    eye = torch.eye(3, dtype=x.dtype, device=x.device)
    tangent = binding.tangent_scales * scale
    normal_scale = binding.normal_scales * scale if flatness is None else tangent * flatness
    N = binding.material_normals
    across = N[:, :, None] * N[:, None, :]
    rest = (tangent**2)[:, None, None] * (eye - across) + (normal_scale**2)[:, None, None] * across
    covariances = F_mean @ rest @ F_mean.transpose(1, 2) + _SPD_EPSILON * (tangent**2)[:, None, None] * eye
    normals = (cofactor(F_mean) @ binding.material_normals[:, :, None])[:, :, 0]
    normals = normals / normals.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    return Gaussians(means=means, covariances=covariances, normals=normals)


def synthesize_surface_once(
    x: torch.Tensor,
    F: torch.Tensor,
    config: SurfaceConfig,
    generator: torch.Generator | None = None,
) -> Gaussians:
    """Bind to (x, F) and synthesise the Gaussians of that same state, for one-off use.

    Shapes as in `synthesize_surface`; the result is differentiable in x and F (the binding
    itself, which particles and weights, is not).
    """
    return synthesize_surface(x, F, bind_surface(x, F, config, generator))
