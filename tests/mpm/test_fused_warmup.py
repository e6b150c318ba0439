"""The GPU kernels' ahead-of-time warm-up on a machine without a GPU (Triton compiles for sm_90).

Skips unless Triton is installed. A child process stands in a driver that only names the sm_90
target (no launch can happen), records the variants a step and a k-NN search launch, compiles them
in threads into an empty cache, and checks that the launch path of Triton's JIT would find each
one there under the key it computes itself.
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

SCRIPT = """
import json
import os
import warnings
from dataclasses import replace

import torch
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

TARGET = GPUTarget("cuda", 90, 32)


class TargetOnlyDriver:
    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return TARGET


driver.set_active(TargetOnlyDriver())
import physmorph.mpm.fused as fused
import physmorph.surface.knn as knn
from physmorph.mpm.fused import warmup
from physmorph.mpm.plasticity import Plasticity
from tests.mpm.test_fused import _model, _setup

fused.supports_fused = lambda state, model: True  # the probe's tensors are on the CPU
knn._kernel_available = lambda queries: True
grid, t, b = _setup("near_identity", torch.float32, "cpu", n=50, boundary="sticky")
model = _model(grid, t, b)
state, probe = warmup._probe(model, torch.float32, torch.device("cpu"))
variants = warmup.pending_variants(state, probe)
names = sorted(json.loads(variant)["name"].rsplit(".", 1)[1] for variant in variants)


def search_names(searches):
    recorded = warmup.pending_variants(state, probe, searches)
    return sorted(json.loads(v)["name"].rsplit(".", 1)[1] for v in recorded if "nearest" in json.loads(v)["name"])


# the reference morph's Chamfer searches (11k x 9k) fit the all-pairs kernel, dx 0.5's (89k x 71k) take the grid
by_size = {"none": search_names([]), "small": search_names([(11166, 9171), (9171, 11166)]),
           "large": search_names([(89000, 71000)]), "tiny": search_names([(10, 4000)])}

# the key of each variant as the JIT's own launch path computes it (its _do_compile, unchanged
# up to the compile), against the key of the variant rebuilt from its JSON
jit_keys = {}


def keys_only(self, key, signature, device, constexprs, options, attrs, warmup):
    jit_keys[self.fn.__name__] = warmup_module.cache_key(
        ASTSource(self, signature, constexprs, attrs), TARGET, options.__dict__)
    return None


warmup_module = warmup
original = JITFunction._do_compile
JITFunction._do_compile = keys_only
warmup.pending_variants(state, probe)
JITFunction._do_compile = original
rebuilt = {json.loads(v)["name"].rsplit(".", 1)[1]: warmup.cache_key(*warmup.variant_source(v)) for v in variants}

started = warmup.start_warm_up(model, torch.float32, torch.device("cpu"), workers=2)
seconds = started.wait()
again = warmup.start_warm_up(model, torch.float32, torch.device("cpu"), workers=2)
plastic = warmup._probe(replace(model, plasticity=Plasticity(50.0, 10.0)), torch.float32, torch.device("cpu"))
plastic_names = sorted(
    json.loads(v)["name"].rsplit(".", 1)[1] for v in warmup.pending_variants(*plastic) if not warmup.is_cached(v))

# hook data that cannot be rebuilt: the dry step stops at the first uncompiled kernel, with a warning
rebuilds = []


def unreadable(variant):
    rebuilds.append(variant)
    raise KeyError("target")


readable, warmup.variant_source = warmup.variant_source, unreadable
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    failed = warmup.start_warm_up(replace(model, plasticity=Plasticity(50.0, 10.0)), torch.float32, torch.device("cpu"))
warmup.variant_source = readable
print(json.dumps({
    "failed": failed is None,
    "failure_warnings": [type(warning.message).__name__ for warning in caught],
    "rebuilds": len(rebuilds),
    "plastic_names": plastic_names,
    "names": names,
    "by_size": by_size,
    "keys_match": rebuilt == jit_keys,
    "cached": [warmup.is_cached(v) for v in variants],
    "threads": len(started.names),
    "timed": sorted(name.rsplit(".", 1)[1] for name in seconds),
    "again": again is None,
}))
"""


def _run_child(script: str, tmp_path: Path, extra_env: dict[str, str] | None = None) -> dict:
    """Run `script` in a child Python on an empty Triton cache; return the JSON of its last line."""
    env = os.environ | {
        # the caller's path after the repository's, so a Triton installed beside the venv's is the one tested
        "PYTHONPATH": os.pathsep.join([str(REPOSITORY / "src"), str(REPOSITORY), os.environ.get("PYTHONPATH", "")]),
        "TRITON_CACHE_DIR": str(tmp_path / "cache"),
        **(extra_env or {}),
    }
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (pip install triton)")
def test_warm_up_compiles_what_a_step_launches(tmp_path: Path) -> None:
    result = _run_child(SCRIPT, tmp_path, {"TRITON_DEFAULT_FP_FUSION": "1", "TRITON_INTERPRET": "0"})
    kernels = ["cell_keys", "g2p_backward", "g2p_forward", "grid_backward", "grid_velocity", "p2g_backward"]
    search = ["_nearest_by_traversal", "_nearest_in_neighbouring_cells", "_nearest_of_all"]
    assert result["names"] == sorted([*kernels, "p2g_forward", *search])
    assert result["keys_match"]
    assert result["by_size"] == {
        "none": [],
        "small": ["_nearest_of_all"],
        "large": ["_nearest_by_traversal", "_nearest_in_neighbouring_cells"],
        "tiny": ["_nearest_of_all"],
    }
    assert all(result["cached"])
    assert result["threads"] == len(result["names"])
    assert result["timed"] == result["names"]
    assert result["again"]  # everything cached: nothing to start
    # elastic kernels compiled already; the return mapping's two are new
    assert result["plastic_names"] == ["return_mapping_backward", "return_mapping_forward"]
    assert result["failed"]
    assert result["failure_warnings"] == ["WarmUpWarning"]
    assert result["rebuilds"] == 1


GPU_SCRIPT = """
import json
import warnings

import torch

from physmorph.mpm.fused import warmup
from tests.mpm.test_fused import _model, _setup

warnings.simplefilter("error", warmup.WarmUpWarning)  # a variant that failed to compile or load fails the test
grid, t, b = _setup("near_identity", torch.float32, "cuda", n=50, boundary="sticky")
started = warmup.start_warm_up(_model(grid, t, b), torch.float32, torch.device("cuda"))  # no index, as run_morph
seconds = started.wait()
again = warmup.start_warm_up(_model(grid, t, b), torch.float32, torch.device("cuda"))
print(json.dumps({"names": sorted(started.names), "timed": sorted(seconds), "again": again is None}))
"""


@pytest.mark.gpu
def test_warm_up_compiles_and_loads_every_variant_on_cuda(tmp_path: Path) -> None:
    result = _run_child(GPU_SCRIPT, tmp_path)
    assert len(result["names"]) == 10, result["names"]  # 7 fused-step kernels and the 3 k-NN kernels
    assert result["timed"] == sorted(set(result["names"]))
    assert result["again"]
