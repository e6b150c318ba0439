"""benchmarks/morph_scale.py's core on a tiny morph: every run is a row, failures included."""

import importlib.util
import math
import sys
from pathlib import Path

import torch

from physmorph.config import config_from_mapping

_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "morph_scale.py"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("morph_scale", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _tiny_config():
    return config_from_mapping(
        {
            "source": {"shape": "sphere", "params": {"radius": 2.5}},
            "target": {"shape": "sphere", "params": {"radius": 3.0}},
            "simulation": {"grid_min_point": [-8.0, -8.0, -8.0], "grid_max_point": [8.0, 8.0, 8.0]},
            "optimization": {"num_timesteps": 2, "iterations": 1},
        }
    )


def test_one_resolution_gives_every_row_on_the_cpu():
    benchmark = _load_benchmark()
    settings = benchmark.Settings(
        episodes=2, e2e_episodes=1, e2e_iterations=1, gaussians=300, views=1, resolution=16, repeats=1
    )
    reported = []
    rows = benchmark.run_configuration(_tiny_config(), 1.0, torch.device("cpu"), settings, reported.append)
    assert reported == rows
    runs = [row.run for row in rows]
    assert runs == [
        "build setup",
        "Chamfer evaluation",
        "bind Gaussians",
        "physics episode 1",
        "physics episode 2",
        "e2e episode 1",
    ]
    assert not any("Error" in row.note or "memory" in row.note for row in rows), [row.note for row in rows]
    for row in rows[3:]:
        assert row.seconds > 0 and math.isfinite(row.chamfer)
        assert set(row.phases) >= {"simulate", "loss", "backward+update"}
        assert sum(row.phases.values()) <= row.seconds * 1.001
    assert "render" in rows[-1].phases
    assert rows[1].particles == rows[0].particles > 0
    lines = benchmark.table_header().splitlines() + [benchmark.table_line(row) for row in rows]
    assert all(line.count("|") == len(benchmark.COLUMNS) + 1 for line in lines)


def test_a_failing_run_is_a_row_not_a_crash(monkeypatch):
    benchmark = _load_benchmark()

    def fail(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(benchmark, "optimize_adam", fail)
    settings = benchmark.Settings(episodes=3, e2e_episodes=0, gaussians=300, repeats=1)
    rows = benchmark.run_configuration(_tiny_config(), 1.0, torch.device("cpu"), settings)
    assert [row.run for row in rows][-1] == "physics episode 1"  # later episodes need its state
    assert rows[-1].note == "out of memory"


def test_refined_config_scales_dt_and_steps_with_dx():
    benchmark = _load_benchmark()
    config = _tiny_config()
    finer = benchmark.refined_config(config, 0.25)
    assert math.isclose(finer.simulation.grid_dx, config.simulation.grid_dx / 4)
    assert math.isclose(finer.simulation.dt, config.simulation.dt / 4)
    assert finer.optimization.num_timesteps == 4 * config.optimization.num_timesteps
