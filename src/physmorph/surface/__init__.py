"""Surface stage: particles (x, F) of one step -> surfels, anisotropic Gaussians (μ, Σ, normals)."""

from physmorph.surface.binding import SurfaceBinding, bind_surface
from physmorph.surface.config import SurfaceConfig, surface_config_from_mapping
from physmorph.surface.gaussians import Gaussians
from physmorph.surface.implicit import ImplicitSurface, implicit_surface
from physmorph.surface.knn import nearest_neighbors
from physmorph.surface.mesh_sampling import MeshSurface
from physmorph.surface.synthesis import synthesize_surface, synthesize_surface_once

__all__ = [
    "Gaussians",
    "ImplicitSurface",
    "MeshSurface",
    "SurfaceBinding",
    "SurfaceConfig",
    "bind_surface",
    "implicit_surface",
    "nearest_neighbors",
    "surface_config_from_mapping",
    "synthesize_surface",
    "synthesize_surface_once",
]
