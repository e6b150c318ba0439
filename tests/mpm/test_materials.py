import math

import pytest
import torch

from physmorph.mpm.materials import (
    Material,
    cofactor,
    fixed_corotated_energy,
    fixed_corotated_stress,
    lame_parameters,
    neo_hookean_energy,
    neo_hookean_stress,
    polar_rotation,
)

DT = torch.float64


def rotation(axis, angle):
    axis = torch.tensor(axis, dtype=DT) / torch.tensor(axis, dtype=DT).norm()
    K = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]], dtype=DT)
    return torch.eye(3, dtype=DT) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def random_F(n=6, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.eye(3, dtype=DT) + scale * torch.randn(n, 3, 3, generator=g, dtype=DT)


def test_polar_rotation_is_rotation_and_gradcheck():
    F = random_F().requires_grad_()
    R = polar_rotation(F)
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=DT).expand(6, 3, 3))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(6, dtype=DT))
    S = R.transpose(-1, -2) @ F
    torch.testing.assert_close(S, S.transpose(-1, -2))
    assert torch.autograd.gradcheck(polar_rotation, (F,))


@pytest.mark.parametrize(
    "F",
    [
        torch.eye(3, dtype=DT),
        torch.diag(torch.tensor([1.3, 1.3, 0.8], dtype=DT)),
        rotation([1, 2, 3], 0.7) @ torch.diag(torch.tensor([0.9, 1.2, 1.2], dtype=DT)),
    ],
    ids=["identity", "two-equal-singular-values", "rotated-repeated"],
)
@pytest.mark.parametrize("stress", [fixed_corotated_stress, neo_hookean_stress])
def test_stress_gradient_finite_at_degenerate_F(F, stress):
    F = F.unsqueeze(0).clone().requires_grad_()
    lam, mu = 3.0, 2.0
    P = stress(F, lam, mu)
    (P * torch.arange(9, dtype=DT).reshape(3, 3)).sum().backward()
    assert torch.isfinite(F.grad).all()
    assert torch.autograd.gradcheck(lambda f: stress(f, lam, mu), (F,))


def test_svd_backward_would_fail_at_identity():
    # why the safe polar gradient exists: the SVD route has NaN/inf gradients at F = I
    F = torch.eye(3, dtype=DT).unsqueeze(0).requires_grad_()
    U, _, Vh = torch.linalg.svd(F)
    (U @ Vh).sum().backward()
    assert not torch.isfinite(F.grad).all()


@pytest.mark.parametrize("stress", [fixed_corotated_stress, neo_hookean_stress])
def test_stress_gradcheck_wrt_F_and_lame(stress):
    F = random_F(4).requires_grad_()
    lam = torch.tensor([3.0, 1.0, 2.0, 5.0], dtype=DT, requires_grad=True)
    mu = torch.tensor(2.0, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, l, m: stress(f, l, m), (F, lam, mu))


@pytest.mark.parametrize(
    ("stress", "energy"),
    [(fixed_corotated_stress, fixed_corotated_energy), (neo_hookean_stress, neo_hookean_energy)],
)
def test_stress_is_energy_derivative(stress, energy):
    F = random_F(5, 0.2, seed=3).requires_grad_()
    (grad,) = torch.autograd.grad(energy(F, 3.0, 2.0).sum(), F)
    torch.testing.assert_close(stress(F.detach(), 3.0, 2.0), grad)


def test_rotation_gives_zero_stress():
    R = rotation([0.3, -1.0, 0.5], 1.1).unsqueeze(0)
    torch.testing.assert_close(fixed_corotated_stress(R, 10.0, 7.0), torch.zeros(1, 3, 3, dtype=DT))
    torch.testing.assert_close(neo_hookean_stress(R, 10.0, 7.0), torch.zeros(1, 3, 3, dtype=DT))
    assert fixed_corotated_energy(R, 10.0, 7.0).abs().item() < 1e-20


def test_stretch_gives_restoring_stress_and_known_value():
    F = torch.diag(torch.tensor([1.2, 1.0, 1.0], dtype=DT)).unsqueeze(0)
    P = fixed_corotated_stress(F, 0.0, 1.0)
    # R = I, so P = 2μ(F − I)
    torch.testing.assert_close(P[0], torch.diag(torch.tensor([0.4, 0.0, 0.0], dtype=DT)))


def test_cofactor_is_det_times_inverse_transpose():
    F = random_F(3)
    torch.testing.assert_close(cofactor(F), torch.linalg.det(F)[:, None, None] * torch.linalg.inv(F).transpose(-1, -2))


def test_youngs_modulus_conversion_matches_reference_values():
    lam, mu = lame_parameters(torch.tensor(140000.0, dtype=DT), torch.tensor(0.2, dtype=DT))
    assert lam.item() == pytest.approx(140000 * 0.2 / (1.2 * 0.6))
    assert mu.item() == pytest.approx(140000 / 2.4)
    material = Material.from_youngs_modulus(140000.0, 0.2, 75.0)
    assert material.mu == pytest.approx(58333.333, rel=1e-6)
