"""Benchmark: the reference morph (isosphere → bunny) at dx = 1, 0.5, 0.25: physics and e2e episodes by phase.

    python benchmarks/morph_scale.py --device cuda --meshes ../shared/meshes
    python benchmarks/morph_scale.py --device cpu --dx 1 0.5
    python benchmarks/morph_scale.py --quick            # a fast smoke run (dx = 1, tiny e2e)

For each dx: one Chamfer evaluation (initial state vs target particles), one binding of M
Gaussians, `--episodes` physics episodes (Adam, the config's loss) and `--e2e-episodes`
end-to-end episodes (M Gaussians, `--views` views at `--resolution`²) from the physics
episodes' end state. Per run: seconds, seconds per phase, peak memory (GPU: PyTorch's peak
allocation in the run; CPU: the process's peak resident set so far) and the Chamfer distance
after it. dt and the number of steps scale with dx (the same physical time); a
configuration that fails (out of memory, say) is a row of the table saying so, not a crash.
"""

from __future__ import annotations

import argparse
import math
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from physmorph import config as config_module
from physmorph.config import MorphConfig, load_config
from physmorph.losses import chamfer_distance
from physmorph.losses.render_losses import RenderLossConfig
from physmorph.optimize import e2e
from physmorph.optimize.e2e import RenderSettings, optimize_e2e, target_images_from_particles
from physmorph.optimize.episode import EpisodeProblem, optimize_adam
from physmorph.optimize.memory import peak_bytes
from physmorph.optimize.run import ends_no_farther, next_learning_rate
from physmorph.optimize.setup import build_setup
from physmorph.render import intrinsics_from_fov, orbit_cameras
from physmorph.surface import SurfaceConfig

REFERENCE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sphere_to_bunny.yaml"
PHASES = ("simulate", "loss", "render", "backward+update")


@dataclass
class Row:
    """One line of the table: a run of one configuration, its seconds by phase and its outcome."""

    dx: float
    particles: int
    steps: int
    run: str
    seconds: float = math.nan
    phases: dict[str, float] = field(default_factory=dict)
    peak_gib: float = math.nan
    chamfer: float = math.nan
    note: str = ""


