"""Benchmark: the reference config (isosphere → bunny, 11,166 particles, 10 steps) per optimiser.

    python benchmarks/morph_reference.py --meshes ../shared/meshes [--device cuda] [--episodes 2] [--refine K]
    python benchmarks/morph_reference.py --meshes ../shared/meshes --device cuda --cold

Prints, per optimiser and episode: wall time, mass loss and Chamfer before/after (grid units),
the mean control rate (|ΔF| per 1/120 s, physmorph.optimize.units), and whether the episode was
kept (like `physmorph morph`: an episode that ends farther from the target is not built on, and
the next starts from its first state with half the learning rate). Adam uses the config's loss
(mass field, arrival speed, Chamfer weights, overridable by flags); the reference optimiser
always runs on the reference's own mass loss. `--refine K` runs the config at simulation.refine K
(dx / K, dt / K, K times the steps: K = 2 gives 89,159 particles, K = 4 713,788).
`--cold` times a first Adam episode on an empty Triton cache (a new temporary TRITON_CACHE_DIR,
as on a new machine): physmorph.mpm.fused.warmup's compile in threads with each kernel's compile
seconds, then the episode, and stops (`--no-warm-up`: the kernels compile at their first launch,
inside the episode). On CUDA, Adam's evaluations replay CUDA graphs (physmorph.optimize.graphs;
the first episode includes their capture); `--no-cuda-graph` launches every kernel instead.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from physmorph.config import MorphConfig, UnusedKeysWarning, config_from_mapping, config_to_mapping, load_config
from physmorph.losses import chamfer_distance
from physmorph.mpm.fused.warmup import start_warm_up
from physmorph.optimize.episode import EpisodeProblem, optimize_adam, optimize_reference
from physmorph.optimize.run import ends_no_farther
from physmorph.optimize.setup import MorphSetup, build_setup

REFERENCE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sphere_to_bunny.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meshes", type=Path, required=True, help="folder with isosphere.obj and bunny.obj")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--optimizers", default="adam,reference")
    parser.add_argument("--iterations", type=int, default=None, help="adam iterations per episode")
    parser.add_argument("--backend", default="auto", help="MPM backend: auto, torch or triton")
    parser.add_argument("--arrival-speed-weight", type=float, default=None, help="for adam; 0 = the reference's loss")
    parser.add_argument("--chamfer-weight", type=float, default=None, help="for adam; 0 = the mass loss alone")
    parser.add_argument("--refine", type=int, default=1, help="simulation.refine: dx / K, dt / K, K times the steps")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="shrink the pair by S, box ±(16 S + 1): a cheap proxy (S = 0.5)"
    )
    parser.add_argument("--cold", action="store_true", help="first episode on an empty Triton cache, then stop")
    parser.add_argument("--no-warm-up", action="store_true", help="with --cold: compile at first launch instead")
    parser.add_argument(
        "--no-cuda-graph", action="store_true", help="adam: launch every kernel (optimization.cuda_graph false)"
    )
    arguments = parser.parse_args()
    if arguments.cold:
        # before anything compiles; Triton reads the variable when it opens its cache
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="physmorph-cold-triton-")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = load_config(REFERENCE_CONFIG)
    config.source.mesh = str(arguments.meshes.resolve() / "isosphere.obj")
    config.target.mesh = str(arguments.meshes.resolve() / "bunny.obj")
    config.optimization.backend = arguments.backend
    if arguments.arrival_speed_weight is not None:
        config.optimization.arrival_speed_weight = arguments.arrival_speed_weight
    if arguments.chamfer_weight is not None:
        config.optimization.chamfer_weight = arguments.chamfer_weight
    if arguments.iterations is not None:
        config.optimization.iterations = arguments.iterations
    config.optimization.cuda_graph = not arguments.no_cuda_graph
    if arguments.scale != 1.0:
        config.source.scale = config.target.scale = arguments.scale
        half = 16.0 * arguments.scale + 1.0  # the walls need 3 cells beside the shrunk bunny at dx = 1
        config.simulation.grid_min_point, config.simulation.grid_max_point = (-half,) * 3, (half,) * 3
    if arguments.refine != 1:
        mapping = config_to_mapping(config)
        mapping["simulation"]["refine"] = arguments.refine
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnusedKeysWarning)  # the reference keys, already named once
            config = config_from_mapping(mapping, base_dir=config.base_dir)
    device = torch.device(arguments.device)
    setup = build_setup(config, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; particles: {setup.initial.num_particles}; torch {torch.__version__}")
    print(
        f"dx {config.simulation.grid_dx:g}, dt {config.simulation.dt:.4g} s, {config.optimization.num_timesteps} steps"
    )
    if arguments.cold:
        cold_first_episode(setup, config, arguments.no_warm_up)
        return
    header = ("optimizer", "episode", "seconds", "mass loss before→after", "Chamfer before→after", "rate", "kept")
    print(" | ".join(f"{h:>{w}}" for h, w in zip(header, (10, 7, 8, 24, 21, 6, 4))))
    if device.type == "cuda":
        # compile the kernels (Triton JIT, cuBLAS handles) outside the timed episodes
        warm = EpisodeProblem(setup.model, setup.initial, setup.target_grid_mass, 2, 1, backend=arguments.backend)
        warm.loss(warm.rollout(warm.zero_controls().requires_grad_())).backward()
        torch.cuda.synchronize()
    for optimizer_name in arguments.optimizers.split(","):
        optimizer = optimize_adam if optimizer_name == "adam" else optimize_reference
        state = setup.initial
        settings = config.optimization
        for episode in range(arguments.episodes):
            problem = EpisodeProblem.of(setup, state, settings)
            if optimizer_name != "adam":
                # the reference algorithm runs on the reference's own loss
                problem = replace(problem, arrival_speed_weight=0.0, chamfer_weight=0.0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = optimizer(problem, settings)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            final = result.trajectory.final.detach()
            mass_before = problem.mass_loss(problem.rollout(problem.zero_controls())).item()
            mass_after = problem.mass_loss(result.trajectory).item()
            before = chamfer_distance(state.positions, setup.target_points).item()
            after = chamfer_distance(final.positions, setup.target_points).item()
            rate = result.controls.norm(dim=(-1, -2)).mean().item() / problem.control_scale
            kept = ends_no_farther(problem.distance(state), problem.distance(final))
            print(
                f"{optimizer_name:>10} | {episode:>7} | {seconds:8.3f} | "
                f"{mass_before:10.1f} → {mass_after:10.1f} | {before:9.3f} → {after:9.3f} | {rate:6.4f} | "
                f"{'yes' if kept else 'no':>4}"
            )
            if kept:
                state = final
            else:
                settings = replace(settings, learning_rate=0.5 * settings.learning_rate)


def cold_first_episode(setup: MorphSetup, config: MorphConfig, compile_at_launch: bool) -> None:
    """Print the warm-up's per-kernel compile seconds and wall time, then the first Adam episode's."""
    device = setup.initial.positions.device
    print(f"TRITON_CACHE_DIR={os.environ['TRITON_CACHE_DIR']} (empty); {os.cpu_count()} CPU cores")
    start = time.perf_counter()
    dtype, searches = setup.initial.positions.dtype, setup.chamfer_searches()
    warm_up = None if compile_at_launch else start_warm_up(setup.model, dtype, device, searches=searches)
    seconds = warm_up.wait() if warm_up is not None else {}
    warm_up_seconds = time.perf_counter() - start
    for name, compile_seconds in sorted(seconds.items(), key=lambda item: -item[1]):
        print(f"{name.rsplit('.', 1)[1]:>32} {compile_seconds:6.1f} s compile")
    print(f"warm-up: {warm_up_seconds:.1f} s wall, {len(seconds)} variants in threads")
    problem = EpisodeProblem.of(setup, setup.initial, config.optimization)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    optimize_adam(problem, config.optimization)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"first episode: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
