"""Symmetric Chamfer distance between point sets, chunked so memory stays bounded on any device."""

from __future__ import annotations

import torch


def nearest_distances(points: torch.Tensor, reference: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Distance from each of `points` [N, 3] to its nearest neighbour in `reference` [M, 3], [N]."""
    return torch.cat(
        [torch.cdist(points[i : i + chunk], reference).min(dim=1).values for i in range(0, len(points), chunk)]
    )


def chamfer_distance(a: torch.Tensor, b: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """½ (mean_a min_b ‖a − b‖ + mean_b min_a ‖a − b‖), in the points' units (differentiable)."""
    return 0.5 * (nearest_distances(a, b, chunk).mean() + nearest_distances(b, a, chunk).mean())
