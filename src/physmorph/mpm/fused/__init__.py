"""Fused GPU MPM step (Triton): same contract and results as physmorph.mpm.step.step.

The fast path covers the cubic B-spline, the fixed-corotated material and every wall condition
('slip', 'sticky', 'none') for float32 and float64 CUDA tensors. Everything else (CPU tensors,
no Triton, the quadratic kernel, Neo-Hookean, other dtypes) runs the reference `step`.
Differences from the reference: the polar rotation comes from a Newton iteration, so for
inverted F + ΔF (det ≤ 0) the fused step uses the orthogonal polar factor (det −1) where the
reference flips the smallest singular value; the trust region keeps such steps rare.
Triton is imported only when a fused step runs, so importing this package never needs it.
"""

from __future__ import annotations

import importlib.util

import torch

from physmorph.mpm.state import Model, State
from physmorph.mpm.step import step

__all__ = ["fused_step", "supports_fused"]


def supports_fused(state: State, model: Model) -> bool:
    """Whether `fused_step` runs the Triton kernels for this state and model (else the reference)."""
    x = state.positions
    return (
        x.is_cuda
        and x.dtype in (torch.float32, torch.float64)
        and x.shape[0] > 0
        and model.kernel == "cubic"
        and model.material.model == "fixed_corotated"
        and model.grid.num_nodes * 4 < 2**31
        and importlib.util.find_spec("triton") is not None
    )


def _per_particle(value: torch.Tensor | float, n: int, like: torch.Tensor) -> torch.Tensor:
    """A scalar or [N] parameter as an [N] tensor (a stride-0 view for scalars)."""
    tensor = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return tensor.reshape(-1).expand(n) if tensor.numel() == 1 else tensor.reshape(n).contiguous()


def fused_step(
    state: State,
    model: Model,
    deformation_control: torch.Tensor | None = None,
    force: torch.Tensor | None = None,
) -> State:
    """Advance `state` by one step of `model.dt` with the fused kernels (see physmorph.mpm.step.step).

    deformation_control: ΔF [N, 3, 3] added to F before the stress (consumed by this step)
    force:               per-particle force [N, 3] (mass · grid units / s²), optional
    Differentiable in x, v, F, C, ΔF, force, λ, μ, density (masses), volumes, drag and the
    external force.
    """
    if not supports_fused(state, model):
        return step(state, model, deformation_control, force)
    from physmorph.mpm.fused.function import FusedStep, StepSettings

    x = state.positions
    n, dtype, device = x.shape[0], x.dtype, x.device
    material = model.material
    outputs = FusedStep.apply(
        x.contiguous(),
        state.velocities.contiguous(),
        state.deformation_gradients.contiguous(),
        state.affine_velocities.contiguous(),
        None if deformation_control is None else deformation_control.to(dtype).contiguous(),
        None if force is None else force.to(dtype).contiguous(),
        _per_particle(material.lam, n, x),
        _per_particle(material.mu, n, x),
        _per_particle(model.masses, n, x),
        _per_particle(model.volumes, n, x),
        torch.as_tensor(model.drag, dtype=dtype, device=device).reshape(()),
        torch.as_tensor(model.external_force, dtype=dtype, device=device).reshape(3).contiguous(),
        StepSettings.of(model),
    )
    return State(*outputs)
