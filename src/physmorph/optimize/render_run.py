"""Render a finished morph run's trajectories with the Gaussian surface (the `physmorph render` command)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from physmorph.config import config_from_mapping
from physmorph.errors import InputError
from physmorph.io.ply import write_gaussians_ply
from physmorph.io.video import write_video
from physmorph.optimize.views import orbit_views, render_frames, render_settings, write_view_images
from physmorph.surface import bind_surface, synthesize_surface


def parse_size(text: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' → (width, height)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--size '{text}' is not WIDTHxHEIGHT, e.g. 512x512") from None
    if width < 8 or height < 8:
        raise InputError(f"--size '{text}' is too small; use at least 8x8 pixels")
    return width, height


def render_run(
    run_dir: str | Path, episode: int | None, views: int, size: tuple[int, int], ply: bool = False
) -> list[Path]:
    """Write `epNNN/frames/stepSSS_viewVV_{rgb,alpha,depth,normal}.png` for the chosen episodes and
    `render.mp4` (view 0 of every step, all chosen episodes) into `run_dir`; with `ply`, also
    `epNNN/frames/stepSSS.ply`, the Gaussians of every step as a standard 3DGS PLY."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise InputError(f"'{run_dir}' holds no summary.json; pass the folder of a finished `physmorph morph` run")
    summary = json.loads(summary_path.read_text())
    if views < 1:
        raise InputError(f"--views must be at least 1, got {views}")
    config = config_from_mapping(summary["config"], base_dir=Path(summary.get("config_folder", run_dir)))
    done = [record["episode"] for record in summary["episodes"]]
    chosen = done if episode is None else [episode]
    if episode is not None and episode not in done:
        raise InputError(f"episode {episode} is not finished in '{run_dir}'; finished episodes: {done}")
    trajectories = {e: np.load(run_dir / f"ep{e:03d}" / "trajectory.npz") for e in chosen}
    every = torch.cat([torch.from_numpy(t["x"]).reshape(-1, 3) for t in trajectories.values()])
    cameras = orbit_views(config.e2e, every, views, config.e2e.elevation_deg, size=size)
    settings = render_settings(config)
    # one surface for the whole run, bound to the undeformed source (episode 0's first state)
    start = np.load(run_dir / "ep000" / "trajectory.npz")
    binding = bind_surface(torch.from_numpy(start["x"][0]), torch.from_numpy(start["F"][0]), config.surface)
    written, video = [], []
    for e in tqdm(chosen, desc="render", unit="episode"):
        x = torch.from_numpy(trajectories[e]["x"])
        F = torch.from_numpy(trajectories[e]["F"])
        folder = run_dir / f"ep{e:03d}" / "frames"
        for v in range(views):
            frames, binding = render_frames(x, F, config.surface, cameras[v : v + 1], settings, binding)
            for step, images in enumerate(frames):
                write_view_images(folder, images, [f"step{step:03d}_view{v:02d}"])
                if v == 0:
                    video.append(images.rgb[0].clamp(0, 1).numpy())
        if ply:
            with torch.no_grad():
                for step in range(len(x)):
                    gaussians = synthesize_surface(x[step], F[step], binding)
                    count = gaussians.count
                    gaussians.colors = torch.tensor(settings.config.particle_color).expand(count, 3)
                    gaussians.opacities = torch.full((count,), settings.opacity)
                    write_gaussians_ply(folder / f"step{step:03d}.ply", gaussians)
        written += sorted(folder.glob("*.png")) + sorted(folder.glob("*.ply"))
    written.append(write_video(run_dir / "render.mp4", video, fps=8))
    return written
