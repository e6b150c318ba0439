import dataclasses
import math

import pytest
import torch

from physmorph.config import config_from_mapping
from physmorph.losses import chamfer_distance, elastic_energy_per_mass, mass_loss
from physmorph.mpm import State, simulate
from physmorph.optimize.episode import EpisodeProblem, optimize_adam, optimize_reference
from physmorph.optimize.setup import build_setup

SMALL = {
    "source": {"shape": "sphere", "params": {"radius": 2.5}},
    "target": {"shape": "ellipsoid", "params": {"radii": [3.5, 2.0, 2.0]}},
    "simulation": {"grid_min_point": [-8, -8, -8], "grid_max_point": [8, 8, 8], "points_per_cell_cuberoot": 2},
    "optimization": {"num_timesteps": 5, "iterations": 5, "learning_rate": 0.05, "device": "cpu", "passes": 1},
}


@pytest.fixture(scope="module")
def problem():
    config = config_from_mapping(SMALL)
    setup = build_setup(config, torch.device("cpu"))
    assert 300 < setup.initial.num_particles < 600
    return config, EpisodeProblem(setup.model, setup.initial, setup.target_grid_mass, 5, 1)


def test_adam_halves_the_mass_loss_in_a_few_iterations(problem):
    config, episode = problem
    result = optimize_adam(episode, config.optimization)
    assert result.loss_after <= 0.5 * result.loss_before
    # the returned trajectory is the best controls' rollout
    assert episode.loss(result.trajectory).item() == pytest.approx(result.loss_after, rel=1e-5)
    assert result.controls.shape == (4, episode.initial.num_particles, 3, 3)


def test_reference_line_search_never_accepts_an_increase(problem):
    config, episode = problem
    result = optimize_reference(episode, config.optimization)
    assert len(result.losses) > 3
    assert all(b < a for a, b in zip(result.losses, result.losses[1:]))
    assert episode.loss(episode.rollout(result.controls)).item() == pytest.approx(result.losses[-1], rel=1e-5)


def test_chamfer_term_adds_the_weighted_distance_and_its_exact_gradient():
    config = config_from_mapping(
        {
            **SMALL,
            "optimization": {
                **SMALL["optimization"],
                "chamfer_weight": 300.0,
                "arrival_speed_weight": 0.0,
                "dtype": "float64",
            },
        }
    )
    setup = build_setup(config, torch.device("cpu"), torch.float64)
    with_chamfer = EpisodeProblem.of(setup, setup.initial, config.optimization)
    assert with_chamfer.chamfer_weight == 300.0 and with_chamfer.target_points is setup.target_points
    mass_only = EpisodeProblem(setup.model, setup.initial, setup.target_grid_mass, 5, 1)
    g = torch.Generator().manual_seed(0)
    controls = 0.02 * torch.randn(with_chamfer.zero_controls().shape, generator=g, dtype=torch.float64)
    trajectory = with_chamfer.rollout(controls)
    expected = 300.0 * chamfer_distance(trajectory.final.positions, setup.target_points)
    torch.testing.assert_close(with_chamfer.loss(trajectory) - mass_only.loss(trajectory), expected)

    # d loss / d one control entry against a central difference
    controls.requires_grad_(True)
    with_chamfer.loss(with_chamfer.rollout(controls)).backward()
    entry, h = (1, 7, 0, 1), 1e-6
    shifted = []
    for sign in (1.0, -1.0):
        moved = controls.detach().clone()
        moved[entry] += sign * h
        shifted.append(with_chamfer.loss(with_chamfer.rollout(moved)).item())
    assert controls.grad[entry].item() == pytest.approx((shifted[0] - shifted[1]) / (2 * h), rel=1e-4, abs=1e-6)


def test_release_steps_run_free_after_the_driven_steps_and_the_loss_sees_their_end(problem):
    _, driven_only = problem
    released = EpisodeProblem(
        driven_only.model, driven_only.initial, driven_only.target_grid_mass, 5, 1, release_steps=3
    )
    g = torch.Generator().manual_seed(1)
    controls = 0.02 * torch.randn(released.zero_controls().shape, generator=g)
    trajectory = released.rollout(controls)
    driven = driven_only.rollout(controls)
    assert trajectory.num_steps == 5 + 3
    torch.testing.assert_close(trajectory.positions[: 5 + 1], driven.positions)
    free = simulate(driven.final, released.model, 3)
    torch.testing.assert_close(trajectory.positions[5:], free.positions)
    assert released.loss(trajectory).item() == pytest.approx(
        mass_loss(free.final.positions, released.model.masses, released.target_grid_mass, released.model.grid).item()
    )
    assert released.loss(trajectory).item() != pytest.approx(driven_only.loss(driven).item(), rel=1e-3)
    # restarting mid-way (the reference optimiser's per-step rollouts) also ends after the release
    resumed = released.rollout(controls, start=2, state=trajectory.state(2))
    torch.testing.assert_close(resumed.positions[-1], trajectory.positions[-1])


