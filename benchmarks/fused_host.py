"""Host time of the fused MPM step's own Python and autograd side, its Triton launches left out.

Runnable as `python benchmarks/fused_host.py [--n 1000] [--calls 200]` on any machine with Triton
installed (CPU is enough). Every kernel of physmorph.mpm.fused.kernels is swapped for a launcher that
does nothing, and FusedStep runs on CPU tensors of n particles in a 9³-node grid: what remains is
what physmorph adds per step on the host (argument preparation, allocations, sort, autograd's
bookkeeping), without the kernels, the Triton launcher or CUDA's API. Compare it with
`mpm_step.py --host` on a GPU, which times the whole host side of an eager step.
"""

from __future__ import annotations

import argparse
import time

import torch

from physmorph.mpm import Grid, Material, Model, State
from physmorph.mpm.fused import kernels, step_arguments
from physmorph.mpm.fused.function import FusedStep

KERNELS = ("cell_keys", "p2g_forward", "grid_velocity", "g2p_forward", "g2p_backward", "grid_backward", "p2g_backward")


class _SkippedLaunch:
    """Stands in for a Triton kernel: `kernel[grid](...)` returns at once."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="particles")
    parser.add_argument("--calls", type=int, default=200, help="timed steps per row")
    args = parser.parse_args()
    for name in KERNELS:
        setattr(kernels, name, _SkippedLaunch())
    n = args.n
    g = torch.Generator().manual_seed(0)
    grid = Grid(1.0, (-4.0, -4.0, -4.0), (4.0, 4.0, 4.0))
    volumes = torch.full((n,), 0.125)
    model = Model(grid, Material(38888.89, 58333.3, 75.0), volumes, volumes.clone())
    x = 4.0 * torch.rand(n, 3, generator=g) - 2.0
    leaves = [
        t.requires_grad_(True)
        for t in (x, torch.zeros(n, 3), torch.eye(3).repeat(n, 1, 1), torch.zeros(n, 3, 3), torch.zeros(n, 3, 3))
    ]
    cotangents = [torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g)]
    cotangents += [torch.randn(n, 3, 3, generator=g), torch.randn(n, 3, 3, generator=g)]

    def apply() -> tuple[torch.Tensor, ...]:
        return FusedStep.apply(*step_arguments(State(*leaves[:4]), model, leaves[4], None))

    def forward() -> None:
        with torch.no_grad():
            apply()

    def forward_backward() -> None:
        torch.autograd.grad(apply(), leaves, cotangents)

    print(f"host ms per step without kernels: CPU tensors, n = {n}, {torch.get_num_threads()} threads")
    print(f"{'step':>5} {'host ms':>8}")
    for label, function in (("fwd", forward), ("f+b", forward_backward)):
        for _ in range(10):
            function()
        t0 = time.perf_counter()
        for _ in range(args.calls):
            function()
        print(f"{label:>5} {1e3 * (time.perf_counter() - t0) / args.calls:>8.3f}")


if __name__ == "__main__":
    main()
