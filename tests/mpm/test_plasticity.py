"""Von Mises return mapping: yield surface, volume, rigid motion, and float64 gradchecks."""

from __future__ import annotations

import pytest
import torch

from physmorph.mpm.materials import polar_rotation
from physmorph.mpm.plasticity import Plasticity, deviatoric, hencky_strain, return_mapping, symmetric_log
from tests.mpm.test_materials import rotation

DT = torch.float64
MU = 200.0


def stretch(*values: float) -> torch.Tensor:
    return torch.diag(torch.tensor(values, dtype=DT))


def random_spd() -> torch.Tensor:
    A = torch.randn(3, 3, generator=torch.Generator().manual_seed(3), dtype=DT)
    return A @ A.T + 0.5 * torch.eye(3, dtype=DT)


def deviatoric_norm(F: torch.Tensor) -> torch.Tensor:
    return deviatoric(hencky_strain(F)).norm(dim=(-1, -2))


def composed_return_mapping(
    F: torch.Tensor, alpha: torch.Tensor, mu: torch.Tensor | float, plasticity: Plasticity
) -> tuple[torch.Tensor, torch.Tensor]:
    """The return mapping composed of differentiable pieces (log, norm, matrix exp), an oracle for
    the hand-written adjoint: Fe = exp((r / max(‖ε̂‖, r) − 1) ε̂) F, α' = α + max(‖ε̂‖, r) − r."""
    radius = (plasticity.yield_stress + plasticity.hardening * alpha) / (2.0 * mu)
    strain = deviatoric(hencky_strain(F))
    length = torch.sqrt(torch.maximum((strain**2).sum(dim=(-1, -2)), radius**2))
    shrink = radius / length - 1.0
    return torch.linalg.matrix_exp(shrink[..., None, None] * strain) @ F, alpha + (length - radius)


