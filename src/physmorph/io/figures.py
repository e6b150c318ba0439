"""Matplotlib figures: particle three-view comparisons, animation frames, labelled image panels, loss curves."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import mpl_toolkits.mplot3d  # noqa: F401  (registers the 3d projection)
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from physmorph.io.atomic import atomic_path

# (elevation, azimuth) in degrees of the three views; the grid is z-up like the reference.
VIEWS = ((20.0, -60.0), (20.0, 30.0), (80.0, -90.0))
SOURCE_COLOR, CURRENT_COLOR, TARGET_COLOR = "#7f7f7f", "#4682b4", "#d2691e"


def _numpy(points: torch.Tensor | np.ndarray) -> np.ndarray:
    return points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)


def _thin(points: np.ndarray, limit: int = 6000) -> np.ndarray:
    """Every k-th point so a scatter plot stays fast and readable."""
    return points[:: max(1, len(points) // limit)]


def _scatter(axis, points: np.ndarray, color: str, bounds: tuple[np.ndarray, np.ndarray]) -> None:
    points = _thin(points)
    axis.scatter(points[:, 0], points[:, 1], points[:, 2], s=1.0, c=color, depthshade=True, linewidths=0)
    low, high = bounds
    axis.set_xlim(low[0], high[0])
    axis.set_ylim(low[1], high[1])
    axis.set_zlim(low[2], high[2])
    axis.set_box_aspect((1, 1, 1))
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_zticks([])


def _bounds(*clouds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A cube around all clouds, so every panel uses the same scale."""
    every = np.concatenate(clouds)
    centre = 0.5 * (every.min(0) + every.max(0))
    half = 0.5 * (every.max(0) - every.min(0)).max() * 1.05
    return centre - half, centre + half


def write_comparison(
    path: str | os.PathLike[str],
    source: torch.Tensor | np.ndarray,
    current: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray | None,
    title: str = "",
) -> Path:
    """PNG of source, current and target particles [N, 3] (rows) from the same three views
    (columns); without a target (image-only runs) two rows."""
    clouds = [_numpy(c) for c in (source, current, target) if c is not None]
    bounds = _bounds(*clouds)
    figure = Figure(figsize=(10, 3.4 * len(clouds)), dpi=100)
    labels = ("source", "current", "target")
    colors = (SOURCE_COLOR, CURRENT_COLOR, TARGET_COLOR)
    for row, (cloud, label, color) in enumerate(zip(clouds, labels, colors)):
        for column, (elevation, azimuth) in enumerate(VIEWS):
            axis = figure.add_subplot(len(clouds), 3, 3 * row + column + 1, projection="3d")
            _scatter(axis, cloud, color, bounds)
            axis.view_init(elevation, azimuth)
            if column == 0:
                axis.set_title(label, loc="left")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    return Path(path)


def particle_frames(
    frames: Sequence[torch.Tensor | np.ndarray],
    target: torch.Tensor | np.ndarray,
    captions: Sequence[str],
    size: int = 480,
) -> list[np.ndarray]:
    """RGB images [size, 2·size, 3] uint8 of each particle set in `frames`, beside the target."""
    clouds = [_numpy(f) for f in frames]
    target_cloud = _numpy(target)
    bounds = _bounds(*clouds, target_cloud)
    figure = Figure(figsize=(size / 100, size / 100), dpi=100)
    FigureCanvasAgg(figure)

    def panel(points: np.ndarray, color: str, label: str) -> np.ndarray:
        figure.clear()
        axis = figure.add_subplot(1, 1, 1, projection="3d")
        _scatter(axis, points, color, bounds)
        axis.view_init(*VIEWS[0])
        axis.set_title(label, fontsize=9)
        figure.canvas.draw()
        return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()

    # the target panel is the same in every frame: drawn once (3D scatters dominate the video's time)
    target_panel = panel(target_cloud, TARGET_COLOR, "target")
    return [
        np.concatenate((panel(cloud, CURRENT_COLOR, caption), target_panel), axis=1)
        for cloud, caption in zip(clouds, captions)
    ]


