"""Losses: grid mass field, Chamfer distance, elastic energy left in a body, image losses and their schedules."""

from physmorph.losses.chamfer import chamfer_distance, nearest_distances
from physmorph.losses.hold import elastic_energy_per_mass
from physmorph.losses.mass import mass_field_loss, mass_loss
from physmorph.losses.render_losses import (
    RenderLossConfig,
    covariance_alignment_loss,
    covariance_regularization,
    depth_loss,
    dssim_loss,
    edge_alignment_loss,
    normal_smoothness_loss,
    psnr,
    rgb_loss,
    silhouette_iou,
    silhouette_loss,
    ssim,
)
from physmorph.losses.schedules import schedule_factor

__all__ = [
    "RenderLossConfig",
    "chamfer_distance",
    "covariance_alignment_loss",
    "covariance_regularization",
    "depth_loss",
    "dssim_loss",
    "edge_alignment_loss",
    "elastic_energy_per_mass",
    "mass_field_loss",
    "mass_loss",
    "nearest_distances",
    "normal_smoothness_loss",
    "psnr",
    "rgb_loss",
    "schedule_factor",
    "silhouette_iou",
    "silhouette_loss",
    "ssim",
]
