"""How much of the held-out silhouette error is the render: one physics-only morph, scored under several bindings.

The morph is e2e_quality's physics-only run of isosphere → TARGET at each --dx (3 episodes by
default). Its final state is then rendered from the held-out cameras with the Gaussians bound in
each way listed below and scored against the mesh's ray-cast masks (1 − IoU, as e2e_quality
scores). A PNG per (target, dx) under --out shows two held-out views of each binding beside the
mesh's masks, so what the numbers mean can be seen.

    python benchmarks/render_binding.py --device cuda --meshes .gpubuild/meshes --dx 1 0.5 --targets bunny spot
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from e2e_quality import MESHES, base_mapping, set_values
from physmorph.config import config_from_mapping
from physmorph.io.figures import labelled_panels
from physmorph.io.run_folder import RunPaths
from physmorph.losses import chamfer_distance
from physmorph.losses.render_losses import silhouette_iou
from physmorph.optimize.e2e import render_state
from physmorph.optimize.e2e_run import MeshViews
from physmorph.optimize.run import load_state, run_morph
from physmorph.optimize.setup import build_setup, resolve_device
from physmorph.optimize.views import render_settings

# name: sampling.runtime_surface keys that differ from the defaults
BINDINGS = {
    "default": {},  # state F, k_F 32
    "state F, k_F 8": {"k_F": 8},
    "state F, k_F 128": {"k_F": 128},
    "state F, h_mul 1.0": {"h_mul": 1.0},
    "measured F, 12": {"deformation": "measured"},
    "measured F, 27": {"deformation": "measured", "deformation_neighbors": 27},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--meshes", type=Path, default=MESHES)
    parser.add_argument("--targets", nargs="+", default=["bunny"])
    parser.add_argument("--dx", type=float, nargs="+", default=[1.0])
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--gaussians", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=Path("outputs/render_binding"))
    parser.add_argument("--bindings", nargs="*", default=list(BINDINGS), help="names of the bindings scored")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="config values for the morph, e.g. optimization.chamfer_weight=500",
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # the bunny mesh's small holes are reported at every fill
    device = resolve_device(args.device)
    morph_args = argparse.Namespace(
        meshes=args.meshes,
        episodes=args.episodes,
        device=args.device,
        control_spacing=None,
        iterations=None,
        gaussians=args.gaussians,
        surface_deformation=None,
        surface=[],
        views=4,
        size=args.size,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"physics-only morphs, {args.episodes} episodes; held-out views at {args.size}², M = {args.gaussians}")
    print("| pair | dx | Chamfer | binding | held-out 1 − IoU |")
    print("|---|---|---|---|---|")
    for target in args.targets:
        for dx in args.dx:
            mapping = base_mapping(morph_args, target, dx)
            set_values(mapping, args.set)
            config = config_from_mapping(mapping)
            # the bodies, the views and the final state do not depend on the binding: made once
            setup = build_setup(config, device)
            views = MeshViews.build(config, setup)
            settings = render_settings(config)
            truth = views.heldout.alpha
            with tempfile.TemporaryDirectory() as scratch:
                run_morph(config, scratch, progress=False)
                final = load_state(
                    RunPaths(Path(scratch)).state(args.episodes - 1), device, setup.initial.num_particles
                )
                chamfer = chamfer_distance(final.positions, setup.target_points).item()
                rows, labels = [], []
                for name in args.bindings:
                    variant = copy.deepcopy(mapping)
                    variant["sampling"]["runtime_surface"].update(BINDINGS[name])
                    binding = setup.bind_source_surface(config_from_mapping(variant).surface)
                    with torch.no_grad():
                        _, images = render_state(
                            final.positions, final.deformation_gradients, binding, views.heldout.cameras, settings
                        )
                    error = 1 - float(silhouette_iou(images.alpha, truth.to(images.alpha)).mean())
                    print(f"| isosphere → {target} | {dx:g} | {chamfer:.3f} | {name} | {error:.4f} |", flush=True)
                    alpha = images.alpha[:2].clamp(0, 1).cpu().numpy()
                    rows.append([np.repeat(a[..., None], 3, axis=2) for a in alpha])
                    labels.append([f"{name}: {error:.4f}", ""])
                mask = truth[:2].cpu().numpy()
                rows.append([np.repeat(m[..., None], 3, axis=2) for m in mask])
                labels.append(["the mesh, ray cast", ""])
                panel = labelled_panels(rows, labels, f"isosphere → {target}, dx {dx:g}, physics only")
                iio.imwrite(args.out / f"{target}_dx{dx:g}.png", panel)


if __name__ == "__main__":
    main()
