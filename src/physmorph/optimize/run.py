"""A whole morph run: episodes of control optimisation, written atomically and resumable."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import physmorph
from physmorph.config import MorphConfig, config_to_mapping
from physmorph.errors import InputError
from physmorph.io.atomic import atomic_path
from physmorph.io.figures import particle_frames, write_comparison, write_loss_curves
from physmorph.io.ply import write_points_ply
from physmorph.io.video import write_video
from physmorph.losses import chamfer_distance
from physmorph.mpm import State
from physmorph.optimize.episode import EpisodeProblem, EpisodeResult, optimize_adam, optimize_reference
from physmorph.optimize.setup import MorphSetup, build_setup, resolve_device

SUMMARY = "summary.json"


@dataclass
class RunPaths:
    """Where a run's files go."""

    root: Path

    def episode(self, index: int) -> Path:
        return self.root / f"ep{index:03d}"

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY


def write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2))


def load_summary(paths: RunPaths) -> dict[str, Any] | None:
    if not paths.summary.is_file():
        return None
    try:
        return json.loads(paths.summary.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"'{paths.summary}' is not valid JSON ({error}); delete it to start the run again") from None


def save_episode(
    folder: Path,
    result: EpisodeResult,
    setup: MorphSetup,
    initial: State,
    title: str,
) -> None:
    """Write one episode's files into `folder`, atomically: a temporary folder renamed at the end."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    trajectory = result.trajectory
    final = trajectory.final
    np.savez_compressed(
        partial / "trajectory.npz",
        x=trajectory.positions.detach().cpu().float().numpy(),
        F=trajectory.deformation_gradients.detach().cpu().float().numpy(),
        controls=result.controls.detach().cpu().float().numpy(),
    )
    # the exact final state (own dtype) lets --resume continue bit for bit
    np.savez(
        partial / "state.npz",
        **{
            name: getattr(final, name).detach().cpu().numpy()
            for name in ("positions", "velocities", "deformation_gradients", "affine_velocities")
        },
    )
    write_points_ply(partial / "final.ply", final.positions)
    write_comparison(partial / "comparison.png", initial.positions, final.positions, setup.target_points, title)
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)


def load_state(folder: Path, device: torch.device) -> State:
    data = np.load(folder / "state.npz")
    return State(
        *(
            torch.from_numpy(data[name]).to(device)
            for name in ("positions", "velocities", "deformation_gradients", "affine_velocities")
        )
    )


def run_morph(config: MorphConfig, out_dir: str | Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run every episode of `config`, writing under `out_dir`; returns the summary.

    With `resume`, episodes listed in an existing summary.json are kept and the run continues from
    the last one's final state (same result as an uninterrupted run).
    """
    paths = RunPaths(Path(out_dir))
    settings = config.optimization
    device = resolve_device(settings.device)
    dtype = torch.float64 if settings.dtype == "float64" else torch.float32
    setup = build_setup(config, device, dtype)
    summary = load_summary(paths) if resume else None
    if summary is None:
        paths.root.mkdir(parents=True, exist_ok=True)
        summary = {
            "physmorph_version": physmorph.__version__,
            "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "torch_version": torch.__version__,
            "num_particles": setup.initial.num_particles,
            "num_target_particles": int(setup.target_points.shape[0]),
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
        state = load_state(paths.episode(done[-1]["episode"]), device) if done else setup.initial
    optimizer = optimize_adam if settings.optimizer == "adam" else optimize_reference
    for episode in range(len(summary["episodes"]), settings.num_animations):
        torch.manual_seed(settings.seed + episode)
        problem = EpisodeProblem(
            setup.model,
            state,
            setup.target_grid_mass,
            settings.num_timesteps,
            settings.control_stride,
            settings.checkpoint_steps,
            settings.backend,
        )
        bar = tqdm(desc=f"episode {episode + 1}/{settings.num_animations}", unit="it", disable=not progress, leave=True)

        def report(value: float, bar: tqdm = bar) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4g}")

        start = time.perf_counter()
        result = optimizer(problem, settings, report)
        seconds = time.perf_counter() - start
        bar.close()
        final = result.trajectory.final
        with torch.no_grad():
            jacobians = torch.linalg.det(final.deformation_gradients)
            record = {
                "episode": episode,
                "optimizer": settings.optimizer,
                "mass_loss_before": result.loss_before,
                "mass_loss_after": result.loss_after,
                "chamfer_before": chamfer_distance(state.positions, setup.target_points).item(),
                "chamfer_after": chamfer_distance(final.positions, setup.target_points).item(),
                "J_min": jacobians.min().item(),
                "J_mean": jacobians.mean().item(),
                "seconds": seconds,
                "loss_history": result.losses,
            }
        title = f"episode {episode}: Chamfer {record['chamfer_before']:.3f} → {record['chamfer_after']:.3f}"
        save_episode(paths.episode(episode), result, setup, setup.initial, title)
        summary["episodes"].append(record)
        write_json(paths.summary, summary)
        state = final.detach()
    write_run_media(paths, summary, setup)
    return summary


def write_run_media(paths: RunPaths, summary: dict[str, Any], setup: MorphSetup) -> None:
    """loss.png and the particle animation across all episodes (morph.mp4, or .gif without ffmpeg)."""
    episodes = summary["episodes"]
    write_loss_curves(paths.root / "loss.png", episodes)
    frames, captions = [], []
    for record in episodes:
        positions = np.load(paths.episode(record["episode"]) / "trajectory.npz")["x"]
        first = 0 if not frames else 1  # each episode starts where the previous one ended
        for step in range(first, len(positions)):
            frames.append(positions[step])
            captions.append(f"episode {record['episode']}, step {step}")
    images = particle_frames(frames, setup.target_points, captions)
    write_video(paths.root / "morph.mp4", images, fps=8)
