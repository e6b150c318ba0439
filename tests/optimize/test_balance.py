"""Gradient balancing: the render share of the step, the dropped conflict, the surrogate's gradient."""

from __future__ import annotations

import torch

from physmorph.optimize.balance import balanced_gradient, balanced_surrogate

F64 = torch.float64


def test_orthogonal_render_gradient_is_scaled_to_the_ratio():
    physics = [torch.tensor([3.0, 0.0], dtype=F64), torch.tensor([[4.0]], dtype=F64)]
    render = [torch.tensor([0.0, 100.0], dtype=F64), torch.tensor([[0.0]], dtype=F64)]
    combined = balanced_gradient(physics, render, ratio=0.5)
    torch.testing.assert_close(combined[0], torch.tensor([3.0, 2.5], dtype=F64))  # |g_phys| = 5
    torch.testing.assert_close(combined[1], torch.tensor([[4.0]], dtype=F64))


def test_the_component_opposing_physics_is_dropped():
    physics = [torch.tensor([1.0, 0.0, 0.0], dtype=F64)]
    render = [torch.tensor([-2.0, 1.0, 0.0], dtype=F64)]
    combined = balanced_gradient(physics, render, ratio=0.5)[0]
    torch.testing.assert_close(combined, torch.tensor([1.0, 0.5, 0.0], dtype=F64))
    kept = balanced_gradient(physics, render, ratio=0.5, drop_conflict=False)[0]
    expected = torch.tensor([1.0, 0.0, 0.0], dtype=F64) + 0.5 * torch.tensor([-2.0, 1.0, 0.0], dtype=F64) / 5**0.5
    torch.testing.assert_close(kept, expected)
    # An agreeing render gradient keeps its direction.
    agreeing = balanced_gradient(physics, [torch.tensor([3.0, 4.0, 0.0], dtype=F64)], ratio=1.0)[0]
    torch.testing.assert_close(agreeing, torch.tensor([1.6, 0.8, 0.0], dtype=F64))


def test_a_zero_gradient_leaves_the_other_unchanged():
    physics = [torch.zeros(2, dtype=F64)]
    render = [torch.tensor([0.3, -0.1], dtype=F64)]
    torch.testing.assert_close(balanced_gradient(physics, render, 0.5)[0], render[0])
    torch.testing.assert_close(balanced_gradient(render, physics, 0.5)[0], render[0])


def test_surrogate_gradient_equals_the_balanced_gradient():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, generator=generator, dtype=F64, requires_grad=True)
    b = torch.randn(2, generator=generator, dtype=F64, requires_grad=True)
    hidden = torch.tanh(a.sum(0) * b.sum())  # a shared intermediate, as the rollout is
    physics = (hidden**2).sum() + (a**2).sum()
    render = (hidden * torch.tensor([1.0, -2.0, 0.5], dtype=F64)).sum() - b.prod()
    expected = balanced_gradient(
        torch.autograd.grad(physics, (a, b), retain_graph=True),
        torch.autograd.grad(render, (a, b), retain_graph=True),
        ratio=0.5,
    )
    surrogate = balanced_surrogate(physics, render, [a, b], ratio=0.5)
    surrogate.backward()
    torch.testing.assert_close(a.grad, expected[0])
    torch.testing.assert_close(b.grad, expected[1])
