"""A whole morph run: episodes of control optimisation, written atomically and resumable."""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh
from tqdm import tqdm

import physmorph
from physmorph.config import MorphConfig, config_to_mapping, refined
from physmorph.errors import InputError
from physmorph.io.figures import labelled_panels, particle_frames, write_comparison, write_loss_curves
from physmorph.io.ply import write_points_ply
from physmorph.io.run_folder import (
    STATE_FIELDS,
    STATE_FILE,
    TRAJECTORY_FILE,
    RunPaths,
    prepare_output_folder,
    read_arrays,
    read_summary,
    read_trajectory,
    write_json,
    write_trajectory,
)
from physmorph.io.video import write_video
from physmorph.losses import chamfer_distance
from physmorph.mpm import State
from physmorph.mpm.fused.warmup import start_search_warm_up, start_warm_up
from physmorph.optimize.e2e import E2EResult
from physmorph.optimize.e2e_run import E2EContext, MeshViews, check_e2e_config, run_e2e_episode
from physmorph.optimize.episode import EpisodeProblem, EpisodeResult, optimize_adam, optimize_reference
from physmorph.optimize.memory import check_fits, peak_bytes, render_bytes
from physmorph.optimize.setup import MorphSetup, build_setup, make_material, model_of, resolve_device
from physmorph.optimize.views import mesh_images, render_frames, render_settings, turntable
from physmorph.surface import SurfaceBinding

# keys that may change between a run and its --resume: more episodes, another output folder,
# another device (results then agree to round-off, not bit for bit)
RESUMABLE_CHANGES = ("optimization.num_animations", "optimization.device", "output_dir")


class DivergenceWarning(UserWarning):
    """An evaluation inside an episode diverged; the optimiser stepped back and went on."""


class WorseEpisodeWarning(UserWarning):
    """An episode ended farther from the target than it started; the run did not build on it."""


def save_episode(
    folder: Path,
    result: EpisodeResult | E2EResult,
    setup: MorphSetup,
    initial: State,
    title: str,
    extras: Callable[[Path], None] | None = None,
) -> None:
    """Write one episode's files into `folder`, atomically: a temporary folder renamed at the end."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    trajectory = result.trajectory
    final = trajectory.final

    def host(tensor: torch.Tensor) -> np.ndarray:
        return tensor.detach().cpu().numpy()

    arrays = {
        "x": host(trajectory.positions),
        "v": host(trajectory.velocities),
        "F": host(trajectory.deformation_gradients),
        "plastic_strain": host(trajectory.plastic_strain),
        "controls": host(result.controls),
        "dt": setup.model.dt,
    }
    write_trajectory(partial / TRAJECTORY_FILE, arrays)
    # the exact final state (own dtype) lets --resume continue bit for bit
    np.savez(partial / STATE_FILE, **{name: host(getattr(final, name)) for name in STATE_FIELDS})
    write_points_ply(partial / "final.ply", final.positions)
    write_comparison(partial / "comparison.png", initial.positions, final.positions, setup.target_points, title)
    if extras is not None:
        extras(partial)
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)


def load_state(path: Path, device: torch.device, num_particles: int) -> State:
    """The final state an episode saved, checked to be finite and of `num_particles` particles."""
    # runs written before plasticity existed have no plastic strain: they never flowed
    data = read_arrays(path, STATE_FIELDS, optional=("plastic_strain",))
    for name, array in data.items():
        if array.shape[:1] != (num_particles,) or not np.isfinite(array).all():
            raise InputError(
                f"'{path}' holds {name} of shape {array.shape} with non-finite values or not "
                f"{num_particles} particles; it is damaged: delete its episode folder and summary record"
            )
    return State(*(torch.from_numpy(data[name]).to(device) for name in STATE_FIELDS if name in data))


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config mappings (as JSON stores them)."""
    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))
    keys: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        where = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += config_differences(a, b, f"{where}.")
        elif a != b:
            keys.append(where)
    return keys


