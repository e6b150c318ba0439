"""Symmetric Chamfer distance between point sets: KD-tree neighbours on the CPU, chunked search elsewhere."""

from __future__ import annotations

import torch
from scipy.spatial import cKDTree


@torch.no_grad()
def nearest_neighbours(points: torch.Tensor, reference: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Index [N] (int64) of the nearest of `reference` [M, 3] to each of `points` [N, 3].

    A scipy KD-tree on the CPU (O(N log M)); on other devices a chunked brute-force search, so
    memory stays at chunk · M distances.
    """
    if points.device.type == "cpu":
        tree = cKDTree(reference.detach().double().numpy())
        _, index = tree.query(points.detach().double().numpy(), workers=-1)
        return torch.from_numpy(index).to(torch.int64)
    return brute_force_neighbours(points, reference, chunk)


@torch.no_grad()
def brute_force_neighbours(points: torch.Tensor, reference: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """nearest_neighbours by comparing all pairs, `chunk` points at a time (any device)."""
    return torch.cat(
        [torch.cdist(points[i : i + chunk], reference).argmin(dim=1) for i in range(0, len(points), chunk)]
    )


def nearest_distances(points: torch.Tensor, reference: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Distance from each of `points` [N, 3] to its nearest neighbour in `reference` [M, 3], [N].

    Differentiable in both sets: the neighbour is chosen without gradient, the distance to it
    carries it (the derivative of the minimum wherever the nearest neighbour is unique).
    """
    index = nearest_neighbours(points, reference, chunk).to(points.device)
    # index_select's backward is an index_add, deterministic on the CPU
    return (points - reference.index_select(0, index)).norm(dim=-1)


def chamfer_distance(a: torch.Tensor, b: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """½ (mean_a min_b ‖a − b‖ + mean_b min_a ‖a − b‖), in the points' units (differentiable)."""
    return 0.5 * (nearest_distances(a, b, chunk).mean() + nearest_distances(b, a, chunk).mean())
