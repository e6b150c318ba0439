"""Resolution-independent units of the optimisation: controls per reference step of time, mass per grid unit³.

The optimisation was tuned at the reference resolution (dx = 1 grid unit, dt = 1/120 s); these
units make its learning rate, loss weights and control sizes mean the same at any dx and dt:

- A control ΔF adds (1 − β)·ΔF to F at its step (β: the step's smoothing), which lasts; so k
  times as many steps, each k times shorter, need ΔF / k each for the same deformation. Adam
  optimises the control *rate* u (ΔF per REFERENCE_DT of simulated time) and applies
  ΔF = u · dt / REFERENCE_DT per control step: its step size, `optimization.learning_rate`, is in
  ΔF per reference step, whatever the step.
- The mass-field loss compares mass per grid unit³ (cell mass / dx³) and sums it as an integral
  over grid units³ (× dx³): the same field gives the same loss at any dx (losses.mass).
- The Chamfer distance and the arrival speed (mean |v|²) are means over particles, so they do
  not grow with N.
- Adam moves every particle's control rate by about its step size, whatever the gradient's size,
  and on a finer lattice more of the per-particle gradient is fine-scale detail of the mass field:
  steps of one size put more deformation into ripples that the elastic body stores and gives back
  in the next episode. `learning_rate_scale` = sqrt(dx / 1 grid unit) shrinks the step with the
  cell (H200, reference pair at dx = 0.25: step 0.02 springs back from the third episode on and
  the morph stalls at Chamfer 0.216; 0.01 improves in all five episodes, to 0.189; see
  BENCHMARKS.md, "Morph at scale").

At dx = 1 and dt = 1/120 s every factor is 1: the reference resolution optimises exactly as
before these units existed.
"""

from __future__ import annotations

from physmorph.mpm import Model

# the step the optimiser's settings were tuned at (SPEC §3, the bundled config), s
REFERENCE_DT = 1.0 / 120.0
# the cell size they were tuned at, grid units
REFERENCE_DX = 1.0


def control_scale(model: Model) -> float:
    """ΔF of one control step per unit of the optimised control rate: dt / REFERENCE_DT."""
    return model.dt / REFERENCE_DT


def cell_volume(model: Model) -> float:
    """Volume of one grid cell, grid units³: the mass field's density unit and integration weight."""
    return model.grid.dx**3


def learning_rate_scale(model: Model) -> float:
    """The factor on the control rates' Adam step at this cell size: sqrt(dx / REFERENCE_DX)."""
    return (model.grid.dx / REFERENCE_DX) ** 0.5
