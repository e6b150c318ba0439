"""The reference's grid mass-field loss: scale-invariant log loss plus a minimum-mass penalty."""

from __future__ import annotations

import torch

from physmorph.mpm.grid import Grid, Kernel
from physmorph.mpm.step import splat_mass

LOG_EPSILON = 1e-4
MIN_MASS = 1e-3


def mass_field_loss(grid_mass: torch.Tensor, target_grid_mass: torch.Tensor, cell_volume: float = 1.0) -> torch.Tensor:
    """L(m; m*) of SPEC §4 for flat grid mass fields [G] (scalar, differentiable in m), on cells
    of `cell_volume` grid units³.

    s = (Σ m* + 1e-6) / (Σ m + 1e-6) rescales the current field to the target's total mass, so
    only the shape is compared; the gradient flows through s as well. The per-cell terms see
    the mass per grid unit³ (m / cell_volume) and their sum is weighted by cell_volume, an
    integral over the grid box: the same bodies give about the same loss at any cell size
    (with cell_volume 1, the reference's loss exactly).
    """
    scale = (target_grid_mass.sum() + 1e-6) / (grid_mass.sum() + 1e-6)
    # x / 1 and 1 · x are exact: at cell_volume 1 this is the reference's loss bit for bit
    density = scale * grid_mass / cell_volume
    target = target_grid_mass / cell_volume
    log_error = torch.log(density + 1.0 + LOG_EPSILON) - torch.log(target + 1.0 + LOG_EPSILON)
    shortfall = (MIN_MASS - density).clamp(min=0.0)
    return cell_volume * (0.5 * (log_error**2).sum() + (shortfall**2).sum())


def mass_loss(
    positions: torch.Tensor,
    masses: torch.Tensor,
    target_grid_mass: torch.Tensor,
    grid: Grid,
    kernel: Kernel = "cubic",
) -> torch.Tensor:
    """Splat particles at `positions` [N, 3] with `masses` [N] to `grid` and compare to the
    target, per grid unit³ (see mass_field_loss)."""
    return mass_field_loss(splat_mass(positions, masses, grid, kernel), target_grid_mass, grid.dx**3)
