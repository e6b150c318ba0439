"""The fused Triton kernels run in Triton's CPU interpreter against the reference step (no GPU needed).

Skips unless Triton is installed (the CPU build of PyTorch does not ship it: `pip install triton`).
The interpreter executes the kernels' Python bodies with NumPy, so this checks their mathematics
and indexing (values and the hand-written adjoints, float64) on any machine; speed and code
generation are checked by the GPU tests in test_fused.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]

# Runs in a child process: TRITON_INTERPRET must be set before the kernels are defined.
SCRIPT = """
import json
import torch
from physmorph.mpm import State, step
from physmorph.mpm.fused import _on_device, _per_particle
from physmorph.mpm.fused.function import FusedStep, StepSettings
from tests.mpm.test_fused import _model, _setup


def fused(state, model, control, force):
    x = state.positions
    n = x.shape[0]
    material = model.material
    return State(*FusedStep.apply(
        x, state.velocities, state.deformation_gradients, state.affine_velocities, control, force,
        _per_particle(material.lam, n, x), _per_particle(material.mu, n, x), _per_particle(model.masses, n, x),
        _per_particle(model.volumes, n, x), _on_device(model.drag, x).reshape(()),
        _on_device(model.external_force, x).reshape(3), StepSettings.of(model)))


errors = {}
for deformation, boundary, with_control in (("strong", "slip", True), ("trust_region", "sticky", False)):
    grid, t, b = _setup(deformation, torch.float64, "cpu", n=120, boundary=boundary)
    names = ("x", "v", "F", "C", "dF", "force") if with_control else ("x", "v", "F", "C")
    results = []
    for function in (step, fused):
        leaves = {k: t[k].clone().requires_grad_(True) for k in names}
        out = function(State(leaves["x"], leaves["v"], leaves["F"], leaves["C"]), _model(grid, t, b),
                       leaves.get("dF"), leaves.get("force"))
        outputs = (out.positions, out.velocities, out.deformation_gradients, out.affine_velocities)
        g = torch.Generator().manual_seed(1)
        cotangents = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outputs]
        gradients = torch.autograd.grad(outputs, list(leaves.values()), cotangents)
        results.append([o.detach() for o in outputs] + list(gradients))
    errors[f"{deformation}-{boundary}"] = max(
        float((a - r).norm() / r.norm().clamp(min=1e-30)) for a, r in zip(results[1], results[0]))
print(json.dumps(errors))
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (pip install triton)")
def test_fused_kernels_in_the_interpreter_match_the_reference_step_and_its_gradients():
    environment = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore"}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), environment.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPOSITORY, env=environment,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    errors = json.loads(run.stdout.strip().splitlines()[-1])
    assert errors and all(error < 1e-10 for error in errors.values()), errors
