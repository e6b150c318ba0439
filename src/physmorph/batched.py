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


# Cyclic Jacobi sweeps of symmetric_eigen3: quadratic convergence leaves a 3×3 exact after four.
JACOBI_SWEEPS = 5


def _jacobi_rotation(a_pp: torch.Tensor, a_qq: torch.Tensor, a_pq: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cosine, sine and tangent of the rotations that zero a_pq (elementwise)."""
    negligible = a_pq.abs() <= 1e-30 + 1e-18 * (a_pp.abs() + a_qq.abs())
    tau = (a_qq - a_pp) / (2.0 * torch.where(negligible, torch.ones_like(a_pq), a_pq))
    t = torch.where(tau >= 0, 1.0, -1.0) / (tau.abs() + torch.sqrt(1.0 + tau * tau))
    t = torch.where(negligible, torch.zeros_like(t), t)
    c = torch.rsqrt(1.0 + t * t)
    return c, t * c, t


def symmetric_eigen3(matrices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues [N, 3] (in no particular order) and eigenvectors (columns) [N, 3, 3] of symmetric
    3×3 matrices [N, 3, 3], by cyclic Jacobi rotations in elementwise tensor operations.

    A few times faster than torch.linalg.eigh on the CPU for 3×3 matrices (LAPACK's per-matrix
    overhead dominates there), and the same algorithm as the fused Triton return mapping.
    Not differentiable: callers write their own adjoint.
    """
    a = {(p, q): matrices[:, p, q] for p in range(3) for q in range(p, 3)}
    columns = [torch.zeros_like(matrices[:, 0]) for _ in range(3)]
    for k in range(3):
        columns[k][:, k] = 1.0
    for _ in range(JACOBI_SWEEPS):
        for p, q, r in ((0, 1, 2), (0, 2, 1), (1, 2, 0)):
            c, s, t = _jacobi_rotation(a[p, p], a[q, q], a[p, q])
            a[p, p], a[q, q] = a[p, p] - t * a[p, q], a[q, q] + t * a[p, q]
            rp, rq = (min(r, p), max(r, p)), (min(r, q), max(r, q))
            a[rp], a[rq] = c * a[rp] - s * a[rq], s * a[rp] + c * a[rq]
            a[p, q] = torch.zeros_like(a[p, q])
            c, s = c[:, None], s[:, None]
            columns[p], columns[q] = c * columns[p] - s * columns[q], s * columns[p] + c * columns[q]
    return torch.stack((a[0, 0], a[1, 1], a[2, 2]), dim=-1), torch.stack(columns, dim=-1)
