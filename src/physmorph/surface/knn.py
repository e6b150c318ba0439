"""Exact k-nearest-neighbour search without gradient: scipy cKDTree on CPU, chunked cdist on GPU."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from physmorph.errors import InputError

# Bounds the [chunk, P] distance block of the GPU search to about 256 MiB of float32.
_GPU_BLOCK_ELEMENTS = 1 << 26


@torch.no_grad()
def nearest_neighbors(queries: torch.Tensor, points: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest `points` of every query, nearest first.

    queries: [Q, 3], points: [P, 3] (same device). Returns (distances [Q, k] in the inputs'
    dtype and units, indices [Q, k] int64 into `points`), both on the inputs' device and
    detached. A query that is also a point finds itself first (distance 0).
    """
    if k > points.shape[0]:
        raise InputError(
            f"nearest-neighbour search asks for k={k} neighbours among {points.shape[0]} "
            "points; lower k (k_F) or use more particles"
        )
    if points.device.type == "cpu":
        tree = cKDTree(points.detach().double().numpy())
        distances, indices = tree.query(queries.detach().double().numpy(), k=k, workers=-1)
        distances = np.asarray(distances).reshape(queries.shape[0], k)
        indices = np.asarray(indices).reshape(queries.shape[0], k)
        return (
            torch.from_numpy(distances).to(points.dtype),
            torch.from_numpy(indices).to(torch.int64),
        )
    chunk = max(1, _GPU_BLOCK_ELEMENTS // max(points.shape[0], 1))
    all_distances, all_indices = [], []
    for start in range(0, queries.shape[0], chunk):
        block_queries = queries[start : start + chunk]
        _, indices = torch.topk(torch.cdist(block_queries, points), k, dim=1, largest=False, sorted=True)
        # cdist's matrix-product form loses precision for close pairs; recompute exactly.
        distances = (points[indices] - block_queries[:, None, :]).norm(dim=-1)
        all_distances.append(distances)
        all_indices.append(indices)
    return torch.cat(all_distances), torch.cat(all_indices)
