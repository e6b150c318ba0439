"""Bytes that autograd keeps per particle and MPM step (the constant behind optimize.memory's estimate).

    .venv/bin/python benchmarks/autograd_memory.py

Rolls out a sphere for a few steps with gradient on the torch backend and adds up the distinct
tensors that autograd saves for backward (torch.autograd.graph.saved_tensors_hooks), per kernel,
float32, for two body sizes; prints bytes per particle-step beside SAVED_BYTES_PER_PARTICLE_STEP.
"""

from __future__ import annotations

import torch

from physmorph.config import config_from_mapping
from physmorph.mpm.simulate import SAVED_BYTES_PER_PARTICLE_STEP
from physmorph.optimize.episode import EpisodeProblem
from physmorph.optimize.setup import build_setup

STEPS = 4


def saved_bytes(kernel: str, radius: float, half_width: int) -> tuple[int, int]:
    """(particles, bytes saved for backward) of a STEPS-step rollout of a sphere of `radius`."""
    shape = {"shape": "sphere", "params": {"radius": radius}}
    config = config_from_mapping(
        {
            "source": shape,
            "target": shape,
            "simulation": {
                "grid_min_point": [-half_width] * 3,
                "grid_max_point": [half_width] * 3,
                "kernel": kernel,
            },
            "optimization": {"num_timesteps": STEPS, "device": "cpu"},
        }
    )
    setup = build_setup(config, torch.device("cpu"))
    problem = EpisodeProblem.of(setup, setup.initial, config.optimization)
    seen: set[int] = set()
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
        return tensor

    controls = problem.zero_controls().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        problem.loss(problem.rollout(controls))
    return setup.initial.num_particles, total


def main() -> None:
    print("kernel     particles  bytes/particle-step  (estimate uses)")
    for kernel in ("cubic", "quadratic"):
        for radius, half_width in ((2.0, 6), (4.0, 10)):
            particles, total = saved_bytes(kernel, radius, half_width)
            per_step = total / STEPS / particles
            print(f"{kernel:10s} {particles:9d}  {per_step:19.0f}  ({SAVED_BYTES_PER_PARTICLE_STEP[kernel]})")


if __name__ == "__main__":
    main()
