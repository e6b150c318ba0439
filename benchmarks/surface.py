"""Runtime surface timings: bind once, then per-frame synthesis (forward, forward+backward)."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from physmorph.surface import PostEqualizeConfig, SurfaceConfig, bind_surface, synthesize_surface


def lattice_ball(count: int, spacing: float = 0.5) -> torch.Tensor:
    """About `count` lattice points [N, 3] of the given spacing filling a ball centred at 0."""
    radius = (count * spacing**3 * 3 / (4 * torch.pi)) ** (1 / 3)
    axis = torch.arange(-radius, radius + 1e-9, spacing, dtype=torch.float64)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    return points[points.norm(dim=1) <= radius]


def timed(function, device: torch.device, repeats: int) -> float:
    """Median wall time of `function()` in seconds over `repeats` runs after one warm-up."""
    function()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(x: torch.Tensor, F: torch.Tensor, count: int, equalize: bool, repeats: int) -> tuple[float, float, float]:
    """Bind seconds and per-frame forward / forward+backward milliseconds for M = `count`."""
    device, dtype = x.device, x.dtype
    config = SurfaceConfig(M=count, post_equalize=PostEqualizeConfig(enabled=equalize))
    start = time.perf_counter()
    binding = bind_surface(x, F, config)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    bind_seconds = time.perf_counter() - start
    x = x.clone().requires_grad_(True)
    F = F.clone().requires_grad_(True)
    vector_weights = torch.randn(count, 3, device=device, dtype=dtype)
    matrix_weights = torch.randn(count, 3, 3, device=device, dtype=dtype)

    def forward() -> torch.Tensor:
        gaussians = synthesize_surface(x, F, binding)
        return (
            (gaussians.means * vector_weights).sum()
            + (gaussians.covariances * matrix_weights).sum()
            + (gaussians.normals * vector_weights).sum()
        )

    def forward_backward() -> None:
        x.grad = F.grad = None
        forward().backward()

    forward_ms = 1e3 * timed(forward, device, repeats)
    both_ms = 1e3 * timed(forward_backward, device, repeats)
    return bind_seconds, forward_ms, both_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--particles", type=int, default=20_000)
    parser.add_argument("--gaussians", type=int, nargs="+", default=[50_000, 200_000, 1_000_000])
    parser.add_argument("--equalize", action="store_true", help="enable post_equalize at bind")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    x = lattice_ball(args.particles).to(device, dtype)
    generator = torch.Generator().manual_seed(0)
    perturbation = 0.05 * torch.randn(x.shape[0], 3, 3, generator=generator, dtype=torch.float64)
    F = (torch.eye(3, dtype=torch.float64) + perturbation).to(device, dtype)
    print(
        f"runtime surface, {x.shape[0]} particles, device {device}, {args.dtype}, "
        f"{torch.get_num_threads()} threads, post_equalize {'on' if args.equalize else 'off'}"
    )
    print(f"{'M':>9} | {'bind s':>8} | {'fwd ms':>8} | {'fwd+bwd ms':>10}")
    for count in args.gaussians:
        bind_seconds, forward_ms, both_ms = measure(x, F, count, args.equalize, args.repeats)
        print(f"{count:>9} | {bind_seconds:>8.2f} | {forward_ms:>8.1f} | {both_ms:>10.1f}")


if __name__ == "__main__":
    main()
