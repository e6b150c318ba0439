"""The fused MPM step as a torch.autograd.Function over the Triton kernels (CUDA only)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from physmorph.device_constants import device_constant
from physmorph.mpm.fused import kernels
from physmorph.mpm.grid import affine_scale
from physmorph.mpm.materials import MIN_JACOBIAN
from physmorph.mpm.state import Model

# Newton iterations of the in-kernel polar decomposition (half of them norm-scaled).
NEWTON_ITERATIONS = 8
PARTICLE_BLOCK = 64
PARTICLE_WARPS = 2
# The scattering kernels sum runs of particles that share a cell within a block of SCAN_BLOCK
# particles (a multiple of 16: the run phase's tile is [SCAN_BLOCK / 16, 16]).
SCAN_BLOCK = 128
SCAN_WARPS = 4
NODE_BLOCK = 1024
# Unroll factors of the outer stencil axis and of the inner two. Inner loops of 4 unrolled (16
# independent node gathers per outer iteration) took 5x the compile time (g2p_backward 12.6 s,
# p2g_backward 9.8 s against 1.0 and 2.4 s on a 2-core CPU for sm_90, benchmarks/fused_compile.py),
# all of it in Triton's layout pass over the unrolled body; set 4 to compare run times.
STENCIL_UNROLL = 1
STENCIL_INNER_UNROLL = 1
# The reference's occupied-node threshold and the guard of det F̂ in J F̂⁻ᵀ.
MASS_THRESHOLD = 1e-12
TINY_DETERMINANT = 1e-30


@dataclass(frozen=True)
class StepSettings:
    """The non-differentiable settings of one fused step.

    dims:      grid nodes per axis (nx, ny, nz)
    cells:     boundary_cells of the wall condition
    boundary:  0 none, 1 sticky, 2 slip (kernels.BOUNDARY_CODES)
    values:    the float settings in kernels.PARAMETERS order
    """

    dims: tuple[int, int, int]
    cells: int
    boundary: int
    values: tuple[float, ...]

    @staticmethod
    def of(model: Model) -> StepSettings:
        grid = model.grid
        values = {
            "dt": model.dt,
            "dx": grid.dx,
            "min_x": grid.min_corner[0],
            "min_y": grid.min_corner[1],
            "min_z": grid.min_corner[2],
            "affine_scale": affine_scale(model.kernel, grid.dx),
            "bulk_viscosity": model.bulk_viscosity,
            "smoothing": model.smoothing,
            "trust_min_jacobian": model.min_jacobian,
            "jacobian_floor": MIN_JACOBIAN,
            "mass_threshold": MASS_THRESHOLD,
            "tiny_determinant": TINY_DETERMINANT,
        }
        return StepSettings(
            tuple(grid.dims),
            int(model.boundary_cells),
            kernels.BOUNDARY_CODES[model.boundary],
            tuple(float(values[name]) for name in kernels.PARAMETERS),
        )


def settings_tensor(settings: StepSettings, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`settings.values` on the device, made once (physmorph.device_constants)."""
    return device_constant(settings.values, dtype, device)


