import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from physmorph.cli import app

TINY = {
    "source": {"shape": "sphere", "params": {"radius": 2.0}},
    "target": {"shape": "capsule", "params": {"radius": 1.5, "length": 3.0}},
    "simulation": {"grid_min_point": [-6, -6, -6], "grid_max_point": [6, 6, 6], "points_per_cell_cuberoot": 2},
    # the pure mass loss: with the default speed and Chamfer terms Adam's first steps on a body
    # this small go uphill, and the morph would not move
    "optimization": {
        "num_animations": 2,
        "num_timesteps": 3,
        "iterations": 2,
        "device": "cpu",
        "arrival_speed_weight": 0.0,
        "chamfer_weight": 0.0,
    },
}
EPISODE_FIELDS = {
    "episode",
    "mass_loss_before",
    "mass_loss_after",
    "chamfer_before",
    "chamfer_after",
    "chamfer_after_driven",
    "plastic_strain_max",
    "J_min",
    "J_mean",
    "seconds",
    "peak_memory_bytes",
}


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def test_morph_writes_every_output(tiny_config, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["morph", str(tiny_config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Chamfer" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert {"device", "torch_version", "num_particles", "config", "episodes"} <= set(summary)
    assert len(summary["episodes"]) == 2
    for record in summary["episodes"]:
        assert set(record) >= EPISODE_FIELDS
        # Adam found controls better than none (the first entry is the zero-control loss)
        assert min(record["loss_history"][1:]) < record["loss_history"][0]
        assert record["mass_loss_after"] < record["mass_loss_before"]
        folder = out / f"ep{record['episode']:03d}"
        for name in ("trajectory.npz", "final.ply", "comparison.png"):
            assert (folder / name).is_file(), name
        trajectory = np.load(folder / "trajectory.npz")
        assert trajectory["x"].shape == (4, summary["num_particles"], 3) and trajectory["x"].dtype == np.float32
        assert trajectory["F"].shape == (4, summary["num_particles"], 3, 3)
    assert (out / "loss.png").is_file()
    assert (out / "morph.mp4").is_file() or (out / "morph.gif").is_file()
    assert not list(out.glob("*.partial")) and not list(out.glob(".*tmp*"))


def test_resume_equals_an_uninterrupted_run(tmp_path):
    # plastic, with a release phase (tests/optimize/test_run.py checks that α round-trips)
    tiny_config = tmp_path / "plastic.yaml"
    simulation = {**TINY["simulation"], "plasticity": {"model": "von_mises", "yield_stress": 20.0}}
    optimization = {**TINY["optimization"], "release_steps": 2}
    tiny_config.write_text(yaml.safe_dump({**TINY, "simulation": simulation, "optimization": optimization}))
    runner = CliRunner()
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert runner.invoke(app, ["morph", str(tiny_config), "--out", str(whole)]).exit_code == 0
    assert runner.invoke(app, ["morph", str(tiny_config), "--out", str(split), "--episodes", "1"]).exit_code == 0
    resumed = runner.invoke(app, ["morph", str(tiny_config), "--out", str(split), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    a = json.loads((whole / "summary.json").read_text())["episodes"]
    b = json.loads((split / "summary.json").read_text())["episodes"]
    assert [e["loss_history"] for e in a] == [e["loss_history"] for e in b]
    for name in ("positions", "plastic_strain"):
        np.testing.assert_array_equal(
            np.load(whole / "ep001" / "state.npz")[name], np.load(split / "ep001" / "state.npz")[name]
        )
    assert np.load(whole / "ep001" / "trajectory.npz")["x"].shape[0] == 3 + 2 + 1


def test_bad_config_is_one_clear_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**TINY, "simulation": {"dt": 0.0}}))
    result = CliRunner().invoke(app, ["morph", str(path), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "simulation.dt" in result.output and "Traceback" not in result.output


def test_simulate_writes_trajectory_ply_and_previews(tmp_path):
    path = tmp_path / "drop.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "source": {"shape": "box", "params": {"extents": [3.0, 3.0, 3.0]}},
                "simulation": {
                    "grid_min_point": [-6, -6, -6],
                    "grid_max_point": [6, 6, 6],
                    "external_force": [0, 0, -20],
                },
                "num_steps": 6,
                "num_previews": 3,
                "device": "cpu",
            }
        )
    )
    out = tmp_path / "sim"
    result = CliRunner().invoke(app, ["simulate", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = np.load(out / "trajectory.npz")
    assert data["x"].shape[0] == 7 and data["F"].shape[1:] == (data["x"].shape[1], 3, 3)
    # gravity pulls the body down
    assert data["x"][-1, :, 2].mean() < data["x"][0, :, 2].mean() - 0.01
    assert (out / "final.ply").is_file() and (out / "preview.png").is_file()


def test_e2e_morph_and_render_write_images_and_view_metrics(tmp_path):
    config = {
        **TINY,
        "mode": "e2e",
        "optimization": {**TINY["optimization"], "num_animations": 1, "loss": {"w_alpha": 20.0}},
        "sampling": {"runtime_surface": {"M": 1500, "sigma0": 0.25}},
        "e2e": {"num_train_views": 2, "num_heldout_views": 1, "width": 32, "height": 32, "video_size": 48},
    }
    path = tmp_path / "e2e.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["morph", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "summary.json").read_text())["episodes"][0]
    assert [(v["name"], v["split"]) for v in record["views"]] == [
        ("train00", "train"),
        ("train01", "train"),
        ("heldout00", "heldout"),
    ]
    assert all(0.0 <= v["iou"] <= 1.0 and v["psnr"] > 0 for v in record["views"])
    assert {"phys", "alpha"} <= set(record["render_terms"])
    folder = out / "ep000"
    for name in ("train00_rgb.png", "train00_alpha.png", "train00_depth.png", "train00_normal.png"):
        assert (folder / "renders" / name).is_file(), name
    for name in (
        "target_vs_prediction_train.png",
        "target_vs_prediction_heldout.png",
        "gaussians.ply",
        "gaussians.npz",
    ):
        assert (folder / name).is_file(), name
    rendered = CliRunner().invoke(app, ["render", str(out), "--views", "2", "--size", "40x24"])
    assert rendered.exit_code == 0, rendered.output
    frames = sorted((folder / "frames").glob("*_rgb.png"))
    assert len(frames) == 2 * 4  # 2 views × (3 steps + the initial state)
    assert (out / "render.mp4").is_file() or (out / "render.gif").is_file()
    bad = CliRunner().invoke(app, ["render", str(out), "--episode", "5"])
    assert bad.exit_code == 2 and "episode 5 is not finished" in bad.output


def test_image_only_target_folder_drives_an_e2e_morph(tmp_path):
    import torch

    from physmorph.config import config_from_mapping
    from physmorph.io.targets import save_image_targets
    from physmorph.optimize.e2e import RenderSettings, target_images_from_particles
    from physmorph.optimize.setup import build_setup
    from physmorph.optimize.views import orbit_views
    from physmorph.surface import SurfaceConfig

    surface = {"M": 1500, "sigma0": 0.25}
    # the target exists only as masks and depth maps from two calibrated cameras
    shape_only = config_from_mapping({**TINY, "optimization": {"device": "cpu"}})
    target_points = build_setup(shape_only, torch.device("cpu")).target_points
    cameras = orbit_views(shape_only.e2e, target_points, 2, 20.0, size=(32, 32))
    images = target_images_from_particles(target_points, cameras, SurfaceConfig(**surface), RenderSettings())
    save_image_targets(tmp_path / "targets", images)

    config = {
        "source": TINY["source"],
        "simulation": TINY["simulation"],
        "mode": "e2e",
        "optimization": {**TINY["optimization"], "num_animations": 1, "loss": {"w_phys": 0.0, "w_alpha": 1.0}},
        "sampling": {"runtime_surface": surface},
        "e2e": {"target_images": "targets", "video_size": 48},
    }
    path = tmp_path / "image_only.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["morph", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "run" / "summary.json").read_text())["episodes"][0]
    assert record["chamfer_before"] is None and record["mass_loss_after"] is None
    assert [v["split"] for v in record["views"]] == ["train", "train"]
    assert "phys" not in record["render_terms"] and "alpha" in record["render_terms"]
    # the 3D term is the visual hull's, carved from the two views' masks and depth
    assert "hull" in record["render_terms"]
    assert record["hull_mass_loss_after"] < record["hull_mass_loss_before"]

    # the physics term needs a target mass field, which an image-only target does not have
    config["optimization"]["loss"]["w_phys"] = 1.0
    path.write_text(yaml.safe_dump(config))
    refused = CliRunner().invoke(app, ["morph", str(path), "--out", str(tmp_path / "bad")])
    assert refused.exit_code == 2 and "w_phys: 0" in refused.output


def test_divergence_inside_an_episode_is_reported_and_the_best_iterate_kept(tmp_path):
    # a learning rate this large makes every step after the first evaluation blow the body apart
    config = {**TINY, "optimization": {**TINY["optimization"], "num_animations": 1, "learning_rate": 1e4}}
    path = tmp_path / "wild.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["morph", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "warning: episode 0, iteration 1: simulation diverged at step" in result.output
    assert "diverged evaluations" in result.output
    record = json.loads((out / "summary.json").read_text())["episodes"][0]
    assert record["divergences"][0]["iteration"] == 1 and "particles" in record["divergences"][0]["reason"]
    assert record["loss_history"][1] is None and record["loss_history"][0] is not None
    # the episode keeps the best finite iterate: here the zero controls
    assert record["mass_loss_after"] == pytest.approx(record["mass_loss_before"])


def test_morph_and_simulate_write_one_trajectory_format(tiny_config, tmp_path):
    from physmorph.io.run_folder import read_trajectory

    morphed = CliRunner().invoke(app, ["morph", str(tiny_config), "--out", str(tmp_path / "m"), "--episodes", "1"])
    assert morphed.exit_code == 0, morphed.output
    morph = read_trajectory(tmp_path / "m" / "ep000" / "trajectory.npz")
    assert len(morph["controls"]) >= 1 and morph["controls"].shape[1:] == (morph["x"].shape[1], 3, 3)
    assert morph["v"].shape == morph["x"].shape
    simulation = {"source": TINY["source"], "simulation": TINY["simulation"], "num_steps": 2, "device": "cpu"}
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(simulation))
    assert CliRunner().invoke(app, ["simulate", str(path), "--out", str(tmp_path / "s")]).exit_code == 0
    simulated = read_trajectory(tmp_path / "s" / "trajectory.npz")
    assert simulated["controls"].shape == (0, simulated["x"].shape[1], 3, 3) and simulated["dt"] == morph["dt"]


def test_an_unexpected_error_is_one_line_that_points_to_debug(capsys):
    import typer

    from physmorph.cli import _user_facing

    with pytest.raises(typer.Exit) as stopped, _user_facing(debug=False):
        {}["missing"]
    assert stopped.value.exit_code == 1
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "unexpected KeyError" in message and "--debug" in message
    with pytest.raises(KeyError), _user_facing(debug=True):
        {}["missing"]
