"""Launch-parameter sweep of the fused MPM kernels: forward (and forward+backward) ms per config.

Runnable as `python benchmarks/fused_tuning.py [--n 1048576] [--backward] [--inner-unroll 1 4]` on a
CUDA machine (`--inner-unroll`: the rows again for each unroll of the inner two stencil axes).
Each row sets the block sizes and warps of the scattering kernels (P2G forward, G2P adjoint; SCAN_BLOCK), of
the per-particle kernels (G2P forward, P2G adjoint) and the unroll factor of the outer stencil
axis, then times steps on the dense block of benchmarks/mpm_step.py (each sample 10 steps back to
back, median of 20 / 10 samples: timed as single synchronised steps, the default row read 0.81 ms
forward where mpm_step.py read 0.61 ms in the same call on an H200). The first call of a row
includes Triton's compilation of any new kernel variant (the `first s` column).
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from mpm_step import median_ms, particle_block, step_runs
from physmorph.mpm.fused import function as fused
from physmorph.mpm.fused import fused_step

# (SCAN_BLOCK, SCAN_WARPS), (PARTICLE_BLOCK, PARTICLE_WARPS), STENCIL_UNROLL
SCAN = ((32, 1), (64, 2), (128, 4), (128, 2), (256, 4), (256, 8))
PARTICLE = ((64, 2), (128, 4), (128, 2), (256, 4))
UNROLL = (1, 2)


def configs(full: bool) -> list[tuple[tuple[int, int], tuple[int, int], int]]:
    """Every combination (full) or one axis at a time around the defaults."""
    if full:
        return list(itertools.product(SCAN, PARTICLE, UNROLL))
    scan0 = (fused.SCAN_BLOCK, fused.SCAN_WARPS)
    particle0 = (fused.PARTICLE_BLOCK, fused.PARTICLE_WARPS)
    unroll0 = fused.STENCIL_UNROLL
    rows = [(scan0, particle0, unroll0)]
    rows += [(s, particle0, unroll0) for s in SCAN if s != scan0]
    rows += [(scan0, p, unroll0) for p in PARTICLE if p != particle0]
    rows += [(scan0, particle0, u) for u in UNROLL if u != unroll0]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_048_576, help="particle count (rounded to k³)")
    parser.add_argument("--backward", action="store_true", help="also time forward+backward")
    parser.add_argument("--full", action="store_true", help="every combination, not one axis at a time")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--inner-unroll", type=int, nargs="+", default=[fused.STENCIL_INNER_UNROLL])
    args = parser.parse_args()
    device = torch.device("cuda")
    dtype = getattr(torch, args.dtype)
    state, control, model = particle_block(args.n, device, dtype)
    count = state.num_particles
    forward, forward_backward = step_runs(fused_step, state, control, model)

    print(f"device: {torch.cuda.get_device_name(device)}; N = {count}; {args.dtype}")
    print(
        f"{'scan':>9} {'particle':>9} {'unroll':>6} {'inner':>5} {'first s':>8} {'fwd ms':>8} {'fwd Mp/s':>9}"
        f" {'f+b ms':>8} {'f+b Mp/s':>9}"
    )
    for inner, (scan, particle, unroll) in itertools.product(args.inner_unroll, configs(args.full)):
        fused.SCAN_BLOCK, fused.SCAN_WARPS = scan
        fused.PARTICLE_BLOCK, fused.PARTICLE_WARPS = particle
        fused.STENCIL_UNROLL = unroll
        fused.STENCIL_INNER_UNROLL = inner
        label = f"{scan[0]:>5}/{scan[1]:<3} {particle[0]:>5}/{particle[1]:<3} {unroll:>6} {inner:>5}"
        try:
            t0 = time.perf_counter()
            forward()
            if args.backward:
                forward_backward()
            torch.cuda.synchronize(device)
            first = time.perf_counter() - t0
            fwd = median_ms(forward, device, repeats=20, calls=10)
            line = f"{label} {first:>8.1f} {fwd:>8.3f} {count / fwd / 1e3:>9.1f}"
            if args.backward:
                both = median_ms(forward_backward, device, repeats=10, calls=10)
                line += f" {both:>8.3f} {count / both / 1e3:>9.1f}"
        except Exception as error:  # a launch configuration the compiler rejects is a result too
            line = f"{label} failed: {type(error).__name__}: {str(error).splitlines()[0][:80]}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
