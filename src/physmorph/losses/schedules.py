"""Weight schedules of the render losses over training progress: constant, linear, cosine."""

from __future__ import annotations

import math
from typing import Literal

from physmorph.errors import ConfigError

Schedule = Literal["constant", "linear", "cosine"]
SCHEDULES: tuple[str, ...] = ("constant", "linear", "cosine")


def schedule_factor(schedule: Schedule, progress: float) -> float:
    """The factor in [0, 1] that multiplies the render-loss weights at `progress` ∈ [0, 1].

    constant: 1 throughout; linear: p (render terms fade in as training proceeds); cosine:
    (1 − cos πp) / 2 (the same ramp, flat at both ends). `progress` is clamped to [0, 1].
    The physics weight w_phys is never scheduled, so an early iteration is mostly physics.
    """
    p = min(max(float(progress), 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return p
    if schedule == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * p))
    raise ConfigError(f"loss schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")


def training_progress(iteration: int, iterations: int) -> float:
    """Progress p ∈ [0, 1] of `iteration` (0-based) in a run of `iterations` gradient steps."""
    return iteration / max(iterations - 1, 1)
