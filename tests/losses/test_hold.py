import math

import torch

from physmorph.losses import elastic_energy_per_mass
from physmorph.mpm import Material


def _rotation(axis: torch.Tensor, angle: float) -> torch.Tensor:
    axis = axis / axis.norm()
    K = torch.zeros(3, 3, dtype=axis.dtype)
    K[0, 1], K[0, 2], K[1, 2] = -axis[2], axis[1], -axis[0]
    K = K - K.T
    return torch.eye(3, dtype=axis.dtype) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def test_a_rotated_body_stores_no_energy():
    g = torch.Generator().manual_seed(0)
    F = torch.stack([_rotation(torch.randn(3, generator=g, dtype=torch.float64), 0.3 * k) for k in range(6)])
    material = Material(lam=400.0, mu=300.0, density=2.0)
    energy = elastic_energy_per_mass(F, torch.ones(6, dtype=torch.float64), torch.full((6,), 2.0), material)
    assert abs(energy.item()) < 1e-12


def test_a_uniform_stretch_gives_the_fixed_corotated_energy_per_mass():
    # F = diag(1.1, 1, 1): ψ = μ·0.1² + λ/2·0.1² per unit volume, on volumes 0.5 and masses 3
    F = torch.diag(torch.tensor([1.1, 1.0, 1.0], dtype=torch.float64)).expand(4, 3, 3)
    lam, mu = 400.0, 300.0
    volumes, masses = torch.full((4,), 0.5, dtype=torch.float64), torch.full((4,), 3.0, dtype=torch.float64)
    energy = elastic_energy_per_mass(F, volumes, masses, Material(lam, mu, 6.0))
    expected = 4 * 0.5 * (mu * 0.01 + 0.5 * lam * 0.01) / (4 * 3.0)
    assert abs(energy.item() - expected) < 1e-12


def test_gradcheck_in_the_deformation_gradients_both_models():
    g = torch.Generator().manual_seed(1)
    F = torch.eye(3, dtype=torch.float64) + 0.1 * torch.randn(8, 3, 3, generator=g, dtype=torch.float64)
    volumes = 0.5 + torch.rand(8, generator=g, dtype=torch.float64)
    masses = 1.0 + torch.rand(8, generator=g, dtype=torch.float64)
    for model in ("fixed_corotated", "neo_hookean"):
        material = Material(lam=400.0, mu=300.0, density=2.0, model=model)
        F_leaf = F.clone().requires_grad_()
        assert torch.autograd.gradcheck(
            lambda F, material=material: elastic_energy_per_mass(F, volumes, masses, material), (F_leaf,)
        )