def mixed_gradients(seed: int = 0) -> torch.Tensor:
    """Six F: rotated stretches far beyond, near and inside a yield radius of 0.05."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(6, 3, 3, generator=g, dtype=DT)).Q
    scales = torch.tensor([0.4, 0.2, 0.08, 0.03, 0.01, 0.3], dtype=DT)
    principal = torch.exp(scales[:, None] * torch.randn(6, 3, generator=g, dtype=DT))
    return Q @ torch.diag_embed(principal) @ rotation([1, 2, 3], 0.4)


@pytest.mark.parametrize(
    "b",
    [
        torch.eye(3, dtype=DT),
        stretch(2.0, 2.0, 3.0),
        rotation([1, -1, 2], 0.9) @ stretch(1.5, 0.7, 0.7) @ rotation([1, -1, 2], 0.9).T,
        random_spd(),
    ],
    ids=["identity", "two-equal", "rotated-two-equal", "random"],
)
def test_symmetric_log_inverts_exp_and_gradcheck_at_repeated_eigenvalues(b):
    torch.testing.assert_close(torch.linalg.matrix_exp(symmetric_log(b)), b)
    b = b.unsqueeze(0).clone().requires_grad_()
    # a symmetric perturbation keeps b on the manifold where log is defined by its eigenvalues
    assert torch.autograd.gradcheck(lambda m: symmetric_log(0.5 * (m + m.transpose(-1, -2))), (b,))


def test_no_plastic_flow_below_yield():
    F = rotation([0, 1, 1], 0.8) @ stretch(1.02, 0.99, 1.0)
    F = F.unsqueeze(0).clone().requires_grad_()
    alpha = torch.tensor([0.3], dtype=DT)
    assert deviatoric_norm(F).item() < 0.05
    Fe, alpha_new = return_mapping(F, alpha, MU, Plasticity(yield_stress=2 * MU * 0.05))
    torch.testing.assert_close(Fe, F, rtol=0, atol=1e-14)
    assert alpha_new.item() == pytest.approx(0.3, abs=1e-15)
    # inside the surface the mapping is the identity, gradient included
    G = torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(1), dtype=DT)
    (grad,) = torch.autograd.grad((Fe * G).sum(), F)
    torch.testing.assert_close(grad, G)


def test_flow_lands_on_the_yield_surface_keeps_volume_and_rotation():
    F = mixed_gradients()
    alpha = torch.zeros(6, dtype=DT)
    radius = 0.05
    trial_norm = deviatoric_norm(F)
    Fe, alpha_new = return_mapping(F, alpha, MU, Plasticity(yield_stress=2 * MU * radius))
    flowing = trial_norm > radius
    assert flowing.sum() >= 3 and (~flowing).sum() >= 1
    torch.testing.assert_close(deviatoric_norm(Fe)[flowing], torch.full((int(flowing.sum()),), radius, dtype=DT))
    torch.testing.assert_close(Fe[~flowing], F[~flowing], rtol=0, atol=1e-13)
    torch.testing.assert_close(alpha_new, (trial_norm - radius).clamp(min=0))
    # von Mises flow is isochoric (det Fp = 1) and leaves the rotation of F alone
    torch.testing.assert_close(torch.linalg.det(Fe), torch.linalg.det(F))
    torch.testing.assert_close(polar_rotation(Fe), polar_rotation(F))
    # the flow direction is the trial's: ε̂(Fe) is ε̂(F_trial) scaled
    direction = deviatoric(hencky_strain(F))[flowing] / trial_norm[flowing, None, None]
    torch.testing.assert_close(deviatoric(hencky_strain(Fe))[flowing], radius * direction)


def test_rigid_motion_gives_no_plastic_flow():
    R = torch.stack([rotation([1, 2, 3], 0.7), rotation([0, 0, 1], 2.5), torch.eye(3, dtype=DT)])
    isotropic = R * 1.1  # a uniform expansion has no deviatoric strain either
    for F in (R, isotropic):
        Fe, alpha = return_mapping(F, torch.zeros(3, dtype=DT), MU, Plasticity(yield_stress=1e-3))
        torch.testing.assert_close(Fe, F, rtol=0, atol=1e-12)
        torch.testing.assert_close(alpha, torch.zeros(3, dtype=DT), rtol=0, atol=1e-12)


def test_hardening_widens_the_yield_surface():
    F = stretch(1.3, 1 / 1.3, 1.0).unsqueeze(0)
    plasticity = Plasticity(yield_stress=2 * MU * 0.05, hardening=2 * MU * 0.5)
    Fe, _ = return_mapping(F, torch.tensor([0.1], dtype=DT), MU, plasticity)
    # r = (τ_y + H α) / 2μ = 0.05 + 0.5 · 0.1
    assert deviatoric_norm(Fe).item() == pytest.approx(0.1, rel=1e-10)


def test_return_mapping_gradcheck():
    F = mixed_gradients(seed=2).requires_grad_()
    alpha = torch.rand(6, generator=torch.Generator().manual_seed(4), dtype=DT).requires_grad_()
    mu = torch.tensor(MU, dtype=DT, requires_grad=True)
    tau_y = torch.tensor(2 * MU * 0.05, dtype=DT, requires_grad=True)

    def mapped(F, alpha, mu, tau_y):
        return return_mapping(F, alpha, mu, Plasticity(tau_y, hardening=30.0))

    assert torch.autograd.gradcheck(mapped, (F, alpha, mu, tau_y))


def repeated_eigenvalue_gradients() -> torch.Tensor:
    """F whose F Fᵀ has repeated eigenvalues, flowing (uniaxial stretches) and not (I, rotations)."""
    return torch.stack(
        [
            torch.eye(3, dtype=DT),
            rotation([1, 2, 3], 0.7),
            rotation([1, -1, 2], 0.9) @ stretch(1.3, 1 / 1.3, 1.0),
            rotation([1, 1, 0], 0.4) @ stretch(1.2, 1.2, 1 / 1.44) @ rotation([0, 0, 1], 1.0),
            stretch(1.5, 1.0, 1.0),
        ]
    )


def test_return_mapping_matches_the_composed_mapping_in_values_and_gradients():
    F = torch.cat([mixed_gradients(seed=5), repeated_eigenvalue_gradients()])
    g = torch.Generator().manual_seed(6)
    leaves = (F, torch.rand(len(F), generator=g, dtype=DT), 200.0 + 50.0 * torch.rand(len(F), generator=g, dtype=DT))
    cotangents = (torch.randn(F.shape, generator=g, dtype=DT), torch.randn(len(F), generator=g, dtype=DT))
    plasticity = Plasticity(yield_stress=torch.tensor(20.0, dtype=DT), hardening=torch.tensor(30.0, dtype=DT))
    results = []
    for mapping in (return_mapping, composed_return_mapping):
        inputs = [t.clone().requires_grad_() for t in leaves]
        tau_y, H = (t.clone().requires_grad_() for t in (plasticity.yield_stress, plasticity.hardening))
        out = mapping(*inputs, Plasticity(tau_y, H))
        results.append([o.detach() for o in out] + list(torch.autograd.grad(out, [*inputs, tau_y, H], cotangents)))
    flowing = results[0][1] > leaves[1]
    assert flowing.sum() >= 5 and (~flowing).sum() >= 3
    for ours, composed in zip(*results):
        torch.testing.assert_close(ours, composed, rtol=1e-9, atol=1e-9)


def test_return_mapping_gradcheck_in_hardening_and_at_repeated_eigenvalues():
    # uniaxial stretches flow with two equal eigenvalues; I and rotations stay inside the surface
    F = repeated_eigenvalue_gradients().requires_grad_()
    alpha = torch.full((len(F),), 0.2, dtype=DT, requires_grad=True)
    hardening = torch.tensor(30.0, dtype=DT, requires_grad=True)

    def mapped(F, alpha, hardening):
        return return_mapping(F, alpha, MU, Plasticity(2 * MU * 0.05, hardening))

    assert torch.autograd.gradcheck(mapped, (F, alpha, hardening))
