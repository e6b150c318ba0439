"""Memory estimates of a run, made before anything large is allocated and checked against the device's free memory."""

from __future__ import annotations

import resource
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from physmorph.config import SimulationConfig
from physmorph.errors import InputError
from physmorph.mpm.simulate import SAVED_BYTES_PER_PARTICLE_STEP, free_memory

# A state (x, v, F, C: 24 numbers) per particle and step is all a rollout without gradient keeps.
STATE_VALUES = 24
# The fill's lattice: int64 ray-crossing counts, a bool mask and the kept indices, per lattice point.
FILL_BYTES_PER_LATTICE_POINT = 24
# The rasteriser's per-pixel work (colour, alpha, depth, normal, transmittance and their sums).
RENDER_BYTES_PER_PIXEL = 256


@dataclass
class Estimate:
    """An estimate of peak memory in bytes and a one-line account of where it comes from."""

    bytes: float
    account: str


def format_bytes(count: float) -> str:
    """'1.77 TiB' for 1.77 · 2⁴⁰."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.3g} {unit}"
        count /= 1024
    return f"{count:.3g} PiB"


def available_bytes(device: torch.device) -> float:
    """Free memory of `device` (mpm.simulate.free_memory: the GPU's free and cached memory, or the
    host's MemAvailable)."""
    return free_memory(device)


def peak_bytes(device: torch.device) -> float:
    """The most memory this process has held: PyTorch's peak allocation on a GPU, the peak
    resident set on the CPU."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def check_fits(estimate: Estimate, what: str, device: torch.device, fix: str) -> None:
    """InputError, printing the estimate, when `estimate` exceeds the free memory of `device`."""
    free = available_bytes(device)
    if estimate.bytes > free:
        raise InputError(
            f"{what} needs about {format_bytes(estimate.bytes)} ({estimate.account}) but {device} has "
            f"{format_bytes(free)} free; {fix}"
        )


def lattice_points(mesh: trimesh.Trimesh, simulation: SimulationConfig) -> tuple[float, float]:
    """(lattice points the fill visits, material points it will keep) for `mesh`, without filling."""
    spacing = simulation.grid_dx / simulation.points_per_cell_cuberoot
    extents = np.asarray(mesh.extents, dtype=np.float64)
    lattice = float(np.prod(np.floor(extents / spacing) + 1))
    box_volume = float(np.prod(extents))
    inside = abs(float(mesh.volume)) / box_volume if mesh.is_watertight and box_volume > 0 else 1.0
    return lattice, lattice * min(max(inside, 0.0), 1.0)


def grid_nodes(simulation: SimulationConfig) -> float:
    low, high = np.asarray(simulation.grid_min_point), np.asarray(simulation.grid_max_point)
    return float(np.prod(np.floor((high - low) / simulation.grid_dx) + 1))


def rollout_bytes(
    meshes: Sequence[trimesh.Trimesh],
    simulation: SimulationConfig,
    num_steps: int,
    itemsize: int,
    gradient: bool,
    checkpoint_steps: bool = False,
) -> Estimate:
    """Peak memory of filling `meshes` and rolling out the first for `num_steps` steps: the
    autograd graph (`gradient`; with `checkpoint_steps` the states plus one step's graph) or only
    the stored states, plus the grid."""
    counts = [lattice_points(mesh, simulation) for mesh in meshes]
    fill = max(lattice for lattice, _ in counts) * FILL_BYTES_PER_LATTICE_POINT
    particles = counts[0][1]
    states = particles * (num_steps + 1) * STATE_VALUES * itemsize
    per_step = SAVED_BYTES_PER_PARTICLE_STEP[simulation.kernel] * itemsize / 4 * particles
    graph = per_step * (1 if checkpoint_steps or not gradient else num_steps)
    grid = grid_nodes(simulation) * 8 * itemsize * (num_steps if gradient and not checkpoint_steps else 1)
    total = max(fill, states + graph + grid)
    account = (
        f"{particles:.3g} particles × {num_steps} steps, {grid_nodes(simulation):.3g} grid nodes, "
        f"filling {max(lattice for lattice, _ in counts):.3g} lattice points"
    )
    return Estimate(total, account)


def render_bytes(size: tuple[int, int], views: int, frames: int) -> Estimate:
    """Peak memory of rendering `frames` steps: one view's per-pixel work and the video's frames."""
    width, height = size
    pixels = float(width) * float(height)
    total = pixels * RENDER_BYTES_PER_PIXEL + pixels * 3 * 4 * frames
    return Estimate(total, f"{width}x{height} pixels, {frames} video frames, {views} views")


def check_rollout_fits(
    meshes: Sequence[trimesh.Trimesh],
    simulation: SimulationConfig,
    num_steps: int,
    itemsize: int,
    device: torch.device,
    checkpoint_steps: bool,
    what: str,
    fix: str,
) -> Estimate:
    """The estimate of a differentiable rollout that will run: the whole graph when it fits in
    the free memory of `device`, else with each step recomputed in backward (what
    mpm.simulate chooses by itself, or always with `checkpoint_steps`). InputError, with both
    estimates and `fix`, when even that does not fit."""
    free = available_bytes(device)
    whole = rollout_bytes(meshes, simulation, num_steps, itemsize, True, False)
    if not checkpoint_steps and whole.bytes <= free:
        return whole
    recomputed = rollout_bytes(meshes, simulation, num_steps, itemsize, True, True)
    if recomputed.bytes > free:
        raise InputError(
            f"{what} needs about {format_bytes(recomputed.bytes)} even with each MPM step recomputed in "
            f"backward ({format_bytes(whole.bytes)} without; {recomputed.account}) but {device} has "
            f"{format_bytes(free)} free; {fix}"
        )
    return recomputed
