"""Episode files: the saved final state (plastic strain included) is what a resumed run loads."""

from __future__ import annotations

import pytest
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


def test_an_episode_that_ends_farther_from_the_target_is_not_built_on(tmp_path, monkeypatch):
    import json

    import physmorph.optimize.run as run

    mapping = {
        "source": {"shape": "sphere", "params": {"radius": 2.0}},
        "target": {"shape": "capsule", "params": {"radius": 1.5, "length": 3.0}},
        "simulation": {"grid_min_point": [-6, -6, -6], "grid_max_point": [6, 6, 6]},
        "optimization": {"num_animations": 2, "num_timesteps": 3, "iterations": 2, "device": "cpu"},
        "e2e": {"video_size": 32},
    }
    first_rate = 0.02
    real = run.optimize_adam

    def wild_at_the_first_rate(problem, settings, progress=None):
        if settings.learning_rate != first_rate:
            return real(problem, settings, progress)
        # controls that throw the body about: the episode ends farther from the target
        controls = 0.5 * torch.randn(problem.zero_controls().shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            return EpisodeResult(controls, problem.rollout(controls), [1.0])

    monkeypatch.setattr(run, "optimize_adam", wild_at_the_first_rate)
    with pytest.warns(run.WorseEpisodeWarning, match="half the learning rate"):
        whole = run.run_morph(config_from_mapping(mapping), tmp_path / "whole", progress=False)
    worse, retried = whole["episodes"]
    assert worse["chamfer_after"] > worse["chamfer_before"] and not worse["kept"]
    assert worse["chamfer_kept"] == worse["chamfer_before"] and worse["learning_rate"] == first_rate
    # the retry starts where the worse episode did, with half the step, and is kept
    assert retried["chamfer_before"] == worse["chamfer_before"] and retried["learning_rate"] == first_rate / 2
    assert retried["kept"] and retried["chamfer_after"] <= retried["chamfer_before"]
    # a resumed run goes on from the last kept state with the halved rate, like an uninterrupted one
    one = {**mapping, "optimization": {**mapping["optimization"], "num_animations": 1}}
    with pytest.warns(run.WorseEpisodeWarning):
        run.run_morph(config_from_mapping(one), tmp_path / "split", progress=False)
    resumed = run.run_morph(config_from_mapping(mapping), tmp_path / "split", resume=True, progress=False)
    assert resumed["episodes"][1]["loss_history"] == retried["loss_history"]
    assert json.loads((tmp_path / "split" / "summary.json").read_text())["episodes"][1]["kept"]