def run_morph(config: MorphConfig, out_dir: str | Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run every episode of `config`, writing under `out_dir`; returns the summary.

    With `resume`, episodes listed in an existing summary.json are kept and the run continues from
    the last one's final state (same result as an uninterrupted run).
    """
    paths = RunPaths(Path(out_dir))
    config = refined(config)  # a no-op for loaded configs: loading refines them
    settings = config.optimization
    if config.mode == "e2e":
        check_e2e_config(config)
    device = resolve_device(settings.device)
    dtype = torch.float64 if settings.dtype == "float64" else torch.float32
    prepare_output_folder(paths.root)
    # morph.mp4 keeps every frame in memory until it is encoded
    video = config.e2e.video_size
    frames = settings.num_animations * settings.num_timesteps + 1
    check_fits(
        render_bytes((2 * video, video), 1, frames), "the morph video", torch.device("cpu"), "lower e2e.video_size"
    )
    summary = None
    if resume and paths.summary.exists():
        summary = read_summary(paths)
        changed = [
            key
            for key in config_differences(summary["config"], config_to_mapping(config))
            if key not in RESUMABLE_CHANGES
        ]
        if changed:
            raise InputError(
                f"cannot resume '{paths.root}' with a different config: {', '.join(changed)} differ from the "
                "run's; resume with its config or use another --out folder"
            )
    # the GPU kernels compile in threads while the bodies are filled and the views set up
    warm_ups = []
    if settings.backend != "torch" and device.type == "cuda":
        no_particles = torch.zeros(0, dtype=dtype, device=device)
        material = make_material(config.simulation, dtype, device)
        model = model_of(config.simulation, material, no_particles, no_particles)
        # the search kernels wait for the fill, which sizes the Chamfer searches and so picks their kernels
        warm_ups.append(start_warm_up(model, dtype, device, searches=[]))
    setup = build_setup(config, device, dtype)
    if device.type == "cuda":
        # e2e's 2D silhouette searches vary in size: every search kernel
        searches = None if config.mode == "e2e" else setup.chamfer_searches()
        warm_ups.append(start_search_warm_up(setup.initial.positions, searches))
    warm_ups = [started for started in warm_ups if started is not None]
    if summary is None:
        summary = {
            "physmorph_version": physmorph.__version__,
            "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "torch_version": torch.__version__,
            "num_particles": setup.initial.num_particles,
            "num_target_particles": None if setup.target_points is None else int(setup.target_points.shape[0]),
            "mode": config.mode,
            "config_folder": str(config.base_dir),
            "config": config_to_mapping(config),
            "episodes": [],
        }
        state = setup.initial
    else:
        done = summary["episodes"]
        if summary.get("num_particles") != setup.initial.num_particles:
            raise InputError(
                f"cannot resume '{paths.root}': it holds a run with {summary.get('num_particles')} particles, "
                f"this config gives {setup.initial.num_particles}; use another --out folder"
            )
        kept = [record["episode"] for record in done if record.get("kept", True)]
        state = load_state(paths.state(kept[-1]), device, setup.initial.num_particles) if kept else setup.initial
        summary["config"] = config_to_mapping(config)
    optimizer = optimize_adam if settings.optimizer == "adam" else optimize_reference
    mesh_views = MeshViews.build(config, setup)
    context = E2EContext.build(config, setup, mesh_views) if config.mode == "e2e" else None
    # one surface, bound to the undeformed source, for the metric, the video and e2e training
    if context is not None:
        binding = context.binding
    else:
        binding = setup.bind_source_surface(config.surface)
    if warm_ups:
        if progress:
            # otherwise the first progress step sits silent for as long as compilation takes
            count = sum(len(started.names) for started in warm_ups)
            tqdm.write(f"GPU kernels: compiling {count} in parallel (Triton caches them for later runs)")
        for started in warm_ups:
            started.wait()
    learning_rate = next_learning_rate(summary["episodes"], settings.learning_rate)
    for episode in range(len(summary["episodes"]), settings.num_animations):
        torch.manual_seed(settings.seed + episode)
        episode_settings = replace(settings, learning_rate=learning_rate)
        problem = EpisodeProblem.of(setup, state, episode_settings)
        bar = tqdm(desc=f"episode {episode + 1}/{settings.num_animations}", unit="it", disable=not progress, leave=True)

        def report(value: float, bar: tqdm = bar) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4g}")

        start = time.perf_counter()
        extras, additions = None, {}
        try:
            if context is None:
                result = optimizer(problem, episode_settings, report)
            else:
                episode_config = replace(config, optimization=episode_settings)
                result, additions, extras = run_e2e_episode(problem, context, episode_config, report)
        finally:
            bar.close()  # ends the bar's line, so that an error message starts on its own
        seconds = time.perf_counter() - start
        record = {"episode": episode, "optimizer": "e2e" if context else settings.optimizer}
        record.update(episode_metrics(problem, result, setup))
        # an episode that ends farther from the target than it started is not built on (the
        # morph never gets worse): the next one starts where it did, with half the step size
        first, last = problem.distance(problem.initial), problem.distance(result.trajectory.final)
        record["kept"] = ends_no_farther(first, last)
        record["learning_rate"] = learning_rate
        before, after = record["chamfer_before"], record["chamfer_after"]
        record["chamfer_kept"] = after if record["kept"] else before
        history = [value if math.isfinite(value) else None for value in result.losses]
        record.update({"seconds": seconds, "loss_history": history, **additions})
        record["peak_memory_bytes"] = peak_bytes(device)  # so far in this process (GPU: PyTorch's allocations)
        if mesh_views is not None:
            record["mesh_iou"] = mesh_views.iou(result.trajectory.final, binding, render_settings(config))
        record["divergences"] = [divergence.as_record() for divergence in result.divergences]
        for divergence in result.divergences:
            warnings.warn(
                f"episode {episode}, iteration {divergence.iteration}: {divergence.reason}; the optimiser stepped "
                "back to its best controls and halved the learning rate (lower optimization.learning_rate "
                "if this repeats)",
                DivergenceWarning,
                stacklevel=2,
            )
        title = f"episode {episode}" + (f": Chamfer {before:.3f} → {after:.3f}" if before is not None else "")
        if not record["kept"]:
            title += " (worse: not kept)"
        save_episode(paths.episode(episode), result, setup, setup.initial, title, extras)
        summary["episodes"].append(record)
        write_json(paths.summary, summary)
        if record["kept"]:
            state = result.trajectory.final.detach()
        else:
            warnings.warn(
                f"episode {episode} ended farther from the target ({first:.4g} → {last:.4g}, "
                f"{'Chamfer' if problem.chamfer_weight else 'mass loss'}); the next episode starts from its first "
                "state with half the learning rate",
                WorseEpisodeWarning,
                stacklevel=2,
            )
        learning_rate = next_learning_rate(summary["episodes"], settings.learning_rate)
    write_run_media(paths, summary, setup, config, binding)
    return summary


def ends_no_farther(start: float | None, end: float | None) -> bool:
    """Whether an episode whose first and last states lie `start` and `end` from the target
    (EpisodeProblem.distance; None: an image-only target, nothing to compare) may be built on."""
    return start is None or end <= start


def next_learning_rate(records: list[dict[str, Any]], first: float) -> float:
    """The learning rate of the episode after `records`: `first`, halved after each episode that
    was not kept (records of runs before the guard have no 'kept': they were)."""
    if not records:
        return first
    last = records[-1]
    rate = last.get("learning_rate", first)
    return rate if last.get("kept", True) else 0.5 * rate


@torch.no_grad()
def episode_metrics(problem: EpisodeProblem, result: EpisodeResult | E2EResult, setup: MorphSetup) -> dict[str, Any]:
    """Mass loss and Chamfer distance before (no control) and after (the end of the release, and
    of the driven steps), det F and the plastic strain of the last state."""
    final = result.trajectory.final
    jacobians = torch.linalg.det(final.deformation_gradients)
    metrics: dict[str, Any] = {
        "J_min": jacobians.min().item(),
        "J_mean": jacobians.mean().item(),
        "plastic_strain_mean": final.plastic_strain.mean().item(),
        "plastic_strain_max": final.plastic_strain.max().item(),
    }
    before = after = None
    if setup.target_grid_mass is not None:
        before = problem.mass_loss(problem.rollout(problem.zero_controls())).item()
        after = problem.mass_loss(result.trajectory).item()
    if setup.target_points is None:
        # image-only: no target shape; the mass loss, if any, is against the carved visual hull
        return metrics | {
            "mass_loss_before": None,
            "mass_loss_after": None,
            "hull_mass_loss_before": before,
            "hull_mass_loss_after": after,
            "chamfer_before": None,
            "chamfer_after": None,
            "chamfer_after_driven": None,
        }
    return metrics | {
        "mass_loss_before": before,
        "mass_loss_after": after,
        "chamfer_before": chamfer_distance(problem.initial.positions, setup.target_points).item(),
        "chamfer_after": chamfer_distance(final.positions, setup.target_points).item(),
        "chamfer_after_driven": chamfer_distance(
            result.trajectory.positions[problem.num_steps], setup.target_points
        ).item(),
    }


def write_run_media(
    paths: RunPaths, summary: dict[str, Any], setup: MorphSetup, config: MorphConfig, binding: SurfaceBinding
) -> None:
    """loss.png and the animation across all episodes (.mp4, or .gif without ffmpeg): morph.mp4,
    the shaded Gaussians from a camera circling the morph beside the target mesh from the same
    camera (surfels of `binding`, bound to the undeformed source), and for physics runs also
    particles.mp4, the particles beside the target's."""
    write_loss_curves(paths.root / "loss.png", summary["episodes"])
    # the animation follows the kept episodes: each starts where the previous kept one ended
    episodes = [record for record in summary["episodes"] if record.get("kept", True)] or summary["episodes"]
    trajectories = [read_trajectory(paths.trajectory(record["episode"])) for record in episodes]
    captions = []
    for record, trajectory in zip(episodes, trajectories):
        first = 0 if not captions else 1  # each episode starts where the previous one ended
        captions += [(record["episode"], step) for step in range(first, len(trajectory["x"]))]
    images = gaussian_video_frames(trajectories, captions, config, binding, setup.initial.positions, setup.target_mesh)
    write_video(paths.root / "morph.mp4", images, fps=8)
    if config.mode != "e2e" and setup.target_points is not None:
        frames = []
        for trajectory in trajectories:
            frames += list(trajectory["x"][0 if not frames else 1 :])
        labels = [f"episode {episode}, step {step}{phase(step, config)}" for episode, step in captions]
        write_video(paths.root / "particles.mp4", particle_frames(frames, setup.target_points, labels), fps=8)


def gaussian_video_frames(
    trajectories: list[Any],
    captions: list[tuple[int, int]],
    config: MorphConfig,
    binding: SurfaceBinding,
    like: torch.Tensor,
    target_mesh: trimesh.Trimesh | None,
) -> list[np.ndarray]:
    """Labelled RGB frames of every step (`captions`: (episode, step) per frame, the first state
    of each later episode skipped), rendered from a camera circling the morph once, beside the
    ray-cast target mesh."""
    positions = [torch.from_numpy(t["x"]).to(like) for t in trajectories]
    steps = len(captions)
    framed = [torch.cat(positions).reshape(-1, 3)]
    if target_mesh is not None:
        framed.append(torch.as_tensor(target_mesh.vertices).to(like))
    cameras = turntable(config.e2e, torch.cat(framed), max(steps, 1), config.e2e.video_size)
    settings, renders = render_settings(config), []
    for index, (trajectory, x) in enumerate(zip(trajectories, positions)):
        F = torch.from_numpy(trajectory["F"]).to(like)
        first = 0 if index == 0 else 1
        start = len(renders)
        frames, _ = render_frames(
            x[first:], F[first:], config.surface, cameras[start : start + len(x) - first], settings, binding
        )
        renders += [frame.rgb[0].clamp(0, 1).cpu().float().numpy() for frame in frames]
    truth = None
    if target_mesh is not None:
        truth = mesh_images(target_mesh, cameras, config.render).rgb.numpy()
    images = []
    for index, ((episode, step), render) in enumerate(zip(captions, renders)):
        row, labels = [render], ["physmorph (Gaussians)"]
        if truth is not None:
            row.append(truth[index])
            labels.append("target mesh")
        # numbered as the episode folders, the figures and summary.json are (ep000 is episode 0)
        title = f"episode {episode}, step {step}{phase(step, config)}"
        images.append(labelled_panels([row], [labels], title))
    return images


def phase(step: int, config: MorphConfig) -> str:
    """', released' for a video frame in an episode's release phase, else ''."""
    return ", released" if step > config.optimization.num_timesteps else ""
