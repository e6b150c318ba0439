"""Losses: the grid mass-field loss, Chamfer distance and (later) image losses."""

from physmorph.losses.chamfer import chamfer_distance, nearest_distances
from physmorph.losses.mass import mass_field_loss, mass_loss

__all__ = ["chamfer_distance", "mass_field_loss", "mass_loss", "nearest_distances"]
