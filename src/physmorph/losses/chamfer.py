"""Symmetric Chamfer distance between point sets, on the one nearest-neighbour search (surface.knn)."""

from __future__ import annotations

import torch

from physmorph.surface.knn import nearest_neighbors


def nearest_distances(points: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Distance from each of `points` [N, 3] to its nearest neighbour in `reference` [M, 3], [N].

    Differentiable in both sets: the neighbour is chosen without gradient, the distance to it
    carries it (the derivative of the minimum wherever the nearest neighbour is unique).
    """
    _, index = nearest_neighbors(points, reference, 1)
    # index_select's backward is an index_add, deterministic on the CPU
    return (points - reference.index_select(0, index[:, 0].to(points.device))).norm(dim=-1)


def chamfer_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """½ (mean_a min_b ‖a − b‖ + mean_b min_a ‖a − b‖), in the points' units (differentiable)."""
    return 0.5 * (nearest_distances(a, b).mean() + nearest_distances(b, a).mean())
