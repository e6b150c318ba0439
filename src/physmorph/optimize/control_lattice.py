"""Control rates on a lattice over the rest body, interpolated to its particles (controls that do not grow with N).

One control per particle gives a finer lattice more control detail: the same Adam step then puts
deformation into ripples below the old particle spacing, which the elastic body stores and
returns in the next episode (BENCHMARKS.md, issue 14). With `optimization.control_spacing`, the
optimised rates live on the nodes of a lattice of that spacing laid over the particles' rest
positions, and each particle's rate is the trilinear interpolation of its cell's 8 nodes: the
same control space at every refinement. The weights are fixed in the rest (material) frame, so
a particle keeps its nodes as the body moves.
"""

from __future__ import annotations

import torch


def control_lattice_weights(rest_positions: torch.Tensor, spacing: float) -> torch.Tensor:
    """Sparse trilinear weights [N, L] (COO, coalesced) from the L lattice nodes that some
    particle's cell touches to the N particles at rest_positions [N, 3]; the lattice has
    `spacing` (grid units) and a node at the particles' lowest corner. Rows sum to 1."""
    origin = rest_positions.min(dim=0).values
    cells = (rest_positions - origin) / spacing
    base = torch.floor(cells)
    fraction = cells - base
    base = base.long()
    offsets = torch.cartesian_prod(*[torch.tensor([0, 1], device=rest_positions.device)] * 3)  # [8, 3]
    corners = base[:, None, :] + offsets[None]  # [N, 8, 3]
    weights = torch.where(offsets[None].bool(), fraction[:, None, :], 1.0 - fraction[:, None, :]).prod(dim=-1)
    extent = corners.reshape(-1, 3).amax(dim=0) + 1
    keys = (corners[..., 0] * extent[1] + corners[..., 1]) * extent[2] + corners[..., 2]
    nodes, node_of = torch.unique(keys.reshape(-1), return_inverse=True)
    rows = torch.arange(rest_positions.shape[0], device=rest_positions.device).repeat_interleave(8)
    indices = torch.stack([rows, node_of])
    shape = (rest_positions.shape[0], nodes.numel())
    return torch.sparse_coo_tensor(indices, weights.reshape(-1), shape, check_invariants=False).coalesce()


def interpolate_rates(weights: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
    """Per-particle rates [K, N, 3, 3] from lattice rates [K, L, 3, 3] through weights [N, L]
    (differentiable in `rates`).

    On CUDA, a sum over each particle's 8 corner nodes: it never waits for the host, so a CUDA
    graph can capture it (physmorph.optimize.graphs). On the CPU, the sparse product, which was
    the faster of the two there.
    """
    steps, nodes = rates.shape[:2]
    flat = rates.permute(1, 0, 2, 3).reshape(nodes, steps * 9)
    if rates.is_cuda:
        # the coalesced weights hold each row's 8 corners in order: these are views
        weights = weights if weights.is_coalesced() else weights.coalesce()
        n = weights.shape[0]
        corners, corner_weights = weights.indices()[1].reshape(n, 8), weights.values().reshape(n, 8)
        particles = flat.index_select(0, corners[:, 0]) * corner_weights[:, 0, None]
        for corner in range(1, 8):
            particles = particles + flat.index_select(0, corners[:, corner]) * corner_weights[:, corner, None]
    else:
        particles = torch.sparse.mm(weights, flat)
    return particles.reshape(-1, steps, 3, 3).permute(1, 0, 2, 3).contiguous()
