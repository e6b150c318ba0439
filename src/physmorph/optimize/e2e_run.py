"""One end-to-end episode inside a morph run: targets, training, per-view metrics and image files."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from physmorph.config import MorphConfig
from physmorph.errors import ConfigError
from physmorph.io.images import write_png
from physmorph.io.targets import TargetImages
from physmorph.losses.render_losses import psnr, silhouette_iou
from physmorph.mpm import State
from physmorph.optimize.e2e import E2EResult, RenderSettings, optimize_e2e, render_state, target_images_from_particles
from physmorph.optimize.episode import EpisodeProblem, Progress
from physmorph.optimize.setup import MorphSetup
from physmorph.optimize.views import (
    mesh_images,
    render_settings,
    side_by_side,
    split_targets,
    train_and_heldout_cameras,
    write_gaussians,
    write_view_images,
)
from physmorph.render import concatenate
from physmorph.surface import SurfaceBinding


@dataclass
class MeshViews:
    """Ray-cast images of the real target mesh from the e2e section's training and held-out
    orbit cameras: the ground truth that image targets and the visual metric are measured on."""

    train: TargetImages
    heldout: TargetImages | None

    @staticmethod
    def build(config: MorphConfig, setup: MorphSetup) -> MeshViews | None:
        """None for an image-only target (there is no mesh to cast rays at)."""
        if setup.target_mesh is None:
            return None
        points = setup.target_points
        train_cameras, heldout_cameras = train_and_heldout_cameras(config.e2e, points)
        cameras = train_cameras if heldout_cameras is None else concatenate([train_cameras, heldout_cameras])
        truth = mesh_images(setup.target_mesh, cameras, config.render)
        if not bool((truth.alpha > 0.5).flatten(1).any(dim=1).all()):
            raise ConfigError(
                "a camera of the e2e section sees nothing of the target mesh; check e2e.orbit_radius, "
                "e2e.fov_deg and the elevations"
            )
        names = [f"train{i:02d}" for i in range(len(train_cameras))]
        names += [f"heldout{i:02d}" for i in range(len(cameras) - len(train_cameras))]
        targets = TargetImages(
            cameras.to(points.device, points.dtype),
            truth.alpha.to(points),
            truth.depth.to(points),
            truth.rgb.to(points),
            names,
        )
        train, heldout = split_targets(targets, len(train_cameras))
        return MeshViews(train, heldout)

    def iou(self, state: State, binding: SurfaceBinding, settings: RenderSettings) -> dict[str, list[float]]:
        """Silhouette IoU per view of the Gaussians of `state` against the mesh's masks."""
        result = {}
        for split, targets in (("train", self.train), ("heldout", self.heldout)):
            if targets is None:
                continue
            with torch.no_grad():
                _, images = render_state(
                    state.positions, state.deformation_gradients, binding, targets.cameras, settings
                )
            result[split] = silhouette_iou(images.alpha, targets.alpha.to(images.alpha)).tolist()
        return result


@dataclass
class E2EContext:
    """Targets, render settings and the surface shared by every episode of an end-to-end run.

    The surface is bound once, to the undeformed source, and reused by every episode: the same
    Gaussians follow the same material points through the whole morph (binding to a deformed,
    irregular particle cloud later detects the surface poorly).
    """

    train: TargetImages
    heldout: TargetImages | None
    settings: RenderSettings
    binding: SurfaceBinding

    @staticmethod
    def build(config: MorphConfig, setup: MorphSetup, mesh_views: MeshViews | None = None) -> E2EContext:
        """Orbit-camera targets ray cast from the target mesh (`mesh_views`, e2e.targets: mesh) or
        rendered from the target particles (e2e.targets: particles), or an image folder."""
        settings = render_settings(config)
        binding = setup.bind_source_surface(config.surface)
        if config.e2e.target_images is None and config.e2e.targets == "mesh":
            views = mesh_views or MeshViews.build(config, setup)
            return E2EContext(views.train, views.heldout, settings, binding)
        if setup.target_images is not None:
            return E2EContext(setup.target_images, None, settings, binding)
        train_cameras, heldout_cameras = train_and_heldout_cameras(config.e2e, setup.target_points)
        cameras = train_cameras if heldout_cameras is None else concatenate([train_cameras, heldout_cameras])
        targets = target_images_from_particles(
            setup.target_points, cameras, config.surface, settings, mesh=setup.target_mesh
        )
        names = [f"train{i:02d}" for i in range(len(train_cameras))]
        names += [f"heldout{i:02d}" for i in range(len(cameras) - len(train_cameras))]
        targets.names = names
        train, heldout = split_targets(targets, len(train_cameras))
        return E2EContext(train, heldout, settings, binding)


