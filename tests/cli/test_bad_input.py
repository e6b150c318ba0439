"""Malformed and hostile inputs through the real CLI: each ends in one 'error:' line that names the
key or file, exit code 2 and no traceback."""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from physmorph.cli import app

TINY = {
    "source": {"shape": "sphere", "params": {"radius": 2.0}},
    "target": {"shape": "capsule", "params": {"radius": 1.5, "length": 3.0}},
    "simulation": {"grid_min_point": [-6, -6, -6], "grid_max_point": [6, 6, 6], "points_per_cell_cuberoot": 2},
    "optimization": {"num_animations": 1, "num_timesteps": 2, "iterations": 1, "device": "cpu"},
}
SIMULATE = {
    "source": {"shape": "box", "params": {"extents": [3.0, 3.0, 3.0]}},
    "simulation": {"grid_min_point": [-6, -6, -6], "grid_max_point": [6, 6, 6]},
    "num_steps": 2,
    "num_previews": 1,
    "device": "cpu",
}

# A case builds its command line in a temporary folder and names what the message must contain.
Case = Callable[[Path], tuple[list[str], str]]
CASES: dict[str, Case] = {}


def invoke(argv: list[str]):
    return CliRunner().invoke(app, argv)


def assert_clean_failure(result, fragment: str) -> None:
    output = result.output
    assert result.exit_code == 2, output
    assert result.exc_info is None or result.exc_info[0] is SystemExit, result.exc_info
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert "warning: invalid value" not in output and "RuntimeWarning" not in output
    assert len(errors) == 1, output
    assert fragment in errors[0], output


