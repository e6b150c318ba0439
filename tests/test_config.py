import re
import shutil
import warnings

import pytest

from physmorph.config import UnusedKeysWarning, config_from_mapping, config_to_mapping, load_config
from physmorph.errors import ConfigError, InputError
from physmorph.optimize.setup import build_setup


def test_reference_config_loads_unchanged_with_one_warning(shared_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = load_config(shared_dir / "reference" / "sphere_to_bunny.yaml")
    unused = [w for w in caught if issubclass(w.category, UnusedKeysWarning)]
    message = str(unused[0].message)
    assert len(unused) == 1 and "output" in message and "runtime_surface.ivf_nlist" in message
    # the reference's single camera and frame selection validate but change nothing: named as unused
    assert "camera" in message and "render.num_frames" in message
    assert "optimization.loss" not in message and "render.lighting.shininess" not in message
    assert config.source.mesh == "assets/isosphere.obj" and config.target.mesh == "assets/bunny.obj"
    assert config.simulation.lam == pytest.approx(38888.89) and config.simulation.smoothing_factor == 0.955
    assert config.optimization.num_timesteps == 10 and config.optimization.max_ls_iters == 10
    assert config.base_dir == (shared_dir / "reference").resolve()
    assert config.loss.w_alpha == 0.5 and config.surface.sigma0 is None and config.camera.fx == 475.0
    assert "base_gaussian_scale (the reference's 0.02 would leave holes" in message
    assert config.render.lighting.shininess == 32


def test_config_round_trips_through_its_mapping(shared_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = load_config(shared_dir / "reference" / "sphere_to_bunny.yaml")
        again = config_from_mapping(config_to_mapping(config), base_dir=config.base_dir)
    for section in ("source", "target", "simulation", "optimization", "loss", "surface", "camera", "render", "e2e"):
        assert getattr(again, section) == getattr(config, section), section


def test_shipped_reference_config_fills_the_reference_particle_count(shared_dir, tmp_path):
    (tmp_path / "meshes").mkdir()
    for name in ("isosphere.obj", "bunny.obj"):
        shutil.copy(shared_dir / "meshes" / name, tmp_path / "meshes" / name)
    shutil.copy("configs/sphere_to_bunny.yaml", tmp_path / "config.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        setup = build_setup(load_config(tmp_path / "config.yaml"), device=__import__("torch").device("cpu"))
    assert setup.initial.num_particles == 11166


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"simulaton": {}}, "unknown config key 'simulaton'"),
        ({"simulation": {"dt": 0}}, "'simulation.dt' must be a positive time step"),
        ({"simulation": {"dt": -0.1}}, "simulation.dt"),
        ({"simulation": {"grid_dx": "one"}}, "simulation.grid_dx: expected a number"),
        ({"simulation": {"stiffness": 3}}, "unknown config key 'simulation.stiffness'"),
        ({"optimization": {"num_timesteps": 2, "control_stride": 5}}, "must be at least control_stride"),
        ({"optimization": {"optimizer": "sgd"}}, "optimization.optimizer: 'sgd' is not one of"),
        ({"simulation": {"youngs_modulus": 1000.0}}, "poisson_ratio must be given together"),
        ({"mode": "fast"}, "'mode' must be 'physics' or 'e2e'"),
        ({"e2e": {"fov_deg": 0}}, "'e2e.fov_deg' must be in (0, 170)"),
        ({"optimization": {"loss": {"w_alpha": -1}}}, "optimization.loss.w_alpha"),
        ({"optimization": {"release_steps": -1}}, "'optimization.release_steps' must be ≥ 0, got -1"),
        ({"simulation": {"plasticity": {"model": "drucker"}}}, "simulation.plasticity.model: 'drucker' is not one of"),
        ({"simulation": {"plasticity": {"yield": 3}}}, "unknown config key 'simulation.plasticity.yield'"),
        (
            {"simulation": {"plasticity": {"model": "von_mises", "yield_stress": 0}}},
            "'simulation.plasticity.yield_stress' must be a positive stress, got 0.0",
        ),
        (
            {"simulation": {"plasticity": {"model": "von_mises", "hardening": -5}}},
            "'simulation.plasticity.hardening' must be ≥ 0, got -5.0",
        ),
    ],
)
def test_bad_configs_name_the_key(mapping, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_mapping(mapping)


def test_missing_mesh_and_target_outside_grid(tmp_path):
    import torch

    config = config_from_mapping({"target": {"mesh": "nowhere/bunny.obj"}}, base_dir=tmp_path)
    with pytest.raises(InputError, match=r"nowhere/bunny\.obj' not found"):
        build_setup(config, torch.device("cpu"))
    far = config_from_mapping({"target": {"shape": "sphere", "params": {"radius": 4.0, "center": [14.0, 0.0, 0.0]}}})
    with pytest.raises(InputError, match="target shape"):
        build_setup(far, torch.device("cpu"))


def test_missing_config_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("simulation: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_plasticity_and_release_reach_the_model_and_the_episode():
    import torch

    from physmorph.optimize.episode import EpisodeProblem

    mapping = {
        "target": {"shape": "sphere", "params": {"radius": 4.0}},
        "simulation": {"plasticity": {"model": "von_mises", "yield_stress": 800.0, "hardening": 40.0}},
        "optimization": {"release_steps": 7},
    }
    config = config_from_mapping(mapping)
    setup = build_setup(config, torch.device("cpu"))
    assert setup.model.plasticity.yield_stress == 800.0 and setup.model.plasticity.hardening == 40.0
    assert EpisodeProblem.of(setup, setup.initial, config.optimization).release_steps == 7
    again = config_from_mapping(config_to_mapping(config))
    assert again.simulation == config.simulation and again.optimization == config.optimization
    elastic = build_setup(config_from_mapping({"target": mapping["target"]}), torch.device("cpu"))
    assert elastic.model.plasticity is None


def test_plasticity_settings_without_a_plastic_model_are_named_in_a_warning():
    with pytest.warns(UserWarning, match=r"'simulation\.plasticity\.yield_stress' has no effect"):
        config_from_mapping({"simulation": {"plasticity": {"yield_stress": 50.0}}})


def test_reference_config_stays_elastic_without_release():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = load_config("configs/sphere_to_bunny.yaml")
    assert config.simulation.plasticity.model == "none" and config.optimization.release_steps == 0
    demo = load_config("src/physmorph/configs/demo.yaml")
    assert demo.simulation.plasticity.model == "von_mises" and demo.optimization.release_steps > 0


REFINABLE = {
    "source": {"shape": "sphere", "params": {"radius": 2.5}},
    "target": {"shape": "ellipsoid", "params": {"radii": [3.5, 2.0, 2.0]}},
    "simulation": {"grid_min_point": [-8, -8, -8], "grid_max_point": [8, 8, 8]},
    "optimization": {"num_timesteps": 6, "release_steps": 2, "device": "cpu"},
    "e2e": {"supervised_steps": [0, 3, -1, -2]},
}


def test_refine_divides_cell_and_step_and_multiplies_steps_and_particles():
    import torch

    coarse = config_from_mapping(REFINABLE)
    fine = config_from_mapping(REFINABLE | {"simulation": {**REFINABLE["simulation"], "refine": 2}})
    assert fine.simulation.grid_dx == coarse.simulation.grid_dx / 2 and fine.simulation.dt == coarse.simulation.dt / 2
    assert fine.optimization.num_timesteps == 12 and fine.optimization.release_steps == 4
    # the same physical time, the driven steps and the release alike
    for steps in ("num_timesteps", "release_steps"):
        coarse_time = getattr(coarse.optimization, steps) * coarse.simulation.dt
        assert getattr(fine.optimization, steps) * fine.simulation.dt == pytest.approx(coarse_time)
    # trajectory index i is i·dt after the start (i ≥ 0) or (−1 − i)·dt before the end (i < 0)
    assert fine.e2e.supervised_steps == [0, 6, -1, -3]
    assert fine.simulation.points_per_cell_cuberoot == coarse.simulation.points_per_cell_cuberoot
    counts = [build_setup(c, torch.device("cpu")).initial.num_particles for c in (coarse, fine)]
    assert 6 < counts[1] / counts[0] < 10  # k³ = 8, up to the lattice's fit of the sphere
    # a loaded config is refined once: its mapping (what summary.json stores) reloads to the same run
    again = config_from_mapping(config_to_mapping(fine))
    assert again.simulation == fine.simulation and again.optimization == fine.optimization
    assert again.simulation.refine == 1


def test_the_reference_config_refined_four_times_is_the_published_scale():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = load_config("configs/sphere_to_bunny.yaml")
    mapping = config_to_mapping(config)
    mapping["simulation"]["refine"] = 4
    fine = config_from_mapping(mapping, base_dir=config.base_dir)
    assert fine.simulation.grid_dx == 0.25 and fine.optimization.num_timesteps == 40
    assert fine.simulation.dt == pytest.approx(config.simulation.dt / 4)


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "two", 17])
def test_bad_refine_values_are_named_with_the_fix(value):
    with pytest.raises(ConfigError, match=r"simulation\.refine"):
        config_from_mapping({"simulation": {"refine": value}})


def test_an_unrefined_config_is_refused_by_the_setup():
    import torch

    config = config_from_mapping(REFINABLE)
    config.simulation.refine = 2
    with pytest.raises(InputError, match=r"refined\(config\)"):
        build_setup(config, torch.device("cpu"))
