"""One explicit MLS-MPM / APIC step: particle-to-grid, grid update, grid-to-particle."""

from __future__ import annotations

import functools

import torch

from physmorph.device_constants import device_constant
from physmorph.mpm.grid import Grid, Kernel, Stencil, affine_scale, kernel_support, stencil
from physmorph.mpm.materials import first_piola_stress, jacobian
from physmorph.mpm.plasticity import return_mapping
from physmorph.mpm.state import Model, State


def _trace(M: torch.Tensor) -> torch.Tensor:
    return M.diagonal(dim1=-2, dim2=-1).sum(-1)


def gather_nodes(field: torch.Tensor, node_index: torch.Tensor) -> torch.Tensor:
    """Node values [G, ...] at stencil indices [N, S] → [N, S, ...].

    index_select's backward is an index_add, which is deterministic on the CPU (advanced
    indexing's backward accumulates in a thread-dependent order), so runs are reproducible.
    """
    return field.index_select(0, node_index.reshape(-1)).reshape(*node_index.shape, *field.shape[1:])


def splat_mass(positions: torch.Tensor, masses: torch.Tensor, grid: Grid, kernel: Kernel = "cubic") -> torch.Tensor:
    """Grid mass field m_i = Σ_p w_ip m_p, [nx·ny·nz] (flat), differentiable in both inputs."""
    st = stencil(positions, grid, kernel)
    contributions = (st.weight * masses.unsqueeze(-1)).reshape(-1)
    grid_mass = torch.zeros(grid.num_nodes, dtype=positions.dtype, device=positions.device)
    return grid_mass.index_add(0, st.node_index.reshape(-1), contributions)


def grid_volume_estimate(
    positions: torch.Tensor, masses: torch.Tensor, grid: Grid, kernel: Kernel = "cubic"
) -> torch.Tensor:
    """Rest volumes V_p = m_p / ρ_p with ρ_p = Σ_i w_ip m_i / dx³ (SPEC §2), [N]."""
    st = stencil(positions, grid, kernel)
    grid_mass = splat_mass(positions, masses, grid, kernel)
    local_density = (st.weight * gather_nodes(grid_mass, st.node_index)).sum(-1) / grid.dx**3
    return masses / local_density


