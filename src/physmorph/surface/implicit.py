"""The smooth implicit surface of a particle body: blurred occupancy on a fine grid, sampled and projected."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf

# Grid cells per particle spacing: fine enough that trilinear interpolation of the field and its
# gradient is smooth at the scale of one Gaussian.
_CELLS_PER_SPACING = 2
# Samples are drawn where |ψ| is below this (ψ runs from -1/2 outside to +1/2 inside over a
# distance of about two blur widths).
_BAND = 0.15
_PROJECTION_STEPS = 3
# The level c is at least half this: outside the body, where φ = 0, ψ = −c stays clear of the
# band, and a part one particle layer thick (peak φ ≈ 0.38 at a blur of one spacing) survives.
_MIN_PEAK = 0.4


@dataclass
class ImplicitSurface:
    """ψ(y) = φ(y) − c(y) sampled on a regular grid; the surface is ψ = 0, ψ > 0 inside.

    φ is the particles' occupancy (volume fraction) blurred by a Gaussian of std `blur`; c is half
    the local peak of φ (1/2 in bulk, lower in parts thinner than the blur, so they stay).
    origin: [3] world position of node (0, 0, 0); cell: node spacing; shape: nodes per axis;
    fields: [X·Y·Z, 5] per node ψ, ∇ψ (per world unit) and the outward shift that undoes the
    blur's shrinkage of curved parts, (blur² / 2)·∇·n with n = −∇ψ/|∇ψ|.
    """

    origin: torch.Tensor
    cell: float
    shape: tuple[int, int, int]
    fields: torch.Tensor

    def _interpolate(self, points: torch.Tensor) -> torch.Tensor:
        """Trilinear interpolation [P, 5] of the node fields at `points` [P, 3] (clamped to the grid)."""
        local = (points.to(self.fields.dtype) - self.origin) / self.cell
        result = torch.zeros(points.shape[0], self.fields.shape[1], dtype=self.fields.dtype, device=points.device)
        for index, weight in _trilinear_stencil(local, self.shape):
            result += weight[:, None] * self.fields[index]
        return result

    def evaluate(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ψ [P] and ∇ψ [P, 3] at `points` [P, 3]."""
        result = self._interpolate(points)
        return result[:, 0], result[:, 1:4]

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """`points` [P, 3] moved onto ψ = 0 by Newton steps along ∇ψ (each at most one cell), then
        out along the normal by the blur's shrinkage at that curvature."""
        for _ in range(_PROJECTION_STEPS):
            value, gradient = self.evaluate(points)
            step = -(value / (gradient * gradient).sum(dim=1).clamp_min(1e-12))[:, None] * gradient
            length = step.norm(dim=1, keepdim=True)
            points = points + step * (self.cell / length.clamp_min(self.cell)).clamp(max=1.0)
        result = self._interpolate(points)
        return points + result[:, 4:5] * _unit(-result[:, 1:4])

    def normals(self, points: torch.Tensor) -> torch.Tensor:
        """Unit outward normals −∇ψ/|∇ψ| [P, 3] at `points` [P, 3]."""
        return _unit(-self.evaluate(points)[1])

    def band_weights(self) -> torch.Tensor:
        """Per node [X·Y·Z]: the surface area it stands for, |∇ψ| g³ / (2·band) inside the band."""
        magnitude = self.fields[:, 1:4].norm(dim=-1)
        inside = self.fields[:, 0].abs() < _BAND
        return torch.where(inside, magnitude, 0.0) * self.cell**3 / (2.0 * _BAND)

    def area(self) -> float:
        """The area of ψ = 0 by the coarea formula, world units²."""
        return float(self.band_weights().sum())

    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """`count` points [count, 3] spread evenly by area over ψ = 0.

        Nodes of the band are chosen by systematic sampling (each node gets the floor or ceiling
        of its expected count, far more even than independent draws), jittered within their cell
        and projected onto the surface. Randomness is drawn on the generator's device.
        """
        # on the fields' device: a GPU grid of tens of millions of nodes never visits the host
        weights = self.band_weights().double()
        cumulative = torch.cumsum(weights, 0)
        offset = torch.rand((), generator=generator, dtype=torch.float64, device=generator.device)
        ticks = torch.arange(count, dtype=torch.float64, device=weights.device) + offset.to(weights.device)
        nodes = torch.searchsorted(cumulative, ticks * (cumulative[-1] / count)).clamp(max=len(weights) - 1)
        jitter = torch.rand(count, 3, generator=generator, dtype=torch.float64, device=generator.device)
        coordinates = torch.stack(
            (nodes // (self.shape[1] * self.shape[2]), (nodes // self.shape[2]) % self.shape[1], nodes % self.shape[2]),
            dim=1,
        )
        jitter = jitter.to(self.fields.device, self.fields.dtype) - 0.5
        return self.project(self.origin + (coordinates.to(self.fields.dtype) + jitter) * self.cell)


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)


