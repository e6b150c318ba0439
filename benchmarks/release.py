"""Benchmark: do morphs hold? Chamfer to the target after the morph, then after free motion.

    python benchmarks/release.py [--shapes demo,bunny,spot] [--meshes ../shared/meshes]
        [--variants config,elastic] [--episodes 5] [--free-seconds 2] [--device cpu]
        [--yield-stress T] [--hardening H] [--release-steps R] [--arrival-speed-weight W]
        [--learning-rate LR] [--elastic-energy-weight W]

Each shape is morphed with the demo config's physics and optimiser (src/physmorph/configs/
demo.yaml: von Mises plasticity and release steps); 'demo' is the demo's own ball → blob, 'bunny'
and 'spot' start from the reference's isosphere (meshes from --meshes; a shape whose mesh is
missing is reported and skipped). Variant 'config' keeps demo.yaml's settings, 'elastic' turns
plasticity, the release phase and the elastic-energy term off and restores the default
arrival-speed weight and learning rate (the morph as it was before issue 16). After the last episode the body
moves freely (no control) for --free-seconds; the table gives the Chamfer (grid units) at the end
of the morph and after the free motion, and its relative change.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from physmorph.config import MorphConfig, OptimizationConfig, PlasticityConfig, load_config
from physmorph.geometry.config import ShapeConfig
from physmorph.losses import chamfer_distance
from physmorph.mpm import simulate
from physmorph.optimize.episode import EpisodeProblem, optimize_adam
from physmorph.optimize.setup import build_setup

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "src" / "physmorph" / "configs" / "demo.yaml"
MESH_TARGETS = {"bunny": "bunny.obj", "spot": "spot.obj"}


def shape_config(shape: str, variant: str, meshes: Path, episodes: int) -> MorphConfig | None:
    """demo.yaml for `shape`, or None when its meshes are not in `meshes`."""
    config = load_config(DEMO_CONFIG)
    if shape != "demo":
        source, target = meshes / "isosphere.obj", meshes / MESH_TARGETS[shape]
        if not (source.is_file() and target.is_file()):
            return None
        config.source = ShapeConfig(mesh=str(source.resolve()))
        config.target = ShapeConfig(mesh=str(target.resolve()))
    if variant == "elastic":
        config.simulation.plasticity = PlasticityConfig()
        config.optimization.release_steps = 0
        config.optimization.arrival_speed_weight = OptimizationConfig().arrival_speed_weight
        config.optimization.learning_rate = OptimizationConfig().learning_rate
        config.optimization.elastic_energy_weight = OptimizationConfig().elastic_energy_weight
    config.optimization.num_animations = episodes
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="demo,bunny,spot", help="any of demo, bunny, spot")
    parser.add_argument("--meshes", type=Path, default=Path("../shared/meshes"), help="isosphere, bunny, spot .obj")
    parser.add_argument("--variants", default="config,elastic", help="config (demo.yaml) and/or elastic")
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--free-seconds", type=float, default=2.0)
    parser.add_argument("--yield-stress", type=float, default=None, help="overrides demo.yaml's (config variant)")
    parser.add_argument("--release-steps", type=int, default=None, help="overrides demo.yaml's (config variant)")
    parser.add_argument("--arrival-speed-weight", type=float, default=None, help="overrides demo.yaml's (config)")
    parser.add_argument("--hardening", type=float, default=None, help="overrides demo.yaml's (config variant)")
    parser.add_argument("--learning-rate", type=float, default=None, help="overrides demo.yaml's (config variant)")
    parser.add_argument(
        "--elastic-energy-weight", type=float, default=None, help="overrides demo.yaml's (config variant)"
    )
    parser.add_argument("--device", default="cpu")
    arguments = parser.parse_args()
    device = torch.device(arguments.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"device: {name}; torch {torch.__version__}; {arguments.episodes} episodes, "
        f"then {arguments.free_seconds:g} s free"
    )
    header = (
        "shape",
        "variant",
        "particles",
        "yield",
        "H",
        "release",
        "lr",
        "arrival w",
        "energy w",
        "morph s",
        "after morph",
        "after free",
        "change",
    )
    widths = (6, 8, 9, 7, 7, 7, 6, 9, 8, 8, 11, 10, 7)
    print(" | ".join(f"{h:>{w}}" for h, w in zip(header, widths)))
    for shape in arguments.shapes.split(","):
        for variant in arguments.variants.split(","):
            config = shape_config(shape, variant, arguments.meshes, arguments.episodes)
            if config is None:
                print(f"{shape:>6} | skipped: isosphere.obj or {MESH_TARGETS[shape]} not in {arguments.meshes}")
                break
            if variant == "config" and arguments.yield_stress is not None:
                config.simulation.plasticity.yield_stress = arguments.yield_stress
            if variant == "config" and arguments.release_steps is not None:
                config.optimization.release_steps = arguments.release_steps
            if variant == "config" and arguments.arrival_speed_weight is not None:
                config.optimization.arrival_speed_weight = arguments.arrival_speed_weight
            if variant == "config" and arguments.hardening is not None:
                config.simulation.plasticity.hardening = arguments.hardening
            if variant == "config" and arguments.learning_rate is not None:
                config.optimization.learning_rate = arguments.learning_rate
            if variant == "config" and arguments.elastic_energy_weight is not None:
                config.optimization.elastic_energy_weight = arguments.elastic_energy_weight
            settings = config.optimization
            setup = build_setup(config, device)
            state = setup.initial
            start = time.perf_counter()
            for episode in range(settings.num_animations):
                torch.manual_seed(settings.seed + episode)
                problem = EpisodeProblem.of(setup, state, settings)
                state = optimize_adam(problem, settings).trajectory.final.detach()
            seconds = time.perf_counter() - start
            free_steps = round(arguments.free_seconds / config.simulation.dt)
            with torch.no_grad():
                released = simulate(state, setup.model, free_steps, backend=settings.backend).final
            after_morph = chamfer_distance(state.positions, setup.target_points).item()
            after_free = chamfer_distance(released.positions, setup.target_points).item()
            plasticity = config.simulation.plasticity
            plastic = plasticity.model != "none"
            yield_text = f"{plasticity.yield_stress:g}" if plastic else "-"
            hardening_text = f"{plasticity.hardening:g}" if plastic else "-"
            row = (
                shape,
                variant,
                setup.initial.num_particles,
                yield_text,
                hardening_text,
                settings.release_steps,
                f"{settings.learning_rate:g}",
                f"{settings.arrival_speed_weight:g}",
                f"{settings.elastic_energy_weight:g}",
                f"{seconds:.1f}",
                f"{after_morph:.3f}",
                f"{after_free:.3f}",
                f"{100 * (after_free / after_morph - 1):+.1f}%",
            )
            print(" | ".join(f"{v!s:>{w}}" for v, w in zip(row, widths)), flush=True)


if __name__ == "__main__":
    main()
