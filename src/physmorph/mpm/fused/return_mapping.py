"""Triton kernels of the von Mises return mapping (physmorph.mpm.plasticity) and its hand adjoint.

One thread per particle. b = F Fᵀ is diagonalised by cyclic Jacobi rotations (b = V Λ Vᵀ); with
d_i = ½ log λ_i − mean and s = r / max(‖d‖, r) − 1, the mapping is Fe = V diag(exp(s d)) Vᵀ F.
The adjoint is the Daleckii–Krein formula: in the eigenbasis, the diagonal carries the full
derivative of exp(s d_i) in the eigenvalues, the off-diagonal the divided differences
(exp(s d_i) − exp(s d_j)) / (λ_i − λ_j), taken from series where λ_i ≈ λ_j so that repeated
eigenvalues (F = I, rigid motion) stay finite.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from physmorph.mpm.plasticity import MIN_STRETCH_SQUARED
from physmorph.triton_jit import launched_kernel

# Cyclic Jacobi sweeps over the three pairs: quadratic convergence leaves 3×3 exact after four.
JACOBI_SWEEPS = 5
# Unroll factor of the sweep loop: JACOBI_SWEEPS unrolls it fully, which took Triton's coalesce
# pass most of the kernels' compile time (return_mapping_backward 3.6 s against 0.9 s, forward 1.3 s
# against 0.3 s on a 2-core CPU for sm_90, benchmarks/fused_compile.py); set it to compare run times.
SWEEP_UNROLL = tl.constexpr(1)
BLOCK = 128
# Below this relative gap the divided differences come from their Taylor series.
SERIES_GAP = 1e-2


@triton.jit
def _rotation(a_pp, a_qq, a_pq):
    """Cosine and sine of the Jacobi rotation that zeroes a_pq."""
    scale = tl.abs(a_pp) + tl.abs(a_qq)
    negligible = tl.abs(a_pq) <= 1e-30 + 1e-18 * scale
    safe = tl.where(negligible, 1.0, a_pq)
    tau = (a_qq - a_pp) / (2.0 * safe)
    sign = tl.where(tau >= 0, 1.0, -1.0)
    t = sign / (tl.abs(tau) + tl.sqrt(1.0 + tau * tau))
    t = tl.where(negligible, 0.0, t)
    c = 1.0 / tl.sqrt(1.0 + t * t)
    return c, t * c, t


@triton.jit
def _jacobi_eigen(a00, a01, a02, a11, a12, a22, SWEEPS: tl.constexpr):
    """Eigenvalues (l0, l1, l2) and eigenvector columns V (row-major v_rc) of a symmetric 3×3."""
    v00 = a00 * 0.0 + 1.0
    v01 = a00 * 0.0
    v02 = a00 * 0.0
    v10 = a00 * 0.0
    v11 = a00 * 0.0 + 1.0
    v12 = a00 * 0.0
    v20 = a00 * 0.0
    v21 = a00 * 0.0
    v22 = a00 * 0.0 + 1.0
    for _ in tl.range(0, SWEEPS, loop_unroll_factor=SWEEP_UNROLL):
        # pair (0, 1); the third index is 2
        c, s, t = _rotation(a00, a11, a01)
        a00, a11 = a00 - t * a01, a11 + t * a01
        a02, a12 = c * a02 - s * a12, s * a02 + c * a12
        a01 = a01 * 0.0
        v00, v01 = c * v00 - s * v01, s * v00 + c * v01
        v10, v11 = c * v10 - s * v11, s * v10 + c * v11
        v20, v21 = c * v20 - s * v21, s * v20 + c * v21
        # pair (0, 2); the third index is 1
        c, s, t = _rotation(a00, a22, a02)
        a00, a22 = a00 - t * a02, a22 + t * a02
        a01, a12 = c * a01 - s * a12, s * a01 + c * a12
        a02 = a02 * 0.0
        v00, v02 = c * v00 - s * v02, s * v00 + c * v02
        v10, v12 = c * v10 - s * v12, s * v10 + c * v12
        v20, v22 = c * v20 - s * v22, s * v20 + c * v22
        # pair (1, 2); the third index is 0
        c, s, t = _rotation(a11, a22, a12)
        a11, a22 = a11 - t * a12, a22 + t * a12
        a01, a02 = c * a01 - s * a02, s * a01 + c * a02
        a12 = a12 * 0.0
        v01, v02 = c * v01 - s * v02, s * v01 + c * v02
        v11, v12 = c * v11 - s * v12, s * v11 + c * v12
        v21, v22 = c * v21 - s * v22, s * v21 + c * v22
    return a00, a11, a22, v00, v01, v02, v10, v11, v12, v20, v21, v22


@triton.jit
def _load9(ptr, offs, mask):
    p = ptr + offs * 9
    return (tl.load(p + 0, mask=mask, other=1.0), tl.load(p + 1, mask=mask, other=0.0),
            tl.load(p + 2, mask=mask, other=0.0), tl.load(p + 3, mask=mask, other=0.0),
            tl.load(p + 4, mask=mask, other=1.0), tl.load(p + 5, mask=mask, other=0.0),
            tl.load(p + 6, mask=mask, other=0.0), tl.load(p + 7, mask=mask, other=0.0),
            tl.load(p + 8, mask=mask, other=1.0))


@triton.jit
def _store9(ptr, offs, mask, a00, a01, a02, a10, a11, a12, a20, a21, a22):
    p = ptr + offs * 9
    tl.store(p + 0, a00, mask=mask)
    tl.store(p + 1, a01, mask=mask)
    tl.store(p + 2, a02, mask=mask)
    tl.store(p + 3, a10, mask=mask)
    tl.store(p + 4, a11, mask=mask)
    tl.store(p + 5, a12, mask=mask)
    tl.store(p + 6, a20, mask=mask)
    tl.store(p + 7, a21, mask=mask)
    tl.store(p + 8, a22, mask=mask)


@triton.jit
def _spectrum(f00, f01, f02, f10, f11, f12, f20, f21, f22, alpha, mu, yield_stress, hardening,
              floor, SWEEPS: tl.constexpr):
    """Eigen-decomposition of b = F Fᵀ and the mapping's scalars.

    Returns (λ0..2, V (9), free0..2 (eigenvalue above the floor), d0..2, r, L, s).
    """
    b00 = f00 * f00 + f01 * f01 + f02 * f02
    b01 = f00 * f10 + f01 * f11 + f02 * f12
    b02 = f00 * f20 + f01 * f21 + f02 * f22
    b11 = f10 * f10 + f11 * f11 + f12 * f12
    b12 = f10 * f20 + f11 * f21 + f12 * f22
    b22 = f20 * f20 + f21 * f21 + f22 * f22
    l0, l1, l2, v00, v01, v02, v10, v11, v12, v20, v21, v22 = _jacobi_eigen(b00, b01, b02, b11, b12, b22, SWEEPS)
    free0 = l0 > floor
    free1 = l1 > floor
    free2 = l2 > floor
    l0 = tl.maximum(l0, floor)
    l1 = tl.maximum(l1, floor)
    l2 = tl.maximum(l2, floor)
    e0 = 0.5 * tl.log(l0)
    e1 = 0.5 * tl.log(l1)
    e2 = 0.5 * tl.log(l2)
    mean = (e0 + e1 + e2) / 3.0
    d0 = e0 - mean
    d1 = e1 - mean
    d2 = e2 - mean
    r = (yield_stress + hardening * alpha) / (2.0 * mu)
    L = tl.sqrt(tl.maximum(d0 * d0 + d1 * d1 + d2 * d2, r * r))
    s = r / L - 1.0
    return (l0, l1, l2, v00, v01, v02, v10, v11, v12, v20, v21, v22, free0, free1, free2,
            d0, d1, d2, r, L, s)


@triton.jit
def _sym_in_basis(v00, v01, v02, v10, v11, v12, v20, v21, v22, m0, m1, m2):
    """V diag(m) Vᵀ as its six entries (00, 01, 02, 11, 12, 22)."""
    return (v00 * v00 * m0 + v01 * v01 * m1 + v02 * v02 * m2,
            v00 * v10 * m0 + v01 * v11 * m1 + v02 * v12 * m2,
            v00 * v20 * m0 + v01 * v21 * m1 + v02 * v22 * m2,
            v10 * v10 * m0 + v11 * v11 * m1 + v12 * v12 * m2,
            v10 * v20 * m0 + v11 * v21 * m1 + v12 * v22 * m2,
            v20 * v20 * m0 + v21 * v21 * m1 + v22 * v22 * m2)


@triton.jit
def _log_slope(li, lj, GAP: tl.constexpr):
    """(log λ_i − log λ_j) / (λ_i − λ_j), from its series in ρ = (λ_i − λ_j)/λ_j near ρ = 0."""
    rho = (li - lj) / lj
    series = (1.0 - rho * (0.5 - rho * (1.0 / 3.0 - rho * (0.25 - rho * 0.2)))) / lj
    near = tl.abs(rho) < GAP
    safe = tl.where(near, li + lj, li - lj)
    return tl.where(near, series, (tl.log(li) - tl.log(lj)) / safe)


@triton.jit
def _exp_slope(xi, xj, GAP: tl.constexpr):
    """(exp x_i − exp x_j) / (x_i − x_j), from its series in h = x_i − x_j near h = 0."""
    h = xi - xj
    series = tl.exp(xj) * (1.0 + h * (0.5 + h * (1.0 / 6.0 + h * (1.0 / 24.0 + h / 120.0))))
    near = tl.abs(h) < GAP
    safe = tl.where(near, 1.0, h)
    return tl.where(near, series, (tl.exp(xi) - tl.exp(xj)) / safe)


# Order of the float settings in the `prm` tensor (the data's dtype, so float64 keeps full precision).
PARAMETERS = ("yield_stress", "hardening", "stretch_floor")
# read at their names' positions, like the step kernels' settings
PRM_YIELD_STRESS = tl.constexpr(PARAMETERS.index("yield_stress"))
PRM_HARDENING = tl.constexpr(PARAMETERS.index("hardening"))
PRM_STRETCH_FLOOR = tl.constexpr(PARAMETERS.index("stretch_floor"))


@triton.jit
def _settings(prm_ptr):
    return tl.load(prm_ptr + PRM_YIELD_STRESS), tl.load(prm_ptr + PRM_HARDENING), tl.load(prm_ptr + PRM_STRETCH_FLOOR)


@launched_kernel
def return_mapping_forward(F_ptr, alpha_ptr, mu_ptr, mu_stride, Fe_ptr, alpha_out_ptr, prm_ptr, N,
                           SWEEPS: tl.constexpr, BLOCK: tl.constexpr):
    """Fe [N, 9] and α' [N] of the return mapping of F [N, 9] with plastic strain α [N]."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    yield_stress, hardening, floor = _settings(prm_ptr)
    f00, f01, f02, f10, f11, f12, f20, f21, f22 = _load9(F_ptr, offs, mask)
    alpha = tl.load(alpha_ptr + offs, mask=mask, other=0.0)
    mu = tl.load(mu_ptr + offs * mu_stride, mask=mask, other=1.0)
    (_l0, _l1, _l2, v00, v01, v02, v10, v11, v12, v20, v21, v22, _f0, _f1, _f2,
     d0, d1, d2, r, L, s) = _spectrum(f00, f01, f02, f10, f11, f12, f20, f21, f22, alpha, mu,
                                      yield_stress, hardening, floor, SWEEPS)
    m00, m01, m02, m11, m12, m22 = _sym_in_basis(
        v00, v01, v02, v10, v11, v12, v20, v21, v22, tl.exp(s * d0), tl.exp(s * d1), tl.exp(s * d2))
    _store9(Fe_ptr, offs, mask,
            m00 * f00 + m01 * f10 + m02 * f20, m00 * f01 + m01 * f11 + m02 * f21, m00 * f02 + m01 * f12 + m02 * f22,
            m01 * f00 + m11 * f10 + m12 * f20, m01 * f01 + m11 * f11 + m12 * f21, m01 * f02 + m11 * f12 + m12 * f22,
            m02 * f00 + m12 * f10 + m22 * f20, m02 * f01 + m12 * f11 + m22 * f21, m02 * f02 + m12 * f12 + m22 * f22)
    tl.store(alpha_out_ptr + offs, alpha + (L - r), mask=mask)


