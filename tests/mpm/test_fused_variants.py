"""A fused-kernel rollout compiles one variant of each kernel (Triton's CPU interpreter, no GPU needed).

Skips unless Triton is installed. An interpreted episode (driven steps with ΔF, the last one
without, free steps, backward) runs the kernels; each launch's arguments go through the
specialisation that Triton's JIT applies on a GPU, and every kernel must get a single variant:
each further one would be a full compile in a morph's first episode.
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
import importlib
import json
import torch
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

import physmorph.mpm.fused as fused
from physmorph.mpm import State
from physmorph.mpm.fused import kernels
from physmorph.triton_jit import runtime_arguments
from tests.mpm.test_fused import _model, _setup

simulate = importlib.import_module("physmorph.mpm.simulate")
backend = make_backend(GPUTarget("cuda", 90, 32))
variants = {}


class Specialising:
    # an interpreted kernel whose launches also record the JIT's specialisation of their arguments
    def __init__(self, name, interpreted):
        names = runtime_arguments(interpreted.fn)
        jit = JITFunction(interpreted.fn, do_not_specialize=names, do_not_specialize_on_alignment=names)
        self.bind = create_function_from_signature(jit.signature, jit.params, backend)
        self.name, self.interpreted = name, interpreted
        variants[name] = set()

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            _, specialisation, options = self.bind(*args, **kwargs)
            variants[self.name].add(repr((specialisation, sorted(options.items()))))
            return self.interpreted[grid](*args, **kwargs)

        return launch


names = ("cell_keys", "p2g_forward", "grid_velocity", "g2p_forward", "g2p_backward", "grid_backward", "p2g_backward")
for name in names:
    setattr(kernels, name, Specialising(name, getattr(kernels, name)))
fused.supports_fused = lambda state, model: True  # the interpreter runs CPU tensors
simulate.select_step = lambda backend, device: fused.fused_step
# 37 particles: a slice of a stacked [T, N, 3, 3] tensor at an odd index is not 16-byte aligned
n, steps = 37, 3
grid, t, b = _setup("near_identity", torch.float32, "cpu", n=n, boundary="slip", per_particle=False)
model = _model(grid, t, b)
state = State(t["x"], 0.1 * t["v"], t["F"], torch.zeros_like(t["C"]))
controls = (1e-3 * torch.randn(len(simulate.control_steps(steps, 1)), n, 3, 3)).requires_grad_()
driven = simulate.simulate(state, model, steps, controls, 1, check_divergence=False)
free = simulate.simulate(driven.final, model, 1, check_divergence=False)
(driven.positions.square().sum() + free.positions[-1].square().sum()).backward()
print(json.dumps({name: len(found) for name, found in variants.items()}))
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (pip install triton)")
def test_an_episode_compiles_one_variant_per_kernel() -> None:
    env = os.environ | {
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join([str(REPOSITORY / "src"), str(REPOSITORY)]),
    }
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts == dict.fromkeys(counts, 1)
    assert len(counts) == 7
