"""The layout of a run folder (summary.json, epNNN/trajectory.npz and state.npz) and checked reads of its files."""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from physmorph.errors import InputError
from physmorph.io.atomic import atomic_path

SUMMARY_FILE = "summary.json"
TRAJECTORY_FILE = "trajectory.npz"
STATE_FILE = "state.npz"
STATE_FIELDS = ("positions", "velocities", "deformation_gradients", "affine_velocities", "plastic_strain")


@dataclass(frozen=True)
class RunPaths:
    """Where the files of a run go: `root`/summary.json and one `root`/epNNN/ per episode."""

    root: Path

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_FILE

    def episode(self, index: int) -> Path:
        return self.root / f"ep{index:03d}"

    def trajectory(self, index: int) -> Path:
        return self.episode(index) / TRAJECTORY_FILE

    def state(self, index: int) -> Path:
        return self.episode(index) / STATE_FILE


# The one trajectory file format, of morph episodes and forward simulations (float32 arrays):
#   x [T+1, N, 3] positions, grid units;  v [T+1, N, 3] velocities, grid units / s;
#   F [T+1, N, 3, 3] (elastic) deformation gradients;  plastic_strain [T+1, N] α (0: elastic);
#   controls [K, N, 3, 3] the ΔF applied (K = 0: none);  dt: the time step, s
TRAJECTORY_KEYS = ("x", "v", "F", "plastic_strain", "controls", "dt")
# Runs written by earlier versions hold x and F (and some of the rest); they can still be read.
TRAJECTORY_REQUIRED = ("x", "F")


def prepare_output_folder(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Create folder `path` (and its parents) and check that a file can be written in it, before
    any work starts; InputError naming `option` when it is a file, under a file or not writable."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option} '{folder}' is a file, not a folder; pass a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".physmorph-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise InputError(f"{option} '{folder}' cannot be written ({reason}); pass a folder you can write to") from None
    return folder


def write_json(path: Path, data: Any) -> None:
    """`data` as indented JSON, written atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2), encoding="utf-8")


def read_json(path: Path) -> Any:
    """The JSON value in `path`; InputError when it is missing, not UTF-8 or not JSON."""
    if not path.is_file():
        raise InputError(f"'{path}' does not exist")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise InputError(
            f"'{path}' is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}); "
            "it is damaged: delete it, or the whole run folder, and run again"
        ) from None
    except json.JSONDecodeError as error:
        raise InputError(f"'{path}' is not valid JSON ({error}); it is damaged: delete it and run again") from None


def read_summary(folder: RunPaths) -> dict[str, Any]:
    """The checked summary.json of a run: a mapping with a 'config' mapping, an integer
    'num_particles' and an 'episodes' list of records numbered 0, 1, ... whose folders exist."""
    summary = read_json(folder.summary)
    fix = f"delete '{folder.root}' or pass another run folder"

    def broken(problem: str) -> InputError:
        return InputError(f"'{folder.summary}' is not a physmorph run summary: {problem}; {fix}")

    if not isinstance(summary, dict):
        raise broken(f"it holds a {type(summary).__name__}, not a mapping")
    for key, kind in (("episodes", list), ("config", dict), ("num_particles", int)):
        if not isinstance(summary.get(key), kind):
            raise broken(f"'{key}' is missing or not a {kind.__name__}")
    missing = [section for section in ("source", "simulation", "optimization") if section not in summary["config"]]
    if missing:
        raise broken(f"its config lacks the sections {missing}")
    for position, record in enumerate(summary["episodes"]):
        if not isinstance(record, dict) or record.get("episode") != position:
            raise broken(f"episode record {position} is not numbered {position}")
        if not folder.episode(position).is_dir():
            raise InputError(
                f"'{folder.summary}' lists episode {position} but its folder '{folder.episode(position)}' "
                f"is missing; {fix}"
            )
    return summary


def read_arrays(path: Path, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Arrays `keys` of the NPZ archive `path` (those in `optional` only when present);
    InputError when it is missing, truncated, not an NPZ archive or lacks a key (never unpickles)."""
    if not path.is_file():
        raise InputError(f"'{path}' does not exist; the run folder is incomplete: run that episode again")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in keys if key not in archive.files and key not in optional]
            if missing:
                raise InputError(
                    f"'{path}' lacks the arrays {missing} (it has {sorted(archive.files)}); it was not written "
                    "by this version of physmorph: run that episode again"
                )
            return {key: archive[key] for key in keys if key in archive.files}
    except InputError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        raise InputError(
            f"'{path}' is not a readable NPZ archive (truncated or damaged: {type(error).__name__}); "
            "delete it and run that episode again"
        ) from None


def write_trajectory(path: Path, arrays: dict[str, np.ndarray | float]) -> Path:
    """Write the TRAJECTORY_KEYS arrays of `arrays` (float32, compressed) atomically to `path`."""
    if set(arrays) != set(TRAJECTORY_KEYS):
        raise ValueError(f"a trajectory has exactly the arrays {TRAJECTORY_KEYS}, got {sorted(arrays)}")
    stored = {key: np.asarray(arrays[key], dtype=np.float32) for key in TRAJECTORY_KEYS if key != "dt"}
    with atomic_path(path) as temporary:
        np.savez_compressed(temporary, dt=np.float64(arrays["dt"]), **stored)
    return path


def read_trajectory(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a trajectory file (TRAJECTORY_KEYS; x and F at least), with their shapes
    checked and every position and F finite."""
    optional = tuple(key for key in TRAJECTORY_KEYS if key not in TRAJECTORY_REQUIRED)
    arrays = read_arrays(path, TRAJECTORY_KEYS, optional)
    x = arrays["x"]
    if x.ndim != 3 or x.shape[0] < 1 or x.shape[2] != 3:
        raise InputError(f"'{path}' holds positions of shape {x.shape}; expected [steps, particles, 3]")
    steps, particles = x.shape[:2]
    shapes = {"v": (steps, particles, 3), "F": (steps, particles, 3, 3), "plastic_strain": (steps, particles)}
    for name, shape in shapes.items():
        if name in arrays and arrays[name].shape != shape:
            raise InputError(
                f"'{path}' holds {name} of shape {arrays[name].shape}; expected {shape} like its positions"
            )
    controls = arrays.get("controls")
    if controls is not None and (controls.ndim != 4 or controls.shape[1:] != (particles, 3, 3)):
        raise InputError(f"'{path}' holds controls of shape {controls.shape}; expected [K, {particles}, 3, 3]")
    F = arrays["F"]
    finite = np.isfinite(x).all(axis=(1, 2)) & np.isfinite(F).all(axis=(1, 2, 3))
    if not finite.all():
        first = int(np.argmin(finite))
        raise InputError(
            f"'{path}' has non-finite positions or deformation gradients from step {first} on; "
            "a diverged trajectory cannot be used: run that episode again"
        )
    dt = arrays.get("dt")
    if dt is not None and (dt.size != 1 or not np.isfinite(dt).all() or float(dt.reshape(())) <= 0):
        raise InputError(f"'{path}' holds the time step {dt!r}; expected one positive number")
    return arrays