_CORNERS = tuple(((c >> 2) & 1, (c >> 1) & 1, c & 1) for c in range(8))


def _trilinear_stencil(local: torch.Tensor, shape: tuple[int, int, int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The 8 (flat node index [P], trilinear weight [P]) pairs of points at grid coordinates
    `local` [P, 3] on a node grid of `shape` (points outside are clamped to its boundary cells)."""
    size = torch.tensor(shape, device=local.device)
    strides = torch.tensor([shape[1] * shape[2], shape[2], 1], device=local.device)
    base = local.floor().clamp(torch.zeros_like(size), size - 2).long()
    fraction = (local - base).clamp(0.0, 1.0)
    flat = (base * strides).sum(dim=1)
    stencil = []
    for corner in _CORNERS:
        offset = torch.tensor(corner, device=local.device)
        weight = torch.where(offset.bool(), fraction, 1.0 - fraction).prod(dim=1)
        stencil.append((flat + int((offset * strides).sum()), weight))
    return stencil


def _max_filter(volume: torch.Tensor, window: int) -> torch.Tensor:
    """Maximum [X, Y, Z] over a cube of `window` nodes per side (separable, three 1D passes)."""
    work = volume[None, None]
    for axis in range(3):
        size = [1, 1, 1]
        size[axis] = window
        padding = [0, 0, 0]
        padding[axis] = window // 2
        work = nnf.max_pool3d(work, tuple(size), stride=1, padding=tuple(padding))
    return work[0, 0]


def _blur(volume: torch.Tensor, sigma_cells: float) -> torch.Tensor:
    """Separable Gaussian blur [X, Y, Z] with standard deviation `sigma_cells` (zero padding)."""
    radius = max(1, math.ceil(3.0 * sigma_cells))
    taps = torch.arange(-radius, radius + 1, dtype=volume.dtype, device=volume.device)
    kernel = torch.exp(-0.5 * (taps / sigma_cells) ** 2)
    kernel = kernel / kernel.sum()
    work = volume[None, None]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = len(taps)
        padding = [0, 0, 0]
        padding[axis] = radius
        work = nnf.conv3d(work, kernel.reshape(shape), padding=tuple(padding))
    return work[0, 0]


@torch.no_grad()
def implicit_surface(
    positions: torch.Tensor, volumes: torch.Tensor, spacing: float, smoothing: float
) -> ImplicitSurface:
    """The implicit surface of particles at `positions` [N, 3] with volumes [N] (world units³).

    spacing: the particles' lattice spacing; smoothing: the blur's std in spacings (about 1
    removes the fill's lattice steps and keeps parts one spacing thick).
    """
    dtype = torch.float64
    x = positions.to(dtype)
    cell = spacing / _CELLS_PER_SPACING
    blur = smoothing * spacing
    pad = 4.0 * blur + 2.0 * spacing
    origin = x.min(dim=0).values - pad
    shape = torch.ceil((x.max(dim=0).values + pad - origin) / cell).long() + 1
    grid_shape = tuple(int(s) for s in shape)
    occupancy = torch.zeros(int(shape.prod()), dtype=dtype, device=x.device)
    density = volumes.to(dtype) / cell**3
    for index, weight in _trilinear_stencil((x - origin) / cell, grid_shape):
        occupancy.index_add_(0, index, weight * density)
    phi = _blur(occupancy.reshape(grid_shape), blur / cell)
    peak = _max_filter(phi, 2 * math.ceil(3.0 * blur / cell) + 1)
    level = 0.5 * _blur(peak, blur / cell).clamp(_MIN_PEAK, 1.0)
    values = phi - level
    gradient = torch.stack(torch.gradient(values, spacing=cell), dim=-1)
    normal = _unit(-gradient)
    divergence = sum(torch.gradient(normal[..., axis], spacing=cell, dim=axis)[0] for axis in range(3))
    shift = (0.5 * blur**2 * divergence).clamp(-spacing, spacing)
    fields = torch.cat((values[..., None], gradient, shift[..., None]), dim=-1).reshape(-1, 5)
    return ImplicitSurface(origin=origin, cell=cell, shape=grid_shape, fields=fields)
