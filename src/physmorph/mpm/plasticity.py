"""Von Mises plasticity of F = Fe·Fp: the return mapping on the Hencky strain, with linear hardening."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from physmorph.batched import eigh, symmetric_eigen3

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


# Below this relative gap the divided differences of the mapping's backward come from their Taylor
# series (the fused kernels use the same series, so both stay finite at repeated eigenvalues).
SERIES_GAP = 1e-2
# the off-diagonal pairs (i, j), i < j, of a 3×3 eigenbasis
_PAIRS = ([0, 0, 1], [1, 2, 2])


def _log_slope(li: torch.Tensor, lj: torch.Tensor) -> torch.Tensor:
    """(log λ_i − log λ_j) / (λ_i − λ_j), from its series in ρ = (λ_i − λ_j)/λ_j near ρ = 0."""
    rho = (li - lj) / lj
    series = (1.0 - rho * (0.5 - rho * (1.0 / 3.0 - rho * (0.25 - rho * 0.2)))) / lj
    near = rho.abs() < SERIES_GAP
    return torch.where(near, series, (torch.log(li) - torch.log(lj)) / torch.where(near, li + lj, li - lj))


def _exp_slope(xi: torch.Tensor, xj: torch.Tensor) -> torch.Tensor:
    """(exp x_i − exp x_j) / (x_i − x_j), from its series in h = x_i − x_j near h = 0."""
    h = xi - xj
    series = torch.exp(xj) * (1.0 + h * (0.5 + h * (1.0 / 6.0 + h * (1.0 / 24.0 + h / 120.0))))
    near = h.abs() < SERIES_GAP
    return torch.where(near, series, (torch.exp(xi) - torch.exp(xj)) / torch.where(near, torch.ones_like(h), h))


class _ReturnMapping(torch.autograd.Function):
    """(F [N, 3, 3], α, μ, τ_y, H [N]) → (Fe, α'), one Jacobi eigen-decomposition of b = F Fᵀ per particle.

    With b = V Λ Vᵀ, d_i = ½ log λ_i − mean (the deviatoric Hencky strain's eigenvalues) and
    s = r / max(‖d‖, r) − 1, Fe = V diag(exp(s d)) Vᵀ F. The backward is the hand adjoint of the
    fused kernels (physmorph.mpm.fused.return_mapping), the same formulas in batched form: in the
    eigenbasis, the diagonal carries the full derivative of exp(s d_i) in the eigenvalues, the
    off-diagonal the divided differences (exp(s d_i) − exp(s d_j)) / (λ_i − λ_j), from series
    where λ_i ≈ λ_j so that repeated eigenvalues (F = I, rigid motion) stay finite.
    """

    @staticmethod
    def forward(ctx, F, alpha, mu, yield_stress, hardening):  # type: ignore[override]
        raw, V = symmetric_eigen3(F @ F.transpose(-1, -2))
        free = raw > MIN_STRETCH_SQUARED
        eigenvalues = raw.clamp(min=MIN_STRETCH_SQUARED)
        log_stretch = 0.5 * torch.log(eigenvalues)
        d = log_stretch - log_stretch.mean(-1, keepdim=True)
        radius = (yield_stress + hardening * alpha) / (2.0 * mu)
        squared_norm = (d * d).sum(-1)
        flowing = squared_norm > radius**2
        length = torch.sqrt(torch.maximum(squared_norm, radius**2))
        s = radius / length - 1.0
        M = (V * torch.exp(s[:, None] * d)[:, None, :]) @ V.transpose(-1, -2)
        ctx.save_for_backward(F, alpha, mu, hardening, eigenvalues, V, free, flowing, d, radius, length, s, M)
        # inside the surface M is I up to rounding; keeping F there makes the mapping exactly the identity
        Fe = torch.where(flowing[:, None, None], M @ F, F)
        return Fe, alpha + (length - radius)

    @staticmethod
    def backward(ctx, g_Fe, g_alpha_out):  # type: ignore[override]
        F, alpha, mu, hardening, eigenvalues, V, free, flowing, d, radius, length, s, M = ctx.saved_tensors
        g_Fe = torch.zeros_like(F) if g_Fe is None else g_Fe
        g_alpha_out = torch.zeros_like(alpha) if g_alpha_out is None else g_alpha_out
        m = torch.exp(s[:, None] * d)
        # Fe = M F: ∂/∂M = g_Fe Fᵀ, symmetrised, seen in the eigenbasis
        H = g_Fe @ F.transpose(-1, -2)
        Q = V.transpose(-1, -2) @ (0.5 * (H + H.transpose(-1, -2))) @ V
        q = Q.diagonal(dim1=-2, dim2=-1)
        # eigenvalue derivatives: m_i = exp(s d_i), d_i = ½ log λ_i − mean, s = r / L − 1
        A = (q * m * d).sum(-1)
        B = (q * m).sum(-1)
        zero = torch.zeros_like(A)
        g_length = torch.where(flowing, -A * radius / length**2 + g_alpha_out, zero)
        g_eigen = (s[:, None] * (q * m - B[:, None] / 3.0) + (g_length / length)[:, None] * d) / (2.0 * eigenvalues)
        g_eigen = torch.where(free, g_eigen, torch.zeros_like(g_eigen))
        # eigenvector derivatives of the pairs (0, 1), (0, 2), (1, 2): (m_i − m_j)/(λ_i − λ_j)
        i, j = _PAIRS
        x = s[:, None] * d
        slope = s[:, None] * _exp_slope(x[:, i], x[:, j]) * 0.5 * _log_slope(eigenvalues[:, i], eigenvalues[:, j])
        k = torch.where(free[:, i] & free[:, j], slope * Q[:, i, j], torch.zeros_like(slope))
        g0, g1, g2 = g_eigen.unbind(-1)
        k01, k02, k12 = k.unbind(-1)
        inner = torch.stack((g0, k01, k02, k01, g1, k12, k02, k12, g2), dim=-1).reshape(F.shape)
        # ∂L/∂b = V (diag(gλ) + offdiag(k)) Vᵀ, and b = F Fᵀ gives ∂/∂F = 2 (∂L/∂b) F
        g_b = V @ inner @ V.transpose(-1, -2)
        g_F = torch.where(flowing[:, None, None], M @ g_Fe + 2.0 * g_b @ F, g_Fe)
        # r = (τ_y + H α) / 2μ enters through s (when flowing) and α' = α + L − r
        g_radius = torch.where(flowing, A / length - g_alpha_out, zero)
        g_alpha = g_alpha_out + g_radius * hardening / (2.0 * mu)
        g_mu = -g_radius * radius / mu
        g_yield = g_radius / (2.0 * mu)
        return g_F, g_alpha, g_mu, g_yield, g_yield * alpha


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
    Differentiable in F, α, μ, τ_y and H (scalars or [N]).
    """
    n = F_trial.shape[0]

    def per_particle(value: torch.Tensor | float) -> torch.Tensor:
        return torch.as_tensor(value, dtype=F_trial.dtype, device=F_trial.device).expand(n)

    return _ReturnMapping.apply(
        F_trial,
        per_particle(plastic_strain),
        per_particle(mu),
        per_particle(plasticity.yield_stress),
        per_particle(plasticity.hardening),
    )
