"""NPZ archives of Gaussians (keys mu, cov, rgb, opacity and, when present, normal)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from physmorph.errors import InputError
from physmorph.io.atomic import atomic_path
from physmorph.surface.gaussians import Gaussians

_KEYS = {"mu": "means", "cov": "covariances", "rgb": "colors", "opacity": "opacities", "normal": "normals"}


def save_gaussians_npz(path: str | os.PathLike[str], gaussians: Gaussians) -> Path:
    """Write Gaussians to an uncompressed NPZ with arrays mu [M, 3], cov [M, 3, 3], and where
    present rgb [M, 3], opacity [M], normal [M, 3], in the tensors' dtype."""
    arrays = {}
    for key, name in _KEYS.items():
        value = getattr(gaussians, name)
        if value is not None:
            arrays[key] = value.detach().cpu().numpy()
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        np.savez(stream, **arrays)
    return Path(path)


def load_gaussians_npz(path: str | os.PathLike[str]) -> Gaussians:
    """Read Gaussians written by save_gaussians_npz (CPU tensors, stored dtype)."""
    if not Path(path).is_file():
        raise InputError(f"Gaussians file '{path}' does not exist; check the path")
    with np.load(path) as archive:
        missing = [key for key in ("mu", "cov") if key not in archive]
        if missing:
            raise InputError(f"'{path}' lacks arrays {missing}; it is not a Gaussians NPZ")
        fields = {name: torch.from_numpy(archive[key]) for key, name in _KEYS.items() if key in archive}
    return Gaussians(**fields)