def check_e2e_config(config: MorphConfig) -> None:
    """Image-only targets have no target shape, so the physics term must be off (their 3D term
    is the visual hull's, weighted by w_hull)."""
    if config.e2e.target_images is not None and config.loss.w_phys > 0:
        raise ConfigError(
            "e2e.target_images gives an image-only target, which has no target shape for the physics term; "
            "set optimization.loss.w_phys: 0 (the visual hull carved from the images takes its place, "
            "weighted by optimization.loss.w_hull), or give a target shape and drop e2e.target_images"
        )


def run_e2e_episode(
    problem: EpisodeProblem, context: E2EContext, config: MorphConfig, progress: Progress | None
) -> tuple[E2EResult, dict[str, Any], Any]:
    """Train one episode end to end; returns the result, the summary additions and a writer
    that puts renders, the target/prediction comparison and the Gaussians into a folder."""
    binding = context.binding
    result = optimize_e2e(
        problem,
        binding,
        context.train,
        config.loss,
        config.optimization,
        supervised_steps=config.e2e.supervised_steps,
        render_settings=context.settings,
        material=config.e2e.material,
        surface_parameters=config.e2e.surface_parameters,
        progress=progress,
    )
    final = result.trajectory.final
    settings = context.settings
    if result.surface is not None:  # the episode's renders show the learned surfels
        settings = dataclasses.replace(
            settings, surface_scale=result.surface["scale"], surface_flatness=result.surface["flatness"]
        )
    views, evaluations = [], []
    for split, targets in (("train", context.train), ("heldout", context.heldout)):
        if targets is None:
            continue
        with torch.no_grad():
            gaussians, images = render_state(
                final.positions, final.deformation_gradients, binding, targets.cameras, settings
            )
        iou = silhouette_iou(images.alpha, targets.alpha.to(images.alpha)).tolist()
        colour = psnr(images.rgb, targets.rgb.to(images.rgb)).tolist() if targets.rgb is not None else None
        for index, name in enumerate(targets.names):
            views.append({"name": name, "split": split, "iou": iou[index], "psnr": colour[index] if colour else None})
        evaluations.append((targets, images))
    best = min(range(len(result.losses)), key=lambda i: result.losses[i])
    record = {
        "views": views,
        "render_terms": result.terms[best] if result.terms else {},
        "objective_history": [v if v == v and abs(v) != float("inf") else None for v in result.losses],
    }
    if result.surface is not None:
        record["surface"] = result.surface
    if result.material is not None and config.e2e.material != "none":
        record["material"] = {"lam": float(result.material.lam), "mu": float(result.material.mu)}

    def write(folder: Path) -> None:
        train_targets, train_images = evaluations[0]
        write_view_images(folder / "renders", train_images, train_targets.names)
        panels = [side_by_side(targets, images) for targets, images in evaluations]
        for (targets, _), panel in zip(evaluations, panels):
            write_png(folder / f"target_vs_prediction_{'train' if targets is context.train else 'heldout'}.png", panel)
        write_gaussians(folder, gaussians)

    return result, record, write
