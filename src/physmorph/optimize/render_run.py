"""Render a finished morph run's trajectories with the Gaussian surface (the `physmorph render` command)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import trimesh
from tqdm import tqdm

from physmorph.config import MorphConfig, UnusedKeysWarning, config_from_mapping
from physmorph.errors import InputError, PhysmorphError
from physmorph.io.ply import write_gaussians_ply
from physmorph.io.run_folder import SUMMARY_FILE, RunPaths, prepare_output_folder, read_summary, read_trajectory
from physmorph.io.video import write_video
from physmorph.optimize.memory import check_fits, render_bytes
from physmorph.optimize.setup import build_body
from physmorph.optimize.views import orbit_views, render_frames, render_settings, write_view_images
from physmorph.surface import bind_surface, synthesize_surface

PASS_A_RUN = "pass the folder of a finished `physmorph morph` run"
MAX_VIEWS = 360


def parse_size(text: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' → (width, height)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--size '{text}' is not WIDTHxHEIGHT, e.g. 512x512") from None
    if width < 8 or height < 8:
        raise InputError(f"--size '{text}' is too small; use at least 8x8 pixels")
    return width, height


def source_mesh(config: MorphConfig) -> trimesh.Trimesh | None:
    """The run's source mesh rebuilt from its config; None, with a warning, when that fails (the
    Gaussians then come from the particles' implicit surface)."""
    try:
        return build_body(config.source, config.base_dir, "source")
    except PhysmorphError as error:
        warnings.warn(
            f"cannot rebuild the run's source mesh ({error}); the Gaussians are sampled from the particles' "
            "implicit surface instead, which loses parts thinner than a particle spacing",
            stacklevel=3,
        )
        return None


def render_run(
    run_dir: str | Path, episode: int | None, views: int, size: tuple[int, int], ply: bool = False
) -> list[Path]:
    """Write `epNNN/frames/stepSSS_viewVV_{rgb,alpha,depth,normal}.png` for the chosen episodes and
    `render.mp4` (view 0 of every step, all chosen episodes) into `run_dir`; with `ply`, also
    `epNNN/frames/stepSSS.ply`, the Gaussians of every step as a standard 3DGS PLY."""
    folder = RunPaths(Path(run_dir))
    if not folder.root.is_dir():
        raise InputError(f"run folder '{folder.root}' does not exist; {PASS_A_RUN}")
    if not folder.summary.is_file():
        raise InputError(f"'{folder.root}' holds no {SUMMARY_FILE}; {PASS_A_RUN}")
    if not 1 <= views <= MAX_VIEWS:
        raise InputError(f"--views must be 1..{MAX_VIEWS} (one camera per degree of the orbit at most), got {views}")
    summary = read_summary(folder)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnusedKeysWarning)  # said when the run was made
            config = config_from_mapping(summary["config"], base_dir=Path(summary.get("config_folder", folder.root)))
    except PhysmorphError as error:
        raise InputError(f"the config stored in '{folder.summary}' is invalid: {error}") from None
    done = [record["episode"] for record in summary["episodes"]]
    if not done:
        raise InputError(f"'{folder.root}' has no finished episode yet; run `physmorph morph` on it first")
    chosen = done if episode is None else [episode]
    if episode is not None and episode not in done:
        raise InputError(f"episode {episode} is not finished in '{folder.root}'; finished episodes: {done}")
    prepare_output_folder(folder.root, "run folder")
    trajectories = {e: read_trajectory(folder.trajectory(e)) for e in chosen}
    start = trajectories[0] if 0 in trajectories else read_trajectory(folder.trajectory(0))
    steps = sum(len(t["x"]) for t in trajectories.values())
    fix = "use a smaller --size, fewer --views or one --episode"
    check_fits(render_bytes(size, views, steps), "rendering", torch.device("cpu"), fix)
    every = torch.cat([torch.from_numpy(t["x"]).reshape(-1, 3) for t in trajectories.values()])
    cameras = orbit_views(config.e2e, every, views, config.e2e.elevation_deg, size=size)
    settings = render_settings(config)
    # one surface for the whole run, bound to the undeformed source (episode 0's first state) and
    # sampled from the source mesh, as the run bound it
    x_rest, F_rest = torch.from_numpy(start["x"][0]), torch.from_numpy(start["F"][0])
    binding = bind_surface(x_rest, F_rest, config.surface, mesh=source_mesh(config))
    written, video = [], []
    for e in tqdm(chosen, desc="render", unit="episode"):
        x = torch.from_numpy(trajectories[e]["x"])
        F = torch.from_numpy(trajectories[e]["F"])
        frames_folder = folder.episode(e) / "frames"
        for v in range(views):
            frames, binding = render_frames(x, F, config.surface, cameras[v : v + 1], settings, binding)
            for step, images in enumerate(frames):
                write_view_images(frames_folder, images, [f"step{step:03d}_view{v:02d}"])
                if v == 0:
                    video.append(images.rgb[0].clamp(0, 1).numpy())
        if ply:
            with torch.no_grad():
                for step in range(len(x)):
                    gaussians = synthesize_surface(x[step], F[step], binding)
                    count = gaussians.count
                    gaussians.colors = torch.tensor(settings.config.particle_color).expand(count, 3)
                    gaussians.opacities = torch.full((count,), settings.opacity)
                    write_gaussians_ply(frames_folder / f"step{step:03d}.ply", gaussians)
        written += sorted(frames_folder.glob("*.png")) + sorted(frames_folder.glob("*.ply"))
    written.append(write_video(folder.root / "render.mp4", video, fps=8))
    return written