@dataclass
class Settings:
    """What one configuration runs (the command line, resolved)."""

    episodes: int = 5
    e2e_episodes: int = 1
    iterations: int | None = None  # Adam iterations per physics episode (None: the config's)
    e2e_iterations: int = 13
    gaussians: int = 1_000_000
    views: int = 4
    resolution: int = 1024
    repeats: int = 5  # timed repeats of the standalone Chamfer evaluation
    control_spacing: float | None = None  # optimization.control_spacing (None: the config's)
    learning_rate: float | None = None  # optimization.learning_rate (None: the config's)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseClock:
    """Seconds spent in named phases, by wrapping the functions that do them (synchronised)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextmanager
    def timing(self, owner: Any, name: str, phase: str) -> Iterator[None]:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            synchronize(self.device)
            start = time.perf_counter()
            result = original(*args, **kwargs)
            synchronize(self.device)
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start
            return result

        setattr(owner, name, timed)
        try:
            yield
        finally:
            setattr(owner, name, original)


def refined_config(config: MorphConfig, dx: float) -> MorphConfig:
    """`config` (written for grid_dx 1) at cell size `dx`: dt / k and steps · k for k = 1 / dx.

    Uses the config's own refine knob (simulation.refine, physmorph.config.refined) when this
    version has it; otherwise scales the same fields here.
    """
    k = round(config.simulation.grid_dx / dx)
    if not math.isclose(config.simulation.grid_dx / k, dx):
        raise ValueError(f"dx {dx} is not the config's grid_dx {config.simulation.grid_dx} divided by a whole number")
    if k == 1:
        return config
    if hasattr(config.simulation, "refine") and hasattr(config_module, "refined"):
        return config_module.refined(replace(config, simulation=replace(config.simulation, refine=k)))
    sim, opt = config.simulation, config.optimization
    return replace(
        config,
        simulation=replace(sim, grid_dx=sim.grid_dx / k, dt=sim.dt / k),
        optimization=replace(opt, num_timesteps=opt.num_timesteps * k, release_steps=opt.release_steps * k),
    )


def reference_config(meshes: Path) -> MorphConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = load_config(REFERENCE_CONFIG)
    config.source.mesh = str(meshes.resolve() / "isosphere.obj")
    config.target.mesh = str(meshes.resolve() / "bunny.obj")
    return config


def _peak_gib(device: torch.device) -> float:
    """GPU: PyTorch's peak allocation during the run; CPU: the process's peak resident set so far."""
    return peak_bytes(device) / 2**30


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _failure(error: BaseException) -> str:
    if isinstance(error, torch.OutOfMemoryError):
        return "out of memory"
    return f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"


def _attempt(
    rows: list[Row], row: Row, device: torch.device, work: Callable[[Row], None], report: Callable[[Row], None]
) -> bool:
    """Runs `work` (which fills `row`), recording a failure in the row instead of raising."""
    _reset_peak(device)
    try:
        work(row)
        return True
    except Exception as error:  # a failed configuration is a row of the table
        row.note = _failure(error)
        if not isinstance(error, torch.OutOfMemoryError):
            traceback.print_exc()
        return False
    finally:
        row.peak_gib = _peak_gib(device)
        rows.append(row)
        report(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _median_seconds(function: Callable[[], Any], device: torch.device, repeats: int) -> float:
    function()  # warm-up: kernels, allocator
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def run_configuration(
    config: MorphConfig,
    dx: float,
    device: torch.device,
    settings: Settings,
    report: Callable[[Row], None] = lambda row: None,
) -> list[Row]:
    """All runs of one resolution (`config` is written for dx = 1); every run that fails
    becomes a row with the reason. `report` sees each row as it is finished."""
    config = refined_config(config, dx)
    if settings.iterations is not None:
        config = replace(config, optimization=replace(config.optimization, iterations=settings.iterations))
    if settings.control_spacing is not None:
        config = replace(config, optimization=replace(config.optimization, control_spacing=settings.control_spacing))
    if settings.learning_rate is not None:
        config = replace(config, optimization=replace(config.optimization, learning_rate=settings.learning_rate))
    steps = config.optimization.num_timesteps
    rows: list[Row] = []
    holder: dict[str, Any] = {}

    def build(row: Row) -> None:
        start = time.perf_counter()
        holder["setup"] = build_setup(config, device)
        synchronize(device)
        row.seconds = time.perf_counter() - start
        row.particles = holder["setup"].initial.num_particles

    if not _attempt(rows, Row(dx, 0, steps, "build setup"), device, build, report):
        return rows
    setup = holder["setup"]
    particles = setup.initial.num_particles
    target = setup.target_points

    def chamfer(row: Row) -> None:
        x = setup.initial.positions
        # a new tensor each time, as a loss sees a new state: only the target's grid is reused
        row.seconds = _median_seconds(lambda: chamfer_distance(x.clone(), target), device, settings.repeats)
        row.chamfer = chamfer_distance(x, target).item()
        row.note = f"{x.shape[0]} × {target.shape[0]} points"

    _attempt(rows, Row(dx, particles, steps, "Chamfer evaluation"), device, chamfer, report)
    surface = SurfaceConfig(M=settings.gaussians)

    def bind(row: Row) -> None:
        setup.bind_source_surface(replace(surface, M=min(settings.gaussians, 1000)))  # warm-up
        synchronize(device)
        start = time.perf_counter()
        holder["binding"] = setup.bind_source_surface(surface)
        synchronize(device)
        row.seconds = time.perf_counter() - start
        row.phases["bind"] = row.seconds
        row.note = f"M = {settings.gaussians}"

    _attempt(rows, Row(dx, particles, steps, "bind Gaussians"), device, bind, report)

    state, learning_rate = setup.initial, config.optimization.learning_rate
    for episode in range(1, settings.episodes + 1):

        def physics(row: Row, state=state, learning_rate=learning_rate) -> None:
            clock = PhaseClock(device)
            episode_settings = replace(config.optimization, learning_rate=learning_rate)
            problem = EpisodeProblem.of(setup, state, episode_settings)
            with (
                clock.timing(EpisodeProblem, "rollout", "simulate"),
                clock.timing(EpisodeProblem, "loss_and_distance", "loss"),
                clock.timing(EpisodeProblem, "distance", "loss"),
            ):
                synchronize(device)
                start = time.perf_counter()
                result = optimize_adam(problem, episode_settings)
                synchronize(device)
                row.seconds = time.perf_counter() - start
            row.phases = _with_remainder(clock.seconds, row.seconds)
            final = result.trajectory.final.detach()
            row.chamfer = chamfer_distance(final.positions, target).item()
            # as physmorph morph does: an episode that ends farther away is not built on
            kept = ends_no_farther(problem.distance(state), problem.distance(final))
            record = {"learning_rate": learning_rate, "kept": kept}
            holder["state"] = final if kept else state
            holder["learning_rate"] = next_learning_rate([record], learning_rate)
            if not kept:
                row.note = "not kept: the next episode starts from this one's start, at half the learning rate"

        if not _attempt(rows, Row(dx, particles, steps, f"physics episode {episode}"), device, physics, report):
            break
        state, learning_rate = holder["state"], holder["learning_rate"]

    binding = holder.get("binding")
    for episode in range(1, settings.e2e_episodes + 1 if binding is not None else 1):

        def end_to_end(row: Row, state=state) -> None:
            clock = PhaseClock(device)
            render_settings = RenderSettings()
            K = intrinsics_from_fov(40.0, settings.resolution, settings.resolution, device=device)
            cameras = orbit_cameras(
                K, settings.resolution, settings.resolution, radius=35.0, elevation=25.0, count=settings.views
            )
            synchronize(device)
            start = time.perf_counter()
            targets = target_images_from_particles(target, cameras, surface, render_settings)
            synchronize(device)
            target_seconds = time.perf_counter() - start
            opt = replace(config.optimization, iterations=settings.e2e_iterations, patience=settings.e2e_iterations)
            problem = EpisodeProblem.of(setup, state, opt)
            # the one binding (made on the rest state) follows the particles into any later state
            with (
                clock.timing(EpisodeProblem, "rollout", "simulate"),
                clock.timing(EpisodeProblem, "loss_and_distance", "loss"),
                clock.timing(EpisodeProblem, "distance", "loss"),
                clock.timing(e2e, "render_state", "render"),
            ):
                synchronize(device)
                start = time.perf_counter()
                result = optimize_e2e(problem, binding, targets, RenderLossConfig(), opt)
                synchronize(device)
                row.seconds = time.perf_counter() - start
            row.phases = _with_remainder(clock.seconds, row.seconds)
            holder["state"] = result.trajectory.final.detach()
            row.chamfer = chamfer_distance(holder["state"].positions, target).item()
            row.note = (
                f"M = {settings.gaussians}, {settings.views} views at {settings.resolution}², "
                f"{settings.e2e_iterations} iterations; target images {target_seconds:.3g} s (not counted)"
            )

        if not _attempt(rows, Row(dx, particles, steps, f"e2e episode {episode}"), device, end_to_end, report):
            break
        state = holder["state"]
    return rows


def _with_remainder(phases: dict[str, float], total: float) -> dict[str, float]:
    """The timed phases plus the rest of the episode (backward and the optimiser's update)."""
    timed = dict(phases)
    timed["backward+update"] = max(total - sum(timed.values()), 0.0)
    return timed


COLUMNS = ("dx", "particles", "steps", "run", "seconds", *PHASES, "bind", "peak GiB", "Chamfer after", "note")


def table_header() -> str:
    return "| " + " | ".join(COLUMNS) + " |\n|" + "|".join("---" for _ in COLUMNS) + "|"


def table_line(row: Row) -> str:
    def number(value: float, digits: int = 3) -> str:
        return "" if math.isnan(value) else f"{value:.{digits}g}"

    cells = [f"{row.dx:g}", str(row.particles), str(row.steps), row.run, number(row.seconds)]
    cells += [number(row.phases.get(phase, math.nan)) for phase in (*PHASES, "bind")]
    cells += [number(row.peak_gib), number(row.chamfer, 4), row.note]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meshes", type=Path, default=Path("../shared/meshes"), help="isosphere.obj and bunny.obj")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dx", type=float, nargs="+", help="cell sizes (default: 1 0.5 0.25 on GPU, 1 0.5 on CPU)")
    parser.add_argument("--episodes", type=int, default=5, help="physics episodes per dx")
    parser.add_argument("--e2e-episodes", type=int, default=1)
    parser.add_argument("--iterations", type=int, help="Adam iterations per physics episode (default: the config's)")
    parser.add_argument("--e2e-iterations", type=int, default=13)
    parser.add_argument("--gaussians", type=int, help="M (default: 1,000,000 on GPU, 50,000 on CPU)")
    parser.add_argument("--views", type=int, help="e2e training views (default: 4 on GPU, 2 on CPU)")
    parser.add_argument("--resolution", type=int, help="e2e image side (default: 1024 on GPU, 256 on CPU)")
    parser.add_argument(
        "--control-spacing", type=float, help="optimization.control_spacing, grid units (default: the config's)"
    )
    parser.add_argument("--learning-rate", type=float, help="optimization.learning_rate (default: the config's)")
    parser.add_argument("--quick", action="store_true", help="smoke run: dx 1, 1 episode of 2 iterations, tiny e2e")
    arguments = parser.parse_args()
    device = torch.device(arguments.device)
    gpu = device.type == "cuda"
    settings = Settings(
        arguments.episodes,
        arguments.e2e_episodes,
        arguments.iterations,
        arguments.e2e_iterations,
        arguments.gaussians or (1_000_000 if gpu else 50_000),
        arguments.views or (4 if gpu else 2),
        arguments.resolution or (1024 if gpu else 256),
        control_spacing=arguments.control_spacing,
        learning_rate=arguments.learning_rate,
    )
    dxs = arguments.dx or ([1.0, 0.5, 0.25] if gpu else [1.0, 0.5])
    if arguments.quick:
        dxs = arguments.dx or [1.0]
        settings = Settings(1, 1, 2, 2, 20_000, 1, 128, repeats=2, control_spacing=arguments.control_spacing)
    name = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; {settings}")
    config = reference_config(arguments.meshes)
    rows: list[Row] = []
    print(table_header(), flush=True)
    for dx in dxs:
        rows += run_configuration(config, dx, device, settings, lambda row: print(table_line(row), flush=True))
    print(f"\n{table_header()}")  # the whole table again, in one piece, after the logs between rows
    print("\n".join(table_line(row) for row in rows))


if __name__ == "__main__":
    main()
