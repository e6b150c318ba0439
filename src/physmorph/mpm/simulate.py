"""Differentiable rollouts: T MPM steps with deformation-gradient controls, optional checkpointing."""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch.utils.checkpoint import checkpoint

from physmorph.errors import InputError, SimulationDiverged
from physmorph.mpm.state import Model, State
from physmorph.mpm.step import escaped, step

# Bytes that autograd keeps per particle and MPM step in float32 (twice that in float64): the
# stencil weights, offsets and per-node products of P2G and G2P. Measured with
# torch.autograd.graph.saved_tensors_hooks on a torch-backend rollout (cubic: 4220-4330,
# quadratic: 2310-2420 bytes; benchmarks/autograd_memory.py), rounded up.
SAVED_BYTES_PER_PARTICLE_STEP = {"cubic": 4400, "quadratic": 2500}
# The fused step (mpm.fused) saves only its inputs for backward: x, v, F, C, the control and
# the Lamé parameters (35 values) and the particles' cell order and key (12 bytes), in float32.
FUSED_SAVED_BYTES_PER_PARTICLE_STEP = 35 * 4 + 12
# A rollout keeps its whole autograd graph only if the graph takes at most this share of the
# device's free memory; the rest is for the states, the losses, the renderer and the backward.
GRAPH_SHARE_OF_FREE = 0.5


class CheckpointingWarning(UserWarning):
    """A rollout recomputes its steps in backward because its graph would not fit in memory."""


StepFunction = Callable[[State, Model, "torch.Tensor | None", "torch.Tensor | None"], State]
Backend = Literal["auto", "torch", "triton"]


def select_step(backend: Backend, device: torch.device) -> StepFunction:
    """The step implementation for `backend`: 'torch' is the reference, 'triton' the fused GPU
    kernels (CUDA only), 'auto' the fused kernels on CUDA when Triton is importable."""
    if backend == "torch":
        return step
    fused_available = device.type == "cuda" and importlib.util.find_spec("triton") is not None
    if backend == "triton" and not fused_available:
        raise InputError(
            f"backend 'triton' needs CUDA tensors and the triton package (tensors are on {device}); "
            "use backend 'torch' or 'auto'"
        )
    if not fused_available or importlib.util.find_spec("physmorph.mpm.fused") is None:
        return step
    from physmorph.mpm.fused import fused_step

    return fused_step