@launched_kernel
def return_mapping_backward(F_ptr, alpha_ptr, mu_ptr, mu_stride, gFe_ptr, galpha_out_ptr,
                            gF_ptr, galpha_ptr, gmu_ptr, prm_ptr, N,
                            SWEEPS: tl.constexpr, BLOCK: tl.constexpr, GAP: tl.constexpr):
    """∂L/∂F [N, 9], ∂L/∂α [N] and ∂L/∂μ [N] from ∂L/∂Fe [N, 9] and ∂L/∂α' [N]."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    yield_stress, hardening, floor = _settings(prm_ptr)
    f00, f01, f02, f10, f11, f12, f20, f21, f22 = _load9(F_ptr, offs, mask)
    alpha = tl.load(alpha_ptr + offs, mask=mask, other=0.0)
    mu = tl.load(mu_ptr + offs * mu_stride, mask=mask, other=1.0)
    (l0, l1, l2, v00, v01, v02, v10, v11, v12, v20, v21, v22, free0, free1, free2,
     d0, d1, d2, r, L, s) = _spectrum(f00, f01, f02, f10, f11, f12, f20, f21, f22, alpha, mu,
                                      yield_stress, hardening, floor, SWEEPS)
    m0 = tl.exp(s * d0)
    m1 = tl.exp(s * d1)
    m2 = tl.exp(s * d2)
    M00, M01, M02, M11, M12, M22 = _sym_in_basis(v00, v01, v02, v10, v11, v12, v20, v21, v22, m0, m1, m2)
    g00, g01, g02, g10, g11, g12, g20, g21, g22 = _load9(gFe_ptr, offs, mask)
    g_alpha_out = tl.load(galpha_out_ptr + offs, mask=mask, other=0.0)
    # Fe = M F: ∂/∂F = M gFe (M symmetric), ∂/∂M = gFe Fᵀ, symmetrised
    h00 = g00 * f00 + g01 * f01 + g02 * f02
    h11 = g10 * f10 + g11 * f11 + g12 * f12
    h22 = g20 * f20 + g21 * f21 + g22 * f22
    h01 = 0.5 * (g00 * f10 + g01 * f11 + g02 * f12 + g10 * f00 + g11 * f01 + g12 * f02)
    h02 = 0.5 * (g00 * f20 + g01 * f21 + g02 * f22 + g20 * f00 + g21 * f01 + g22 * f02)
    h12 = 0.5 * (g10 * f20 + g11 * f21 + g12 * f22 + g20 * f10 + g21 * f11 + g22 * f12)
    # Ĝ = Vᵀ H V: column k of V is (v0k, v1k, v2k)
    w00 = h00 * v00 + h01 * v10 + h02 * v20
    w10 = h01 * v00 + h11 * v10 + h12 * v20
    w20 = h02 * v00 + h12 * v10 + h22 * v20
    w01 = h00 * v01 + h01 * v11 + h02 * v21
    w11 = h01 * v01 + h11 * v11 + h12 * v21
    w21 = h02 * v01 + h12 * v11 + h22 * v21
    w02 = h00 * v02 + h01 * v12 + h02 * v22
    w12 = h01 * v02 + h11 * v12 + h12 * v22
    w22 = h02 * v02 + h12 * v12 + h22 * v22
    q00 = v00 * w00 + v10 * w10 + v20 * w20
    q11 = v01 * w01 + v11 * w11 + v21 * w21
    q22 = v02 * w02 + v12 * w12 + v22 * w22
    q01 = v00 * w01 + v10 * w11 + v20 * w21
    q02 = v00 * w02 + v10 * w12 + v20 * w22
    q12 = v01 * w02 + v11 * w12 + v21 * w22
    # eigenvalue derivatives: m_i = exp(s d_i), d_i = ½ log λ_i − mean, s = r / L − 1
    flowing = (d0 * d0 + d1 * d1 + d2 * d2) > r * r
    A = q00 * m0 * d0 + q11 * m1 * d1 + q22 * m2 * d2
    B = q00 * m0 + q11 * m1 + q22 * m2
    g_L = tl.where(flowing, -A * r / (L * L) + g_alpha_out, 0.0)
    gl0 = (s * (q00 * m0 - B / 3.0) + g_L * d0 / L) / (2.0 * l0)
    gl1 = (s * (q11 * m1 - B / 3.0) + g_L * d1 / L) / (2.0 * l1)
    gl2 = (s * (q22 * m2 - B / 3.0) + g_L * d2 / L) / (2.0 * l2)
    gl0 = tl.where(free0, gl0, 0.0)
    gl1 = tl.where(free1, gl1, 0.0)
    gl2 = tl.where(free2, gl2, 0.0)
    # eigenvector derivatives: (m_i − m_j)/(λ_i − λ_j) = s · exp-slope · ½ log-slope
    k01 = s * _exp_slope(s * d0, s * d1, GAP) * 0.5 * _log_slope(l0, l1, GAP)
    k02 = s * _exp_slope(s * d0, s * d2, GAP) * 0.5 * _log_slope(l0, l2, GAP)
    k12 = s * _exp_slope(s * d1, s * d2, GAP) * 0.5 * _log_slope(l1, l2, GAP)
    k01 = tl.where(free0 & free1, k01 * q01, 0.0)
    k02 = tl.where(free0 & free2, k02 * q02, 0.0)
    k12 = tl.where(free1 & free2, k12 * q12, 0.0)
    # ∂L/∂b = V [diag(gλ) + offdiag(k)] Vᵀ, and b = F Fᵀ gives ∂/∂F = 2 (∂L/∂b) F
    c00, c01, c02, c11, c12, c22 = _sym_in_basis(v00, v01, v02, v10, v11, v12, v20, v21, v22, gl0, gl1, gl2)
    c00 += 2.0 * (v00 * v01 * k01 + v00 * v02 * k02 + v01 * v02 * k12)
    c11 += 2.0 * (v10 * v11 * k01 + v10 * v12 * k02 + v11 * v12 * k12)
    c22 += 2.0 * (v20 * v21 * k01 + v20 * v22 * k02 + v21 * v22 * k12)
    c01 += (v00 * v11 + v01 * v10) * k01 + (v00 * v12 + v02 * v10) * k02 + (v01 * v12 + v02 * v11) * k12
    c02 += (v00 * v21 + v01 * v20) * k01 + (v00 * v22 + v02 * v20) * k02 + (v01 * v22 + v02 * v21) * k12
    c12 += (v10 * v21 + v11 * v20) * k01 + (v10 * v22 + v12 * v20) * k02 + (v11 * v22 + v12 * v21) * k12
    _store9(gF_ptr, offs, mask,
            M00 * g00 + M01 * g10 + M02 * g20 + 2.0 * (c00 * f00 + c01 * f10 + c02 * f20),
            M00 * g01 + M01 * g11 + M02 * g21 + 2.0 * (c00 * f01 + c01 * f11 + c02 * f21),
            M00 * g02 + M01 * g12 + M02 * g22 + 2.0 * (c00 * f02 + c01 * f12 + c02 * f22),
            M01 * g00 + M11 * g10 + M12 * g20 + 2.0 * (c01 * f00 + c11 * f10 + c12 * f20),
            M01 * g01 + M11 * g11 + M12 * g21 + 2.0 * (c01 * f01 + c11 * f11 + c12 * f21),
            M01 * g02 + M11 * g12 + M12 * g22 + 2.0 * (c01 * f02 + c11 * f12 + c12 * f22),
            M02 * g00 + M12 * g10 + M22 * g20 + 2.0 * (c02 * f00 + c12 * f10 + c22 * f20),
            M02 * g01 + M12 * g11 + M22 * g21 + 2.0 * (c02 * f01 + c12 * f11 + c22 * f21),
            M02 * g02 + M12 * g12 + M22 * g22 + 2.0 * (c02 * f02 + c12 * f12 + c22 * f22))
    # r = (τ_y + H α) / 2μ enters through s (when flowing) and α' = α + L − r
    g_r = tl.where(flowing, A / L - g_alpha_out, 0.0)
    tl.store(galpha_ptr + offs, g_alpha_out + g_r * hardening / (2.0 * mu), mask=mask)
    tl.store(gmu_ptr + offs, -g_r * r / mu, mask=mask)


class FusedReturnMapping(torch.autograd.Function):
    """(F [N, 3, 3], α [N], μ [N] (stride 0 for a scalar), prm [3]) → (Fe, α') with the kernels
    above; prm holds PARAMETERS (τ_y, H, eigenvalue floor) in F's dtype, not differentiated."""

    @staticmethod
    def forward(ctx, F, alpha, mu, prm):  # type: ignore[override]
        n = F.shape[0]
        F, alpha = F.contiguous(), alpha.contiguous()
        Fe = torch.empty_like(F)
        alpha_out = torch.empty_like(alpha)
        return_mapping_forward[(triton.cdiv(n, BLOCK),)](
            F, alpha, mu, mu.stride(0), Fe, alpha_out, prm, n, SWEEPS=JACOBI_SWEEPS, BLOCK=BLOCK)
        ctx.save_for_backward(F, alpha, mu, prm)
        return Fe, alpha_out

    @staticmethod
    def backward(ctx, g_Fe, g_alpha):  # type: ignore[override]
        F, alpha, mu, prm = ctx.saved_tensors
        n = F.shape[0]
        g_Fe = torch.zeros_like(F) if g_Fe is None else g_Fe.contiguous()
        g_alpha = torch.zeros_like(alpha) if g_alpha is None else g_alpha.contiguous()
        gF = torch.empty_like(F)
        galpha = torch.empty_like(alpha)
        gmu = torch.empty(n, dtype=F.dtype, device=F.device)
        return_mapping_backward[(triton.cdiv(n, BLOCK),)](
            F, alpha, mu, mu.stride(0), g_Fe, g_alpha, gF, galpha, gmu, prm, n,
            SWEEPS=JACOBI_SWEEPS, BLOCK=BLOCK, GAP=SERIES_GAP)
        return gF, galpha, gmu, None


def settings_values(yield_stress: float, hardening: float) -> tuple[float, ...]:
    """The PARAMETERS values of one plasticity."""
    values = {"yield_stress": yield_stress, "hardening": hardening, "stretch_floor": MIN_STRETCH_SQUARED}
    return tuple(float(values[name]) for name in PARAMETERS)
