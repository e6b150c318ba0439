"""File input/output: PNG images and depth, Gaussians as NPZ and PLY, point clouds, videos."""

from physmorph.io.atomic import atomic_path
from physmorph.io.images import (
    DEPTH_SCALE,
    read_depth_png,
    read_normal_png,
    read_png,
    write_depth_png,
    write_normal_png,
    write_png,
)
from physmorph.io.npz import load_gaussians_npz, save_gaussians_npz
from physmorph.io.ply import (
    SH_C0,
    read_gaussians_ply,
    read_points_ply,
    write_gaussians_ply,
    write_points_ply,
)
from physmorph.io.video import ffmpeg_available, write_video

__all__ = [
    "DEPTH_SCALE",
    "SH_C0",
    "atomic_path",
    "ffmpeg_available",
    "load_gaussians_npz",
    "read_depth_png",
    "read_gaussians_ply",
    "read_normal_png",
    "read_png",
    "read_points_ply",
    "save_gaussians_npz",
    "write_depth_png",
    "write_gaussians_ply",
    "write_normal_png",
    "write_png",
    "write_points_ply",
    "write_video",
]
