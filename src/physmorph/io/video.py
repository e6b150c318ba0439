"""Videos from frame sequences: MP4 through imageio-ffmpeg, GIF when ffmpeg is unavailable."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from physmorph.errors import InputError
from physmorph.io.atomic import atomic_path


def _frame(image: torch.Tensor | np.ndarray) -> np.ndarray:
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.dtype != np.uint8:
        array = np.round(np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, -1)
    return array[..., :3]


def ffmpeg_available() -> bool:
    """Whether imageio-ffmpeg can provide an ffmpeg executable."""
    try:
        import imageio_ffmpeg

        return Path(imageio_ffmpeg.get_ffmpeg_exe()).is_file()
    except (ImportError, RuntimeError):
        return False


def write_video(
    path: str | os.PathLike[str],
    frames: Sequence[torch.Tensor | np.ndarray] | torch.Tensor | np.ndarray,
    fps: float = 24.0,
) -> Path:
    """Write frames ([H, W, 3] or [H, W]; floats in [0, 1] or uint8) as a video.

    An .mp4 path is written with H.264 through imageio-ffmpeg (odd sizes are padded to even by
    one black row/column); when ffmpeg is unavailable, or for a .gif path, a GIF with the same
    stem is written instead. Returns the path actually written.
    """
    frames = [_frame(f) for f in frames]
    if not frames:
        raise InputError(f"no frames to write to '{path}'; render at least one frame")
    if any(f.shape != frames[0].shape for f in frames):
        raise InputError(f"frames for '{path}' differ in size; render them at one resolution")
    target = Path(path)
    if target.suffix.lower() == ".mp4" and ffmpeg_available():
        height, width = frames[0].shape[:2]
        pad = ((0, height % 2), (0, width % 2), (0, 0))
        stack = np.stack([np.pad(f, pad) for f in frames])
        with atomic_path(target) as temporary:
            iio.imwrite(
                temporary, stack, extension=".mp4", plugin="FFMPEG", fps=fps, codec="libx264", macro_block_size=1
            )
        return target
    target = target.with_suffix(".gif")
    with atomic_path(target) as temporary:
        iio.imwrite(temporary, np.stack(frames), extension=".gif", duration=1000.0 / fps, loop=0)
    return target
