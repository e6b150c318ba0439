"""Elastic energy per unit mass: the stored strain that would still move a body once its controls stop."""

from __future__ import annotations

import torch

from physmorph.mpm.materials import Material, elastic_energy_density


def elastic_energy_per_mass(
    deformation_gradients: torch.Tensor, volumes: torch.Tensor, masses: torch.Tensor, material: Material
) -> torch.Tensor:
    """Σ_p V_p ψ(F_p) / Σ_p m_p (grid units²/s², the units of ½|v|²), differentiable in F.

    deformation_gradients: F [N, 3, 3] (with plasticity the elastic part Fe, which alone stores energy)
    volumes:               rest volumes V_p [N]
    masses:                particle masses m_p [N]
    material:              the constitutive model whose energy density ψ is used

    Zero exactly when every particle is stress-free (F a rotation); a released body with energy
    left keeps moving until the stress has relaxed, so a morph that should hold wants it small.
    """
    density = elastic_energy_density(deformation_gradients, material)
    return (volumes * density).sum() / masses.sum()