def _launch_grid(n: int, block: int) -> tuple[int]:
    return ((n + block - 1) // block,)


def cell_order(x: torch.Tensor, prm: torch.Tensor, settings: StepSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Particles sorted by their base stencil node: (order [N] int32, sorted keys [N] int32)."""
    n = x.shape[0]
    nx, ny, nz = settings.dims
    keys = torch.empty(n, dtype=torch.int32, device=x.device)
    kernels.cell_keys[_launch_grid(n, NODE_BLOCK)](x, prm, keys, n, nx, ny, nz, BLOCK=NODE_BLOCK, num_warps=4)
    sorted_keys, order = torch.sort(keys)
    return order.to(torch.int32), sorted_keys


def scatter_scratch(n: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-program scratch of the scattering kernels: staged particle values and run tables."""
    programs = _launch_grid(n, SCAN_BLOCK)[0]
    stage = torch.empty(programs * kernels.STAGED_VALUES.value * SCAN_BLOCK, dtype=like.dtype, device=like.device)
    runs = torch.empty(programs * (SCAN_BLOCK + 1), dtype=torch.int32, device=like.device)
    return stage, runs


def vector_rows(x: torch.Tensor) -> bool:
    """Whether the kernels read and add a grid row's four values with one 16-byte access each.

    PTX's vector reduction (red.global.add.v4.f32) is float32 from sm_90 on; neither a ROCm
    build (whose "cuda" devices report their own architecture numbers) nor Triton's CPU
    interpreter can run inline PTX.
    """
    if x.dtype != torch.float32 or x.device.type != "cuda" or torch.version.hip is not None:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return torch.cuda.get_device_capability(x.device) >= (9, 0)


def node_velocities(
    grid: torch.Tensor, external_force: torch.Tensor, prm: torch.Tensor, settings: StepSettings
) -> torch.Tensor:
    """The grid update: [G, 4] node velocities (vx, vy, vz, unused) from the [G, 4] mass/momentum grid."""
    nx, ny, nz = settings.dims
    velocity = torch.empty_like(grid)
    kernels.grid_velocity[_launch_grid(grid.shape[0], NODE_BLOCK)](
        grid,
        external_force,
        prm,
        velocity,
        grid.shape[0],
        nx,
        ny,
        nz,
        CELLS=settings.cells,
        BOUNDARY=settings.boundary,
        BLOCK=NODE_BLOCK,
        num_warps=4,
    )
    return velocity


class FusedStep(torch.autograd.Function):
    """(x, v, F, C, ΔF, f, λ, μ, m, V, drag, f_ext) → (x', v', F', C') with the hand adjoint.

    x, v, f [N, 3]; F, C, ΔF [N, 3, 3]; λ, μ, m, V [N] (may be expanded scalars, stride 0);
    drag a 0-d tensor; f_ext [3]. ΔF and f may be None.
    """

    @staticmethod
    def forward(ctx, x, v, F, C, dF, force, lam, mu, masses, volumes, drag, external_force, settings):  # type: ignore[override]
        n = x.shape[0]
        nx, ny, nz = settings.dims
        prm = settings_tensor(settings, x.dtype, x.device)
        grid = torch.zeros(nx * ny * nz, 4, dtype=x.dtype, device=x.device)
        control = dF if dF is not None else F
        particle_force = force if force is not None else x
        order, keys = cell_order(x, prm, settings)
        vector = vector_rows(x)
        kernels.p2g_forward[_launch_grid(n, SCAN_BLOCK)](
            x,
            v,
            F,
            C,
            control,
            particle_force,
            lam,
            lam.stride(0),
            mu,
            mu.stride(0),
            masses,
            masses.stride(0),
            volumes,
            volumes.stride(0),
            drag,
            prm,
            grid,
            order,
            keys,
            *scatter_scratch(n, x),
            n,
            nx,
            ny,
            nz,
            n if dF is not None else 0,
            HAS_FORCE=force is not None,
            NEWTON=NEWTON_ITERATIONS,
            VECTOR_ROWS=vector,
            BLOCK=SCAN_BLOCK,
            num_warps=SCAN_WARPS,
        )
        velocity = node_velocities(grid, external_force, prm, settings)
        x_new = torch.empty_like(x)
        v_new = torch.empty_like(x)
        F_new = torch.empty_like(F)
        C_new = torch.empty_like(F)
        kernels.g2p_forward[_launch_grid(n, PARTICLE_BLOCK)](
            x,
            F,
            control,
            velocity,
            prm,
            x_new,
            v_new,
            F_new,
            C_new,
            n,
            nx,
            ny,
            nz,
            n if dF is not None else 0,
            VECTOR_ROWS=vector,
            BLOCK=PARTICLE_BLOCK,
            UNROLL=STENCIL_UNROLL,
            INNER=STENCIL_INNER_UNROLL,
            num_warps=PARTICLE_WARPS,
        )
        ctx.save_for_backward(
            x, v, F, C, dF, force, lam, mu, masses, volumes, drag, external_force, grid, prm, order, keys
        )
        ctx.settings = settings
        ctx.vector_rows = vector
        return x_new, v_new, F_new, C_new

    @staticmethod
    def backward(ctx, g_x, g_v, g_F, g_C):  # type: ignore[override]
        x, v, F, C, dF, force, lam, mu, masses, volumes, drag, external_force, grid, prm, order, keys = (
            ctx.saved_tensors
        )
        settings = ctx.settings
        vector = ctx.vector_rows
        n = x.shape[0]
        nx, ny, nz = settings.dims
        g_x, g_v, g_F, g_C = (g.contiguous() for g in (g_x, g_v, g_F, g_C))
        control = dF if dF is not None else F
        particle_force = force if force is not None else x
        grad_grid = torch.zeros_like(grid)
        gx_part = torch.empty_like(x)
        gFh_part = torch.empty_like(F)
        # node velocities are recomputed, not saved: one dense pass costs less than a second grid per step
        kernels.g2p_backward[_launch_grid(n, SCAN_BLOCK)](
            x,
            F,
            control,
            node_velocities(grid, external_force, prm, settings),
            prm,
            g_x,
            g_v,
            g_F,
            g_C,
            grad_grid,
            gx_part,
            gFh_part,
            order,
            keys,
            *scatter_scratch(n, x),
            n,
            nx,
            ny,
            nz,
            n if dF is not None else 0,
            VECTOR_ROWS=vector,
            BLOCK=SCAN_BLOCK,
            UNROLL=STENCIL_UNROLL,
            INNER=STENCIL_INNER_UNROLL,
            num_warps=SCAN_WARPS,
        )
        grad_external = torch.zeros(3, dtype=x.dtype, device=x.device)
        kernels.grid_backward[_launch_grid(grid.shape[0], NODE_BLOCK)](
            grid,
            grad_grid,
            external_force,
            grad_external,
            prm,
            grid.shape[0],
            nx,
            ny,
            nz,
            CELLS=settings.cells,
            BOUNDARY=settings.boundary,
            BLOCK=NODE_BLOCK,
            num_warps=4,
        )
        gx = torch.empty_like(x)
        gv = torch.empty_like(x)
        gF = torch.empty_like(F)
        gC = torch.empty_like(F)
        gdF = torch.empty_like(F) if dF is not None else gF
        gforce = torch.empty_like(x) if force is not None else gx
        glam = torch.empty(n, dtype=x.dtype, device=x.device)
        gmu = torch.empty_like(glam)
        gmass = torch.empty_like(glam)
        gvol = torch.empty_like(glam)
        gdrag = torch.zeros(1, dtype=x.dtype, device=x.device)
        kernels.p2g_backward[_launch_grid(n, PARTICLE_BLOCK)](
            x,
            v,
            F,
            C,
            control,
            particle_force,
            lam,
            lam.stride(0),
            mu,
            mu.stride(0),
            masses,
            masses.stride(0),
            volumes,
            volumes.stride(0),
            drag,
            prm,
            grad_grid,
            gx_part,
            gFh_part,
            g_F,
            gx,
            gv,
            gF,
            gC,
            gdF,
            gforce,
            glam,
            gmu,
            gmass,
            gvol,
            gdrag,
            n,
            nx,
            ny,
            nz,
            n if dF is not None else 0,
            HAS_FORCE=force is not None,
            NEWTON=NEWTON_ITERATIONS,
            VECTOR_ROWS=vector,
            BLOCK=PARTICLE_BLOCK,
            UNROLL=STENCIL_UNROLL,
            INNER=STENCIL_INNER_UNROLL,
            num_warps=PARTICLE_WARPS,
        )
        return (
            gx,
            gv,
            gF,
            gC,
            gdF if dF is not None else None,
            gforce if force is not None else None,
            glam,
            gmu,
            gmass,
            gvol,
            gdrag.reshape(()),
            grad_external,
            None,
        )
