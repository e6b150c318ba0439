"""Control rates on a lattice over the rest body: exact trilinear interpolation, gradients, episodes."""

from __future__ import annotations

import pytest
import torch

from physmorph.config import config_from_mapping
from physmorph.optimize.control_lattice import control_lattice_weights, interpolate_rates
from physmorph.optimize.episode import EpisodeProblem, optimize_adam
from physmorph.optimize.setup import build_setup
from tests.optimize.test_units import MORPH

F64 = torch.float64


def test_weights_reproduce_affine_rates_and_sum_to_one():
    g = torch.Generator().manual_seed(0)
    positions = torch.rand(500, 3, generator=g, dtype=F64) * 4.0
    spacing = 0.7
    weights = control_lattice_weights(positions, spacing)
    dense = weights.to_dense()
    assert torch.allclose(dense.sum(1), torch.ones(500, dtype=F64))
    assert (dense >= 0).all() and (dense > 0).sum(1).max() <= 8
    # the nodes: the weights' barycentre recovers each particle, so an affine field sampled at the
    # nodes interpolates to its value at the particles
    origin = positions.min(0).values
    lattice = torch.linalg.lstsq(dense, positions - origin).solution  # [L, 3] node offsets
    steps = torch.round(lattice / spacing)
    assert torch.allclose(lattice, steps * spacing, atol=1e-9)  # nodes sit on the lattice
    a, b = torch.randn(9, 3, generator=g, dtype=F64), torch.randn(9, generator=g, dtype=F64)
    node_rates = (lattice @ a.T + b).reshape(1, -1, 3, 3)
    particle_rates = interpolate_rates(weights, node_rates)
    assert torch.allclose(particle_rates[0].reshape(-1, 9), (positions - origin) @ a.T + b, atol=1e-9)


def test_a_particle_on_a_node_takes_that_node_alone():
    positions = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 0.0], [0.5, 0.5, 0.5]], dtype=F64)
    dense = control_lattice_weights(positions, 1.0).to_dense()
    assert torch.equal(dense[0].sort().values[-1:], torch.ones(1, dtype=F64))
    assert torch.equal(dense[1].sort().values[-1:], torch.ones(1, dtype=F64))
    assert torch.allclose(dense[2][dense[2] > 0], torch.full((8,), 0.125, dtype=F64))


def test_interpolation_gradcheck():
    g = torch.Generator().manual_seed(1)
    weights = control_lattice_weights(torch.rand(20, 3, generator=g, dtype=F64), 0.4)
    rates = torch.randn(2, weights.shape[1], 3, 3, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r: interpolate_rates(weights, r), (rates,))


@pytest.mark.gpu
def test_gpu_corner_sum_matches_the_cpu_sparse_product_and_its_gradcheck():
    g = torch.Generator().manual_seed(2)
    weights = control_lattice_weights(torch.rand(3000, 3, generator=g, dtype=F64) * 6.0, 1.0)
    rates = torch.randn(3, weights.shape[1], 3, 3, generator=g, dtype=F64, requires_grad=True)
    probe = torch.randn(3, 3000, 3, 3, generator=g, dtype=F64)
    (interpolate_rates(weights, rates) * probe).sum().backward()
    expected, expected_gradient = interpolate_rates(weights, rates).detach(), rates.grad.clone()
    on_gpu = rates.detach().cuda().requires_grad_()
    particles = interpolate_rates(weights.cuda(), on_gpu)
    (particles * probe.cuda()).sum().backward()
    torch.testing.assert_close(particles.detach().cpu(), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(on_gpu.grad.cpu(), expected_gradient, rtol=1e-12, atol=1e-12)
    small = control_lattice_weights(torch.rand(20, 3, generator=g, dtype=F64), 0.4).cuda()
    small_rates = torch.randn(2, small.shape[1], 3, 3, dtype=F64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(lambda r: interpolate_rates(small, r), (small_rates,))


def test_auto_lattice_is_the_same_control_space_at_every_refinement():
    mapping = MORPH | {"optimization": {**MORPH["optimization"], "control_spacing": "auto"}}
    problems = {}
    for refine in (1, 2):
        config = config_from_mapping(mapping | {"simulation": {**MORPH["simulation"], "refine": refine}})
        setup = build_setup(config, torch.device("cpu"))
        problems[refine] = (EpisodeProblem.of(setup, setup.initial, config.optimization), config)
    nodes = {refine: problem.zero_rates().shape[1] for refine, (problem, _) in problems.items()}
    for refine, (problem, _) in problems.items():
        particles = problem.initial.num_particles
        # a 1-grid-unit lattice: inside the body one node per 8 particles at refine 1, per 64 at refine 2
        assert problem.control_weights.shape == (particles, nodes[refine]) and nodes[refine] < particles / (2 * refine)
        assert problem.rate_step_scale == 1.0
    assert abs(nodes[2] - nodes[1]) <= 0.25 * nodes[1], nodes
    results = {refine: optimize_adam(problem, config.optimization) for refine, (problem, config) in problems.items()}
    fine_problem = problems[2][0]
    assert results[2].controls.shape == (fine_problem.num_controls, fine_problem.initial.num_particles, 3, 3)
    assert results[2].loss_after < 0.8 * results[2].loss_before
    # the same deformation over the episode at both resolutions
    totals = [results[refine].controls.sum(0).norm(dim=(-1, -2)).mean() for refine in (1, 2)]
    ratio = (totals[1] / totals[0]).item()
    assert 0.7 < ratio < 1.4, ratio