def particles_to_grid(
    state: State,
    model: Model,
    st: Stencil,
    controlled_deformation: torch.Tensor,
    force: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """P2G: grid masses [G] and momenta [G, 3] (G = nodes, flat), SPEC §3.2.

    The stress is evaluated at the controlled gradient F̂ = F + ΔF (`controlled_deformation`);
    `force` [N, 3] (optional) adds dt·f_p to each particle's momentum.
    """
    dt = model.dt
    masses = model.masses.expand(state.num_particles)
    F_hat = controlled_deformation
    C = state.affine_velocities
    stress = first_piola_stress(F_hat, model.material)
    eye = torch.eye(3, dtype=F_hat.dtype, device=F_hat.device)
    kirchhoff = stress @ F_hat.transpose(-1, -2) + model.bulk_viscosity * _trace(C)[:, None, None] * eye
    affine = (
        -affine_scale(model.kernel, model.grid.dx) * dt * model.volumes[:, None, None] * kirchhoff
        + masses[:, None, None] * C
    )
    momentum = masses[:, None] * state.velocities * (1.0 - dt * model.drag)
    if force is not None:
        momentum = momentum + dt * force
    # affine · (x_i − x_p) is separable: one [N, K, 3] term per axis, broadcast over the K³ nodes.
    K, o = st.support, st.axis_offset
    along = [affine[:, None, :, axis] * o[:, axis, :, None] for axis in range(3)]
    node_momentum = (
        momentum[:, None, None, None, :]
        + along[0][:, :, None, None, :]
        + along[1][:, None, :, None, :]
        + along[2][:, None, None, :, :]
    ) * st.weight.reshape(-1, K, K, K, 1)
    flat_index = st.node_index.reshape(-1)
    grid_mass = torch.zeros(model.grid.num_nodes, dtype=F_hat.dtype, device=F_hat.device)
    grid_mass = grid_mass.index_add(0, flat_index, (st.weight * masses.unsqueeze(-1)).reshape(-1))
    grid_momentum = torch.zeros(model.grid.num_nodes, 3, dtype=F_hat.dtype, device=F_hat.device)
    grid_momentum = grid_momentum.index_add(0, flat_index, node_momentum.reshape(-1, 3))
    return grid_mass.clamp(min=0.0), grid_momentum


@functools.lru_cache(maxsize=16)
def boundary_masks(grid: Grid, cells: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per node and axis, whether it lies within `cells` of the low / high wall: two [G, 3] bools."""
    axes = [torch.arange(n, device=device) for n in grid.dims]
    index = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    dims = torch.tensor(grid.dims, device=device)
    return index < cells, index > dims - 1 - cells


def update_grid(grid_mass: torch.Tensor, grid_momentum: torch.Tensor, model: Model) -> torch.Tensor:
    """Grid velocities [G, 3]: v_i = p_i / m_i + dt·f_ext where m_i > 1e-12, then the walls."""
    occupied = grid_mass > 1e-12
    safe_mass = torch.where(occupied, grid_mass, torch.ones_like(grid_mass))
    gravity = torch.as_tensor(model.external_force, dtype=grid_momentum.dtype, device=grid_momentum.device)
    velocity = grid_momentum / safe_mass.unsqueeze(-1) + model.dt * gravity
    velocity = torch.where(occupied.unsqueeze(-1), velocity, torch.zeros_like(velocity))
    if model.boundary == "none":
        return velocity
    low, high = boundary_masks(model.grid, model.boundary_cells, velocity.device)
    if model.boundary == "sticky":
        near_wall = (low | high).any(dim=-1, keepdim=True)
        return torch.where(near_wall, torch.zeros_like(velocity), velocity)
    # slip: near a wall, the velocity component into that wall is removed
    into_wall = (low & (velocity < 0)) | (high & (velocity > 0))
    return torch.where(into_wall, torch.zeros_like(velocity), velocity)


def grid_to_particles(
    grid_velocity: torch.Tensor,
    state: State,
    model: Model,
    st: Stencil,
    controlled_deformation: torch.Tensor,
) -> State:
    """G2P, the J trust region, the smoothed F update, plastic flow and advection (SPEC §3.4–3.7)."""
    dt = model.dt
    node_velocity = gather_nodes(grid_velocity, st.node_index)
    K, o = st.support, st.axis_offset
    weighted = (st.weight.unsqueeze(-1) * node_velocity).reshape(-1, K, K, K, 3)
    # Σ_i w v_i (x_i − x_p)ᵀ, one column per axis, from the node sums along that axis
    per_axis = (weighted.sum((2, 3)), weighted.sum((1, 3)), weighted.sum((1, 2)))
    velocity = per_axis[0].sum(1)
    affine = affine_scale(model.kernel, model.grid.dx) * torch.stack(
        [torch.einsum("nkc,nk->nc", sums, o[:, axis]) for axis, sums in enumerate(per_axis)], dim=-1
    )
    # Trust region: shrink a compressive C so that one step cannot push J below min_jacobian.
    F_hat = controlled_deformation
    J0 = jacobian(F_hat)
    rate = _trace(affine)
    compressing = rate < 0
    safe_rate = torch.where(compressing, rate, -torch.ones_like(rate))
    scale = ((model.min_jacobian / J0 - 1.0) / (dt * safe_rate)).clamp(0.0, 1.0)
    scale = torch.where(compressing, scale, torch.ones_like(scale))
    affine = affine * scale[:, None, None]

    eye = torch.eye(3, dtype=F_hat.dtype, device=F_hat.device)
    F_new = (eye + dt * affine) @ F_hat
    F_new = (1.0 - model.smoothing) * F_new + model.smoothing * state.deformation_gradients
    F_new, plastic_strain = plastic_flow(F_new, state, model)
    return State(state.positions + dt * velocity, velocity, F_new, affine, plastic_strain)


def plastic_flow(F_trial: torch.Tensor, state: State, model: Model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(Fe, α') of the trial gradient [N, 3, 3] after `model.plasticity`'s return mapping; elastic
    models keep F_trial and `state`'s α."""
    if model.plasticity is None:
        return F_trial, state.plastic_strain
    return return_mapping(F_trial, state.tensors[4], model.material.mu, model.plasticity)


def step(
    state: State,
    model: Model,
    deformation_control: torch.Tensor | None = None,
    force: torch.Tensor | None = None,
) -> State:
    """Advance `state` by one step of `model.dt`.

    deformation_control: ΔF [N, 3, 3] added to F before the stress (consumed by this step)
    force:               per-particle force [N, 3] (mass · grid units / s²), optional
    """
    st = stencil(state.positions, model.grid, model.kernel)
    F_hat = state.deformation_gradients
    if deformation_control is not None:
        F_hat = F_hat + deformation_control
    grid_mass, grid_momentum = particles_to_grid(state, model, st, F_hat, force)
    grid_velocity = update_grid(grid_mass, grid_momentum, model)
    return grid_to_particles(grid_velocity, state, model, st, F_hat)


def escaped(positions: torch.Tensor, grid: Grid, kernel: Kernel = "cubic") -> torch.Tensor:
    """[N] bool: particles that are non-finite or whose stencil leaves the grid."""
    lower = device_constant(tuple(grid.min_corner), positions.dtype, positions.device)
    local = (positions - lower) / grid.dx
    dims = device_constant(tuple(grid.dims), positions.dtype, positions.device)
    support = kernel_support(kernel)
    low_margin = 1.0 if kernel == "cubic" else 0.5
    inside = (local >= low_margin) & (local < dims - support + 1 + low_margin)
    return ~(inside.all(-1) & torch.isfinite(positions).all(-1))
