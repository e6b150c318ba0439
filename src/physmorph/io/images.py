"""PNG images: 8-bit colour/grey, 16-bit depth (scaled integers) and normal maps."""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from physmorph.errors import InputError
from physmorph.io.atomic import atomic_path

DEPTH_SCALE = 1000.0  # integer steps per world unit: millimetres when one grid unit is a metre
_UINT16_MAX = 65535


def _as_numpy(image: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        return image.detach().cpu().numpy()
    return np.asarray(image)


def _read(path: str | os.PathLike[str]) -> np.ndarray:
    if not Path(path).is_file():
        raise InputError(f"image '{path}' does not exist; check the path")
    try:
        return iio.imread(path)
    except Exception as error:
        raise InputError(f"cannot read image '{path}': {error}") from None


def write_png(path: str | os.PathLike[str], image: torch.Tensor | np.ndarray) -> Path:
    """Write an 8-bit PNG. image: [H, W] grey or [H, W, 3|4] colour; floats are read as [0, 1]
    (clipped, rounded), uint8 is written as is. Returns the path written."""
    array = _as_numpy(image)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise InputError(f"image for '{path}' has shape {array.shape}; expected [H, W] or [H, W, 3|4]")
    if array.dtype != np.uint8:
        array = np.round(np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    with atomic_path(path) as temporary:
        iio.imwrite(temporary, array, extension=".png")
    return Path(path)


def read_png(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an 8-bit PNG as float32 in [0, 1]: [H, W] grey or [H, W, C] colour."""
    array = _read(path)
    if array.dtype != np.uint8:
        raise InputError(f"image '{path}' is {array.dtype}, not 8-bit; use read_depth_png for depth")
    return torch.from_numpy(array.astype(np.float32) / 255.0)


def write_depth_png(path: str | os.PathLike[str], depth: torch.Tensor | np.ndarray, scale: float = DEPTH_SCALE) -> Path:
    """Write depth [H, W] (world units) as a 16-bit PNG of round(depth·scale); 0 means no depth.

    The default scale 1000 stores millimetres if one world (grid) unit is taken as a metre, so
    depths up to 65.535 units fit; pass a smaller scale for farther scenes. Raises InputError
    for negative depths or depths that do not fit.
    """
    array = _as_numpy(depth).astype(np.float64)
    if array.ndim != 2:
        raise InputError(f"depth for '{path}' has shape {array.shape}; expected [H, W]")
    scaled = np.round(array * scale)
    if not np.all(np.isfinite(scaled)) or scaled.min(initial=0) < 0:
        raise InputError(f"depth for '{path}' has negative or non-finite values")
    if scaled.max(initial=0) > _UINT16_MAX:
        raise InputError(
            f"depth for '{path}' reaches {array.max():.4g} units, beyond 16 bits at scale "
            f"{scale}; pass scale <= {_UINT16_MAX / array.max():.4g}"
        )
    with atomic_path(path) as temporary:
        iio.imwrite(temporary, scaled.astype(np.uint16), extension=".png")
    return Path(path)


def read_depth_png(path: str | os.PathLike[str], scale: float = DEPTH_SCALE) -> torch.Tensor:
    """Read a 16-bit depth PNG written by write_depth_png: float32 [H, W] world units."""
    array = _read(path)
    if array.dtype != np.uint16 or array.ndim != 2:
        raise InputError(f"'{path}' is not a 16-bit single-channel depth PNG ({array.dtype})")
    return torch.from_numpy((array.astype(np.float64) / scale).astype(np.float32))


def write_normal_png(path: str | os.PathLike[str], normal: torch.Tensor | np.ndarray) -> Path:
    """Write a normal map [H, W, 3] (components in [-1, 1]) as 8-bit colour (n + 1) / 2."""
    array = _as_numpy(normal)
    if array.ndim != 3 or array.shape[2] != 3:
        raise InputError(f"normal map for '{path}' has shape {array.shape}; expected [H, W, 3]")
    return write_png(path, (array.astype(np.float64) + 1.0) / 2.0)


def read_normal_png(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read a normal-map PNG: float32 [H, W, 3] = 2·colour − 1 (8-bit quantised, not renormalised)."""
    return read_png(path)[..., :3] * 2.0 - 1.0
