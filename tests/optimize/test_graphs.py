"""CUDA-graph evaluations: the captured loss, distance, gradient and divergence equal the eager ones."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from physmorph.config import config_from_mapping
from physmorph.errors import SimulationDiverged
from physmorph.optimize import graphs
from physmorph.optimize.episode import EpisodeProblem, optimize_adam
from physmorph.optimize.graphs import GraphCaptureWarning, captured_evaluation
from physmorph.optimize.setup import build_setup

# the default loss (mass field, Chamfer, arrival speed) and control lattice, with a release
MORPH = {
    "source": {"shape": "sphere", "params": {"radius": 3.0}},
    "target": {"shape": "ellipsoid", "params": {"radii": [4.0, 2.5, 2.5]}},
    "simulation": {"grid_min_point": [-8, -8, -8], "grid_max_point": [8, 8, 8]},
    "optimization": {"num_timesteps": 6, "release_steps": 2, "iterations": 5, "dtype": "float64"},
}


def _problem(device: str, **optimization) -> tuple[EpisodeProblem, object]:
    mapping = MORPH | {"optimization": {**MORPH["optimization"], "device": device, **optimization}}
    config = config_from_mapping(mapping)
    setup = build_setup(config, torch.device(device), torch.float64)
    return EpisodeProblem.of(setup, setup.initial, config.optimization), config.optimization


def _eager(problem: EpisodeProblem, rates: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    rates = rates.detach().clone().requires_grad_()
    loss, distance = problem.loss_and_distance(problem.rollout(problem.controls_from_rates(rates)))
    loss.backward()
    return loss.item(), distance, rates.grad


def _captured(captured, problem: EpisodeProblem, rates: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    rates = rates.detach().clone().requires_grad_()
    loss, value, distance = captured(rates, problem.initial)
    loss.backward()
    return value, distance, rates.grad


def test_no_graph_on_the_cpu():
    problem, _ = _problem("cpu", backend="torch")
    assert captured_evaluation(problem, problem.zero_rates().requires_grad_()) is None


@pytest.mark.gpu
def test_gpu_captured_evaluation_matches_the_eager_one_in_every_episode():
    problem, settings = _problem("cuda")
    rates = problem.zero_rates()
    captured = captured_evaluation(problem, rates.requires_grad_())
    assert captured is not None
    generator = torch.Generator(device="cuda").manual_seed(0)
    # the next episode starts where this one ends: the same graphs, a new first state
    result = optimize_adam(problem, settings)
    later = replace(problem, initial=result.trajectory.final.detach())
    assert captured_evaluation(later, rates) is captured
    for episode in (problem, later):
        for scale in (0.0, 0.5):
            trial = scale * torch.randn(rates.shape, generator=generator, device="cuda", dtype=rates.dtype)
            loss, distance, gradient = _eager(episode, trial)
            captured_loss, captured_distance, captured_gradient = _captured(captured, episode, trial)
            assert captured_loss == pytest.approx(loss, rel=1e-9)
            assert captured_distance == pytest.approx(distance, rel=1e-9)
            torch.testing.assert_close(captured_gradient, gradient, rtol=1e-7, atol=1e-9 * gradient.abs().max())


@pytest.mark.gpu
def test_gpu_captured_episode_matches_the_eager_episode():
    problem, settings = _problem("cuda")
    eager = optimize_adam(problem, replace(settings, cuda_graph=False))
    captured = optimize_adam(problem, settings)
    assert captured_evaluation(problem, problem.zero_rates().requires_grad_()) is not None
    assert captured.losses == pytest.approx(eager.losses, rel=1e-7)
    torch.testing.assert_close(captured.controls, eager.controls, rtol=1e-6, atol=1e-9)


@pytest.mark.gpu
def test_gpu_captured_divergence_raises_what_the_eager_rollout_raises():
    problem, _ = _problem("cuda")
    rates = problem.zero_rates().requires_grad_()
    captured = captured_evaluation(problem, rates)
    wild = torch.full_like(rates, 40.0)
    with pytest.raises(SimulationDiverged) as eager:
        _eager(problem, wild)
    with pytest.raises(SimulationDiverged) as replayed:
        captured(wild.requires_grad_(), problem.initial)
    assert str(replayed.value) == str(eager.value)


def _waits_for_the_host(monkeypatch) -> None:
    original = EpisodeProblem.loss_terms

    def loss_terms(self, trajectory):
        loss, distance = original(self, trajectory)
        return loss * (1.0 + 0.0 * loss.item()), distance

    monkeypatch.setattr(EpisodeProblem, "loss_terms", loss_terms)


@pytest.mark.gpu
def test_gpu_a_capture_that_cuda_refuses_warns_and_runs_eagerly(monkeypatch):
    problem, settings = _problem("cuda")
    with monkeypatch.context() as patch:
        _waits_for_the_host(patch)
        with pytest.warns(GraphCaptureWarning, match="could not be captured"):
            assert captured_evaluation(problem, problem.zero_rates().requires_grad_()) is None
    # the random generators are out of the broken capture
    assert torch.isfinite(torch.randn(4, device="cuda")).all()
    before = len(graphs._CAPTURED)
    result = optimize_adam(problem, settings)  # the failure is remembered: eager, no second attempt
    assert len(graphs._CAPTURED) == before
    assert result.losses == pytest.approx(optimize_adam(problem, replace(settings, cuda_graph=False)).losses, rel=1e-7)


def _e2e(problem: EpisodeProblem):
    """A small image objective of `problem` (one 48² view of the target's particles, the default
    balanced losses: the gradient takes two backward passes through the rollout)."""
    from physmorph.losses.render_losses import RenderLossConfig
    from physmorph.optimize.e2e import RenderObjective, RenderSettings, target_images_from_particles
    from physmorph.render.cameras import Cameras, intrinsics, look_at
    from physmorph.surface import SurfaceConfig, bind_surface

    surface = SurfaceConfig(M=400, k_F=8, sigma0=0.4)
    render = RenderSettings(backend="torch")
    initial = problem.initial
    K = intrinsics(40.0, 40.0, 24.0, 24.0, torch.float64).cuda()
    camera = Cameras(look_at((2.0, -14.0, 3.0), (0.0, 0.0, 0.0), dtype=torch.float64).cuda()[None], K[None], 48, 48)
    targets = target_images_from_particles(problem.target_points, camera, surface, render)
    binding = bind_surface(initial.positions, initial.deformation_gradients, surface)
    losses = RenderLossConfig(w_depth=0.0)
    objective = RenderObjective.build(
        binding, targets, losses, initial.positions, initial.deformation_gradients, problem.num_steps, settings=render
    )
    return binding, targets, losses, objective


@pytest.mark.gpu
def test_gpu_captured_rollout_gives_the_eager_balanced_e2e_gradient():
    from physmorph.optimize.e2e import e2e_loss
    from physmorph.optimize.graphs import captured_rollout

    problem, _ = _problem("cuda")
    _, _, losses, objective = _e2e(problem)
    assert losses.balanced
    rates = problem.zero_rates()
    captured = captured_rollout(problem, rates.requires_grad_())
    assert captured is not None
    generator = torch.Generator(device="cuda").manual_seed(1)
    for scale in (0.0, 0.5):
        trial = scale * torch.randn(rates.shape, generator=generator, device="cuda", dtype=rates.dtype)
        results = []
        for replayed in (False, True):
            leaf = trial.clone().requires_grad_()
            simulated = captured(leaf, problem.initial) if replayed else None
            controls = None if replayed else problem.controls_from_rates(leaf)
            evaluation = e2e_loss(problem, objective, controls, None, 1.0, [leaf], simulated)
            evaluation.loss.backward()
            results.append((evaluation.parts, float(evaluation.objective), leaf.grad))
        (eager_parts, eager_objective, eager_gradient), (parts, objective_value, gradient) = results
        assert parts == pytest.approx(eager_parts, rel=1e-9)
        assert objective_value == pytest.approx(eager_objective, rel=1e-9)
        assert eager_gradient.abs().max() > 0
        torch.testing.assert_close(gradient, eager_gradient, rtol=1e-7, atol=1e-9 * eager_gradient.abs().max())


@pytest.mark.gpu
def test_gpu_captured_e2e_episode_matches_the_eager_episode():
    from physmorph.optimize.e2e import optimize_e2e

    problem, settings = _problem("cuda")
    binding, targets, losses, objective = _e2e(problem)
    render = objective.settings
    eager = optimize_e2e(problem, binding, targets, losses, replace(settings, cuda_graph=False), render_settings=render)
    replayed = optimize_e2e(problem, binding, targets, losses, settings, render_settings=render)
    assert len(replayed.losses) == len(eager.losses) > 2
    assert replayed.losses == pytest.approx(eager.losses, rel=1e-7)
    torch.testing.assert_close(replayed.controls, eager.controls, rtol=1e-6, atol=1e-9)