@dataclasses.dataclass
class FarWhenMoved(EpisodeProblem):
    """A problem whose distance to the target grows with the body's mean displacement beyond
    `limit`: iterates that move it more make the morph 'worse'."""

    limit: float = math.inf

    def loss_and_distance(self, trajectory):
        loss, _ = super().loss_and_distance(trajectory)
        return loss, self.distance(trajectory.final)

    def distance(self, state):
        moved = (state.positions - self.initial.positions).norm(dim=-1).mean().item()
        return max(moved - self.limit, 0.0)


def test_adam_keeps_the_least_loss_iterate_that_does_not_end_farther_from_the_target(problem):
    config, episode = problem
    plain = optimize_adam(episode, config.optimization)
    mass_only = dataclasses.replace(episode, target_points=torch.zeros(1, 3))  # a target: the rule applies
    free = optimize_adam(FarWhenMoved(**vars(mass_only)), config.optimization)
    # with no iterate farther from the target the rule changes nothing, bit for bit
    assert torch.equal(free.controls, plain.controls) and free.loss_after == min(free.losses)
    moved = (plain.trajectory.final.positions - episode.initial.positions).norm(dim=-1).mean().item()
    bounded = FarWhenMoved(**(vars(mass_only) | {"limit": 0.8 * moved}))
    result = optimize_adam(bounded, config.optimization)
    assert bounded.distance(result.trajectory.final) == 0.0  # no farther than the first state
    assert min(result.losses) < result.loss_after < result.loss_before and result.loss_after in result.losses
    assert bounded.loss(result.trajectory).item() == pytest.approx(result.loss_after, rel=1e-5)


def test_adam_starts_again_with_half_the_step_when_every_iterate_ends_farther(problem, monkeypatch):
    import physmorph.optimize.episode as episode_module

    config, episode = problem
    # a body already moving: every rollout, zero controls too, ends farther than it starts
    moving = State.at_rest(episode.initial.positions)
    moving.velocities = torch.full_like(moving.velocities, 2.0)
    drifting = FarWhenMoved(**(vars(episode) | {"initial": moving, "target_points": torch.zeros(1, 3), "limit": 0.0}))
    rates = []
    real = episode_module.adam_descent

    def recording(groups, evaluate, settings, progress=None):
        rates.append(settings.learning_rate)
        return real(groups, evaluate, settings, progress)

    monkeypatch.setattr(episode_module, "adam_descent", recording)
    result = optimize_adam(drifting, config.optimization)
    first = config.optimization.learning_rate
    assert rates == [first, first / 2, first / 4]  # RETRIES = 2 descents more
    # each attempt's history starts at the zero controls
    assert result.losses.count(result.losses[0]) == 3 and len(result.losses) > config.optimization.iterations + 1


def test_elastic_energy_term_adds_the_weighted_energy_and_its_exact_gradient():
    config = config_from_mapping(
        {
            **SMALL,
            "simulation": {**SMALL["simulation"], "plasticity": {"model": "von_mises", "yield_stress": 1000.0}},
            "optimization": {
                **SMALL["optimization"],
                "elastic_energy_weight": 40.0,
                "arrival_speed_weight": 0.0,
                "chamfer_weight": 0.0,
                "release_steps": 2,
                "dtype": "float64",
            },
        }
    )
    setup = build_setup(config, torch.device("cpu"), torch.float64)
    holding = EpisodeProblem.of(setup, setup.initial, config.optimization)
    assert holding.elastic_energy_weight == 40.0
    mass_only = dataclasses.replace(holding, elastic_energy_weight=0.0)
    g = torch.Generator().manual_seed(0)
    controls = 0.05 * torch.randn(holding.zero_controls().shape, generator=g, dtype=torch.float64)
    trajectory = holding.rollout(controls)
    final = trajectory.final
    assert final.plastic_strain.max() > 0  # the rollout flows plastically
    masses = setup.model.masses.expand(final.num_particles)
    energy = elastic_energy_per_mass(final.deformation_gradients, setup.model.volumes, masses, setup.model.material)
    expected = 40.0 * energy
    assert expected.item() > 1e-3
    torch.testing.assert_close(holding.loss(trajectory) - mass_only.loss(trajectory), expected)

    # d loss / d one control entry against a central difference, through the release and the plastic flow
    controls.requires_grad_(True)
    holding.loss(holding.rollout(controls)).backward()
    h = 1e-6
    for entry in ((0, 7, 0, 1), (3, 20, 2, 2)):
        shifted = []
        for sign in (1.0, -1.0):
            moved = controls.detach().clone()
            moved[entry] += sign * h
            shifted.append(holding.loss(holding.rollout(moved)).item())
        assert controls.grad[entry].item() == pytest.approx((shifted[0] - shifted[1]) / (2 * h), rel=1e-4, abs=1e-6)
