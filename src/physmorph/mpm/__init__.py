"""Differentiable Material Point Method: grid, materials, state, one step and rollouts."""

from physmorph.mpm.grid import Grid, Kernel, stencil
from physmorph.mpm.materials import (
    Material,
    elastic_energy_density,
    first_piola_stress,
    fixed_corotated_stress,
    neo_hookean_stress,
    polar_rotation,
)
from physmorph.mpm.simulate import Trajectory, control_steps, simulate
from physmorph.mpm.state import Model, State
from physmorph.mpm.step import grid_volume_estimate, splat_mass, step

__all__ = [
    "Grid",
    "Kernel",
    "Material",
    "Model",
    "State",
    "Trajectory",
    "control_steps",
    "elastic_energy_density",
    "first_piola_stress",
    "fixed_corotated_stress",
    "grid_volume_estimate",
    "neo_hookean_stress",
    "polar_rotation",
    "simulate",
    "splat_mass",
    "stencil",
    "step",
]
