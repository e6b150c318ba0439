"""The background grid of the MPM: cell size, corners, node counts and B-spline stencils."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from physmorph.device_constants import device_constant
from physmorph.errors import ConfigError

Kernel = Literal["cubic", "quadratic"]


@dataclass(frozen=True)
class Grid:
    """A regular grid of nodes min_corner + dx·(i, j, k), grid units.

    dx:         cell size
    min_corner: (x, y, z) of node (0, 0, 0)
    max_corner: (x, y, z) of the last node; (max - min) / dx must be a whole number per axis
    """

    dx: float = 1.0
    min_corner: tuple[float, float, float] = (-16.0, -16.0, -16.0)
    max_corner: tuple[float, float, float] = (16.0, 16.0, 16.0)

    def __post_init__(self) -> None:
        if self.dx <= 0:
            raise ConfigError(f"grid cell size dx must be positive, got {self.dx}")
        for axis, (lo, hi) in enumerate(zip(self.min_corner, self.max_corner)):
            cells = (hi - lo) / self.dx
            if cells < 4 or abs(cells - round(cells)) > 1e-6:
                raise ConfigError(
                    f"grid axis {'xyz'[axis]}: (max - min) / dx = {cells:g} must be a whole number "
                    "of at least 4 cells; adjust grid_min_point, grid_max_point or grid_dx"
                )

    @property
    def dims(self) -> tuple[int, int, int]:
        """Nodes per axis."""
        return tuple(round((hi - lo) / self.dx) + 1 for lo, hi in zip(self.min_corner, self.max_corner))

    @property
    def num_nodes(self) -> int:
        nx, ny, nz = self.dims
        return nx * ny * nz

    def node_positions(
        self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """All node positions, [nx*ny*nz, 3], in flat (x-major) order."""
        axes = [lo + self.dx * torch.arange(n, device=device, dtype=dtype) for lo, n in zip(self.min_corner, self.dims)]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def kernel_support(kernel: Kernel) -> int:
    """Nodes per axis touched by one particle: 4 for the cubic B-spline, 3 for the quadratic."""
    return 4 if kernel == "cubic" else 3


def affine_scale(kernel: Kernel, dx: float) -> float:
    """D⁻¹ of MLS-MPM / APIC: 3/dx² for the cubic B-spline, 4/dx² for the quadratic."""
    return (3.0 if kernel == "cubic" else 4.0) / (dx * dx)


def cubic_bspline(distance: torch.Tensor) -> torch.Tensor:
    """Cubic B-spline N(r) of a signed distance r in cells (support |r| < 2)."""
    r = distance.abs()
    inner = 0.5 * r**3 - r**2 + 2.0 / 3.0
    outer = (2.0 - r).clamp(min=0.0) ** 3 / 6.0
    return torch.where(r < 1.0, inner, outer)


def quadratic_bspline(distance: torch.Tensor) -> torch.Tensor:
    """Quadratic B-spline N(r) of a signed distance r in cells (support |r| < 1.5)."""
    r = distance.abs()
    inner = 0.75 - r**2
    outer = 0.5 * (1.5 - r).clamp(min=0.0) ** 2
    return torch.where(r < 0.5, inner, outer)


@dataclass
class Stencil:
    """The grid nodes each particle talks to, with their interpolation weights.

    The S = K³ nodes (K = 4 cubic, 3 quadratic) are ordered (i, j, k) with k fastest, so any
    [N, S, ...] tensor reshapes to [N, K, K, K, ...] with one axis per spatial direction.

    node_index:  [N, S] flat node indices, clamped into the grid
    weight:      [N, S] w_ip = N(Δx/dx) N(Δy/dx) N(Δz/dx), differentiable in the positions
    axis_offset: [N, 3, K] per axis, the node coordinate minus the particle's, grid units
    outside:     [N] bool, particles whose stencil leaves the grid (their indices were clamped)
    """

    node_index: torch.Tensor
    weight: torch.Tensor
    axis_offset: torch.Tensor
    outside: torch.Tensor

    @property
    def support(self) -> int:
        return int(self.axis_offset.shape[-1])

    @property
    def offset(self) -> torch.Tensor:
        """x_i − x_p for every stencil node, [N, S, 3], grid units."""
        o = self.axis_offset
        n = o.shape[0]
        return torch.stack(
            torch.broadcast_tensors(o[:, 0, :, None, None], o[:, 1, None, :, None], o[:, 2, None, None, :]), dim=-1
        ).reshape(n, -1, 3)


def stencil(positions: torch.Tensor, grid: Grid, kernel: Kernel = "cubic") -> Stencil:
    """The B-spline stencil of particles at `positions` [N, 3] (grid units) on `grid`."""
    support = kernel_support(kernel)
    device, dtype = positions.device, positions.dtype
    lower = device_constant(tuple(grid.min_corner), dtype, device)
    dims = device_constant(tuple(grid.dims), torch.int64, device)
    local = (positions - lower) / grid.dx
    # The base node centres the particle in its stencil.
    if kernel == "cubic":
        base = torch.floor(local.detach()).long() - 1
    else:
        base = torch.floor(local.detach() - 0.5).long()
    outside = ((base < 0) | (base + support > dims)).any(dim=-1)
    base = torch.minimum(base.clamp(min=0), dims - support)

    ticks = torch.arange(support, device=device)
    # distance of each of the `support` nodes per axis from the particle, in cells: [N, 3, support]
    distance = base.unsqueeze(-1).to(dtype) + ticks.to(dtype) - local.unsqueeze(-1)
    spline = cubic_bspline if kernel == "cubic" else quadratic_bspline
    axis_weight = spline(distance)

    # Outer products over the three axes give the S = support³ stencil nodes in (i, j, k) order.
    n = positions.shape[0]
    weight = (
        axis_weight[:, 0, :, None, None] * axis_weight[:, 1, None, :, None] * axis_weight[:, 2, None, None, :]
    ).reshape(n, -1)
    ny, nz = grid.dims[1], grid.dims[2]
    base_index = (base[:, 0:1] * ny + base[:, 1:2]) * nz + base[:, 2:3]
    node_offsets = ((ticks[:, None, None] * ny + ticks[None, :, None]) * nz + ticks[None, None, :]).reshape(-1)
    node_index = base_index + node_offsets
    return Stencil(node_index, weight, distance * grid.dx, outside)
