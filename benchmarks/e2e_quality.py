"""Do image losses pay off? Physics-only vs e2e vs image-only morphs, scored against the real mesh.

Each variant is a full `run_morph` of the reference pair (physmorph's copy of the reference
config, meshes from --meshes), 3 episodes by default; its seconds per episode are the mean over
the episodes after the first (which also compiles kernels and records the CUDA graphs). Every
variant is scored the same way, after the run: Chamfer distance of the final particles to the
target's, and silhouette IoU of the final Gaussians against masks ray cast from the target mesh
in held-out cameras (higher orbit, azimuths between the training views'). The image-only variant
trains on ray-cast masks and depth of the training views saved as an image folder, with no mesh
and w_phys = 0: its 3D term is the mass field of the visual hull carved from those images
(w_hull, the default), the "image, no hull" variant drops it (the image terms alone).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

from physmorph.config import config_from_mapping
from physmorph.errors import PhysmorphError
from physmorph.io.run_folder import RunPaths
from physmorph.io.targets import save_image_targets
from physmorph.losses import chamfer_distance
from physmorph.optimize.e2e_run import MeshViews
from physmorph.optimize.run import load_state, run_morph
from physmorph.optimize.setup import build_setup, resolve_device
from physmorph.optimize.views import render_settings

ROOT = Path(__file__).resolve().parents[1]
MESHES = ROOT.parent / "shared" / "meshes"
# Terms that act on F alone (covariance size and shape) and not on where the body is.
SHAPE_BLIND = {"w_edge": 0.0, "w_cov_align": 0.0, "w_cov_reg": 0.0}


def base_mapping(args: argparse.Namespace, target: str, dx: float) -> dict:
    mapping = yaml.safe_load((ROOT / "configs" / "sphere_to_bunny.yaml").read_text())
    mapping.pop("input_mesh_path", None)
    mapping.pop("target_mesh_path", None)
    mapping["source"] = {"mesh": str(args.meshes / "isosphere.obj")}
    mapping["target"] = {"mesh": str(args.meshes / f"{target}.obj")}
    mapping.pop("output_dir", None)
    simulation = mapping.setdefault("simulation", {})
    simulation["grid_dx"] = dx
    simulation["dt"] = simulation.get("dt", 1 / 120) * dx
    optimization = mapping.setdefault("optimization", {})
    optimization.update(
        {
            "num_animations": args.episodes,
            "num_timesteps": round(optimization.get("num_timesteps", 10) / dx),
            "device": args.device,
        }
    )
    if args.control_spacing is not None:
        optimization["control_spacing"] = args.control_spacing
    if args.iterations is not None:
        optimization["iterations"] = args.iterations
    mapping["sampling"] = {"runtime_surface": {"M": args.gaussians}}
    if args.surface_deformation is not None:
        mapping["sampling"]["runtime_surface"]["deformation"] = args.surface_deformation
    set_values(mapping, args.surface, "sampling.runtime_surface")
    mapping["e2e"] = {
        "num_train_views": args.views,
        "num_heldout_views": args.views,
        "width": args.size,
        "height": args.size,
    }
    set_values(mapping, args.set)
    return mapping


def set_values(mapping: dict, items: list[str], prefix: str = "") -> None:
    """Set each `SECTION.KEY=VALUE` of `items` (under the dotted `prefix`) in `mapping`, the value read as YAML."""
    for item in items:
        path, _, value = item.partition("=")
        *sections, key = f"{prefix}.{path}".strip(".").split(".")
        section = mapping
        for name in sections:
            section = section.setdefault(name, {})
        section[key] = yaml.safe_load(value)


def variants(args: argparse.Namespace, target: str, dx: float, image_folder: Path) -> dict[str, dict]:
    """The runs compared, by name: physics only, the plain weighted sum of the config's terms,
    balanced gradients (one per --ratio; the first is the default's), balanced without the 2D
    silhouette Chamfer term, with each --silhouette-chamfer weight and with each --depth-weight,
    balanced with trained surfels, image-only with and without the visual-hull term and with
    each --depth-weight, and balanced with controls on each --e2e-control-spacing lattice."""
    physics = base_mapping(args, target, dx)
    plain = copy.deepcopy(physics) | {"mode": "e2e"}
    plain["optimization"].setdefault("loss", {})["render_gradient_ratio"] = None
    runs = {"physics only": physics, "e2e (sum)": plain}
    for index, ratio in enumerate(args.ratio):
        balanced = copy.deepcopy(physics) | {"mode": "e2e"}
        balanced["optimization"]["loss"] = {
            **SHAPE_BLIND,
            "alpha_levels": args.alpha_levels,
            "render_gradient_ratio": ratio,
        }
        runs["e2e (balanced)" if index == 0 else f"e2e (ratio {ratio:g})"] = balanced
    for weight in [0.0, *args.silhouette_chamfer]:
        variant = copy.deepcopy(runs["e2e (balanced)"])
        variant["optimization"]["loss"]["w_silhouette_chamfer"] = weight
        runs["e2e (no 2D Chamfer)" if weight == 0 else f"e2e (2D Chamfer {weight:g})"] = variant
    surfels = copy.deepcopy(runs["e2e (balanced)"])
    surfels["e2e"]["surface_parameters"] = True
    runs["e2e (surfels)"] = surfels
    image_only = copy.deepcopy(runs["e2e (balanced)"])
    image_only["optimization"]["loss"] = {**SHAPE_BLIND, "alpha_levels": args.alpha_levels, "w_phys": 0.0}
    image_only["e2e"]["target_images"] = str(image_folder)
    images_no_hull = copy.deepcopy(image_only)
    images_no_hull["optimization"]["loss"]["w_hull"] = 0.0
    runs |= {"image only": image_only, "image, no hull": images_no_hull}
    for spacing in args.e2e_control_spacing:
        variant = copy.deepcopy(runs["e2e (balanced)"])
        variant["optimization"]["control_spacing"] = spacing
        runs[f"e2e (lattice {spacing:g})"] = variant
    for weight in args.depth_weight:
        for name in ("e2e (balanced)", "image only"):
            variant = copy.deepcopy(runs[name])
            variant["optimization"]["loss"]["w_depth"] = weight
            runs[f"{name.removesuffix(' (balanced)')} (depth {weight:g})"] = variant
    for mapping in runs.values():  # --set wins over the variants' own loss sections too
        set_values(mapping, args.set)
    return runs


def score(mapping: dict, run: Path, device: torch.device, episodes: int) -> tuple[float, float, float]:
    """Chamfer, mean held-out and mean training-view mesh IoU of the run's final state.

    The training views' IoU is what run_morph records as summary.json's mesh_iou.train, which an
    image-only run (no mesh in its config) cannot record.
    """
    scoring = copy.deepcopy(mapping)
    scoring.pop("mode", None)
    scoring["e2e"].pop("target_images", None)
    config = config_from_mapping(scoring)
    setup = build_setup(config, device)
    final = load_state(RunPaths(run).state(episodes - 1), device, setup.initial.num_particles)
    views = MeshViews.build(config, setup)
    binding = setup.bind_source_surface(config.surface)
    iou = views.iou(final, binding, render_settings(config))
    chamfer = chamfer_distance(final.positions, setup.target_points).item()
    return chamfer, float(np.mean(iou["heldout"])), float(np.mean(iou["train"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--meshes", type=Path, default=MESHES)
    parser.add_argument("--targets", nargs="+", default=["bunny", "spot"])
    parser.add_argument("--dx", type=float, nargs="+", default=[1.0])
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--views", type=int, default=4, help="training views (and as many held out)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--gaussians", type=int, default=200_000)
    parser.add_argument(
        "--ratio", type=float, nargs="+", default=[0.5], help="balanced variants: |render step| / |physics step|"
    )
    parser.add_argument("--alpha-levels", type=int, default=4)
    parser.add_argument(
        "--depth-weight", type=float, nargs="*", default=[], help="extra balanced and image-only variants: w_depth"
    )
    parser.add_argument(
        "--silhouette-chamfer", type=float, nargs="*", default=[], help="extra balanced variants: w_silhouette_chamfer"
    )
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run")
    parser.add_argument(
        "--control-spacing", type=float, default=None, help="optimization.control_spacing, grid units (default: auto)"
    )
    parser.add_argument("--iterations", type=int, default=None, help="optimization.iterations for every variant")
    parser.add_argument(
        "--surface-deformation",
        choices=["measured", "state"],
        default=None,
        help="sampling.runtime_surface.deformation for every variant (training and scoring)",
    )
    parser.add_argument(
        "--surface",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="sampling.runtime_surface keys for every variant (training and scoring), e.g. k_F=128",
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="config keys for every variant, e.g. optimization.elastic_energy_weight=5000",
    )
    parser.add_argument(
        "--e2e-control-spacing",
        type=float,
        nargs="*",
        default=[],
        help="extra balanced variants: optimization.control_spacing for the e2e run alone",
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # the bunny mesh's small holes are reported at every fill
    device = resolve_device(args.device)
    print(
        f"e2e quality: {args.episodes} episodes, {args.views} + {args.views} views at {args.size}², "
        f"M = {args.gaussians}, device {device}"
    )
    header = ("pair", "dx", "variant", "Chamfer", "held-out 1−IoU", "train 1−IoU", "s/ep 2nd+")
    print("| {:<18} | {:>4} | {:<16} | {:>7} | {:>14} | {:>11} | {:>9} |".format(*header))
    print(f"|{'-' * 20}|{'-' * 6}|{'-' * 18}|{'-' * 9}|{'-' * 16}|{'-' * 13}|{'-' * 11}|")
    for target in args.targets:
        for dx in args.dx:
            with tempfile.TemporaryDirectory() as scratch:
                scratch = Path(scratch)
                physics = base_mapping(args, target, dx)
                setup_config = config_from_mapping(physics)
                views = MeshViews.build(setup_config, build_setup(setup_config, device))
                save_image_targets(scratch / "images", views.train)
                for name, mapping in variants(args, target, dx, scratch / "images").items():
                    if args.only and name not in args.only:
                        continue
                    run = scratch / name.replace(" ", "_")
                    try:
                        summary = run_morph(config_from_mapping(mapping), run, progress=False)
                    except PhysmorphError as error:
                        print(f"| isosphere → {target:<6} | {dx:>4} | {name:<16} | failed: {error}", flush=True)
                        continue
                    # the first episode also compiles kernels and records CUDA graphs
                    later = summary["episodes"][1:] or summary["episodes"]
                    seconds = float(np.mean([record["seconds"] for record in later]))
                    chamfer, iou, train = score(mapping, run, device, args.episodes)
                    print(
                        f"| isosphere → {target:<6} | {dx:>4} | {name:<16} | {chamfer:>7.3f} | {1 - iou:>14.4f} | "
                        f"{1 - train:>11.4f} | {seconds:>9.2f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
