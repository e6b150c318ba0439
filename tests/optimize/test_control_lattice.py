"""Control rates on a lattice over the rest body: exact trilinear interpolation, gradients, episodes."""

from __future__ import annotations

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


def test_refined_morph_optimises_lattice_rates_and_the_coarse_config_is_unchanged():
    mapping = MORPH | {"optimization": {**MORPH["optimization"], "control_spacing": "auto"}}
    coarse = config_from_mapping(mapping)
    coarse_setup = build_setup(coarse, torch.device("cpu"))
    coarse_problem = EpisodeProblem.of(coarse_setup, coarse_setup.initial, coarse.optimization)
    # at refine 1 the particle spacing is 0.5 already: one control per particle, as without the key
    assert coarse_problem.control_weights is None
    fine = config_from_mapping(mapping | {"simulation": {**MORPH["simulation"], "refine": 2}})
    setup = build_setup(fine, torch.device("cpu"))
    problem = EpisodeProblem.of(setup, setup.initial, fine.optimization)
    particles = setup.initial.num_particles
    nodes = problem.zero_rates().shape[1]
    assert problem.control_weights.shape == (particles, nodes) and nodes < particles / 4
    assert problem.rate_step_scale == 1.0
    result = optimize_adam(problem, fine.optimization)
    assert result.controls.shape == (problem.num_controls, particles, 3, 3)
    assert result.loss_after < 0.8 * result.loss_before
    # the same deformation over the episode as one control per particle at refine 1
    coarse_result = optimize_adam(coarse_problem, coarse.optimization)
    totals = [r.controls.sum(0).norm(dim=(-1, -2)).mean() for r in (coarse_result, result)]
    ratio = (totals[1] / totals[0]).item()
    assert 0.7 < ratio < 1.4, ratio