def write_yaml(folder: Path, data: object, name: str = "config.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


def with_key(base: dict, dotted: str, value: object) -> dict:
    data = copy.deepcopy(base)
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return data


def morph_case(data: dict, fragment: str, *extra: str) -> Case:
    def build(folder: Path) -> tuple[list[str], str]:
        return ["morph", str(write_yaml(folder, data)), "--out", str(folder / "run"), *extra], fragment

    return build


def simulate_case(data: dict, fragment: str, *extra: str) -> Case:
    def build(folder: Path) -> tuple[list[str], str]:
        return ["simulate", str(write_yaml(folder, data)), "--out", str(folder / "sim"), *extra], fragment

    return build


# A whole section of the wrong type.
SECTIONS = (
    "simulation",
    "optimization",
    "source",
    "target",
    "sampling",
    "e2e",
    "render",
    "camera",
    "optimization.loss",
    "sampling.runtime_surface",
    "render.lighting",
)
for section in SECTIONS:
    for label, value in (("list", [1, 2]), ("number", 5), ("string", "sphere"), ("empty-list", []), ("bool", True)):
        CASES[f"section-{section}-{label}"] = morph_case(with_key(TINY, section, value), section)
for section in ("simulation", "source"):
    for label, value in (("list", [1, 2]), ("number", 5), ("string", "sphere")):
        CASES[f"simulate-section-{section}-{label}"] = simulate_case(with_key(SIMULATE, section, value), section)

# Huge and non-finite values that used to pass validation and overflow later.
NUMBERS = (
    "simulation.density",
    "simulation.dt",
    "simulation.lam",
    "simulation.mu",
    "simulation.grid_dx",
    "simulation.drag",
    "optimization.learning_rate",
    "optimization.arrival_speed_weight",
    "optimization.chamfer_weight",
    "optimization.elastic_energy_weight",
    "e2e.fov_deg",
)
for key in NUMBERS:
    for label, value in (("1e308", 1e308), ("inf", float("inf")), ("-inf", float("-inf")), ("nan", float("nan"))):
        CASES[f"number-{key}-{label}"] = morph_case(with_key(TINY, key, value), key)
INTEGERS = ("optimization.num_timesteps", "optimization.seed", "optimization.iterations", "optimization.num_animations")
for key in INTEGERS:
    for label, value in (("1e308", 1e308), ("inf", float("inf")), ("huge-int", 10**400)):
        CASES[f"integer-{key}-{label}"] = morph_case(with_key(TINY, key, value), key)
CASES["number-grid_max_point-inf"] = morph_case(
    with_key(TINY, "simulation.grid_max_point", [6, float("inf"), 6]), "simulation.grid_max_point[1]"
)
CASES["number-simulate-num_steps-1e308"] = simulate_case({**SIMULATE, "num_steps": 1e308}, "num_steps")

# Out-of-range values: the message carries the value.
CASES["range-ppc-50"] = morph_case(with_key(TINY, "simulation.points_per_cell_cuberoot", 50), "got 50")
CASES["range-grid_dx-larger-than-box"] = morph_case(with_key(TINY, "simulation.grid_dx", 50.0), "simulation.grid_dx")
CASES["range-iterations-0"] = morph_case(with_key(TINY, "optimization.iterations", 0), "got 0")
CASES["range-patience-negative"] = morph_case(with_key(TINY, "optimization.patience", -3), "got -3")
CASES["range-elastic-energy-weight-negative"] = morph_case(
    with_key(TINY, "optimization.elastic_energy_weight", -1.0), "optimization.elastic_energy_weight"
)
CASES["range-e2e-width-huge"] = morph_case(with_key(TINY, "e2e.width", 100000), "e2e.width")
CASES["range-gaussians-1e9"] = morph_case(with_key(TINY, "sampling.runtime_surface.M", 10**9), "runtime_surface.M")
CASES["range-train-views-1e5"] = morph_case(with_key(TINY, "e2e.num_train_views", 100000), "e2e.num_train_views")
CASES["range-simulate-previews"] = simulate_case({**SIMULATE, "num_previews": 5000}, "num_previews")
CASES["size-morph-video"] = morph_case(
    with_key(with_key(TINY, "e2e.video_size", 8192), "optimization.num_timesteps", 2000), "video"
)
CASES["range-unknown-key"] = morph_case(with_key(TINY, "simulation.stiffness", 3), "simulation.stiffness")
CASES["range-mode"] = morph_case({**TINY, "mode": "fast"}, "'mode'")
CASES["range-output_dir-number"] = morph_case({**TINY, "output_dir": 5}, "output_dir")

# Empty shape sections must not silently become the default sphere.
for key in ("source", "target"):
    CASES[f"shape-{key}-empty-mapping"] = morph_case({**TINY, key: {}}, key)
    CASES[f"shape-{key}-null"] = morph_case({**TINY, key: None}, key)
    CASES[f"shape-{key}-both-mesh-and-shape"] = morph_case({**TINY, key: {"mesh": "a.obj", "shape": "sphere"}}, key)
CASES["shape-simulate-source-empty"] = simulate_case({**SIMULATE, "source": {}}, "source")


# Config files that are not configs.
def raw_config(content: bytes, fragment: str, command: str = "morph") -> Case:
    def build(folder: Path) -> tuple[list[str], str]:
        path = folder / "config.yaml"
        path.write_bytes(content)
        return [command, str(path), "--out", str(folder / "out")], fragment

    return build


for command in ("morph", "simulate"):
    CASES[f"file-{command}-not-utf8"] = raw_config(b"simulation:\n  dt: 0.01 # \xff\xfe caf\xe9\n", "UTF-8", command)
    CASES[f"file-{command}-empty"] = raw_config(b"", "holds no settings", command)
    CASES[f"file-{command}-comments-only"] = raw_config(b"# nothing here\n  # really\n", "holds no settings", command)
    CASES[f"file-{command}-invalid-yaml"] = raw_config(b"simulation: [1, 2\n", "not valid YAML", command)
    CASES[f"file-{command}-top-level-list"] = raw_config(b"- 1\n- 2\n", "mapping", command)


def config_is_a_folder(folder: Path) -> tuple[list[str], str]:
    (folder / "configs.yaml").mkdir()
    return ["morph", str(folder / "configs.yaml"), "--out", str(folder / "out")], "is a folder"


def config_missing(folder: Path) -> tuple[list[str], str]:
    return ["simulate", str(folder / "none.yaml"), "--out", str(folder / "out")], "none.yaml"


CASES["file-config-is-a-folder"] = config_is_a_folder
CASES["file-config-missing"] = config_missing


# Output folders that cannot be written: found before anything is filled.
def out_is_a_file(command: str) -> Case:
    def build(folder: Path) -> tuple[list[str], str]:
        (folder / "taken").write_text("x")
        config = write_yaml(folder, TINY if command == "morph" else SIMULATE)
        return [command, str(config), "--out", str(folder / "taken")], "--out"

    return build


def out_under_a_file(command: str) -> Case:
    def build(folder: Path) -> tuple[list[str], str]:
        (folder / "taken").write_text("x")
        config = write_yaml(folder, TINY if command == "morph" else SIMULATE)
        return [command, str(config), "--out", str(folder / "taken" / "run")], "--out"

    return build


def out_on_a_read_only_filesystem(command: str) -> Case:
    def build(folder: Path) -> tuple[list[str], str]:
        config = write_yaml(folder, TINY if command == "morph" else SIMULATE)
        return [command, str(config), "--out", "/proc/physmorph-run"], "--out"

    return build


for command in ("morph", "simulate"):
    CASES[f"out-{command}-is-a-file"] = out_is_a_file(command)
    CASES[f"out-{command}-under-a-file"] = out_under_a_file(command)
    CASES[f"out-{command}-read-only-filesystem"] = out_on_a_read_only_filesystem(command)

# Runs that would not fit in memory are refused before filling, with the estimate.
HUGE = with_key(
    with_key(with_key(TINY, "simulation.grid_min_point", [-400] * 3), "simulation.grid_max_point", [400] * 3),
    "simulation.points_per_cell_cuberoot",
    8,
)
HUGE["source"] = {"shape": "sphere", "params": {"radius": 380.0}}
CASES["size-morph-huge-lattice"] = morph_case(HUGE, "needs about")
CASES["size-morph-billion-steps"] = morph_case(with_key(TINY, "optimization.num_timesteps", 10**9), "needs about")
CASES["size-simulate-huge-lattice"] = simulate_case(
    {**SIMULATE, "source": HUGE["source"], "simulation": HUGE["simulation"]}, "needs about"
)


# Meshes that cannot be filled.
def mesh_case(text: bytes | None, fragment: str, name: str = "body.obj", **shape: object) -> Case:
    def build(folder: Path) -> tuple[list[str], str]:
        if text is not None:
            (folder / name).write_bytes(text)
        data = {**TINY, "source": {"mesh": name, **shape}}
        return ["morph", str(write_yaml(folder, data)), "--out", str(folder / "run")], fragment

    return build


TETRA = "v 0 0 0\nv 2 0 0\nv 0 2 0\nv 0 0 2\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n"
CASES["mesh-all-vertices-equal"] = mesh_case(
    TETRA.replace("v 2 0 0", "v 0 0 0").replace("v 0 2 0", "v 0 0 0").replace("v 0 0 2", "v 0 0 0").encode(), "body.obj"
)
CASES["mesh-nan-vertex"] = mesh_case(TETRA.replace("v 2 0 0", "v nan 0 0").encode(), "non-finite")
CASES["mesh-garbage"] = mesh_case(bytes(range(256)) * 8, "body.obj")
CASES["mesh-flat"] = mesh_case(b"v 0 0 0\nv 2 0 0\nv 0 2 0\nv 2 2 0\nf 1 2 3\nf 2 4 3\nf 1 3 2\nf 2 3 4\n", "body.obj")
CASES["mesh-tiny"] = mesh_case(TETRA.encode(), "material points", scale=0.0005)
CASES["mesh-missing"] = mesh_case(None, "body.obj")
CASES["mesh-unsupported-suffix"] = mesh_case(b"solid", "body.xyz", name="body.xyz")
CASES["mesh-outside-grid"] = mesh_case(TETRA.encode(), "source shape", scale=10.0)


def mesh_is_a_folder(folder: Path) -> tuple[list[str], str]:
    (folder / "body.obj").mkdir()
    data = {**TINY, "source": {"mesh": "body.obj"}}
    return ["morph", str(write_yaml(folder, data)), "--out", str(folder / "run")], "body.obj"


CASES["mesh-is-a-folder"] = mesh_is_a_folder
CASES["shape-negative-radius"] = morph_case(with_key(TINY, "source.params.radius", -1.0), "'source'")
CASES["shape-infinite-radius"] = morph_case(with_key(TINY, "target.params.radius", float("inf")), "'target'")
CASES["shape-radius-1e308"] = morph_case(with_key(TINY, "source.params.radius", 1e308), "'source'")
CASES["shape-box-extent-1e308"] = morph_case(
    {**TINY, "target": {"shape": "box", "params": {"extents": [1e308, 1, 1]}}}, "'target'"
)
CASES["shape-unknown-name"] = morph_case({**TINY, "target": {"shape": "teapot"}}, "teapot")
CASES["shape-params-not-a-mapping"] = morph_case(with_key(TINY, "source.params", [2.0]), "source.params")
CASES["shape-unknown-parameter"] = morph_case(with_key(TINY, "source.params.radius_mm", 2.0), "radius_mm")
CASES["shape-scale-huge"] = morph_case(with_key(TINY, "source.scale", 1e300), "source.scale")
CASES["shape-rotate-nan"] = morph_case(with_key(TINY, "source.rotate_deg", [float("nan"), 0, 0]), "source.rotate_deg")
CASES["shape-mesh-path-number"] = morph_case({**TINY, "source": {"mesh": 5}}, "source.mesh")
CASES["type-dtype-float16"] = morph_case(with_key(TINY, "optimization.dtype", "float16"), "optimization.dtype")
CASES["type-steps-fraction"] = morph_case(with_key(TINY, "optimization.num_timesteps", 5.5), "num_timesteps")
CASES["type-iterations-bool"] = morph_case(with_key(TINY, "optimization.iterations", True), "iterations")
CASES["type-grid-two-numbers"] = morph_case(with_key(TINY, "simulation.grid_min_point", [0, 0]), "grid_min_point")
CASES["diverge-simulate-squash"] = simulate_case(
    {**SIMULATE, "deformation_control": [[1e9, 0, 0], [0, 0, 0], [0, 0, 0]]}, "diverged"
)
CASES["diverge-simulate-launch"] = simulate_case({**SIMULATE, "initial_velocity": [1e9, 0, 0]}, "diverged")

# Command-line overrides: one path, the same checks as the config's keys.
CASES["option-simulate-device-gpu"] = simulate_case(SIMULATE, "device", "--device", "gpu")
CASES["option-morph-device-gpu"] = morph_case(TINY, "optimization.device", "--device", "gpu")
CASES["option-morph-optimizer-sgd"] = morph_case(TINY, "optimization.optimizer", "--optimizer", "sgd")
CASES["option-morph-episodes-0"] = morph_case(TINY, "optimization.num_animations", "--episodes", "0")
CASES["option-morph-episodes-huge"] = morph_case(TINY, "optimization.num_animations", "--episodes", str(2**40))

# Divergence before any control: a clear failure, not a run of null losses.
# Steps beyond the CFL limit are refused when the config is read.
CASES["cfl-dt-10"] = morph_case(with_key(TINY, "simulation.dt", 10.0), "simulation.dt")
CASES["cfl-stiff"] = morph_case(with_key(with_key(TINY, "simulation.lam", 1e12), "simulation.mu", 1e12), "stability")
CASES["cfl-simulate-dt-10"] = simulate_case(with_key(SIMULATE, "simulation.dt", 10.0), "simulation.dt")
# A rollout that diverges before any control: a clear failure, not a run of null losses.
CASES["diverge-gravity"] = morph_case(with_key(TINY, "simulation.external_force", [0, 0, -1e9]), "diverged")


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_clean_line(name, tmp_path):
    argv, fragment = CASES[name](tmp_path)
    assert_clean_failure(invoke(argv), fragment)


# Corrupt run folders, for `--resume` and `render`: one finished tiny run, damaged per case.
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("finished")
    config = write_yaml(folder, TINY)
    result = invoke(["morph", str(config), "--out", str(folder / "run")])
    assert result.exit_code == 0, result.output
    return config, folder / "run"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _nan_trajectory(path: Path) -> None:
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    arrays["x"][1, 0, 0] = np.nan
    np.savez(path, **arrays)


def _keyless(path: Path) -> None:
    np.savez(path, y=np.zeros(3))


DAMAGE: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "summary-list": ("summary.json", lambda p: p.write_text("[]"), "summary.json"),
    "summary-empty-mapping": ("summary.json", lambda p: p.write_text("{}"), "summary.json"),
    "summary-truncated": ("summary.json", _truncate, "summary.json"),
    "summary-not-utf8": ("summary.json", lambda p: p.write_bytes(b'{"episodes": "\xff\xfe"}'), "summary.json"),
    "summary-config-emptied": (
        "summary.json",
        lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "config": {}})),
        "summary.json",
    ),
    "summary-no-episodes": (
        "summary.json",
        lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "episodes"})),
        "episodes",
    ),
    "episode-folder-missing": ("ep000", lambda p: shutil.rmtree(p), "ep000"),
}
RESUME_ONLY = {
    "summary-other-config": (
        "summary.json",
        lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "config": {"simulation": [1]}})),
        "summary.json",
    ),
    "state-truncated": ("ep000/state.npz", _truncate, "state.npz"),
    "state-missing": ("ep000/state.npz", lambda p: p.unlink(), "state.npz"),
    "state-garbage": ("ep000/state.npz", lambda p: p.write_bytes(os.urandom(300)), "state.npz"),
    "state-keyless": ("ep000/state.npz", _keyless, "state.npz"),
}
RENDER_ONLY = {
    "summary-bad-config": (
        "summary.json",
        lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "config": {"simulation": [1]}})),
        "summary.json",
    ),
    "trajectory-truncated": ("ep000/trajectory.npz", _truncate, "trajectory.npz"),
    "trajectory-garbage": ("ep000/trajectory.npz", lambda p: p.write_bytes(os.urandom(300)), "trajectory.npz"),
    "trajectory-keyless": ("ep000/trajectory.npz", _keyless, "trajectory.npz"),
    "trajectory-nan": ("ep000/trajectory.npz", _nan_trajectory, "non-finite"),
    "trajectory-missing": ("ep000/trajectory.npz", lambda p: p.unlink(), "trajectory.npz"),
}
RUN_CASES = [("resume", k, *v) for k, v in (DAMAGE | RESUME_ONLY).items()]
RUN_CASES += [("render", k, *v) for k, v in (DAMAGE | RENDER_ONLY).items()]