def free_memory(device: torch.device) -> float:
    """Bytes `device` can still give: the GPU's free memory plus PyTorch's cached blocks, or the
    host's MemAvailable."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return float(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def graph_bytes(num_particles: int, num_steps: int, kernel: str, itemsize: int, fused: bool = False) -> float:
    """Estimated bytes of the autograd graph of a rollout kept whole (without checkpointing), for
    the reference step or the fused one."""
    per_step = FUSED_SAVED_BYTES_PER_PARTICLE_STEP if fused else SAVED_BYTES_PER_PARTICLE_STEP[kernel]
    return per_step * itemsize / 4 * num_particles * num_steps


@dataclass
class Trajectory:
    """A rollout of T steps (index 0 is the initial state).

    positions:             [T+1, N, 3]
    velocities:            [T+1, N, 3]
    deformation_gradients: [T+1, N, 3, 3]
    affine_velocities:     [T+1, N, 3, 3]
    plastic_strain:        [T+1, N] accumulated plastic strain α (zeros for elastic bodies)
    """

    positions: torch.Tensor
    velocities: torch.Tensor
    deformation_gradients: torch.Tensor
    affine_velocities: torch.Tensor
    plastic_strain: torch.Tensor

    @property
    def num_steps(self) -> int:
        return int(self.positions.shape[0]) - 1

    @property
    def series(self) -> tuple[torch.Tensor, ...]:
        return self.positions, self.velocities, self.deformation_gradients, self.affine_velocities, self.plastic_strain

    def state(self, index: int) -> State:
        """The State at trajectory index `index` (0 = initial, -1 = final)."""
        return State(*(series[index] for series in self.series))

    @property
    def final(self) -> State:
        return self.state(-1)

    def then(self, later: Trajectory, index: int) -> Trajectory:
        """This trajectory up to `index`, continued by `later` (which starts at that state)."""
        return Trajectory(*(torch.cat((mine[:index], theirs)) for mine, theirs in zip(self.series, later.series)))


def control_steps(num_steps: int, control_stride: int) -> list[int]:
    """Steps at which a deformation control acts: 0, s, 2s, … < T − 1 (at least step 0)."""
    return list(range(0, max(num_steps - 1, 1), control_stride))


def simulate(
    initial: State,
    model: Model,
    num_steps: int,
    deformation_controls: torch.Tensor | None = None,
    control_stride: int = 1,
    forces: torch.Tensor | None = None,
    checkpoint_steps: bool = False,
    backend: Backend = "auto",
    start_step: int = 0,
    check_divergence: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> Trajectory:
    """Roll out steps `start_step` … `num_steps` − 1 from `initial`; differentiable by plain autograd.

    deformation_controls: ΔF [K, N, 3, 3], K = len(control_steps(num_steps, control_stride));
                          control k is added to F at step k · control_stride (controls of
                          steps before `start_step` are ignored)
    forces:               per-particle forces [N, 3] (every step) or [num_steps, N, 3]
    checkpoint_steps:     keep only each step's state for backward and recompute the step's
                          intermediates, so memory is O(T · state) rather than O(T · step).
                          False checkpoints anyway (with a CheckpointingWarning) when autograd
                          is on and the whole graph (graph_bytes) would take more than
                          GRAPH_SHARE_OF_FREE of the device's free memory
    backend:              'torch' (reference), 'triton' (fused GPU kernels) or 'auto' (see select_step)
    start_step:           the step number of `initial` (to resume an episode mid-way)
    on_step:              called with each finished step's number (e.g. a progress bar)
    check_divergence:     raise SimulationDiverged when particles become non-finite or leave
                          the grid (one host sync per rollout)
    """
    n = initial.num_particles
    step_function = select_step(backend, initial.positions.device)
    steps_with_control = control_steps(num_steps, control_stride)
    if deformation_controls is not None and tuple(deformation_controls.shape) != (len(steps_with_control), n, 3, 3):
        raise InputError(
            f"deformation_controls has shape {tuple(deformation_controls.shape)}; expected "
            f"({len(steps_with_control)}, {n}, 3, 3) for {num_steps} steps with control_stride "
            f"{control_stride} (control steps {steps_with_control})"
        )
    if forces is not None and forces.shape not in ((n, 3), (num_steps, n, 3)):
        raise InputError(f"forces has shape {tuple(forces.shape)}; expected ({n}, 3) or ({num_steps}, {n}, 3)")
    control_at = {t: k for k, t in enumerate(steps_with_control)}
    if not checkpoint_steps and torch.is_grad_enabled():
        checkpoint_steps = _graph_does_not_fit(initial, model, num_steps - start_step, step_function is not step)

    def advance(state_tensors: tuple[torch.Tensor, ...], control: torch.Tensor | None, force: torch.Tensor | None):
        return step_function(State(*state_tensors), model, control, force).tensors

    state = initial.tensors
    history: list[tuple[torch.Tensor, ...]] = [state]
    for t in range(start_step, num_steps):
        control = None
        if deformation_controls is not None and t in control_at:
            control = deformation_controls[control_at[t]]
        force = None if forces is None else (forces if forces.dim() == 2 else forces[t])
        if checkpoint_steps and torch.is_grad_enabled():
            state = checkpoint(
                lambda x, v, F, C, alpha, dF, f: advance((x, v, F, C, alpha), dF, f),
                *state,
                control,
                force,
                use_reentrant=False,
            )
        else:
            state = advance(state, control, force)
        history.append(state)
        if on_step is not None:
            on_step(t)
    trajectory = Trajectory(*(torch.stack(series) for series in zip(*history)))
    if check_divergence and trajectory.num_steps:
        raise_if_diverged(divergence_counts(trajectory, model).tolist(), n, start_step)
    return trajectory


@torch.no_grad()
def divergence_counts(trajectory: Trajectory, model: Model) -> torch.Tensor:
    """How many particles are non-finite or out of the grid after each step of `trajectory`, [T]
    (computed on the device: reading it is the one host sync)."""
    positions = trajectory.positions[1:]
    steps, n = positions.shape[:2]
    outside = escaped(positions.reshape(-1, 3), model.grid, model.kernel).reshape(steps, n)
    return (outside | ~torch.isfinite(trajectory.deformation_gradients[1:]).all(dim=(-1, -2))).sum(dim=1)


def graph_fits(initial: State, model: Model, num_steps: int, fused: bool) -> bool:
    """Whether the autograd graph of a rollout of `num_steps` from `initial` may be kept whole: it
    takes at most GRAPH_SHARE_OF_FREE of the device's free memory."""
    needed = graph_bytes(initial.num_particles, num_steps, model.kernel, initial.positions.element_size(), fused)
    return needed <= GRAPH_SHARE_OF_FREE * free_memory(initial.positions.device)


def _graph_does_not_fit(initial: State, model: Model, num_steps: int, fused: bool) -> bool:
    positions = initial.positions
    if positions.is_cuda and torch.cuda.is_current_stream_capturing():
        return False  # a CUDA graph's rollout was sized before its capture (physmorph.optimize.graphs)
    if graph_fits(initial, model, num_steps, fused):
        return False
    needed = graph_bytes(initial.num_particles, num_steps, model.kernel, positions.element_size(), fused)
    free = free_memory(positions.device)
    warnings.warn(
        f"the autograd graph of {initial.num_particles} particles × {num_steps} steps would take about "
        f"{needed / 2**30:.3g} GiB of {free / 2**30:.3g} GiB free on {positions.device}: recomputing each "
        "step in backward (checkpoint_steps); set optimization.checkpoint_steps: true to say so",
        CheckpointingWarning,
        stacklevel=3,
    )
    return True


def raise_if_diverged(bad_counts: list[int], num_particles: int, start_step: int) -> None:
    """SimulationDiverged for the first step with a bad particle (`divergence_counts`), if any."""
    for t, count in enumerate(bad_counts):
        if count:
            raise SimulationDiverged(
                f"simulation diverged at step {start_step + t + 1}: {count} of {num_particles} particles became "
                "non-finite or left the grid; reduce dt, raise drag, lower the stiffness (lam/mu, E) "
                "or the control magnitudes, or enlarge the grid"
            )
