"""Benchmark: the reference config (isosphere → bunny, 11,166 particles, 10 steps) per optimiser.

    python benchmarks/morph_reference.py --meshes ../shared/meshes [--device cuda] [--episodes 2]

Prints, per optimiser and episode: wall time, mass loss and Chamfer before/after (grid units).
Adam uses the config's loss (mass field, arrival speed, Chamfer weights, overridable by flags);
the reference optimiser always runs on the reference's own mass loss.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from physmorph.config import load_config
from physmorph.losses import chamfer_distance
from physmorph.optimize.episode import EpisodeProblem, optimize_adam, optimize_reference
from physmorph.optimize.setup import build_setup

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
    arguments = parser.parse_args()

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
    device = torch.device(arguments.device)
    setup = build_setup(config, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; particles: {setup.initial.num_particles}; torch {torch.__version__}")
    header = ("optimizer", "episode", "seconds", "mass loss before→after", "Chamfer before→after")
    print(" | ".join(f"{h:>{w}}" for h, w in zip(header, (10, 7, 8, 24, 21))))
    if device.type == "cuda":
        # compile the kernels (Triton JIT, cuBLAS handles) outside the timed episodes
        warm = EpisodeProblem(setup.model, setup.initial, setup.target_grid_mass, 2, 1, backend=arguments.backend)
        warm.loss(warm.rollout(warm.zero_controls().requires_grad_())).backward()
        torch.cuda.synchronize()
    for optimizer_name in arguments.optimizers.split(","):
        optimizer = optimize_adam if optimizer_name == "adam" else optimize_reference
        state = setup.initial
        for episode in range(arguments.episodes):
            problem = EpisodeProblem.of(setup, state, config.optimization)
            if optimizer_name != "adam":
                # the reference algorithm runs on the reference's own loss
                problem = replace(problem, arrival_speed_weight=0.0, chamfer_weight=0.0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = optimizer(problem, config.optimization)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            final = result.trajectory.final.detach()
            mass_before = problem.mass_loss(problem.rollout(problem.zero_controls())).item()
            mass_after = problem.mass_loss(result.trajectory).item()
            before = chamfer_distance(state.positions, setup.target_points).item()
            after = chamfer_distance(final.positions, setup.target_points).item()
            print(
                f"{optimizer_name:>10} | {episode:>7} | {seconds:8.2f} | "
                f"{mass_before:10.1f} → {mass_after:10.1f} | {before:9.3f} → {after:9.3f}"
            )
            state = final


if __name__ == "__main__":
    main()
