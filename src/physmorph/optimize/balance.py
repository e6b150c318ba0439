"""Balance the image-loss gradient against the physics gradient before they are added."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum(((x * y).sum() for x, y in zip(a, b)), torch.zeros((), dtype=a[0].dtype, device=a[0].device))


def balanced_gradient(
    physics: Sequence[torch.Tensor],
    render: Sequence[torch.Tensor],
    ratio: float,
    drop_conflict: bool = True,
) -> list[torch.Tensor]:
    """g = g_phys + s·g_render', one tensor per parameter (all lists in the same order).

    g_render' is the render gradient less its component along −g_phys when the two oppose
    (g_render·g_phys < 0 and `drop_conflict`), so the images never undo the physics step; s makes
    |s·g_render'| = `ratio`·|g_phys|, so the images steer with a fixed share of the step whatever
    the size of their losses. Where either gradient is zero the other is returned unchanged.
    """
    # Branch-free (torch.where, no bool()) so that a CUDA evaluation never waits for the device here.
    physics_norm_sq = _dot(physics, physics)
    tiny = torch.finfo(physics_norm_sq.dtype).tiny
    has_physics = physics_norm_sq > 0
    render_part = list(render)
    if drop_conflict:
        overlap = _dot(render_part, physics)
        along = torch.where((overlap < 0) & has_physics, overlap / physics_norm_sq.clamp_min(tiny), 0.0)
        render_part = [r - along * p for r, p in zip(render_part, physics)]
    render_norm = _dot(render_part, render_part).sqrt()
    balanced = ratio * physics_norm_sq.sqrt() / render_norm.clamp_min(tiny)
    scale = torch.where((render_norm > 0) & has_physics, balanced, 1.0)
    return [p + scale * r for p, r in zip(physics, render_part)]


def balanced_surrogate(
    physics_loss: torch.Tensor,
    render_loss: torch.Tensor,
    parameters: Sequence[torch.Tensor],
    ratio: float,
    drop_conflict: bool = True,
) -> torch.Tensor:
    """A scalar whose gradient with respect to `parameters` is `balanced_gradient` of the two
    losses' gradients (two backward passes through the shared graph happen here)."""
    physics = torch.autograd.grad(physics_loss, parameters, retain_graph=True, allow_unused=True)
    render = torch.autograd.grad(render_loss, parameters, allow_unused=True)
    physics = [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, physics)]
    render = [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, render)]
    combined = balanced_gradient(physics, render, ratio, drop_conflict)
    return sum(((p * g.detach()).sum() for p, g in zip(parameters, combined)), physics_loss.new_zeros(()))


def balanced_objective(physics: float, render: float, start: tuple[float, float], ratio: float) -> float:
    """physics / physics₀ + ratio · render / render₀: the value that picks the best iterate when
    gradients are balanced, each part relative to its value `start` at the episode's start, so
    an iterate that trades a little physics loss for a better image match can win (the raw sum
    is ruled by the physics loss, thousands against a few tenths)."""
    physics_start, render_start = start
    value = physics / physics_start if physics_start > 0 else physics
    return value + ratio * (render / render_start if render_start > 0 else render)
