"""Small MPM bodies shared by the mpm tests."""

from __future__ import annotations

import torch

from physmorph.mpm import Grid, Material, Model, State, grid_volume_estimate


def lattice_block(half_width: float = 1.0, spacing: float = 0.5, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Points of a cubic lattice filling [-half_width, half_width]³ (cell centres), [N, 3]."""
    ticks = torch.arange(-half_width + spacing / 2, half_width, spacing, dtype=dtype)
    return torch.stack(torch.meshgrid(ticks, ticks, ticks, indexing="ij"), -1).reshape(-1, 3)


def block_model(
    positions: torch.Tensor,
    spacing: float = 0.5,
    grid: Grid | None = None,
    material: Material | None = None,
    **settings,
) -> Model:
    """A Model for particles at `positions` with lattice spacing `spacing` on a small grid."""
    grid = grid or Grid(1.0, (-6.0, -6.0, -6.0), (6.0, 6.0, 6.0))
    material = material or Material(
        torch.tensor(300.0, dtype=positions.dtype), torch.tensor(200.0, dtype=positions.dtype), 2.0
    )
    lattice_volumes = torch.full((len(positions),), spacing**3, dtype=positions.dtype)
    volumes = grid_volume_estimate(positions, material.density * lattice_volumes, grid, settings.get("kernel", "cubic"))
    return Model(grid, material, lattice_volumes, volumes, **settings)


def random_state(positions: torch.Tensor, seed: int = 0, scale: float = 0.1) -> State:
    """Particles at `positions` with small random v, F near I and C."""
    g = torch.Generator().manual_seed(seed)
    n, dtype = len(positions), positions.dtype
    eye = torch.eye(3, dtype=dtype)
    return State(
        positions.clone(),
        scale * torch.randn(n, 3, generator=g, dtype=dtype),
        eye + scale * torch.randn(n, 3, 3, generator=g, dtype=dtype),
        scale * torch.randn(n, 3, 3, generator=g, dtype=dtype),
    )
