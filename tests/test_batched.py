"""Batched 3×3 symmetric eigen-decompositions: Jacobi against LAPACK, repeated eigenvalues."""

from __future__ import annotations

import pytest
import torch

from physmorph.batched import symmetric_eigen3


def symmetric_matrices(dtype: torch.dtype) -> torch.Tensor:
    """Random SPD matrices, a diagonal, a multiple of I and two with a repeated eigenvalue."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(64, 3, 3, generator=g, dtype=torch.float64)
    Q = torch.linalg.qr(torch.randn(2, 3, 3, generator=g, dtype=torch.float64)).Q
    repeated = Q @ torch.diag_embed(torch.tensor([[2.0, 2.0, 0.5], [1.0, 3.0, 3.0]], dtype=torch.float64)) @ Q.mT
    special = torch.stack(
        [torch.diag(torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64)), 4.0 * torch.eye(3, dtype=torch.float64)]
    )
    return torch.cat([A @ A.mT + 0.1 * torch.eye(3, dtype=torch.float64), repeated, special]).to(dtype)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_jacobi_eigen_decomposition_reconstructs_and_matches_lapack(dtype, tolerance):
    b = symmetric_matrices(dtype)
    eigenvalues, V = symmetric_eigen3(b)
    scale = b.norm(dim=(-1, -2), keepdim=True)
    eye = torch.eye(3, dtype=dtype)
    assert ((V.mT @ V - eye).abs().amax(dim=(-1, -2)) < tolerance).all()
    reconstructed = (V * eigenvalues[:, None, :]) @ V.mT
    assert (((reconstructed - b).abs() / scale).amax(dim=(-1, -2)) < tolerance).all()
    reference = torch.linalg.eigvalsh(b)
    assert ((eigenvalues.sort(-1).values - reference).abs() / scale[..., 0] < tolerance).all()
