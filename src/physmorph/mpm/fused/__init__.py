"""Fused GPU MPM step (Triton): same contract and results as physmorph.mpm.step.step.

The fast path covers the cubic B-spline, the fixed-corotated material and every wall condition
('slip', 'sticky', 'none') for float32 and float64 CUDA tensors, and von Mises plasticity
(return_mapping.py; a yield stress or hardening that needs a gradient runs the reference return
mapping on the fused step's F instead). Everything else (CPU tensors,
no Triton, the quadratic kernel, Neo-Hookean, other dtypes) runs the reference `step`.
Differences from the reference: the polar rotation comes from a Newton iteration, so for
inverted F + ΔF (det ≤ 0) the fused step uses the orthogonal polar factor (det −1) where the
reference flips the smallest singular value; the trust region keeps such steps rare.
Triton is imported only when a fused step runs, so importing this package never needs it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch

from physmorph.device_constants import device_constant
from physmorph.mpm.state import Model, State
from physmorph.mpm.step import plastic_flow, step

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


def _on_device(value: torch.Tensor | float | Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """A model parameter as a flat tensor of `like`'s dtype and device.

    Host numbers go through a cache: every host-to-device copy synchronises the stream, which
    would stall the GPU once per step.
    """
    if isinstance(value, torch.Tensor):
        if value.device.type == "cpu" and not value.requires_grad:
            value = value.reshape(-1).tolist()
        else:
            return value.to(dtype=like.dtype, device=like.device).reshape(-1)
    values = (float(value),) if isinstance(value, (int, float)) else tuple(float(v) for v in value)
    return device_constant(values, like.dtype, like.device)


def _per_particle(value: torch.Tensor | float, n: int, like: torch.Tensor) -> torch.Tensor:
    """A scalar or [N] parameter as an [N] tensor (a stride-0 view for scalars)."""
    tensor = _on_device(value, like)
    return tensor.expand(n) if tensor.numel() == 1 else tensor.reshape(n).contiguous()


def fused_step(
    state: State,
    model: Model,
    deformation_control: torch.Tensor | None = None,
    force: torch.Tensor | None = None,
) -> State:
    """Advance `state` by one step of `model.dt` with the fused kernels (see physmorph.mpm.step.step).

    deformation_control: ΔF [N, 3, 3] added to F before the stress (consumed by this step)
    force:               per-particle force [N, 3] (mass · grid units / s²), optional
    Differentiable in x, v, F, C, the plastic strain α, ΔF, force, λ, μ, density (masses),
    volumes, drag and the external force.
    """
    if not supports_fused(state, model):
        return step(state, model, deformation_control, force)
    from physmorph.mpm.fused.function import FusedStep

    x = state.positions
    n, dtype = x.shape[0], x.dtype
    material = model.material
    x_new, v_new, F_trial, C_new = FusedStep.apply(*step_arguments(state, model, deformation_control, force))
    plasticity = model.plasticity
    if plasticity is None or not (_host_number(plasticity.yield_stress) and _host_number(plasticity.hardening)):
        F_new, plastic_strain = plastic_flow(F_trial, state, model)
        return State(x_new, v_new, F_new, C_new, plastic_strain)
    from physmorph.mpm.fused.return_mapping import FusedReturnMapping, settings_values

    F_new, plastic_strain = FusedReturnMapping.apply(
        F_trial,
        state.tensors[4].to(dtype),
        _per_particle(material.mu, n, x),
        device_constant(settings_values(float(plasticity.yield_stress), float(plasticity.hardening)), dtype, x.device),
    )
    return State(x_new, v_new, F_new, C_new, plastic_strain)


def step_arguments(
    state: State, model: Model, deformation_control: torch.Tensor | None, force: torch.Tensor | None
) -> tuple:
    """FusedStep.apply's arguments for one step of `state` (see FusedStep)."""
    from physmorph.mpm.fused.function import StepSettings

    x = state.positions
    n, dtype = x.shape[0], x.dtype
    material = model.material
    return (
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
        _on_device(model.drag, x).reshape(()),
        _on_device(model.external_force, x).reshape(3).contiguous(),
        StepSettings.of(model),
    )


def _host_number(value: torch.Tensor | float) -> bool:
    """Whether a plasticity parameter is a host number (the fused return mapping takes no gradient in it)."""
    if not isinstance(value, torch.Tensor):
        return True
    return value.device.type == "cpu" and value.numel() == 1 and not value.requires_grad
