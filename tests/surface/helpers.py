"""Particle clouds shared by the surface tests."""

from __future__ import annotations

import torch


def lattice_ball(radius: float = 6.0, spacing: float = 0.5) -> torch.Tensor:
    """Lattice points [N, 3] (float64) of the given spacing inside a ball centred at 0."""
    axis = torch.arange(-radius, radius + 1e-9, spacing, dtype=torch.float64)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    return points[points.norm(dim=1) <= radius + 1e-9]


def identity_gradients(count: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """F = I for `count` particles, [count, 3, 3]."""
    return torch.eye(3, dtype=dtype).expand(count, 3, 3).clone()


def random_rotation(seed: int) -> torch.Tensor:
    """A proper rotation [3, 3] (float64) drawn from a seeded QR decomposition."""
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.linalg.det(q) > 0 else -q
