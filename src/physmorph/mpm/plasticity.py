"""Von Mises plasticity of F = Fe·Fp: the return mapping on the Hencky strain, with linear hardening."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from physmorph.batched import eigh

# Eigenvalues of b = Fe Feᵀ are floored here before the logarithm (a collapsed particle).
MIN_STRETCH_SQUARED = 1e-12
# Below this relative gap two eigenvalues count as equal in the divided differences of log.
EQUAL_EIGENVALUES = 1e-8


@dataclass
class Plasticity:
    """Von Mises (J2) plasticity on the Hencky strain ε = log V of Fe = V R.

    yield_stress: τ_y, bound on the Frobenius norm of the deviatoric Kirchhoff stress 2μ ε̂
                  (stress units; ε̂ = ε − tr(ε)/3 I), scalar or [N]
    hardening:    H, τ_y grows by H per unit of accumulated plastic strain α (stress units)
    """

    yield_stress: torch.Tensor | float
    hardening: torch.Tensor | float = 0.0


class _SymmetricLog(torch.autograd.Function):
    """Matrix logarithm of symmetric positive definite [..., 3, 3] matrices.

    The backward is the Daleckii–Krein formula: in the eigenbasis, the gradient is scaled by the
    divided differences (log λ_i − log λ_j) / (λ_i − λ_j), whose limit 1/λ holds at repeated
    eigenvalues, so it stays finite where an SVD's backward (1 / (σ_i² − σ_j²)) does not.
    """

    @staticmethod
    def forward(ctx, b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        raw, U = eigh(b)
        eigenvalues = raw.clamp(min=MIN_STRETCH_SQUARED)
        log_eigenvalues = torch.log(eigenvalues)
        ctx.save_for_backward(U, eigenvalues, raw > MIN_STRETCH_SQUARED)
        return (U * log_eigenvalues.unsqueeze(-2)) @ U.transpose(-1, -2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        U, eigenvalues, free = ctx.saved_tensors
        lam_i, lam_j = eigenvalues.unsqueeze(-1), eigenvalues.unsqueeze(-2)
        # (log λ_i − log λ_j)/(λ_i − λ_j) = log1p(r)/(r λ_j) with r = (λ_i − λ_j)/λ_j > −1
        r = (lam_i - lam_j) / lam_j
        near = r.abs() < EQUAL_EIGENVALUES
        safe_r = torch.where(near, torch.ones_like(r), r)
        divided = torch.where(near, 1.0 - 0.5 * r, torch.log1p(safe_r) / safe_r) / lam_j
        # floored eigenvalues do not move with b
        divided = divided * (free.unsqueeze(-1) & free.unsqueeze(-2)).to(divided.dtype)
        symmetric = 0.5 * (grad + grad.transpose(-1, -2))
        inner = U.transpose(-1, -2) @ symmetric @ U
        return U @ (inner * divided) @ U.transpose(-1, -2)


def symmetric_log(b: torch.Tensor) -> torch.Tensor:
    """log b of symmetric positive definite matrices b [..., 3, 3] (gradient finite at repeated eigenvalues)."""
    return _SymmetricLog.apply(b)


def hencky_strain(F: torch.Tensor) -> torch.Tensor:
    """ε = log V = ½ log(F Fᵀ) of F = V R, [..., 3, 3] symmetric."""
    return 0.5 * symmetric_log(F @ F.transpose(-1, -2))


def deviatoric(M: torch.Tensor) -> torch.Tensor:
    """M − tr(M)/3 I of [..., 3, 3] matrices."""
    eye = torch.eye(3, dtype=M.dtype, device=M.device)
    return M - M.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None] * eye


def return_mapping(
    F_trial: torch.Tensor,
    plastic_strain: torch.Tensor,
    mu: torch.Tensor | float,
    plasticity: Plasticity,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project the elastic gradient back onto the von Mises yield surface, [N, 3, 3] and [N].

    With ε̂ the deviatoric Hencky strain of F_trial and r = (τ_y + H α) / 2μ, a particle with
    ‖ε̂‖ > r flows: its ε̂ is scaled to length r, the volumetric strain is kept (det Fp = 1),
    and α grows by ‖ε̂‖ − r. Returns (Fe, α'); particles inside the yield surface keep F_trial.
    """
    mu = torch.as_tensor(mu, dtype=F_trial.dtype, device=F_trial.device)
    tau_y = torch.as_tensor(plasticity.yield_stress, dtype=F_trial.dtype, device=F_trial.device)
    radius = (tau_y + plasticity.hardening * plastic_strain) / (2.0 * mu)
    strain = deviatoric(hencky_strain(F_trial))
    # squared norms keep the gradient finite at ε̂ = 0; inside the surface `length` equals r exactly
    length = torch.sqrt(torch.maximum((strain**2).sum(dim=(-1, -2)), radius**2))
    shrink = radius / length - 1.0
    # ε̂ and log V commute, so exp((s − 1) ε̂) V R rescales ε̂ alone and keeps R
    Fe = torch.linalg.matrix_exp(shrink[..., None, None] * strain) @ F_trial
    return Fe, plastic_strain + (length - radius)
