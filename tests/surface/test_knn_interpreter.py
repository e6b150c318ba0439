"""The grid search's Triton kernels (k = 1: the first pass and the walk of the Morton blocks) in
Triton's CPU interpreter against the all-pairs search.

Skips unless Triton is installed. The interpreter runs the kernel's Python body with NumPy, so
this checks its indexing and tie rule on any machine; the GPU test in test_knn.py runs it compiled.
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.mpm.test_fused_interpreter import _interpret

# Runs in a child process: TRITON_INTERPRET must be set before the kernel is defined.
SCRIPT = """
import json
import torch
import physmorph.surface.knn_kernel as kernel
from physmorph.surface.knn import grid_nearest_neighbors
from tests.surface.test_knn import _assert_exact

calls, walks = [], []
original, walk = kernel.nearest_in_neighbouring_cells, kernel.nearest_by_traversal
kernel.nearest_in_neighbouring_cells = lambda *args: calls.append(1) or original(*args)
kernel.nearest_by_traversal = lambda *args: walks.append(1) or walk(*args)
g = torch.Generator().manual_seed(2)
sphere = torch.nn.functional.normalize(torch.randn(800, 3, generator=g), dim=-1)
lattice = torch.cartesian_prod(*[torch.arange(10.0)] * 3) * 0.5
cases = {
    "random": (torch.rand(300, 3, generator=g), torch.rand(1500, 3, generator=g)),
    "lattice ties": (lattice[::7] + 0.25, lattice),
    "far queries": (torch.rand(60, 3, generator=g) * 10 + 20, torch.rand(1500, 3, generator=g)),
    "plane": (torch.rand(300, 3, generator=g), torch.cat([torch.rand(1500, 2, generator=g), torch.zeros(1500, 1)], 1)),
    "coincident": (torch.rand(100, 3, generator=g), torch.ones(1500, 3)),
    "two bodies": (torch.randn(96, 3, generator=g) + torch.tensor([2.0, 0.0, 0.0]), torch.randn(800, 3, generator=g)),
    "hollow sphere": (torch.randn(64, 3, generator=g) * 0.1, sphere),
}
checked = []
for dtype in (torch.float32, torch.float64):
    for name, (queries, points) in cases.items():
        _assert_exact(queries.to(dtype), points.to(dtype), 1)
        checked.append(name)
print(json.dumps({"checked": len(checked), "kernel_calls": len(calls), "walks": len(walks)}))
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (pip install triton)")
def test_k1_kernels_in_the_interpreter_match_the_all_pairs_search():
    result = _interpret(SCRIPT)
    # the far queries, the two bodies and the hollow sphere leave queries open for the walk
    assert result == {"checked": 14, "kernel_calls": 14, "walks": 6}, result


# Runs in a child process, as above: nearest_neighbors takes the all-pairs kernel for k = 1.
ALL_PAIRS_SCRIPT = """
import json
import torch
import physmorph.surface.knn_kernel as kernel
from physmorph.surface.knn import nearest_neighbors
from tests.surface.test_knn import _assert_exact

calls = []
original = kernel.nearest_of_all
kernel.nearest_of_all = lambda *args: calls.append(1) or original(*args)
g = torch.Generator().manual_seed(5)
lattice = torch.cartesian_prod(*[torch.arange(6.0)] * 3) * 0.5
cases = {
    "random, ragged blocks": (torch.rand(131, 3, generator=g), torch.rand(517, 3, generator=g)),
    "lattice ties": (lattice[::5] + 0.25, lattice),
    "coincident": (torch.rand(70, 3, generator=g), torch.ones(300, 3)),
    "one point": (torch.rand(9, 3, generator=g), torch.rand(1, 3, generator=g)),
}
first_of_ties = True
for dtype in (torch.float32, torch.float64):
    for queries, points in cases.values():
        queries, points = queries.to(dtype), points.to(dtype)
        _assert_exact(queries, points, 1, search=nearest_neighbors)
        squared = ((queries[:, None, :] - points[None, :, :]) ** 2).sum(-1)
        first_of_ties &= bool(torch.equal(nearest_neighbors(queries, points, 1)[1][:, 0], squared.argmin(dim=1)))
print(json.dumps({"calls": len(calls), "first_of_ties": first_of_ties}))
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (pip install triton)")
def test_all_pairs_kernel_in_the_interpreter_finds_the_nearest_and_the_first_of_ties():
    result = _interpret(ALL_PAIRS_SCRIPT)
    assert result == {"calls": 16, "first_of_ties": True}, result
