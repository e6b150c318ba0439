"""Pinhole cameras (OpenCV convention): intrinsics, look-at and orbit poses, the camera config."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from physmorph.errors import ConfigError, InputError
from physmorph.settings import require

# Flips camera y and z: maps OpenCV camera axes (x right, y down, z forward) to
# OpenGL/Blender camera axes (x right, y up, z backward) and back (it is its own inverse).
_CV_GL_FLIP = (1.0, -1.0, -1.0, 1.0)


@dataclass
class Cameras:
    """A batch of C pinhole cameras in the OpenCV convention.

    Camera axes: x right, y down, z forward (points in front of the camera have z > 0).
    Pixel (i, j) covers [j, j+1) x [i, i+1) in image coordinates, so its centre is (j+0.5, i+0.5).

    viewmats: [C, 4, 4] world-to-camera rigid transforms ([R | t] over [0 0 0 1])
    Ks:       [C, 3, 3] intrinsics [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], pixels
    width, height: image size, pixels
    znear, zfar:   clip distances along camera z, world units; Gaussians whose centre lies
                   outside [znear, zfar] are culled
    """

    viewmats: torch.Tensor
    Ks: torch.Tensor
    width: int
    height: int
    znear: float = 0.01
    zfar: float = 100.0

    def __post_init__(self) -> None:
        if self.viewmats.ndim != 3 or self.viewmats.shape[-2:] != (4, 4):
            raise InputError(f"camera viewmats have shape {tuple(self.viewmats.shape)}; expected [C, 4, 4]")
        if self.Ks.shape != (self.viewmats.shape[0], 3, 3):
            raise InputError(
                f"camera Ks have shape {tuple(self.Ks.shape)}; expected "
                f"[{self.viewmats.shape[0]}, 3, 3] to match the viewmats"
            )
        if self.width < 1 or self.height < 1:
            raise InputError(f"camera size {self.width}x{self.height} must be positive")
        if not 0.0 < self.znear < self.zfar:
            raise InputError(f"camera clip planes znear={self.znear}, zfar={self.zfar} need 0 < znear < zfar")

    def __len__(self) -> int:
        return int(self.viewmats.shape[0])

    @property
    def camtoworlds(self) -> torch.Tensor:
        """[C, 4, 4] camera-to-world transforms (OpenCV camera axes)."""
        return torch.linalg.inv(self.viewmats)

    @property
    def positions(self) -> torch.Tensor:
        """[C, 3] camera centres in world coordinates."""
        rotation = self.viewmats[:, :3, :3]
        translation = self.viewmats[:, :3, 3]
        return -(rotation.transpose(-1, -2) @ translation.unsqueeze(-1)).squeeze(-1)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Cameras:
        return Cameras(
            self.viewmats.to(device=device, dtype=dtype),
            self.Ks.to(device=device, dtype=dtype),
            self.width,
            self.height,
            self.znear,
            self.zfar,
        )

    def __getitem__(self, index: int | slice) -> Cameras:
        selection = slice(index, index + 1) if isinstance(index, int) else index
        return Cameras(
            self.viewmats[selection],
            self.Ks[selection],
            self.width,
            self.height,
            self.znear,
            self.zfar,
        )

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project world points [N, 3] to pixel coordinates [C, N, 2] and camera depths [C, N]."""
        camera_points = points @ self.viewmats[:, :3, :3].transpose(-1, -2) + self.viewmats[:, None, :3, 3]
        depth = camera_points[..., 2]
        pixels = camera_points @ self.Ks.transpose(-1, -2)
        return pixels[..., :2] / depth.unsqueeze(-1), depth


def concatenate(cameras: Sequence[Cameras]) -> Cameras:
    """Join camera batches that share image size and clip planes into one batch."""
    if not cameras:
        raise InputError("concatenate got no cameras; pass at least one Cameras batch")
    first = cameras[0]
    for other in cameras[1:]:
        if (other.width, other.height, other.znear, other.zfar) != (
            first.width,
            first.height,
            first.znear,
            first.zfar,
        ):
            raise InputError(
                "cannot concatenate cameras with different width, height, znear or zfar; render them separately"
            )
    return Cameras(
        torch.cat([c.viewmats for c in cameras]),
        torch.cat([c.Ks for c in cameras]),
        first.width,
        first.height,
        first.znear,
        first.zfar,
    )


