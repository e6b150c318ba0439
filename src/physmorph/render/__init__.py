"""Render stage: cameras, shading and differentiable Gaussian splatting (PyTorch or gsplat)."""

from physmorph.render.cameras import (
    CameraConfig,
    Cameras,
    LookAtConfig,
    concatenate,
    intrinsics,
    intrinsics_from_fov,
    look_at,
    opencv_to_opengl,
    opengl_to_opencv,
    orbit_cameras,
)
from physmorph.render.config import LightingConfig, RenderConfig
from physmorph.render.mesh_raycast import embree_available, raycast_mesh
from physmorph.render.renderer import Images, gsplat_available, render
from physmorph.render.shading import composite_background, shade

__all__ = [
    "CameraConfig",
    "Cameras",
    "Images",
    "LightingConfig",
    "LookAtConfig",
    "RenderConfig",
    "composite_background",
    "concatenate",
    "embree_available",
    "gsplat_available",
    "intrinsics",
    "intrinsics_from_fov",
    "look_at",
    "opencv_to_opengl",
    "opengl_to_opencv",
    "orbit_cameras",
    "raycast_mesh",
    "render",
    "shade",
]