@pytest.mark.parametrize(
    ("command", "name", "target", "damage", "fragment"), RUN_CASES, ids=[f"{c[0]}-{c[1]}" for c in RUN_CASES]
)
def test_a_damaged_run_folder_is_one_clean_line(finished_run, tmp_path, command, name, target, damage, fragment):
    config, original = finished_run
    run = tmp_path / "run"
    shutil.copytree(original, run)
    damage(run / target)
    if command == "resume":
        argv = ["morph", str(config), "--out", str(run), "--resume", "--episodes", "2"]
    else:
        argv = ["render", str(run), "--size", "16x16"]
    assert_clean_failure(invoke(argv), fragment)


def test_render_refuses_an_image_size_that_would_not_fit(finished_run):
    _config, run = finished_run
    assert_clean_failure(invoke(["render", str(run), "--size", "100000x100000"]), "needs about")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--views", "0"], "--views"),
        (["--views", "100000"], "--views"),
        (["--size", "big"], "--size"),
        (["--size", "4x4"], "--size"),
        (["--episode", "7"], "episode 7"),
    ],
)
def test_render_options_are_checked(finished_run, argv, fragment):
    _config, run = finished_run
    assert_clean_failure(invoke(["render", str(run), *argv]), fragment)


def test_render_of_a_folder_that_is_no_run(tmp_path):
    assert_clean_failure(invoke(["render", str(tmp_path)]), "summary.json")
    assert_clean_failure(invoke(["render", str(tmp_path / "nowhere")]), "nowhere")


def test_resume_with_a_different_config_names_the_keys(finished_run, tmp_path):
    _config, original = finished_run
    run = tmp_path / "run"
    shutil.copytree(original, run)
    changed = with_key(with_key(TINY, "simulation.drag", 0.9), "optimization.learning_rate", 0.5)
    path = write_yaml(tmp_path, changed, "changed.yaml")
    result = invoke(["morph", str(path), "--out", str(run), "--resume", "--episodes", "2"])
    assert_clean_failure(result, "optimization.learning_rate, simulation.drag")
