"""PLY files: the standard 3D Gaussian splatting layout (read and write) and plain point clouds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from physmorph.errors import InputError
from physmorph.io.atomic import atomic_path
from physmorph.surface.gaussians import Gaussians

SH_C0 = 0.28209479177387814  # degree-0 spherical harmonic: colour = 0.5 + SH_C0 · f_dc
_OPACITY_EPS = 1e-7  # opacities are clipped to [eps, 1 − eps] so the stored logit is finite
_GAUSSIAN_PROPERTIES = (
    "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
    "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
)  # fmt: skip
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_TYPE_NAMES = {"f4": "float", "f8": "double", "u1": "uchar"}


def _write_vertices(path: str | os.PathLike[str], vertices: np.ndarray) -> Path:
    """Write a structured array as the vertex element of a binary little-endian PLY."""
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {len(vertices)}"]
    for name in vertices.dtype.names:
        lines.append(f"property {_TYPE_NAMES[vertices.dtype[name].str[1:]]} {name}")
    lines.append("end_header")
    header = ("\n".join(lines) + "\n").encode("ascii")
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        stream.write(header)
        stream.write(vertices.astype(vertices.dtype.newbyteorder("<")).tobytes())
    return Path(path)


def _read_vertices(path: str | os.PathLike[str]) -> np.ndarray:
    """The vertex element of a binary little-endian PLY as a structured array."""
    if not Path(path).is_file():
        raise InputError(f"PLY file '{path}' does not exist; check the path")
    with open(path, "rb") as stream:
        if stream.readline().strip() != b"ply":
            raise InputError(f"'{path}' is not a PLY file (no 'ply' magic line)")
        fields: list[tuple[str, str]] = []
        count = None
        in_vertex = False
        while True:
            line = stream.readline()
            if not line:
                raise InputError(f"PLY file '{path}' has no end_header line")
            words = line.decode("ascii", errors="replace").split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "end_header":
                break
            if words[0] == "format" and words[1] != "binary_little_endian":
                raise InputError(f"PLY file '{path}' is {words[1]}; only binary_little_endian is supported")
            if words[0] == "element":
                in_vertex = words[1] == "vertex"
                if in_vertex:
                    count = int(words[2])
                elif count is None:
                    raise InputError(f"PLY file '{path}' must store its vertex element first")
            elif words[0] == "property" and in_vertex:
                if words[1] == "list" or words[1] not in _PLY_TYPES:
                    raise InputError(f"PLY file '{path}': unsupported vertex property {line!r}")
                fields.append((words[2], "<" + _PLY_TYPES[words[1]]))
        if count is None:
            raise InputError(f"PLY file '{path}' has no vertex element")
        dtype = np.dtype(fields)
        data = stream.read(count * dtype.itemsize)
    if len(data) < count * dtype.itemsize:
        raise InputError(f"PLY file '{path}' is truncated ({count} vertices declared)")
    return np.frombuffer(data, dtype=dtype, count=count)


def _rotation_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """Proper rotations [N, 3, 3] -> unit quaternions (w, x, y, z) [N, 4]."""
    r = rotation
    # Each row: 4·(component)² from the trace identities; take the largest for stability.
    squares = np.stack(
        [
            1 + r[:, 0, 0] + r[:, 1, 1] + r[:, 2, 2],
            1 + r[:, 0, 0] - r[:, 1, 1] - r[:, 2, 2],
            1 - r[:, 0, 0] + r[:, 1, 1] - r[:, 2, 2],
            1 - r[:, 0, 0] - r[:, 1, 1] + r[:, 2, 2],
        ],
        -1,
    )
    largest = np.argmax(squares, -1)
    root = np.sqrt(np.maximum(np.take_along_axis(squares, largest[:, None], -1)[:, 0], 1e-300))
    x_times_4w = r[:, 2, 1] - r[:, 1, 2]
    y_times_4w = r[:, 0, 2] - r[:, 2, 0]
    z_times_4w = r[:, 1, 0] - r[:, 0, 1]
    xy, xz, yz = r[:, 0, 1] + r[:, 1, 0], r[:, 0, 2] + r[:, 2, 0], r[:, 1, 2] + r[:, 2, 1]
    candidates = np.stack(
        [
            np.stack([root * root, x_times_4w, y_times_4w, z_times_4w], -1),
            np.stack([x_times_4w, root * root, xy, xz], -1),
            np.stack([y_times_4w, xy, root * root, yz], -1),
            np.stack([z_times_4w, xz, yz, root * root], -1),
        ],
        1,
    )
    quaternion = candidates[np.arange(len(r)), largest] / (2.0 * root[:, None])
    return quaternion / np.linalg.norm(quaternion, axis=-1, keepdims=True)


def _quaternion_to_rotation(quaternion: np.ndarray) -> np.ndarray:
    """Quaternions (w, x, y, z) [N, 4], any length -> rotations [N, 3, 3]."""
    norm = np.linalg.norm(quaternion, axis=-1, keepdims=True)
    if np.any(norm == 0):
        raise InputError("a Gaussian has a zero rotation quaternion (rot_0..3 all 0)")
    w, x, y, z = (quaternion / norm).T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def write_gaussians_ply(path: str | os.PathLike[str], gaussians: Gaussians) -> Path:
    """Write Gaussians as a standard 3DGS PLY (binary little endian, float32 properties
    x y z nx ny nz f_dc_0..2 opacity scale_0..2 rot_0..3), as splat viewers read it.

    f_dc = (rgb − 0.5) / SH_C0; opacity is stored as its logit, scales as the log of the
    covariance's standard deviations (square roots of its eigenvalues) and rot as the unit
    quaternion (w, x, y, z) of its eigenvectors. Missing colours are stored as 0.5 grey,
    missing opacities as 1, missing normals as 0.
    """
    means = gaussians.means.detach().cpu().double().numpy()
    if means.ndim != 2 or means.shape[1] != 3:
        raise InputError(f"Gaussian means have shape {means.shape}; write_gaussians_ply needs [M, 3]")
    count = len(means)
    covariances = gaussians.covariances.detach().cpu().double().numpy()
    if covariances.shape != (count, 3, 3):
        raise InputError(f"Gaussian covariances have shape {covariances.shape}; expected [{count}, 3, 3]")
    eigenvalues, eigenvectors = np.linalg.eigh(0.5 * (covariances + covariances.transpose(0, 2, 1)))
    eigenvectors[np.linalg.det(eigenvectors) < 0, :, 2] *= -1.0
    log_scales = 0.5 * np.log(np.maximum(eigenvalues, 1e-300))

    def column(tensor: torch.Tensor | None, fill: float, width: int) -> np.ndarray:
        if tensor is None:
            return np.full((count, width), fill)
        return tensor.detach().cpu().double().numpy().reshape(count, width)

    opacity = np.clip(column(gaussians.opacities, 1.0, 1), _OPACITY_EPS, 1.0 - _OPACITY_EPS)
    values = np.concatenate(
        [
            means,
            column(gaussians.normals, 0.0, 3),
            (column(gaussians.colors, 0.5, 3) - 0.5) / SH_C0,
            np.log(opacity / (1.0 - opacity)),
            log_scales,
            _rotation_to_quaternion(eigenvectors),
        ],
        -1,
    ).astype(np.float32)
    vertices = np.empty(count, dtype=[(name, "<f4") for name in _GAUSSIAN_PROPERTIES])
    for index, name in enumerate(_GAUSSIAN_PROPERTIES):
        vertices[name] = values[:, index]
    return _write_vertices(path, vertices)


def read_gaussians_ply(path: str | os.PathLike[str]) -> Gaussians:
    """Read a 3DGS PLY (extra properties such as f_rest_* are ignored) into float32 Gaussians:
    covariance R diag(exp(2·scale)) Rᵀ, colour 0.5 + SH_C0·f_dc, opacity sigmoid(opacity);
    normals when nx, ny, nz are present."""
    vertices = _read_vertices(path)
    names = set(vertices.dtype.names)
    required = [n for n in _GAUSSIAN_PROPERTIES if not n.startswith("n")]
    missing = [n for n in required if n not in names]
    if missing:
        raise InputError(f"'{path}' lacks Gaussian properties {missing}; it is not a 3DGS PLY")

    def stack(*keys: str) -> np.ndarray:
        return np.stack([vertices[k].astype(np.float64) for k in keys], -1)

    rotation = _quaternion_to_rotation(stack("rot_0", "rot_1", "rot_2", "rot_3"))
    variances = np.exp(2.0 * stack("scale_0", "scale_1", "scale_2"))
    covariances = (rotation * variances[:, None, :]) @ rotation.transpose(0, 2, 1)
    opacity = 1.0 / (1.0 + np.exp(-vertices["opacity"].astype(np.float64)))
    normals = None
    if {"nx", "ny", "nz"} <= names:
        normals = torch.from_numpy(stack("nx", "ny", "nz").astype(np.float32))
    return Gaussians(
        means=torch.from_numpy(stack("x", "y", "z").astype(np.float32)),
        covariances=torch.from_numpy(covariances.astype(np.float32)),
        normals=normals,
        colors=torch.from_numpy((0.5 + SH_C0 * stack("f_dc_0", "f_dc_1", "f_dc_2")).astype(np.float32)),
        opacities=torch.from_numpy(opacity.astype(np.float32)),
    )


def write_points_ply(
    path: str | os.PathLike[str],
    points: torch.Tensor | np.ndarray,
    colors: torch.Tensor | np.ndarray | None = None,
) -> Path:
    """Write a point cloud PLY: float x y z [N, 3] and, if given, uchar red green blue from
    colours [N, 3] (floats in [0, 1] or uint8)."""
    xyz = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise InputError(f"points for '{path}' have shape {xyz.shape}; expected [N, 3]")
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    rgb = None
    if colors is not None:
        rgb = colors.detach().cpu().numpy() if isinstance(colors, torch.Tensor) else np.asarray(colors)
        if rgb.shape != xyz.shape:
            raise InputError(f"colours for '{path}' have shape {rgb.shape}; expected {xyz.shape}")
        if rgb.dtype != np.uint8:
            rgb = np.round(np.clip(rgb.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertices = np.empty(len(xyz), dtype=fields)
    for index, name in enumerate("xyz"):
        vertices[name] = xyz[:, index]
    if rgb is not None:
        for index, name in enumerate(("red", "green", "blue")):
            vertices[name] = rgb[:, index]
    return _write_vertices(path, vertices)


def read_points_ply(path: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read a point cloud PLY: float32 points [N, 3] and colours [N, 3] in [0, 1] (or None)."""
    vertices = _read_vertices(path)
    points = np.stack([vertices[k].astype(np.float32) for k in "xyz"], -1)
    colors = None
    if {"red", "green", "blue"} <= set(vertices.dtype.names):
        rgb = np.stack([vertices[k] for k in ("red", "green", "blue")], -1)
        scale = 255.0 if rgb.dtype == np.uint8 else 1.0
        colors = torch.from_numpy((rgb.astype(np.float64) / scale).astype(np.float32))
    return torch.from_numpy(points), colors
