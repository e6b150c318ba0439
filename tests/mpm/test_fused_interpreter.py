"""The fused Triton kernels run in Triton's CPU interpreter against the reference (no GPU needed).

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
from physmorph.mpm.fused import step_arguments
from physmorph.mpm.fused.function import FusedStep
from tests.mpm.test_fused import _model, _setup


def fused(state, model, control, force):
    return State(*FusedStep.apply(*step_arguments(state, model, control, force)))


errors = {}
# the third case packs 400 particles into about 36 cells: runs of ~11 that cross program edges
for deformation, boundary, with_control, n, spread in (
        ("strong", "slip", True, 120, 1.0), ("trust_region", "sticky", False, 120, 1.0),
        ("near_identity", "slip", True, 400, 0.25)):
    grid, t, b = _setup(deformation, torch.float64, "cpu", n=n, boundary=boundary)
    t["x"] = t["x"] * spread
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
    errors[f"{deformation}-{boundary}-{n}"] = max(
        float((a - r).norm() / r.norm().clamp(min=1e-30)) for a, r in zip(results[1], results[0]))
print(json.dumps(errors))
"""


# The fused return mapping against physmorph.mpm.plasticity.return_mapping, flowing and elastic
# particles, repeated eigenvalues of F Fᵀ included (identity, rotations, uniaxial stretches).
RETURN_MAPPING_SCRIPT = """
import json
import torch
from physmorph.mpm.fused.return_mapping import FusedReturnMapping, settings_values
from physmorph.mpm.plasticity import Plasticity, return_mapping
from tests.mpm.test_materials import rotation
from tests.mpm.test_plasticity import mixed_gradients, stretch

DT = torch.float64
repeated = torch.stack([
    torch.eye(3, dtype=DT), rotation([1, 2, 3], 0.7), 1.1 * rotation([0, 1, 0], 0.3),
    rotation([1, -1, 2], 0.9) @ stretch(1.3, 1 / 1.3, 1.0),
    rotation([1, 1, 0], 0.4) @ stretch(1.2, 1.2, 1 / 1.44) @ rotation([0, 0, 1], 1.0),
])
F = torch.cat([mixed_gradients(seed=3), mixed_gradients(seed=4), repeated])
g = torch.Generator().manual_seed(0)
alpha = torch.rand(len(F), generator=g, dtype=DT)
mu = 200.0 + 50.0 * torch.rand(len(F), generator=g, dtype=DT)
results = []
for fused in (False, True):
    leaves = [t.clone().requires_grad_(True) for t in (F, alpha, mu)]
    if fused:
        out = FusedReturnMapping.apply(*leaves, torch.tensor(settings_values(20.0, 30.0), dtype=DT))
    else:
        out = return_mapping(*leaves, Plasticity(20.0, 30.0))
    cotangents = [torch.randn(o.shape, generator=torch.Generator().manual_seed(1), dtype=DT) for o in out]
    results.append([o.detach() for o in out] + list(torch.autograd.grad(out, leaves, cotangents)))
flowing = int((results[0][1] > alpha).sum())
errors = {name: float((a - r).norm() / r.norm().clamp(min=1e-30))
          for name, a, r in zip(("Fe", "alpha", "gF", "galpha", "gmu"), results[1], results[0])}
print(json.dumps({"flowing": flowing, "elastic": len(F) - flowing, **errors}))
"""


def _interpret(script: str) -> dict:
    environment = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore"}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), environment.get("PYTHONPATH")]))
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (pip install triton)")
def test_fused_kernels_in_the_interpreter_match_the_reference_step_and_its_gradients():
    errors = _interpret(SCRIPT)
    assert errors and all(error < 1e-10 for error in errors.values()), errors


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (pip install triton)")
def test_fused_return_mapping_in_the_interpreter_matches_the_reference_and_its_gradients():
    result = _interpret(RETURN_MAPPING_SCRIPT)
    assert result.pop("flowing") >= 5 and result.pop("elastic") >= 5
    assert all(error < 1e-10 for error in result.values()), result
