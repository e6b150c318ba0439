"""Image targets: calibrated masks (optional depth and colour) with their cameras, read and written.

A target folder holds `cameras.json` and the image files it names:

    {
      "znear": 0.01,              optional, world units (default 0.01)
      "zfar": 100.0,              optional, world units (default 100)
      "depth_scale": 1000.0,      optional, depth PNG integer steps per world unit (default 1000:
                                  millimetres when a grid unit is a metre)
      "images": [
        {
          "name": "view000",                      unique label used in messages and metrics
          "width": 256, "height": 256,            pixels; every view has the same size
          "fx": 300.0, "fy": 300.0,               focal lengths, pixels
          "cx": 128.0, "cy": 128.0,               principal point, pixels from the top-left corner
          "world_to_camera": [[...], [...], [...], [0, 0, 0, 1]],
                                                  4×4 rigid transform, OpenCV camera axes
                                                  (x right, y down, z forward into the scene)
          "mask": "view000_mask.png",             8-bit PNG, object where > 0.5 (grey, or the
                                                  alpha channel of an RGBA file)
          "depth": "view000_depth.png",           optional 16-bit PNG of camera z · depth_scale,
                                                  0 = no depth
          "rgb": "view000.png"                    optional 8-bit colour PNG (RGBA: alpha dropped)
        }, ...
      ]
    }

File names are relative to the folder. Depth and rgb must be given for every view or none.
`load_image_targets` checks every file, size and camera and raises InputError naming the view,
the problem and the fix; `save_image_targets` writes this layout.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from physmorph.errors import InputError
from physmorph.io.atomic import atomic_path
from physmorph.io.images import DEPTH_SCALE, read_depth_png, read_png, write_depth_png, write_png
from physmorph.render.cameras import Cameras

CAMERAS_FILE = "cameras.json"
_REQUIRED_KEYS = ("name", "width", "height", "fx", "fy", "cx", "cy", "world_to_camera", "mask")


@dataclass
class TargetImages:
    """Target images of C calibrated views (all one size).

    cameras: the C cameras that took them
    alpha:   [C, H, W] coverage in [0, 1] (a mask: 0 or 1)
    depth:   [C, H, W] camera z, world units, 0 where unknown; or None
    rgb:     [C, H, W, 3] colour in [0, 1]; or None
    names:   C labels, one per view
    """

    cameras: Cameras
    alpha: torch.Tensor
    depth: torch.Tensor | None = None
    rgb: torch.Tensor | None = None
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.cameras)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TargetImages:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return TargetImages(
            self.cameras.to(device, dtype),
            move(self.alpha),
            move(self.depth),
            move(self.rgb),
            list(self.names),
        )


def _number(entry: dict[str, Any], key: str, where: str, positive: bool = False) -> float:
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where}: '{key}' must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise InputError(f"{where}: '{key}' must be positive, got {value!r}")
    return float(value)


def _world_to_camera(entry: dict[str, Any], where: str) -> torch.Tensor:
    try:
        matrix = torch.tensor(entry["world_to_camera"], dtype=torch.float64)
    except (TypeError, ValueError):
        matrix = None
    if matrix is None or matrix.shape != (4, 4) or not torch.isfinite(matrix).all():
        raise InputError(f"{where}: 'world_to_camera' must be a 4x4 list of finite numbers (rows)")
    rotation = matrix[:3, :3]
    orthonormal = torch.allclose(rotation @ rotation.T, torch.eye(3, dtype=torch.float64), atol=1e-4)
    if not orthonormal or torch.linalg.det(rotation) <= 0:
        raise InputError(
            f"{where}: 'world_to_camera' must be a rigid transform (its 3x3 block a rotation); "
            "scale or mirror the scene instead of the camera"
        )
    if not torch.allclose(matrix[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)):
        raise InputError(f"{where}: the last row of 'world_to_camera' must be [0, 0, 0, 1]")
    return matrix


def _file(folder: Path, entry: dict[str, Any], key: str, where: str) -> Path:
    name = entry[key]
    if not isinstance(name, str) or not name:
        raise InputError(f"{where}: '{key}' must be a file name, got {name!r}")
    path = folder / name
    if not path.is_file():
        raise InputError(f"{where}: {key} file '{path}' does not exist; add it or fix the name in {CAMERAS_FILE}")
    return path


def _mask(path: Path, where: str) -> torch.Tensor:
    image = read_png(path)
    if image.ndim == 3:
        image = image[..., 3] if image.shape[2] == 4 else image[..., 0]
    if not bool((image > 0.5).any()):
        raise InputError(
            f"{where}: mask '{path}' is empty (no pixel > 0.5): this camera does not see the "
            "object; remove the view or fix the mask"
        )
    return (image > 0.5).to(torch.float32)


def _check_size(image: torch.Tensor, width: int, height: int, path: Path, where: str) -> None:
    if tuple(image.shape[:2]) != (height, width):
        raise InputError(
            f"{where}: '{path}' is {image.shape[1]}x{image.shape[0]} pixels but the view says "
            f"{width}x{height}; resize the image or fix width/height"
        )


def _check_sees_box(cameras: Cameras, box_min: Sequence[float], box_max: Sequence[float], names: list[str]) -> None:
    """Raise InputError for a camera that has the scene box behind it or entirely off its image."""
    corners = torch.tensor(
        [
            [
                box_min[0] if i & 1 == 0 else box_max[0],
                box_min[1] if i & 2 == 0 else box_max[1],
                box_min[2] if i & 4 == 0 else box_max[2],
            ]
            for i in range(8)
        ],
        dtype=torch.float64,
    )
    cameras = cameras.to(dtype=torch.float64)
    pixels, depth = cameras.project(corners)
    for index, name in enumerate(names):
        in_front = depth[index] > cameras.znear
        if not bool(in_front.any()):
            raise InputError(
                f"view '{name}': the scene box {list(box_min)}..{list(box_max)} lies behind the "
                "camera; check that world_to_camera maps world to camera (not camera to world) "
                "in OpenCV axes"
            )
        if bool(in_front.all()):
            lower = pixels[index].min(0).values
            upper = pixels[index].max(0).values
            off = bool((upper[0] < 0) | (lower[0] > cameras.width) | (upper[1] < 0) | (lower[1] > cameras.height))
            if off:
                raise InputError(
                    f"view '{name}': the scene box {list(box_min)}..{list(box_max)} projects "
                    "outside the image; check world_to_camera (OpenCV axes: y down, z forward) "
                    "and the intrinsics"
                )


def load_image_targets(
    folder: str | os.PathLike[str],
    scene_box: tuple[Sequence[float], Sequence[float]] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> TargetImages:
    """Read a target folder (format in the module docstring) into TargetImages.

    scene_box: (min corner, max corner) of the region the object lives in, world units (e.g. the
    simulation grid); a camera with the whole box behind it or off its image is an error.
    """
    folder = Path(folder)
    manifest = folder / CAMERAS_FILE
    if not manifest.is_file():
        raise InputError(
            f"image target folder '{folder}' has no {CAMERAS_FILE}; see physmorph.io.targets for the format"
        )
    try:
        data = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"'{manifest}' is not valid JSON: {error}") from None
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InputError(f"'{manifest}' needs a non-empty list 'images' of views")
    znear = _number(data, "znear", str(manifest), positive=True) if "znear" in data else 0.01
    zfar = _number(data, "zfar", str(manifest), positive=True) if "zfar" in data else 100.0
    depth_scale = _number(data, "depth_scale", str(manifest), positive=True) if "depth_scale" in data else DEPTH_SCALE

    names: list[str] = []
    viewmats, Ks, masks, depths, colours = [], [], [], [], []
    size = None
    for index, entry in enumerate(entries):
        where = f"'{manifest}' images[{index}]"
        if not isinstance(entry, dict):
            raise InputError(f"{where} must be a mapping of view settings")
        missing = [key for key in _REQUIRED_KEYS if key not in entry]
        if missing:
            raise InputError(f"{where} lacks {', '.join(missing)}; every view needs {', '.join(_REQUIRED_KEYS)}")
        name = str(entry["name"])
        if name in names:
            raise InputError(f"{where}: view name '{name}' is used twice; names must be unique")
        where = f"view '{name}' in '{manifest}'"
        width, height = entry["width"], entry["height"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
            raise InputError(f"{where}: width and height must be positive integers, got {width!r}, {height!r}")
        if size is not None and (width, height) != size:
            raise InputError(
                f"{where} is {width}x{height} but the first view is {size[0]}x{size[1]}; "
                "all views of a target set must share one image size"
            )
        size = (width, height)
        fx, fy = _number(entry, "fx", where, True), _number(entry, "fy", where, True)
        cx, cy = _number(entry, "cx", where), _number(entry, "cy", where)
        viewmats.append(_world_to_camera(entry, where))
        Ks.append(torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64))
        mask_path = _file(folder, entry, "mask", where)
        mask = _mask(mask_path, where)
        _check_size(mask, width, height, mask_path, where)
        masks.append(mask)
        for key, store in (("depth", depths), ("rgb", colours)):
            if entry.get(key) is None:
                continue
            path = _file(folder, entry, key, where)
            if key == "depth":
                image = read_depth_png(path, depth_scale)
            else:
                image = read_png(path)
                if image.ndim != 3 or image.shape[2] not in (3, 4):
                    raise InputError(f"{where}: rgb file '{path}' is not a colour PNG (shape {tuple(image.shape)})")
                image = image[..., :3]
            _check_size(image, width, height, path, where)
            store.append(image)
        names.append(name)
    for key, store in (("depth", depths), ("rgb", colours)):
        if store and len(store) != len(names):
            raise InputError(
                f"'{manifest}': {key} is given for {len(store)} of {len(names)} views; give it for all or none"
            )

    try:
        cameras = Cameras(torch.stack(viewmats), torch.stack(Ks), size[0], size[1], znear, zfar)
    except InputError as error:
        raise InputError(f"'{manifest}': {error}") from None
    if scene_box is not None:
        _check_sees_box(cameras, scene_box[0], scene_box[1], names)
    targets = TargetImages(
        cameras,
        torch.stack(masks),
        torch.stack(depths) if depths else None,
        torch.stack(colours) if colours else None,
        names,
    )
    return targets.to(device=device, dtype=dtype)


def save_image_targets(folder: str | os.PathLike[str], targets: TargetImages, depth_scale: float = DEPTH_SCALE) -> Path:
    """Write `targets` as a target folder (masks: alpha > 0.5); returns the cameras.json path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cameras = targets.cameras.to(device="cpu", dtype=torch.float64)
    names = targets.names or [f"view{index:03d}" for index in range(len(cameras))]
    entries = []
    for index, name in enumerate(names):
        K = cameras.Ks[index]
        entry: dict[str, Any] = {
            "name": name,
            "width": cameras.width,
            "height": cameras.height,
            "fx": float(K[0, 0]),
            "fy": float(K[1, 1]),
            "cx": float(K[0, 2]),
            "cy": float(K[1, 2]),
            "world_to_camera": cameras.viewmats[index].tolist(),
            "mask": f"{name}_mask.png",
        }
        write_png(folder / entry["mask"], (targets.alpha[index] > 0.5).float().cpu())
        if targets.depth is not None:
            entry["depth"] = f"{name}_depth.png"
            write_depth_png(folder / entry["depth"], targets.depth[index].cpu(), depth_scale)
        if targets.rgb is not None:
            entry["rgb"] = f"{name}.png"
            write_png(folder / entry["rgb"], targets.rgb[index].cpu())
        entries.append(entry)
    manifest = {
        "znear": cameras.znear,
        "zfar": cameras.zfar,
        "depth_scale": depth_scale,
        "images": entries,
    }
    path = folder / CAMERAS_FILE
    with atomic_path(path) as temporary:
        Path(temporary).write_text(json.dumps(manifest, indent=2))
    return path
