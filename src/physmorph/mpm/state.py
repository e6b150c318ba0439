"""Plain-data state of an MPM body: per-step particle State and the constant Model."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from physmorph.mpm.grid import Grid, Kernel
from physmorph.mpm.materials import Material
from physmorph.mpm.plasticity import Plasticity

Boundary = Literal["slip", "sticky", "none"]


@dataclass
class State:
    """Particle state at one time step (N particles, grid units, seconds).

    positions:             x [N, 3]
    velocities:            v [N, 3]
    deformation_gradients: F [N, 3, 3]
    affine_velocities:     C [N, 3, 3] (APIC affine velocity field, 1/s)
    plastic_strain:        α [N], accumulated von Mises plastic strain (None: never flowed);
                           with plasticity, F is the elastic part Fe of F = Fe·Fp
    """

    positions: torch.Tensor
    velocities: torch.Tensor
    deformation_gradients: torch.Tensor
    affine_velocities: torch.Tensor
    plastic_strain: torch.Tensor | None = None

    @staticmethod
    def at_rest(positions: torch.Tensor) -> State:
        """Undeformed particles at `positions` [N, 3]: v = 0, F = I, C = 0."""
        n = positions.shape[0]
        eye = torch.eye(3, dtype=positions.dtype, device=positions.device).expand(n, 3, 3)
        return State(
            positions,
            torch.zeros_like(positions),
            eye.clone(),
            torch.zeros(n, 3, 3, dtype=positions.dtype, device=positions.device),
        )

    @property
    def num_particles(self) -> int:
        return int(self.positions.shape[0])

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """(x, v, F, C, α), α zeros when None."""
        alpha = self.plastic_strain
        if alpha is None:
            alpha = torch.zeros_like(self.positions[:, 0])
        return self.positions, self.velocities, self.deformation_gradients, self.affine_velocities, alpha

    def detach(self) -> State:
        return State(*(t.detach() for t in self.tensors))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> State:
        return State(*(t.to(device=device, dtype=dtype) for t in self.tensors))


@dataclass
class Model:
    """Everything constant during a rollout: grid, material, particle volumes, step settings.

    grid:             the background grid
    material:         λ, μ, density and constitutive model
    lattice_volumes:  h³ per particle [N] (mass m_p = density · h³)
    volumes:          rest volume V_p per particle [N] (grid-based estimate, grid units³)
    dt:               time step, s
    drag:             velocity damping per second (momentum scaled by 1 − dt·drag in P2G)
    external_force:   acceleration added on the grid, [3] (grid units / s²), e.g. gravity
    smoothing:        β of the F update F' ← (1 − β) F' + β F (0 = plain MLS-MPM)
    bulk_viscosity:   ζ of the ζ tr(C) I term in the P2G stress
    min_jacobian:     J floor of the trust region that limits compression per step
    kernel:           'cubic' (64 nodes) or 'quadratic' (27 nodes) B-spline
    boundary:         wall condition on nodes within `boundary_cells` of the grid's faces
    plasticity:       von Mises return mapping after each step's F update (None: elastic)
    """

    grid: Grid
    material: Material
    lattice_volumes: torch.Tensor
    volumes: torch.Tensor
    dt: float = 1.0 / 120.0
    drag: torch.Tensor | float = 0.5
    external_force: torch.Tensor | tuple[float, float, float] = (0.0, 0.0, 0.0)
    smoothing: float = 0.955
    bulk_viscosity: float = 0.25
    min_jacobian: float = 0.6
    kernel: Kernel = "cubic"
    boundary: Boundary = "slip"
    boundary_cells: int = field(default=3)
    plasticity: Plasticity | None = None

    @property
    def masses(self) -> torch.Tensor:
        """m_p = density · h³, [N] (differentiable in the density)."""
        return self.material.density * self.lattice_volumes

    def with_material(self, material: Material) -> Model:
        return replace(self, material=material)
