"""The reference's grid mass-field loss: scale-invariant log loss plus a minimum-mass penalty."""

from __future__ import annotations

import torch

from physmorph.mpm.grid import Grid, Kernel
from physmorph.mpm.step import splat_mass

LOG_EPSILON = 1e-4
MIN_MASS = 1e-3


def mass_field_loss(grid_mass: torch.Tensor, target_grid_mass: torch.Tensor) -> torch.Tensor:
    """L(m; m*) of SPEC §4 for flat grid mass fields [G] (scalar, differentiable in m).

    s = (Σ m* + 1e-6) / (Σ m + 1e-6) rescales the current field to the target's total mass, so
    only the shape is compared; the gradient flows through s as well.
    """
    scale = (target_grid_mass.sum() + 1e-6) / (grid_mass.sum() + 1e-6)
    scaled = scale * grid_mass
    log_error = torch.log(scaled + 1.0 + LOG_EPSILON) - torch.log(target_grid_mass + 1.0 + LOG_EPSILON)
    shortfall = (MIN_MASS - scaled).clamp(min=0.0)
    return 0.5 * (log_error**2).sum() + (shortfall**2).sum()


def mass_loss(
    positions: torch.Tensor,
    masses: torch.Tensor,
    target_grid_mass: torch.Tensor,
    grid: Grid,
    kernel: Kernel = "cubic",
) -> torch.Tensor:
    """Splat particles at `positions` [N, 3] with `masses` [N] to `grid` and compare to the target."""
    return mass_field_loss(splat_mass(positions, masses, grid, kernel), target_grid_mass)
