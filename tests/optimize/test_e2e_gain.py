"""Image losses pay off on a small CPU morph: e2e beats physics-only on held-out mesh IoU, and an
image-only target's visual hull pulls the controls as the true target does."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from physmorph.config import config_from_mapping
from physmorph.io.targets import save_image_targets
from physmorph.optimize.e2e_run import MeshViews
from physmorph.optimize.episode import EpisodeProblem
from physmorph.optimize.run import run_morph
from physmorph.optimize.setup import build_setup

from .test_mesh_views import TINY

SMALL = copy.deepcopy(TINY)
SMALL["target"] = {"shape": "capsule", "params": {"radius": 1.6, "length": 3.0}}
SMALL["simulation"] = {"grid_min_point": [-8, -8, -8], "grid_max_point": [8, 8, 8]}
SMALL["optimization"].update({"num_timesteps": 6, "iterations": 6, "num_animations": 2})


@pytest.mark.slow
def test_e2e_with_default_settings_beats_physics_only_on_heldout_mesh_iou(tmp_path):
    scores = {}
    for mode in ("physics", "e2e"):
        mapping = copy.deepcopy(SMALL) | {"mode": mode}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = run_morph(config_from_mapping(mapping), tmp_path / mode, progress=False)
        last = summary["episodes"][-1]
        scores[mode] = (float(np.mean(last["mesh_iou"]["heldout"])), last["chamfer_after"])
    (physics_iou, physics_chamfer), (e2e_iou, e2e_chamfer) = scores["physics"], scores["e2e"]
    # Measured: held-out IoU 0.690 -> 0.717 (0.766 with the depth term, which at this size helps
    # and on the bunny and spot costs; render_losses.RenderLossConfig.w_depth).
    assert e2e_iou > physics_iou + 0.02, scores
    assert e2e_chamfer < physics_chamfer * 1.02, scores


def _gradient(problem: EpisodeProblem, loss) -> torch.Tensor:
    controls = problem.zero_controls().requires_grad_()
    (gradient,) = torch.autograd.grad(loss(problem.rollout(controls)), controls)
    return gradient.flatten()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def test_the_visual_hull_pulls_an_image_only_morph_the_way_the_true_target_does(tmp_path):
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    config = config_from_mapping(copy.deepcopy(SMALL) | {"mode": "e2e"})
    setup = build_setup(config, cpu, torch.float64)
    views = MeshViews.build(config, setup)
    save_image_targets(tmp_path / "images", views.train)
    image_only = copy.deepcopy(SMALL) | {"mode": "e2e"}
    image_only["e2e"]["target_images"] = str(tmp_path / "images")
    image_only["optimization"]["loss"] = {"w_phys": 0.0}
    image_config = config_from_mapping(image_only)
    hull_setup = build_setup(image_config, cpu, torch.float64)
    truth = EpisodeProblem.of(setup, setup.initial, config.optimization)
    hull = EpisodeProblem.of(hull_setup, hull_setup.initial, image_config.optimization)
    assert hull.target_is_hull and not truth.target_is_hull

    # Measured: cosine 0.68 between the hull's pull on the controls at rest and the true
    # target's (the hull is the target plus what no camera sees). The image terms alone reach
    # only the Gaussians at the silhouette; at this size they point much the same way (0.61),
    # at the bunny's they barely move the body (BENCHMARKS.md: Chamfer 0.48 without the hull,
    # 0.30 with it, 0.25 with the mesh).
    assert _cosine(_gradient(hull, hull.loss), _gradient(truth, truth.loss)) > 0.6
