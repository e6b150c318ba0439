"""Episode files: the saved final state (plastic strain included) is what a resumed run loads."""

from __future__ import annotations

import torch

from physmorph.config import config_from_mapping
from physmorph.io.run_folder import STATE_FILE
from physmorph.optimize.episode import EpisodeProblem, EpisodeResult
from physmorph.optimize.run import load_state, save_episode
from physmorph.optimize.setup import build_setup


def test_saved_state_reloads_bit_for_bit_with_its_plastic_strain(tmp_path):
    config = config_from_mapping(
        {
            "source": {"shape": "sphere", "params": {"radius": 2.0}},
            "target": {"shape": "capsule", "params": {"radius": 1.5, "length": 3.0}},
            "simulation": {
                "grid_min_point": [-6, -6, -6],
                "grid_max_point": [6, 6, 6],
                "plasticity": {"model": "von_mises", "yield_stress": 200.0},
            },
            "optimization": {"num_timesteps": 3, "release_steps": 2},
        }
    )
    setup = build_setup(config, torch.device("cpu"))
    problem = EpisodeProblem.of(setup, setup.initial, config.optimization)
    controls = 0.05 * torch.randn(problem.zero_controls().shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        trajectory = problem.rollout(controls)
    assert trajectory.num_steps == 5 and trajectory.final.plastic_strain.max() > 0
    save_episode(tmp_path / "ep000", EpisodeResult(controls, trajectory, [1.0]), setup, setup.initial, "episode 0")
    loaded = load_state(tmp_path / "ep000" / STATE_FILE, torch.device("cpu"), setup.initial.num_particles)
    assert loaded.plastic_strain is not None
    for name, reloaded, saved in zip(("x", "v", "F", "C", "alpha"), loaded.tensors, trajectory.final.tensors):
        assert torch.equal(reloaded, saved), name