def labelled_panels(
    rows: Sequence[Sequence[np.ndarray]],
    labels: Sequence[Sequence[str]],
    title: str = "",
) -> np.ndarray:
    """One RGB image uint8 of a grid of images (rows × columns of [H, W, 3] in [0, 1]), each
    with its label above it and an optional title over the whole grid."""
    count_rows, count_columns = len(rows), max(len(row) for row in rows)
    height, width = rows[0][0].shape[:2]
    label_px, title_px = 22, 30 if title else 0
    figure = Figure(figsize=(count_columns * width / 100, (count_rows * (height + label_px) + title_px) / 100), dpi=100)
    FigureCanvasAgg(figure)
    total_height = count_rows * (height + label_px) + title_px
    for r, (row, row_labels) in enumerate(zip(rows, labels)):
        for c, (image, label) in enumerate(zip(row, row_labels)):
            top = title_px + r * (height + label_px) + label_px
            axis = figure.add_axes(
                (c / count_columns, 1 - (top + height) / total_height, 1 / count_columns, height / total_height)
            )
            axis.imshow(np.clip(image, 0.0, 1.0), interpolation="nearest")
            axis.set_axis_off()
            figure.text(
                (c + 0.5) / count_columns, 1 - (top - 4) / total_height, label, ha="center", va="bottom", fontsize=9
            )
    if title:
        figure.text(0.5, 1 - 6 / total_height, title, ha="center", va="top", fontsize=11, weight="bold")
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def write_loss_curves(path: str | os.PathLike[str], episodes: Sequence[dict]) -> Path:
    """PNG of the loss per iteration (all episodes in a row) and the Chamfer distance per episode
    (at the end of the release, and of the driven steps when episodes have a release phase)."""
    figure = Figure(figsize=(11, 4), dpi=100)
    loss_axis, chamfer_axis = figure.subplots(1, 2)
    offset = 0
    for episode in episodes:
        history = [v for v in episode["loss_history"] if v is not None and np.isfinite(v)]
        loss_axis.plot(range(offset, offset + len(history)), history, label=f"episode {episode['episode']}")
        offset += len(history)
    loss_axis.set_yscale("log")
    loss_axis.set_xlabel("iteration (accepted steps for the reference optimiser)")
    loss_axis.set_ylabel("optimised loss (mass field + terms, or e2e)")
    if len(episodes) <= 10:
        loss_axis.legend(fontsize=8)
    numbers = [e["episode"] for e in episodes]
    if episodes[0].get("chamfer_before") is not None:
        chamfer = [episodes[0]["chamfer_before"]] + [e["chamfer_after"] for e in episodes]
        chamfer_axis.plot([numbers[0] - 1, *numbers], chamfer, "o-", label="end of episode")
        driven = [e.get("chamfer_after_driven") for e in episodes]
        if any(d is not None and d != e["chamfer_after"] for d, e in zip(driven, episodes)):
            chamfer_axis.plot(numbers, driven, "s--", label="end of the driven steps (before the release)")
            chamfer_axis.legend(fontsize=8)
    chamfer_axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    chamfer_axis.set_xlabel("episode (−1 = start)")
    chamfer_axis.set_ylabel("Chamfer distance to target (grid units)")
    chamfer_axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    return Path(path)


def write_snapshots(
    path: str | os.PathLike[str],
    clouds: Sequence[torch.Tensor | np.ndarray],
    captions: Sequence[str],
) -> Path:
    """PNG with one panel per particle set [N, 3] (e.g. a few steps of a rollout), same scale."""
    arrays = [_numpy(c) for c in clouds]
    bounds = _bounds(*arrays)
    figure = Figure(figsize=(3.2 * len(arrays), 3.4), dpi=100)
    for column, (cloud, caption) in enumerate(zip(arrays, captions)):
        axis = figure.add_subplot(1, len(arrays), column + 1, projection="3d")
        _scatter(axis, cloud, CURRENT_COLOR, bounds)
        axis.view_init(*VIEWS[0])
        axis.set_title(caption, fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    return Path(path)
