import importlib
import warnings

import pytest
import torch

from physmorph.errors import InputError, SimulationDiverged
from physmorph.mpm import Material, State, control_steps, simulate
from physmorph.mpm.grid import Grid
from physmorph.mpm.plasticity import Plasticity

from .helpers import block_model, lattice_block, random_state

DT = torch.float64


def test_control_steps_match_reference_table():
    assert control_steps(10, 1) == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert control_steps(10, 2) == [0, 2, 4, 6, 8]
    assert control_steps(10, 3) == [0, 3, 6]
    assert control_steps(10, 5) == [0, 5]
    assert control_steps(10, 10) == [0]


def test_rollout_gradcheck_wrt_controls_and_material():
    x = lattice_block(0.5)
    controls = (
        0.02 * torch.randn(2, len(x), 3, 3, dtype=DT, generator=torch.Generator().manual_seed(0))
    ).requires_grad_()
    lam = torch.tensor(30.0, dtype=DT, requires_grad=True)
    mu = torch.tensor(20.0, dtype=DT, requires_grad=True)
    initial = random_state(x, seed=1, scale=0.05)

    def rollout(dF, lam, mu):
        model = block_model(x, material=Material(lam, mu, 2.0), dt=0.01)
        return simulate(initial, model, 5, dF, control_stride=3).positions[-1]

    assert torch.autograd.gradcheck(rollout, (controls, lam, mu))


def test_rollout_gradcheck_wrt_youngs_modulus_density_and_initial_state():
    x = lattice_block(0.5)
    E = torch.tensor(60.0, dtype=DT, requires_grad=True)
    nu = torch.tensor(0.3, dtype=DT, requires_grad=True)
    density = torch.tensor(2.0, dtype=DT, requires_grad=True)
    v0 = (0.1 * torch.randn(len(x), 3, dtype=DT, generator=torch.Generator().manual_seed(3))).requires_grad_()

    def rollout(E, nu, density, v0):
        model = block_model(x, material=Material.from_youngs_modulus(E, nu, density), dt=0.01, drag=0.0)
        initial = State(x, v0, torch.eye(3, dtype=DT).expand(len(x), 3, 3), torch.zeros(len(x), 3, 3, dtype=DT))
        forces = torch.zeros(len(x), 3, dtype=DT)
        forces[:, 2] = 1.0
        return simulate(initial, model, 5, forces=forces).positions[-1]

    assert torch.autograd.gradcheck(rollout, (E, nu, density, v0))


def test_rollout_gradcheck_through_plastic_flow():
    x = lattice_block(0.5)
    controls = (
        0.05 * torch.randn(2, len(x), 3, 3, dtype=DT, generator=torch.Generator().manual_seed(5))
    ).requires_grad_()
    mu = torch.tensor(20.0, dtype=DT, requires_grad=True)
    tau_y = torch.tensor(4.0, dtype=DT, requires_grad=True)
    initial = random_state(x, seed=2, scale=0.05)

    def rollout(dF, mu, tau_y):
        model = block_model(
            x, material=Material(30.0, mu, 2.0), dt=0.01, smoothing=0.5, plasticity=Plasticity(tau_y, 5.0)
        )
        trajectory = simulate(initial, model, 4, dF, control_stride=2)
        return trajectory.positions[-1], trajectory.deformation_gradients[-1], trajectory.plastic_strain[-1]

    flowing = rollout(controls, mu, tau_y)[2] > 0
    assert 0 < int(flowing.sum()) < len(x), "the check needs particles on both sides of the yield surface"
    assert torch.autograd.gradcheck(rollout, (controls, mu, tau_y))


@pytest.mark.parametrize("yield_stress", [None, 20.0], ids=["elastic", "plastic"])
def test_a_pulled_body_springs_back_unless_it_flows(yield_stress):
    x = lattice_block(1.5, 0.5)
    pull, num_steps = 30, 150
    plasticity = None if yield_stress is None else Plasticity(yield_stress)
    model = block_model(x, 0.5, dt=0.01, smoothing=0.0, drag=3.0, plasticity=plasticity)
    forces = torch.zeros(num_steps, len(x), 3, dtype=DT)
    forces[:pull, :, 0] = 60.0 * torch.sign(x[:, 0]) * model.masses  # the halves pulled apart along x
    extent = simulate(State.at_rest(x), model, num_steps, forces=forces).positions[..., 0].std(-1)
    assert extent.max() > 1.1 * extent[0]
    if plasticity is None:
        assert abs(extent[-1] / extent[0] - 1) < 0.02
    else:
        assert extent[-1] > 1.5 * extent[0]
        assert abs(extent[-1] / extent[100] - 1) < 0.03  # at rest, stretched


