"""Fused Triton MPM step against the PyTorch reference step (GPU), and its CPU fallback."""

from __future__ import annotations

import pytest
import torch

from physmorph.mpm import Grid, Material, Model, State, simulate, step
from physmorph.mpm.fused import fused_step, supports_fused
from physmorph.mpm.plasticity import Plasticity

DEFORMATIONS = ("near_identity", "strong", "trust_region")


def _setup(
    deformation: str,
    dtype: torch.dtype,
    device: str,
    n: int = 1500,
    seed: int = 0,
    boundary: str = "slip",
    per_particle: bool = True,
):
    """A random state on a 16³-cell grid whose particles reach the wall band, and its model."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    grid = Grid(1.0, (-8.0, -8.0, -8.0), (8.0, 8.0, 8.0))
    x = (rand(n, 3) - 0.5) * 13.0
    v = randn(n, 3)
    eye = torch.eye(3, dtype=torch.float64)
    C = 0.5 * randn(n, 3, 3)
    if deformation == "near_identity":
        F = eye + 0.02 * randn(n, 3, 3)
    elif deformation == "strong":
        F = (eye + 0.25 * randn(n, 3, 3)) * torch.tensor([1.7, 0.7, 1.2], dtype=torch.float64)
        F = torch.where(torch.linalg.det(F)[:, None, None] > 0.2, F, eye.expand(n, 3, 3))
    else:
        # compressed near J_min and converging: the trust region clamps most particles
        F = 0.86 * (eye + 0.02 * randn(n, 3, 3))
        v = -40.0 * x / 8.0
        C = C - 30.0 * eye
    lam = 300.0 + 100.0 * rand(n) if per_particle else torch.tensor(350.0, dtype=torch.float64)
    mu = torch.tensor(200.0, dtype=torch.float64)
    density = torch.tensor(2.0, dtype=torch.float64)
    lattice_volumes = torch.full((n,), 0.125, dtype=torch.float64)
    volumes = 0.125 * (1.0 + 0.2 * rand(n))
    tensors = {
        "x": x,
        "v": v,
        "F": F,
        "C": C,
        "dF": 0.03 * randn(n, 3, 3),
        "force": randn(n, 3),
        "lam": lam,
        "mu": mu,
        "density": density,
        "lattice_volumes": lattice_volumes,
        "volumes": volumes,
        "drag": torch.tensor(0.5, dtype=torch.float64),
        "external_force": torch.tensor([0.3, -9.8, 1.0], dtype=torch.float64),
    }
    tensors = {k: t.to(device=device, dtype=dtype) for k, t in tensors.items()}
    return grid, tensors, boundary


def _model(grid: Grid, t: dict, boundary: str, **overrides) -> Model:
    material = Material(t["lam"], t["mu"], t["density"], overrides.pop("material_model", "fixed_corotated"))
    return Model(
        grid,
        material,
        t["lattice_volumes"],
        t["volumes"],
        drag=t["drag"],
        external_force=t["external_force"],
        boundary=boundary,
        **overrides,
    )


def _run(step_function, grid, t, boundary, control: bool, force: bool, **overrides):
    model = _model(grid, t, boundary, **overrides)
    out = step_function(
        State(t["x"], t["v"], t["F"], t["C"]), model, t["dF"] if control else None, t["force"] if force else None
    )
    return out.positions, out.velocities, out.deformation_gradients, out.affine_velocities


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def test_fused_step_falls_back_to_the_reference_on_cpu():
    grid, t, boundary = _setup("strong", torch.float64, "cpu", n=200)
    assert not supports_fused(State(t["x"], t["v"], t["F"], t["C"]), _model(grid, t, boundary))
    fused = _run(fused_step, grid, t, boundary, True, True)
    reference = _run(step, grid, t, boundary, True, True)
    for a, b in zip(fused, reference):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("deformation", DEFORMATIONS)
@pytest.mark.parametrize("boundary", ["slip", "sticky", "none"])
@pytest.mark.parametrize("control", [True, False])
def test_forward_matches_reference_float64(deformation, boundary, control):
    grid, t, boundary = _setup(deformation, torch.float64, "cuda", boundary=boundary)
    assert supports_fused(State(t["x"], t["v"], t["F"], t["C"]), _model(grid, t, boundary))
    fused = _run(fused_step, grid, t, boundary, control, control)
    reference = _run(step, grid, t, boundary, control, control)
    for a, b in zip(fused, reference):
        assert _relative(a, b) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("deformation", DEFORMATIONS)
def test_forward_matches_reference_float32(deformation):
    grid, t64, boundary = _setup(deformation, torch.float64, "cuda")
    t32 = {k: v.float() for k, v in t64.items()}
    fused = _run(fused_step, grid, t32, boundary, True, True)
    reference = _run(step, grid, t64, boundary, True, True)
    for a, b in zip(fused, reference):
        assert a.dtype == torch.float32
        assert _relative(a.double(), b) < 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("deformation", DEFORMATIONS)
@pytest.mark.parametrize("boundary", ["slip", "sticky"])
@pytest.mark.parametrize("per_particle", [True, False])
def test_gradients_match_reference(deformation, boundary, per_particle):
    grid, t, boundary = _setup(deformation, torch.float64, "cuda", boundary=boundary, per_particle=per_particle)
    leaves = {k: v.clone().requires_grad_(True) for k, v in t.items()}
    weights = None
    gradients = []
    for step_function in (fused_step, step):
        out = _run(step_function, grid, leaves, boundary, True, True)
        if weights is None:
            g = torch.Generator(device="cuda").manual_seed(1)
            weights = [torch.randn(o.shape, generator=g, device="cuda", dtype=o.dtype) for o in out]
        loss = sum((o * w).sum() for o, w in zip(out, weights))
        gradients.append(torch.autograd.grad(loss, list(leaves.values())))
    for name, a, b in zip(leaves, *gradients):
        assert _relative(a, b) < 1e-4, name


@pytest.mark.gpu
@pytest.mark.parametrize("deformation", ["near_identity", "strong"])
def test_plastic_step_matches_reference_values_and_gradients(deformation):
    grid, t, boundary = _setup(deformation, torch.float64, "cuda")
    leaves = {k: v.clone().requires_grad_(True) for k, v in t.items()}
    plasticity = Plasticity(yield_stress=8.0, hardening=50.0)
    alpha = torch.linspace(0.0, 0.2, len(t["x"]), dtype=torch.float64, device="cuda")
    outputs, gradients = [], []
    for step_function in (fused_step, step):
        model = _model(grid, leaves, boundary, plasticity=plasticity)
        state = State(leaves["x"], leaves["v"], leaves["F"], leaves["C"], alpha)
        result = step_function(state, model, leaves["dF"], leaves["force"])
        out = result.tensors
        g = torch.Generator(device="cuda").manual_seed(2)
        loss = sum((o * torch.randn(o.shape, generator=g, device="cuda", dtype=o.dtype)).sum() for o in out)
        outputs.append(out)
        gradients.append(torch.autograd.grad(loss, list(leaves.values())))
    assert (outputs[1][4] > alpha).float().mean() > 0.2, "the check needs particles that flow"
    for a, b in zip(*outputs):
        assert _relative(a, b) < 1e-4
    for name, a, b in zip(leaves, *gradients):
        assert _relative(a, b) < 1e-4, name


@pytest.mark.gpu
def test_float32_plastic_step_close_to_float64_reference():
    grid, t64, boundary = _setup("near_identity", torch.float64, "cuda")
    plasticity = Plasticity(yield_stress=8.0, hardening=50.0)
    results = []
    for step_function, dtype in ((fused_step, torch.float32), (step, torch.float64)):
        leaves = {k: v.to(dtype).requires_grad_(True) for k, v in t64.items()}
        alpha = torch.linspace(0.0, 0.2, len(t64["x"]), dtype=dtype, device="cuda")
        model = _model(grid, leaves, boundary, plasticity=plasticity)
        out = step_function(
            State(leaves["x"], leaves["v"], leaves["F"], leaves["C"], alpha), model, leaves["dF"], leaves["force"]
        ).tensors
        loss = sum((o.double() * torch.sin(o.double())).sum() for o in out)
        results.append(
            [o.detach().double() for o in out] + [g.double() for g in torch.autograd.grad(loss, list(leaves.values()))]
        )
    for a, b in zip(*results):
        assert _relative(a, b) < 1e-3


@pytest.mark.gpu
def test_gradient_without_control_or_force_matches_reference():
    grid, t, boundary = _setup("strong", torch.float64, "cuda")
    names = ["x", "v", "F", "C", "lam", "mu", "volumes"]
    leaves = {k: t[k].clone().requires_grad_(True) for k in names}
    t = {**t, **leaves}
    gradients = []
    for step_function in (fused_step, step):
        out = _run(step_function, grid, t, boundary, False, False)
        loss = sum((o * torch.cos(o)).sum() for o in out)
        gradients.append(torch.autograd.grad(loss, list(leaves.values())))
    for name, a, b in zip(names, *gradients):
        assert _relative(a, b) < 1e-4, name


@pytest.mark.gpu
def test_float32_gradients_close_to_float64_reference():
    grid, t64, boundary = _setup("near_identity", torch.float64, "cuda")
    leaves32 = {k: v.float().requires_grad_(True) for k, v in t64.items()}
    leaves64 = {k: v.clone().requires_grad_(True) for k, v in t64.items()}
    results = []
    for step_function, leaves in ((fused_step, leaves32), (step, leaves64)):
        out = _run(step_function, grid, leaves, boundary, True, True)
        loss = sum((o.double() * torch.sin(o.double())).sum() for o in out)
        results.append(torch.autograd.grad(loss, list(leaves.values())))
    for name, a, b in zip(leaves32, *results):
        assert _relative(a.double(), b) < 1e-3, name


def _rollout_setup(device: str, dtype: torch.dtype, n_side: int = 10):
    """A resting block of the bundled-config material with small random controls."""
    g = torch.Generator().manual_seed(3)
    grid = Grid(1.0, (-8.0, -8.0, -8.0), (8.0, 8.0, 8.0))
    ticks = (torch.arange(n_side, dtype=torch.float64) - (n_side - 1) / 2) * 0.5
    x = torch.stack(torch.meshgrid(ticks, ticks, ticks, indexing="ij"), -1).reshape(-1, 3)
    n = x.shape[0]
    x = x + 0.05 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    controls = 2e-3 * torch.randn(10, n, 3, 3, generator=g, dtype=torch.float64)
    lam = torch.tensor(38888.89, dtype=torch.float64)
    mu = torch.tensor(58333.3, dtype=torch.float64)
    cast = {"device": device, "dtype": dtype}
    return grid, x.to(**cast), controls.to(**cast), lam.to(**cast), mu.to(**cast)


@pytest.mark.gpu
@pytest.mark.parametrize("checkpoint_steps", [False, True])
def test_twenty_step_rollout_gradient_matches_reference(checkpoint_steps):
    grid, x, controls, lam, mu = _rollout_setup("cuda", torch.float64)
    results = []
    for backend in ("triton", "torch"):
        dF = controls.clone().requires_grad_(True)
        lam_leaf = lam.clone().requires_grad_(True)
        mu_leaf = mu.clone().requires_grad_(True)
        model = Model(
            grid,
            Material(lam_leaf, mu_leaf, 75.0),
            torch.full_like(x[:, 0], 0.125),
            torch.full_like(x[:, 0], 0.125),
            external_force=(0.0, 0.0, -9.8),
        )
        trajectory = simulate(
            State.at_rest(x),
            model,
            20,
            dF,
            control_stride=2,
            checkpoint_steps=checkpoint_steps and backend == "triton",
            backend=backend,
        )
        final = trajectory.final
        loss = (final.positions**2).sum() + 10.0 * (final.deformation_gradients**2).sum()
        results.append((final.positions.detach(), *torch.autograd.grad(loss, (dF, lam_leaf, mu_leaf))))
    for a, b in zip(*results):
        assert _relative(a, b) < 1e-3


def _dense_block_step_results(device: str) -> list[list[torch.Tensor]]:
    """One controlled step of a dense block (8 particles per cell) in float32 through fused_step and
    in float64 through the reference: outputs and the gradients of a nonlinear loss, as float64."""
    grid, x, controls, lam, mu = _rollout_setup(device, torch.float64)
    g = torch.Generator().manual_seed(5)
    n = x.shape[0]
    cast = {"device": device, "dtype": torch.float64}
    v = 0.5 * torch.randn(n, 3, generator=g, dtype=torch.float64).to(**cast)
    F = (torch.eye(3, dtype=torch.float64) + 0.05 * torch.randn(n, 3, 3, generator=g, dtype=torch.float64)).to(**cast)
    C = 0.2 * torch.randn(n, 3, 3, generator=g, dtype=torch.float64).to(**cast)
    results = []
    for dtype, function in ((torch.float32, fused_step), (torch.float64, step)):
        leaves = [t.to(dtype).clone().requires_grad_(True) for t in (x, v, F, C, controls[0])]
        volumes = torch.full_like(leaves[0][:, 0], 0.125).detach()
        model = Model(
            grid, Material(lam.to(dtype), mu.to(dtype), 75.0), volumes, volumes.clone(), external_force=(0.0, 0.0, -9.8)
        )
        out = function(State(*leaves[:4]), model, leaves[4])
        outputs = (out.positions, out.velocities, out.deformation_gradients, out.affine_velocities)
        loss = sum((o.double() * torch.sin(o.double())).sum() for o in outputs)
        gradients = torch.autograd.grad(loss, leaves)
        results.append([o.detach().double() for o in outputs] + [gradient.double() for gradient in gradients])
    return results


@pytest.mark.gpu
def test_float32_dense_block_step_close_to_float64_reference():
    # runs of 8 particles per cell that cross program edges: on sm_90 the float32 path's 16-byte
    # grid reductions and row loads (function.vector_rows)
    for a, b in zip(*_dense_block_step_results("cuda")):
        assert _relative(a, b) < 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("overrides", [{"kernel": "quadratic"}, {"material_model": "neo_hookean"}])
def test_unsupported_settings_run_the_reference(overrides):
    grid, t, boundary = _setup("strong", torch.float64, "cuda", n=300)
    assert not supports_fused(State(t["x"], t["v"], t["F"], t["C"]), _model(grid, t, boundary, **overrides))
    fused = _run(fused_step, grid, t, boundary, True, True, **overrides)
    reference = _run(step, grid, t, boundary, True, True, **overrides)
    for a, b in zip(fused, reference):
        # the reference's CUDA index_add sums in a run-dependent order
        assert _relative(a, b) < 1e-12


def test_host_numbers_become_one_cached_device_tensor_and_tensors_keep_their_graph():
    from physmorph.mpm.fused import _on_device

    like = torch.zeros(2, dtype=torch.float64)
    gravity = _on_device((0.0, -9.8, 0.0), like)
    assert gravity is _on_device(torch.tensor([0.0, -9.8, 0.0], dtype=torch.float64), like)
    assert gravity.dtype == torch.float64 and gravity.tolist() == [0.0, -9.8, 0.0]
    assert _on_device(0.5, like) is _on_device(0.5, like)
    stiffness = torch.tensor(3.0, requires_grad=True)
    (2.0 * _on_device(stiffness, like)).sum().backward()
    assert stiffness.grad == 2.0


def test_vector_rows_only_for_float32_on_a_cuda_device(monkeypatch):
    from physmorph.mpm.fused.function import vector_rows

    assert not vector_rows(torch.zeros(4, 3))
    if torch.cuda.is_available():
        on_gpu = torch.zeros(4, 3, device="cuda")
        assert vector_rows(on_gpu) == (torch.version.hip is None and torch.cuda.get_device_capability() >= (9, 0))
        assert not vector_rows(on_gpu.double())
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert not vector_rows(on_gpu)
