"""Forward simulations without optimisation (the `physmorph simulate` command)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from physmorph.config import SimulationConfig, read_yaml
from physmorph.geometry.config import ShapeConfig
from physmorph.geometry.fill import fill_mesh
from physmorph.io.figures import write_snapshots
from physmorph.io.ply import write_points_ply
from physmorph.io.run_folder import TRAJECTORY_FILE, prepare_output_folder, write_trajectory
from physmorph.mpm import State, simulate
from physmorph.optimize.memory import check_fits, rollout_bytes
from physmorph.optimize.setup import build_body, make_material, make_model, resolve_device
from physmorph.settings import from_mapping, require

# Panels of the preview figure; more would not be readable.
MAX_PREVIEWS = 64

Matrix = tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]]


@dataclass
class SimulateConfig:
    """A forward simulation: a body, its settings, initial motion and an optional squash control."""

    source: ShapeConfig = field(default_factory=lambda: ShapeConfig(shape="sphere", params={"radius": 5.0}))
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    num_steps: int = 120  # MPM steps to run
    initial_velocity: tuple[float, float, float] = (0.0, 0.0, 0.0)  # grid units / s, every particle
    deformation_control: Matrix | None = None  # ΔF added to every particle's F at step 0
    num_previews: int = 4  # PNG previews of evenly spaced steps
    device: Literal["auto", "cpu", "cuda"] = "auto"
    base_dir: Path = field(default_factory=Path.cwd)

    def validate(self) -> None:
        require(self.num_steps >= 1, "num_steps", f"must be ≥ 1, got {self.num_steps}")
        require(
            1 <= self.num_previews <= MAX_PREVIEWS,
            "num_previews",
            f"must be 1..{MAX_PREVIEWS} (panels of one figure), got {self.num_previews}",
        )


def load_simulate_config(path: str | Path) -> SimulateConfig:
    """Read a forward-simulation YAML file; unknown keys and bad values are ConfigErrors."""
    data = read_yaml(path)
    data["base_dir"] = Path(path).resolve().parent
    return from_mapping(SimulateConfig, data, "")


def run_simulation(config: SimulateConfig, out_dir: str | Path, progress: bool = True) -> list[Path]:
    """Simulate `config` and write trajectory.npz (io.run_folder.TRAJECTORY_KEYS), final.ply
    and previews; the output folder and the memory estimate are checked before the body is filled."""
    out = prepare_output_folder(out_dir)
    device = resolve_device(config.device)
    sim = config.simulation
    mesh = build_body(config.source, config.base_dir, "source")
    estimate = rollout_bytes([mesh], sim, config.num_steps, 4, gradient=False)
    check_fits(
        estimate,
        "this simulation",
        device,
        "lower simulation.points_per_cell_cuberoot or num_steps, or shrink the shape or the grid",
    )
    points = fill_mesh(
        mesh,
        dx=sim.grid_dx,
        points_per_cell_cuberoot=sim.points_per_cell_cuberoot,
        density=sim.density,
        box_min=sim.grid_min_point,
        box_max=sim.grid_max_point,
        name="source shape",
        device=device,
    )
    model = make_model(sim, points, make_material(sim, points.positions.dtype, device))
    state = State.at_rest(points.positions)
    state.velocities = state.velocities + torch.tensor(config.initial_velocity, device=device)
    controls = torch.zeros(0, points.count, 3, 3, device=device)
    if config.deformation_control is not None:
        # one control, at step 0: a stride of num_steps leaves no other control step
        control = torch.tensor(config.deformation_control, dtype=points.positions.dtype, device=device)
        controls = control.expand(1, points.count, 3, 3)
    with torch.no_grad(), tqdm(total=config.num_steps, desc="simulate", unit="step", disable=not progress) as bar:
        trajectory = simulate(
            state,
            model,
            config.num_steps,
            controls if len(controls) else None,
            control_stride=config.num_steps,
            on_step=lambda _: bar.update(1),
        )
    arrays = {
        "x": trajectory.positions.cpu().numpy(),
        "v": trajectory.velocities.cpu().numpy(),
        "F": trajectory.deformation_gradients.cpu().numpy(),
        "plastic_strain": trajectory.plastic_strain.cpu().numpy(),
        "controls": controls.cpu().numpy(),
        "dt": sim.dt,
    }
    written = [write_trajectory(out / TRAJECTORY_FILE, arrays)]
    written.append(write_points_ply(out / "final.ply", trajectory.final.positions))
    positions = trajectory.positions
    chosen = np.linspace(0, config.num_steps, config.num_previews).round().astype(int)
    written.append(write_snapshots(out / "preview.png", [positions[i] for i in chosen], [f"step {i}" for i in chosen]))
    return written
