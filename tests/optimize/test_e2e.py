"""Tests for end-to-end training: finite-difference gradients through the whole graph, locality of
a step, image-folder targets, the physics-only limit and input errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from physmorph.config import OptimizationConfig
from physmorph.errors import ConfigError, InputError
from physmorph.io.targets import TargetImages, load_image_targets, save_image_targets
from physmorph.losses.render_losses import RenderLossConfig
from physmorph.mpm import Grid, Material, Model, State, grid_volume_estimate, splat_mass
from physmorph.optimize.e2e import (
    RenderObjective,
    RenderSettings,
    e2e_loss,
    optimize_e2e,
    render_state,
    target_images_from_particles,
)
from physmorph.optimize.episode import EpisodeProblem, optimize_adam
from physmorph.render.cameras import Cameras, intrinsics, look_at
from physmorph.surface import SurfaceConfig, bind_surface

F64 = torch.float64
SURFACE = SurfaceConfig(M=40, k_F=4, sigma0=0.3)
RENDER = RenderSettings(opacity=0.8, backend="torch")
SILHOUETTE_ONLY = RenderLossConfig(w_alpha=1.0, w_depth=0.0, w_edge=0.0, w_cov_align=0.0, w_cov_reg=0.0, w_phys=0.0)


def _ball(center=(0.0, 0.0, 0.0), radius=1.1, spacing=0.5) -> torch.Tensor:
    """Lattice points [N, 3] inside a ball (about 30 for the defaults)."""
    ticks = torch.arange(-1.0, 1.01, spacing, dtype=F64)
    points = torch.stack(torch.meshgrid(ticks, ticks, ticks, indexing="ij"), -1).reshape(-1, 3)
    return points[points.norm(dim=1) <= radius] + torch.tensor(center, dtype=F64)


def _problem(positions, target, num_steps=3, grid=None) -> EpisodeProblem:
    grid = grid or Grid(1.0, (-6.0, -6.0, -6.0), (6.0, 6.0, 6.0))
    material = Material(torch.tensor(300.0, dtype=F64), torch.tensor(200.0, dtype=F64), 2.0)
    lattice_volumes = torch.full((len(positions),), 0.125, dtype=F64)
    masses = material.density * lattice_volumes
    volumes = grid_volume_estimate(positions, masses, grid)
    # smoothing 0: a control moves F fully, so the surface responds within a few steps
    model = Model(grid, material, lattice_volumes, volumes, smoothing=0.0)
    target_mass = splat_mass(target, material.density * torch.full((len(target),), 0.125, dtype=F64), grid)
    return EpisodeProblem(model, State.at_rest(positions), target_mass, num_steps, 1, backend="torch")


def _camera(size=24, eye=(0.0, -8.0, 0.5), target=(0.0, 0.0, 0.0), focal=20.0) -> Cameras:
    K = intrinsics(focal, focal, size / 2, size / 2, F64)
    return Cameras(look_at(eye, target, dtype=F64)[None], K[None], size, size)


def _binding(positions):
    return bind_surface(positions, State.at_rest(positions).deformation_gradients, SURFACE)


def test_silhouette_gradient_matches_finite_differences():
    torch.set_num_threads(1)
    source = _ball()
    target = source * torch.tensor([1.25, 1.0, 0.8], dtype=F64)
    problem = _problem(source, target)
    camera = _camera()
    targets = target_images_from_particles(target, camera, SURFACE, RENDER)
    binding = _binding(source)
    objective = RenderObjective.build(
        binding,
        targets,
        SILHOUETTE_ONLY,
        source,
        problem.initial.deformation_gradients,
        3,
        settings=RENDER,
    )
    base = problem.model.material

    def loss(controls, mu):
        material = Material(base.lam, mu, base.density, base.model)
        return e2e_loss(problem, objective, controls, material).loss

    generator = torch.Generator().manual_seed(0)
    controls = 0.05 * torch.randn(problem.num_controls, len(source), 3, 3, generator=generator, dtype=F64)
    mu = torch.tensor(200.0, dtype=F64)
    controls.requires_grad_()
    mu.requires_grad_()
    loss(controls, mu).backward()
    # the control entry with the largest gradient, and μ
    index = tuple(torch.unravel_index(controls.grad.abs().argmax(), controls.shape))
    assert controls.grad[index].abs() > 1e-4
    eps = 1e-6
    with torch.no_grad():
        shift = torch.zeros_like(controls)
        shift[index] = eps
        numeric = (loss(controls + shift, mu) - loss(controls - shift, mu)) / (2 * eps)
        assert controls.grad[index].item() == pytest.approx(numeric.item(), rel=1e-3)
        eps_mu = 1e-3
        numeric_mu = (loss(controls, mu + eps_mu) - loss(controls, mu - eps_mu)) / (2 * eps_mu)
    assert mu.grad.abs() > 1e-8
    assert mu.grad.item() == pytest.approx(numeric_mu.item(), rel=1e-3)


def test_one_step_moves_only_controls_that_reach_the_image():
    torch.set_num_threads(1)
    seen = _ball()
    unseen = _ball(center=(14.0, 0.0, 0.0))
    source = torch.cat((seen, unseen))
    target = torch.cat((seen * 1.2, unseen))
    grid = Grid(1.0, (-6.0, -6.0, -6.0), (20.0, 6.0, 6.0))
    problem = _problem(source, target, num_steps=2, grid=grid)
    camera = _camera(focal=24.0)  # sees only the ball at the origin
    targets = target_images_from_particles(target, camera, SURFACE, RENDER)
    binding = _binding(source)
    settings = OptimizationConfig(iterations=1, learning_rate=1e-3)
    result = optimize_e2e(problem, binding, targets, SILHOUETTE_ONLY, settings, render_settings=RENDER)
    assert result.losses[1] < result.losses[0]
    moved = result.controls.abs().amax(dim=(0, 2, 3))
    assert (moved[: len(seen)] > 0).float().mean() > 0.9
    # ~12 cells between the balls: in 2 steps the grid carries no influence that far
    assert torch.all(moved[len(seen) :] == 0)


def test_image_folder_target_improves_iou(tmp_path):
    torch.set_num_threads(1)
    source = _ball()
    target = source * torch.tensor([1.3, 1.0, 1.3], dtype=F64)
    problem = _problem(source, target)
    cameras = Cameras(
        torch.cat((_camera().viewmats, _camera(eye=(8.0, 0.0, 0.5)).viewmats)),
        _camera().Ks.expand(2, 3, 3).clone(),
        24,
        24,
    )
    save_image_targets(tmp_path, target_images_from_particles(target, cameras, SURFACE, RENDER))
    targets = load_image_targets(tmp_path, scene_box=((-6.0,) * 3, (6.0,) * 3), dtype=F64)
    render_only = RenderLossConfig(w_phys=0.0, w_cov_align=0.0, w_cov_reg=0.0, w_edge=0.0)
    settings = OptimizationConfig(iterations=6, learning_rate=0.05, patience=6)
    before = optimize_e2e(
        problem,
        _binding(source),
        targets,
        render_only,
        dataclasses.replace(settings, iterations=1, learning_rate=1e-12),
        render_settings=RENDER,
    )
    after = optimize_e2e(
        problem,
        _binding(source),
        targets,
        render_only,
        settings,
        render_settings=RENDER,
        material="youngs",
    )
    iou_before = sum(before.metrics[0]["iou"]) / 2
    iou_after = sum(after.metrics[0]["iou"]) / 2
    # the 2D silhouette Chamfer term keeps a floor of a fraction of a pixel (centres are not
    # pixel centres), so the whole objective falls less than its per-pixel terms
    assert after.loss_after < 0.8 * after.loss_before
    assert iou_after > iou_before + 0.05
    assert "psnr" in after.metrics[0]
    assert float(after.material.mu) != pytest.approx(200.0, rel=1e-6)  # the material moved too


def test_physics_only_matches_optimize_adam():
    torch.set_num_threads(1)
    source = _ball()
    target = source * 1.2
    problem = _problem(source, target)
    targets = target_images_from_particles(target, _camera(), SURFACE, RENDER)
    settings = OptimizationConfig(iterations=3, learning_rate=0.02)
    physics_only = RenderLossConfig(enabled=False, w_phys=1.0)
    e2e = optimize_e2e(problem, _binding(source), targets, physics_only, settings, render_settings=RENDER)
    adam = optimize_adam(problem, settings)
    assert e2e.losses == pytest.approx(adam.losses, rel=1e-10)
    assert torch.allclose(e2e.controls, adam.controls)
    assert set(e2e.terms[0]) == {"phys"}


def test_objective_input_errors():
    source = _ball()
    problem = _problem(source, source)
    targets = target_images_from_particles(source, _camera(), SURFACE, RENDER)
    binding = _binding(source)
    F = problem.initial.deformation_gradients
    with pytest.raises(InputError, match="2 target image sets for 3 supervised steps"):
        RenderObjective.build(binding, [targets, targets], SILHOUETTE_ONLY, source, F, 3, (1, 2, -1))
    with pytest.raises(InputError, match="supervised step 7 is outside"):
        RenderObjective.build(binding, targets, SILHOUETTE_ONLY, source, F, 3, (7,))
    nothing = RenderLossConfig(enabled=False, w_phys=0.0)
    with pytest.raises(ConfigError, match="nothing to optimise"):
        optimize_e2e(problem, binding, targets, nothing, OptimizationConfig(), render_settings=RENDER)


def test_linear_schedule_starts_render_only_training_at_zero_weight():
    source = _ball()
    problem = _problem(source, source * 1.2)
    targets = target_images_from_particles(source * 1.2, _camera(), SURFACE, RENDER)
    scheduled = dataclasses.replace(SILHOUETTE_ONLY, schedule="linear")
    settings = OptimizationConfig(iterations=3, learning_rate=0.01, patience=3)
    result = optimize_e2e(problem, _binding(source), targets, scheduled, settings, render_settings=RENDER)
    # weight 0 at progress 0: the first step does not move; later steps improve the silhouette,
    # and the best iterate is judged with the full weights
    assert result.losses[1] == pytest.approx(result.losses[0], rel=1e-12)
    assert result.losses[-1] < result.losses[0]
    assert result.loss_after == result.losses[-1]
    assert result.controls.abs().max() > 0


def test_surface_parameters_learn_the_surfel_size_of_the_targets():
    torch.set_num_threads(1)
    source = _ball()
    problem = _problem(source, source)
    binding = _binding(source)
    # The targets are the same body drawn with surfels 1.6 times as large.
    larger = dataclasses.replace(RENDER, surface_scale=1.6)
    F = problem.initial.deformation_gradients
    _, images = render_state(source, F, binding, _camera(), larger)
    targets = TargetImages(_camera(), images.alpha, images.depth, None, ["view000"])
    settings = OptimizationConfig(iterations=12, learning_rate=1e-6, patience=12)
    result = optimize_e2e(
        problem, binding, targets, SILHOUETTE_ONLY, settings, render_settings=RENDER, surface_parameters=True
    )
    assert result.surface is not None
    assert result.surface["scale"] > 1.2  # moved from 1 toward 1.6
    assert 0.0 < result.surface["flatness"] < 1.0
    plain = optimize_e2e(problem, binding, targets, SILHOUETTE_ONLY, settings, render_settings=RENDER)
    assert plain.surface is None
