"""MPM step benchmark: forward and forward+backward ms/step of the reference and fused backends.

Runnable as `python benchmarks/mpm_step.py [--sizes 16384 1048576] [--profile 1048576]
[--plasticity off|on|both] [--calls 10] [--cuda-graph] [--host]`. A dense block of particles (8 per
cell, lattice spacing dx/2, jittered) sits in a 128³-cell grid (dx = 1, nodes 129³), cubic kernel,
fixed corotated, slip walls, one random ΔF control per step; `--plasticity on` adds the von Mises return mapping
(τ_y = --yield-stress, most particles flow) and `both` times each backend with and without it.
On CUDA both backends run in one process and the table gives their ratio and the fused step's
effective bandwidth (fewest bytes a step must move / time) against the measured device-to-device
copy bandwidth; on CPU only the reference runs (16k particles by default).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from physmorph.mpm import Grid, Material, Model, State, step
from physmorph.mpm.plasticity import Plasticity

GRID_CELLS = 128
DEFAULT_SIZES_CUDA = (16_384, 262_144, 1_048_576, 4_194_304)
DEFAULT_SIZES_CPU = (16_384,)


def particle_block(
    n: int, device: torch.device, dtype: torch.dtype, plasticity: Plasticity | None = None
) -> tuple[State, torch.Tensor, Model]:
    """About n particles (k³, k = round(n^⅓)) at 8 per cell in the middle of the grid."""
    g = torch.Generator(device="cpu").manual_seed(0)
    k = round(n ** (1.0 / 3.0))
    ticks = (torch.arange(k, dtype=torch.float64) - (k - 1) / 2.0) * 0.5
    x = torch.stack(torch.meshgrid(ticks, ticks, ticks, indexing="ij"), dim=-1).reshape(-1, 3)
    count = x.shape[0]
    x = x + 0.1 * (torch.rand(count, 3, generator=g, dtype=torch.float64) - 0.5)
    v = 0.1 * torch.randn(count, 3, generator=g, dtype=torch.float64)
    F = torch.eye(3, dtype=torch.float64) + 0.01 * torch.randn(count, 3, 3, generator=g, dtype=torch.float64)
    C = 0.01 * torch.randn(count, 3, 3, generator=g, dtype=torch.float64)
    control = 1e-3 * torch.randn(count, 3, 3, generator=g, dtype=torch.float64)
    cast = {"device": device, "dtype": dtype}
    half = GRID_CELLS / 2.0
    grid = Grid(1.0, (-half, -half, -half), (half, half, half))
    lattice_volumes = torch.full((count,), 0.125, **cast)
    model = Model(
        grid, Material(38888.89, 58333.3, 75.0), lattice_volumes, lattice_volumes.clone(), plasticity=plasticity
    )
    state = State(x.to(**cast), v.to(**cast), F.to(**cast), C.to(**cast))
    return state, control.to(**cast), model


def median_ms(function, device: torch.device, repeats: int, warmup: int = 2, calls: int = 1) -> float:
    """Median wall time of `function()` in ms (CUDA events on CUDA).

    On CUDA each sample times `calls` calls issued back to back, as a rollout issues its steps,
    and divides: with calls = 1 a sample also holds the host's launch latency of one call.
    """
    for _ in range(warmup):
        function()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                function()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / calls)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            function()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def host_ms(function, device: torch.device, calls: int, samples: int = 5) -> float:
    """Median host time in ms to issue one call of `function` (`calls` in a row, no waiting).

    Where it exceeds the GPU time of a call, back-to-back steps wait on the host, not the GPU.
    """
    function()
    times = []
    for _ in range(samples):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            function()
        times.append(1e3 * (time.perf_counter() - t0) / calls)
    torch.cuda.synchronize(device)
    return statistics.median(times)


def graphed(function, calls: int):
    """`calls` back-to-back calls of `function` captured as one CUDA graph: its replay.

    A replay issues no host work per kernel, so it times the GPU alone; the fused step is
    capturable (a morph's episodes replay it, physmorph.optimize.graphs).
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            function()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            function()
    return graph.replay


def copy_bandwidth(device: torch.device) -> float:
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    source = torch.rand(256 * 1024 * 1024, device=device)
    target = torch.empty_like(source)
    ms = median_ms(lambda: target.copy_(source), device, repeats=10)
    return 2 * source.numel() * source.element_size() / (ms * 1e-3) / 1e9


def fewest_bytes(n: int, nodes: int, element: int) -> tuple[int, int]:
    """Bytes a forward and a forward+backward step must move at least.

    Forward: read x, v, F, C, ΔF, m, V (35 values per particle), write x', v', F', C' (24);
    the grid written once and read once (2 · 4 values per node). Backward adds: read the
    inputs again and the output gradients (59), write the input gradients (33), the gradient
    grid written and read (8 per node) plus the forward grid read (4 per node).
    """
    forward = (35 + 24) * n + 8 * nodes
    backward = (35 + 24 + 33) * n + 12 * nodes
    return forward * element, (forward + backward) * element


def step_runs(step_function, state: State, control: torch.Tensor, model: Model):
    """(forward, forward_backward): one step without autograd, and one step with the gradient of
    random cotangents with respect to x, v, F, C and the control."""
    leaves = [
        t.clone().requires_grad_(True)
        for t in (state.positions, state.velocities, state.deformation_gradients, state.affine_velocities, control)
    ]
    g = torch.Generator(device=control.device).manual_seed(1)
    cotangents = [torch.randn(t.shape, generator=g, device=t.device, dtype=t.dtype) for t in leaves[:4]]

    def forward() -> None:
        with torch.no_grad():
            step_function(state, model, control)

    def forward_backward() -> None:
        out = step_function(State(*leaves[:4]), model, leaves[4])
        outputs = (out.positions, out.velocities, out.deformation_gradients, out.affine_velocities)
        torch.autograd.grad(outputs, leaves, cotangents)

    return forward, forward_backward


def benchmark(
    backend: str,
    n: int,
    device: torch.device,
    dtype: torch.dtype,
    plasticity: Plasticity | None = None,
    calls: int = 1,
    cuda_graph: bool = False,
    host: bool = False,
) -> dict:
    state, control, model = particle_block(n, device, dtype, plasticity)
    count = state.num_particles
    if backend == "triton":
        from physmorph.mpm.fused import fused_step as step_function
    else:
        step_function = step
    forward, forward_backward = step_runs(step_function, state, control, model)
    slow = backend == "torch"
    repeats = 3 if (slow and (device.type == "cpu" or count > 2_000_000)) else (5 if slow else 20)
    result = {"backend": backend, "n": count}
    try:
        calls = 1 if slow else calls
        if cuda_graph and not slow:
            result["forward_ms"] = median_ms(graphed(forward, calls), device, repeats) / calls
            result["forward_backward_ms"] = median_ms(graphed(forward_backward, calls), device, repeats) / calls
        else:
            result["forward_ms"] = median_ms(forward, device, repeats, calls=calls)
            result["forward_backward_ms"] = median_ms(forward_backward, device, repeats, calls=calls)
        if host and not slow and device.type == "cuda":
            result["note"] = (
                f"host {host_ms(forward, device, calls):.3f} / {host_ms(forward_backward, device, calls):.3f} ms"
            )
    except torch.OutOfMemoryError:
        result["forward_ms"] = result.get("forward_ms", float("nan"))
        result["forward_backward_ms"] = float("nan")
        result["note"] = "out of memory"
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def profile(n: int, device: torch.device, dtype: torch.dtype) -> None:
    """Print the CUDA kernel time table of a few fused forward+backward steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from physmorph.mpm.fused import fused_step

    state, control, model = particle_block(n, device, dtype)
    _forward, forward_backward = step_runs(fused_step, state, control, model)
    forward_backward()
    torch.cuda.synchronize(device)
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            forward_backward()
        torch.cuda.synchronize(device)
    print(f"\nfused forward+backward kernels, N = {state.num_particles}, 5 steps:")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", help="particle counts (rounded to k³)")
    parser.add_argument("--backends", nargs="*", help="torch and/or triton (default: all available)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--profile", type=int, default=0, help="profile the fused step at this N (CUDA)")
    parser.add_argument("--plasticity", default="off", choices=["off", "on", "both"], help="von Mises return mapping")
    parser.add_argument("--yield-stress", type=float, default=1000.0, help="τ_y with --plasticity on/both")
    parser.add_argument(
        "--calls", type=int, default=10, help="fused steps per CUDA sample, back to back (1: single synchronised calls)"
    )
    parser.add_argument(
        "--cuda-graph", action="store_true", help="fused rows: replay the back-to-back steps as one CUDA graph"
    )
    parser.add_argument(
        "--host", action="store_true", help="fused rows: also the host's time to issue a fwd / f+b step (eager)"
    )
    args = parser.parse_args()
    variants = {"off": [None], "on": [Plasticity(args.yield_stress)], "both": [None, Plasticity(args.yield_stress)]}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    cuda = device.type == "cuda"
    sizes = args.sizes or (DEFAULT_SIZES_CUDA if cuda else DEFAULT_SIZES_CPU)
    backends = args.backends or (["torch", "triton"] if cuda else ["torch"])
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    bandwidth = copy_bandwidth(device) if cuda else float("nan")
    nodes = (GRID_CELLS + 1) ** 3
    print(f"device: {name}; torch {torch.__version__}; {args.dtype}; grid {GRID_CELLS}³ cells, cubic")
    if cuda:
        print(f"device-to-device copy bandwidth: {bandwidth:.0f} GB/s (read + write)")
    header = (
        f"{'N':>9} {'backend':>7} {'plastic':>7} {'fwd ms':>9} {'fwd Mp/s':>9} {'f+b ms':>9} {'f+b Mp/s':>9}"
        f" {'fwd x':>7} {'f+b x':>7} {'fwd BW':>13} {'f+b BW':>13}"
    )
    rows = []
    elastic = {}  # (N, backend) → elastic forward+backward ms, for the plastic/elastic throughput ratio
    for n in sizes:
        for plasticity in variants[args.plasticity]:
            reference = None
            for backend in backends:
                r = benchmark(backend, n, device, dtype, plasticity, args.calls, args.cuda_graph, args.host)
                count = r["n"]
                fwd_bytes, total_bytes = fewest_bytes(count, nodes, torch.finfo(dtype).bits // 8)
                speedup = ("", "")
                if backend == "triton" and reference is not None:
                    speedup = (
                        f"{reference['forward_ms'] / r['forward_ms']:.0f}",
                        f"{reference['forward_backward_ms'] / r['forward_backward_ms']:.0f}",
                    )
                bw = ("", "")
                if cuda:
                    f_bw = fwd_bytes / (r["forward_ms"] * 1e-3) / 1e9
                    t_bw = total_bytes / (r["forward_backward_ms"] * 1e-3) / 1e9
                    bw = (f"{f_bw:.0f} ({100 * f_bw / bandwidth:.0f}%)", f"{t_bw:.0f} ({100 * t_bw / bandwidth:.0f}%)")
                note = r.get("note", "")
                if plasticity is None:
                    elastic[count, backend] = r["forward_backward_ms"]
                elif (count, backend) in elastic:
                    note += f"f+b throughput {100 * elastic[count, backend] / r['forward_backward_ms']:.0f}% of elastic"
                rows.append(
                    f"{count:>9} {backend:>7} {'yes' if plasticity else 'no':>7} {r['forward_ms']:>9.3f}"
                    f" {count / r['forward_ms'] / 1e3:>9.1f} {r['forward_backward_ms']:>9.3f}"
                    f" {count / r['forward_backward_ms'] / 1e3:>9.1f} {speedup[0]:>7} {speedup[1]:>7}"
                    f" {bw[0]:>13} {bw[1]:>13} {note}"
                )
                if backend == "torch":
                    reference = r
    print(
        "Mp/s = 10⁶ particle-steps per second; x = reference time / fused time;"
        " BW = fewest bytes / time in GB/s (% of copy)"
    )
    if cuda:
        replayed = ", replayed as one CUDA graph" if args.cuda_graph else ""
        print(f"fused rows: each sample {args.calls} steps back to back{replayed}; reference rows: single calls")
    print(header)
    print("\n".join(rows))
    if cuda and args.profile:
        profile(args.profile, device, dtype)


if __name__ == "__main__":
    main()