def test_checkpointed_rollout_gives_same_values_and_gradients():
    x = lattice_block(0.75, 0.25, dtype=torch.float32)
    model = block_model(x, 0.25)
    initial = random_state(x, scale=0.05)
    results = []
    for checkpointed in (False, True):
        controls = torch.full((4, len(x), 3, 3), 0.01, requires_grad=True)
        trajectory = simulate(initial, model, 5, controls, checkpoint_steps=checkpointed)
        (trajectory.positions[-1] ** 2).sum().backward()
        results.append((trajectory.positions, controls.grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_trajectory_shapes_and_no_input_mutation():
    x = lattice_block(0.5)
    model = block_model(x)
    initial = random_state(x)
    before = initial.positions.clone()
    trajectory = simulate(initial, model, 4)
    assert trajectory.positions.shape == (5, len(x), 3)
    assert trajectory.deformation_gradients.shape == (5, len(x), 3, 3)
    assert torch.equal(trajectory.positions[0], before) and torch.equal(initial.positions, before)
    assert torch.equal(trajectory.positions[-1], trajectory.final.positions)


def test_wrong_control_shape_is_named():
    x = lattice_block(0.5)
    with pytest.raises(InputError, match=r"expected \(2, 8, 3, 3\)"):
        simulate(State.at_rest(x), block_model(x), 4, torch.zeros(3, len(x), 3, 3, dtype=DT), control_stride=2)


def test_divergence_names_step_and_fix():
    x = lattice_block(0.5)
    grid = Grid(1.0, (-4.0, -4.0, -4.0), (4.0, 4.0, 4.0))
    model = block_model(x, grid=grid, boundary="none", drag=0.0)
    fast = State(
        x,
        torch.tensor([500.0, 0.0, 0.0], dtype=DT).expand_as(x).clone(),
        torch.eye(3, dtype=DT).expand(len(x), 3, 3),
        torch.zeros(len(x), 3, 3, dtype=DT),
    )
    with pytest.raises(SimulationDiverged, match=r"step 1: 8 of 8 particles .* reduce dt"):
        simulate(fast, model, 3)


def test_nan_control_diverges():
    x = lattice_block(0.5)
    controls = torch.zeros(1, len(x), 3, 3, dtype=DT)
    controls[0, 0, 0, 0] = float("nan")
    with pytest.raises(SimulationDiverged, match="non-finite"):
        simulate(State.at_rest(x), block_model(x), 2, controls)


def test_triton_backend_on_cpu_is_a_clear_error():
    x = lattice_block(0.5)
    with pytest.raises(InputError, match="backend 'triton' needs CUDA"):
        simulate(State.at_rest(x), block_model(x), 1, backend="triton")


def test_a_rollout_whose_graph_does_not_fit_recomputes_its_steps(monkeypatch):
    # the module, not the function physmorph.mpm exports under its name
    simulate_module = importlib.import_module("physmorph.mpm.simulate")
    x = lattice_block(0.5, 0.25)
    model = block_model(x, 0.25)
    initial = random_state(x, seed=2, scale=0.05)
    controls = 0.02 * torch.randn(4, len(x), 3, 3, dtype=DT, generator=torch.Generator().manual_seed(3))
    calls = []
    original = simulate_module.checkpoint
    monkeypatch.setattr(simulate_module, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    results = []
    for free in (1e15, 1.0):  # bytes the device has free: plenty, then too little for the graph
        monkeypatch.setattr(simulate_module, "free_memory", lambda device, free=free: free)
        leaf = controls.clone().requires_grad_()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trajectory = simulate(initial, model, 5, leaf)
            ((trajectory.positions[-1] ** 2).sum() + trajectory.deformation_gradients[-1].sum()).backward()
        results.append((trajectory.positions, leaf.grad, [w.category for w in caught]))
        assert len(calls) == (0 if free > 1 else 5)
    assert simulate_module.CheckpointingWarning not in results[0][2]
    assert simulate_module.CheckpointingWarning in results[1][2]
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=1e-12)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-10, atol=1e-12)
    # without autograd nothing is recomputed, whatever the memory
    with torch.no_grad():
        simulate(initial, model, 5, controls)
    assert len(calls) == 5