def intrinsics(
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """[3, 3] pinhole intrinsic matrix from focal lengths and principal point, pixels."""
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype, device=device)


def intrinsics_from_fov(
    fov_degrees: float,
    width: int,
    height: int,
    axis: str = "x",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """[3, 3] intrinsics with square pixels, the principal point at the image centre and the
    given full field of view (degrees) across the image width (axis "x") or height (axis "y")."""
    if not 0.0 < fov_degrees < 180.0:
        raise InputError(f"field of view {fov_degrees} degrees must lie in (0, 180)")
    if axis not in ("x", "y"):
        raise InputError(f"field-of-view axis {axis!r} must be 'x' or 'y'")
    extent = width if axis == "x" else height
    focal = 0.5 * extent / math.tan(math.radians(fov_degrees) / 2.0)
    return intrinsics(focal, focal, width / 2.0, height / 2.0, dtype=dtype, device=device)


def look_at(
    eye: torch.Tensor | Sequence[float],
    target: torch.Tensor | Sequence[float],
    up: torch.Tensor | Sequence[float] = (0.0, 0.0, 1.0),
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """World-to-camera matrices [..., 4, 4] (OpenCV axes) of cameras at `eye` [..., 3] looking
    at `target` [..., 3], with world direction `up` [3] appearing upward (toward smaller image y).

    The reference config is z-up: up = (0, 0, 1).
    """
    eye = torch.as_tensor(eye, dtype=dtype, device=device)
    target = torch.as_tensor(target, dtype=dtype, device=device)
    up = torch.as_tensor(up, dtype=dtype, device=device)
    forward = target - eye
    forward_length = torch.linalg.vector_norm(forward, dim=-1, keepdim=True)
    if bool((forward_length <= 1e-12).any()):
        raise InputError("look_at: eye and target coincide; move the camera away from its target")
    forward = forward / forward_length
    right = torch.linalg.cross(forward, up.expand_as(forward), dim=-1)
    right_length = torch.linalg.vector_norm(right, dim=-1, keepdim=True)
    if bool((right_length <= 1e-9 * torch.linalg.vector_norm(up)).any()):
        raise InputError("look_at: the viewing direction is parallel to the up vector; choose another up axis")
    right = right / right_length
    down = torch.linalg.cross(forward, right, dim=-1)
    rotation = torch.stack([right, down, forward], dim=-2)
    viewmat = torch.zeros(*eye.shape[:-1], 4, 4, dtype=dtype, device=device)
    viewmat[..., :3, :3] = rotation
    viewmat[..., :3, 3] = -(rotation @ eye.unsqueeze(-1)).squeeze(-1)
    viewmat[..., 3, 3] = 1.0
    return viewmat


def orbit_cameras(
    K: torch.Tensor,
    width: int,
    height: int,
    center: Sequence[float] = (0.0, 0.0, 0.0),
    radius: float = 35.0,
    elevation: float = 25.0,
    up: Sequence[float] = (0.0, 0.0, 1.0),
    count: int = 8,
    start_azimuth: float = 0.0,
    znear: float = 0.01,
    zfar: float = 100.0,
) -> Cameras:
    """`count` cameras evenly spaced in azimuth on a circle around `center`, all looking at it.

    K: [3, 3] shared intrinsics. radius: world units. elevation, start_azimuth: degrees, the
    elevation measured from the plane perpendicular to `up`; azimuth 0 lies along the world axis
    (x, or y when `up` is along x) projected onto that plane, increasing counter-clockwise
    seen from above.
    """
    if count < 1:
        raise InputError(f"orbit_cameras: count={count} must be at least 1")
    if radius <= 0:
        raise InputError(f"orbit_cameras: radius={radius} must be positive")
    dtype, device = K.dtype, K.device
    up_axis = torch.as_tensor(up, dtype=torch.float64)
    up_axis = up_axis / torch.linalg.vector_norm(up_axis)
    reference = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    if abs(float(up_axis @ reference)) > 0.9:
        reference = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    first = reference - (reference @ up_axis) * up_axis
    first = first / torch.linalg.vector_norm(first)
    second = torch.linalg.cross(up_axis, first, dim=-1)
    azimuth = torch.deg2rad(start_azimuth + torch.arange(count, dtype=torch.float64) * (360.0 / count))
    elevation_rad = math.radians(elevation)
    direction = (
        math.cos(elevation_rad) * (torch.cos(azimuth)[:, None] * first + torch.sin(azimuth)[:, None] * second)
        + math.sin(elevation_rad) * up_axis
    )
    center_t = torch.as_tensor(center, dtype=torch.float64)
    eyes = center_t + radius * direction
    viewmats = look_at(eyes, center_t.expand_as(eyes), up_axis, dtype=torch.float64)
    return Cameras(
        viewmats.to(dtype=dtype, device=device),
        K.expand(count, 3, 3).clone(),
        width,
        height,
        znear,
        zfar,
    )


def opencv_to_opengl(viewmats: torch.Tensor) -> torch.Tensor:
    """World-to-camera [..., 4, 4] with OpenCV camera axes -> OpenGL/Blender camera axes
    (x right, y up, z backward); world coordinates are unchanged."""
    flip = torch.tensor(_CV_GL_FLIP, dtype=viewmats.dtype, device=viewmats.device)
    return flip[:, None] * viewmats


def opengl_to_opencv(viewmats: torch.Tensor) -> torch.Tensor:
    """World-to-camera [..., 4, 4] with OpenGL/Blender camera axes -> OpenCV camera axes."""
    return opencv_to_opengl(viewmats)


@dataclass
class LookAtConfig:
    """Camera pose by look-at, world units (the reference config is z-up)."""

    eye: tuple[float, float, float] = (20.0, -25.0, 15.0)
    target: tuple[float, float, float] = (0.0, 0.0, 0.0)
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)

    def validate(self) -> None:
        require(self.eye != self.target, "camera.lookat.eye", "must differ from lookat.target")
        require(any(v != 0.0 for v in self.up), "camera.lookat.up", "must be a non-zero vector")


@dataclass
class CameraConfig:
    """The reference `camera` section: one pinhole camera posed by look-at."""

    width: int = 1280  # pixels
    height: int = 720  # pixels
    fx: float = 475.0  # focal length, pixels
    fy: float = 475.0  # focal length, pixels
    cx: float = 640.0  # principal point, pixels from the left image edge
    cy: float = 360.0  # principal point, pixels from the top image edge
    znear: float = 0.01  # near clip distance, world units
    zfar: float = 100.0  # far clip distance, world units
    lookat: LookAtConfig = field(default_factory=LookAtConfig)

    def validate(self) -> None:
        require(self.width >= 1, "camera.width", f"must be at least 1 pixel, got {self.width}")
        require(self.height >= 1, "camera.height", f"must be at least 1 pixel, got {self.height}")
        require(self.fx > 0, "camera.fx", f"must be positive, got {self.fx}")
        require(self.fy > 0, "camera.fy", f"must be positive, got {self.fy}")
        require(self.znear > 0, "camera.znear", f"must be positive, got {self.znear}")
        require(self.zfar > self.znear, "camera.zfar", "must be larger than camera.znear")
        self.lookat.validate()

    def to_cameras(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Cameras:
        """The configured camera as a batch of one."""
        K = intrinsics(self.fx, self.fy, self.cx, self.cy, dtype=dtype, device=device)
        try:
            viewmat = look_at(self.lookat.eye, self.lookat.target, self.lookat.up, dtype, device)
        except InputError as error:
            raise ConfigError(f"camera.lookat: {error}") from None
        return Cameras(viewmat[None], K[None], self.width, self.height, self.znear, self.zfar)
