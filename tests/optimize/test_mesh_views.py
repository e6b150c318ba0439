"""Ground-truth views of the target mesh: e2e targets and the per-episode mesh IoU of every run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from physmorph.config import config_from_mapping
from physmorph.errors import ConfigError
from physmorph.io.ply import read_gaussians_ply
from physmorph.mpm import State
from physmorph.optimize.e2e_run import MeshViews
from physmorph.optimize.render_run import render_run
from physmorph.optimize.run import run_morph
from physmorph.optimize.setup import build_setup
from physmorph.optimize.views import render_settings
from physmorph.surface import bind_surface

TINY = {
    "source": {"shape": "sphere", "params": {"radius": 2.5}},
    "target": {"shape": "capsule", "params": {"radius": 1.5, "length": 2.5}},
    "simulation": {"grid_min_point": [-7, -7, -7], "grid_max_point": [7, 7, 7]},
    "optimization": {"num_animations": 1, "num_timesteps": 3, "iterations": 2, "device": "cpu"},
    "sampling": {"runtime_surface": {"M": 3000}},
    "e2e": {"num_train_views": 2, "num_heldout_views": 2, "width": 48, "height": 48},
}


def _setup(mapping):
    config = config_from_mapping(mapping)
    return config, build_setup(config, torch.device("cpu"), torch.float64)


def test_mesh_views_score_the_target_shape_above_the_source():
    config, setup = _setup(TINY)
    views = MeshViews.build(config, setup)
    assert [len(views.train), len(views.heldout)] == [2, 2]
    assert views.train.depth is not None and (views.train.depth[views.train.alpha > 0.5] > 0).all()
    settings = render_settings(config)
    target = State.at_rest(setup.target_points)
    target_binding = bind_surface(target.positions, target.deformation_gradients, config.surface)
    source_binding = bind_surface(setup.initial.positions, setup.initial.deformation_gradients, config.surface)
    target_iou = views.iou(target, target_binding, settings)
    source_iou = views.iou(setup.initial, source_binding, settings)
    # A small body (radius 1.5, two particles per cell) in 48² views: a pixel of outline error.
    assert min(target_iou["train"] + target_iou["heldout"]) > 0.8
    assert max(source_iou["train"] + source_iou["heldout"]) < min(target_iou["train"] + target_iou["heldout"]) - 0.1


def test_every_run_records_the_mesh_iou_and_renders_ply_frames(tmp_path):
    config = config_from_mapping(TINY)
    summary = run_morph(config, tmp_path / "run", progress=False)
    record = summary["episodes"][0]
    assert set(record["mesh_iou"]) == {"train", "heldout"}
    assert len(record["mesh_iou"]["train"]) == 2 and len(record["mesh_iou"]["heldout"]) == 2
    assert all(0.0 < value <= 1.0 for value in record["mesh_iou"]["heldout"])
    assert (tmp_path / "run" / "particles.mp4").is_file() or (tmp_path / "run" / "particles.gif").is_file()
    render_run(tmp_path / "run", 0, 1, (32, 32), ply=True)
    frames = sorted((tmp_path / "run" / "ep000" / "frames").glob("step*.ply"))
    assert len(frames) == 4  # 3 steps + the initial state
    last = read_gaussians_ply(frames[-1])
    trajectory = np.load(tmp_path / "run" / "ep000" / "trajectory.npz")
    assert last.count == 3000
    # The surfels follow the particles: their centres lie within the final particle cloud's box.
    low, high = trajectory["x"][-1].min(0) - 1.0, trajectory["x"][-1].max(0) + 1.0
    means = last.means.numpy()
    assert ((means > low) & (means < high)).all()


def test_cameras_that_miss_the_target_mesh_are_a_config_error():
    mapping = {**TINY, "e2e": {**TINY["e2e"], "orbit_radius": 1e7}}
    config, setup = _setup(mapping)
    with pytest.raises(ConfigError, match="sees nothing of the target mesh"):
        MeshViews.build(config, setup)
