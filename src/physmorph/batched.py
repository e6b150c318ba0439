"""Batched symmetric eigen-decompositions of many small matrices, in chunks every CUDA solver accepts."""

from __future__ import annotations

import torch

# cuSOLVER's batched syev failed with CUSOLVER_STATUS_INTERNAL_ERROR on an H100 for 200k 3×3
# matrices; chunks of this many stay well inside what it handles.
CHUNK = 32768


def eigvalsh(matrices: torch.Tensor) -> torch.Tensor:
    """Ascending eigenvalues [..., n] of symmetric matrices [..., n, n] (differentiable)."""
    flat = matrices.reshape(-1, *matrices.shape[-2:])
    values = torch.cat([torch.linalg.eigvalsh(part) for part in flat.split(CHUNK)]) if len(flat) else flat[..., 0]
    return values.reshape(*matrices.shape[:-1])


def eigh(matrices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ascending eigenvalues [..., n] and eigenvectors (columns) [..., n, n] of symmetric matrices."""
    flat = matrices.reshape(-1, *matrices.shape[-2:])
    if not len(flat):
        return torch.linalg.eigh(matrices)
    pairs = [torch.linalg.eigh(part) for part in flat.split(CHUNK)]
    values = torch.cat([p[0] for p in pairs]).reshape(*matrices.shape[:-1])
    vectors = torch.cat([p[1] for p in pairs]).reshape(matrices.shape)
    return values, vectors
