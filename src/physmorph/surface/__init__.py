"""Surface stage: particles (x, F) of one step -> anisotropic Gaussians (μ, Σ, normals)."""

from physmorph.surface.binding import SurfaceBinding, bind_surface
from physmorph.surface.config import (
    PostEqualizeConfig,
    SurfaceConfig,
    surface_config_from_mapping,
)
from physmorph.surface.detection import SurfaceDetection, detect_surface
from physmorph.surface.gaussians import Gaussians
from physmorph.surface.knn import nearest_neighbors
from physmorph.surface.synthesis import synthesize_surface, synthesize_surface_once

__all__ = [
    "Gaussians",
    "PostEqualizeConfig",
    "SurfaceBinding",
    "SurfaceConfig",
    "SurfaceDetection",
    "bind_surface",
    "detect_surface",
    "nearest_neighbors",
    "surface_config_from_mapping",
    "synthesize_surface",
    "synthesize_surface_once",
]
