"""Constitutive models: fixed-corotated and Neo-Hookean stress, energies and a safe polar rotation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

MaterialModel = Literal["fixed_corotated", "neo_hookean"]

# det F is clamped here before it enters the volume terms (the reference's J floor).
MIN_JACOBIAN = 1e-6
# Denominators σ_i + σ_j of the polar-rotation derivative are kept away from zero (inverted F).
MIN_SINGULAR_SUM = 1e-6


@dataclass
class Material:
    """Elastic material of the particles.

    lam, mu: Lamé parameters λ, μ (stress units), scalars or per-particle [N] tensors
    density:  mass per unit volume (mass units per grid unit³), scalar or [N]
    model:    'fixed_corotated' (the reference's) or 'neo_hookean'
    """

    lam: torch.Tensor | float
    mu: torch.Tensor | float
    density: torch.Tensor | float
    model: MaterialModel = "fixed_corotated"

    @staticmethod
    def from_youngs_modulus(
        youngs_modulus: torch.Tensor | float,
        poisson_ratio: torch.Tensor | float,
        density: torch.Tensor | float,
        model: MaterialModel = "fixed_corotated",
    ) -> Material:
        """Material from Young's modulus E and Poisson's ratio ν (differentiable in both)."""
        lam, mu = lame_parameters(youngs_modulus, poisson_ratio)
        return Material(lam, mu, density, model)


def lame_parameters(
    youngs_modulus: torch.Tensor | float, poisson_ratio: torch.Tensor | float
) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """(λ, μ) from Young's modulus E and Poisson's ratio ν."""
    E, nu = youngs_modulus, poisson_ratio
    lam = E * nu / ((1 + nu) * (1 - 2 * nu))
    mu = E / (2 * (1 + nu))
    return lam, mu


def cofactor(F: torch.Tensor) -> torch.Tensor:
    """Cofactor matrix det(F) F⁻ᵀ of [..., 3, 3] matrices, polynomial in F (no inverse)."""
    c0 = torch.cross(F[..., :, 1], F[..., :, 2], dim=-1)
    c1 = torch.cross(F[..., :, 2], F[..., :, 0], dim=-1)
    c2 = torch.cross(F[..., :, 0], F[..., :, 1], dim=-1)
    return torch.stack((c0, c1, c2), dim=-1)


class _PolarRotation(torch.autograd.Function):
    """R of F = R S (R a rotation, S symmetric), with a backward that is finite at F = I.

    The derivative of R only divides by σ_i + σ_j (never σ_i − σ_j as the SVD's does), so it
    stays finite at repeated singular values; the sums are clamped for inverted F.
    """

    @staticmethod
    def forward(ctx, F: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # Non-finite rows would stop the SVD; they get NaN rotations so divergence stays visible.
        finite = torch.isfinite(F).all(dim=-1).all(dim=-1)
        eye = torch.eye(3, dtype=F.dtype, device=F.device)
        U, sigma, Vh = torch.linalg.svd(torch.where(finite[..., None, None], F, eye))
        # A reflection in U Vᵀ is moved into the smallest singular value so R is a rotation.
        flip = torch.linalg.det(U) * torch.linalg.det(Vh) < 0
        sign = torch.ones_like(sigma)
        sign[..., 2] = torch.where(flip, -1.0, 1.0).to(sigma.dtype)
        U = U * sign.unsqueeze(-2)
        sigma = sigma * sign
        R = torch.where(finite[..., None, None], U @ Vh, torch.full_like(F, float("nan")))
        ctx.save_for_backward(R, Vh, sigma)
        return R

    @staticmethod
    def backward(ctx, grad_R: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        R, Vh, sigma = ctx.saved_tensors
        V = Vh.transpose(-1, -2)
        pair_sum = sigma.unsqueeze(-1) + sigma.unsqueeze(-2)
        pair_sum = torch.where(
            pair_sum.abs() < MIN_SINGULAR_SUM,
            torch.full_like(pair_sum, MIN_SINGULAR_SUM),
            pair_sum,
        )
        K = (Vh @ R.transpose(-1, -2) @ grad_R @ V) / pair_sum
        return R @ V @ (K - K.transpose(-1, -2)) @ Vh


def polar_rotation(F: torch.Tensor) -> torch.Tensor:
    """Rotation part R of the polar decomposition F = R S, [..., 3, 3] (safe gradient)."""
    return _PolarRotation.apply(F)


def jacobian(F: torch.Tensor) -> torch.Tensor:
    """J = max(det F, 1e-6), [...]."""
    return torch.linalg.det(F).clamp(min=MIN_JACOBIAN)


def _j_inverse_transpose(F: torch.Tensor, J: torch.Tensor) -> torch.Tensor:
    """J F⁻ᵀ with J the clamped determinant; equals the cofactor wherever det F ≥ 1e-6."""
    det = torch.linalg.det(F)
    safe_det = torch.where(det.abs() < 1e-30, torch.full_like(det, 1e-30), det)
    return cofactor(F) * (J / safe_det)[..., None, None]


def fixed_corotated_stress(F: torch.Tensor, lam: torch.Tensor | float, mu: torch.Tensor | float) -> torch.Tensor:
    """First Piola–Kirchhoff stress P = 2μ(F − R) + λ(J − 1) J F⁻ᵀ, F [N, 3, 3], λ, μ scalar or [N]."""
    R = polar_rotation(F)
    J = jacobian(F)
    lam, mu = _field(lam, F)[..., None, None], _field(mu, F)[..., None, None]
    return 2.0 * mu * (F - R) + (lam * (J - 1.0)[..., None, None]) * _j_inverse_transpose(F, J)


def fixed_corotated_energy(F: torch.Tensor, lam: torch.Tensor | float, mu: torch.Tensor | float) -> torch.Tensor:
    """Energy density ψ = μ Σ(σ_k − 1)² + λ/2 (J − 1)² = μ‖F − R‖² + λ/2 (J − 1)², [N]."""
    R = polar_rotation(F)
    J = jacobian(F)
    lam, mu = _field(lam, F), _field(mu, F)
    return mu * ((F - R) ** 2).sum(dim=(-1, -2)) + 0.5 * lam * (J - 1.0) ** 2


def neo_hookean_stress(F: torch.Tensor, lam: torch.Tensor | float, mu: torch.Tensor | float) -> torch.Tensor:
    """Neo-Hookean P = μ(F − F⁻ᵀ) + λ log(J) F⁻ᵀ, F [N, 3, 3], λ, μ scalar or [N]."""
    J = jacobian(F)
    F_inv_T = _j_inverse_transpose(F, J) / J[..., None, None]
    lam, mu = _field(lam, F)[..., None, None], _field(mu, F)[..., None, None]
    return mu * (F - F_inv_T) + (lam * torch.log(J)[..., None, None]) * F_inv_T


def neo_hookean_energy(F: torch.Tensor, lam: torch.Tensor | float, mu: torch.Tensor | float) -> torch.Tensor:
    """Energy density ψ = μ/2 (tr FᵀF − 3) − μ log J + λ/2 log² J, [N]."""
    J = jacobian(F)
    logJ = torch.log(J)
    lam, mu = _field(lam, F), _field(mu, F)
    return 0.5 * mu * ((F * F).sum(dim=(-1, -2)) - 3.0) - mu * logJ + 0.5 * lam * logJ**2


def first_piola_stress(F: torch.Tensor, material: Material) -> torch.Tensor:
    """The stress of `material`'s model at F, [N, 3, 3]."""
    if material.model == "neo_hookean":
        return neo_hookean_stress(F, material.lam, material.mu)
    return fixed_corotated_stress(F, material.lam, material.mu)


def elastic_energy_density(F: torch.Tensor, material: Material) -> torch.Tensor:
    """The energy density of `material`'s model at F, [N]."""
    if material.model == "neo_hookean":
        return neo_hookean_energy(F, material.lam, material.mu)
    return fixed_corotated_energy(F, material.lam, material.mu)


def _field(value: torch.Tensor | float, F: torch.Tensor) -> torch.Tensor:
    """A scalar or per-particle [N] parameter as a tensor on F's device and dtype."""
    return torch.as_tensor(value, dtype=F.dtype, device=F.device)
