"""Benchmark `physmorph.render.render`: forward and forward+backward per backend and size.

    .venv/bin/python benchmarks/render.py                       # CPU: 50k at 256² and 512²
    .venv/bin/python benchmarks/render.py --device cuda         # 50k/200k/1M at 512² and 1080p
    .venv/bin/python benchmarks/render.py --sizes 50k,200k --resolutions 512x512 --repeats 5

Backends: torch (pure PyTorch), gsplat (physmorph.render through gsplat, shading and normalisation
in the fused Triton kernels), gsplat-reference (the same with `fused=False`: PyTorch ops around
gsplat) and gsplat-direct (`gsplat.rasterization` alone on the same Gaussians, the same feature
channels, antialiasing and planes: what physmorph's path costs on top of is measured against it).

Scene: N Gaussians on a sphere of radius 10 (reference grid units) seen by the reference camera
pose (eye (20, −25, 15), z-up) with fx = fy = 475·H/720, Phong shading, normals on; σ shrinks
with N so the surface stays closed (σ = 0.6·√(area/N)).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from physmorph.render import LightingConfig, intrinsics, look_at, render
from physmorph.render.cameras import Cameras
from physmorph.render.renderer import gsplat_available
from physmorph.surface.gaussians import Gaussians


def _count(text: str) -> int:
    text = text.strip().lower()
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * factor)


def _scene(count: int, device: str) -> Gaussians:
    generator = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(count, 3, generator=generator), dim=-1)
    radius = 10.0
    sigma = 0.6 * math.sqrt(4 * math.pi * radius**2 / count)
    covariances = torch.eye(3).expand(count, 3, 3) * sigma**2
    return Gaussians(
        (directions * radius).to(device),
        covariances.contiguous().to(device),
        normals=directions.to(device),
        opacities=torch.full((count,), 0.9, device=device),
    )


def _camera(width: int, height: int, device: str) -> Cameras:
    focal = 475.0 * height / 720.0
    K = intrinsics(focal, focal, width / 2, height / 2, device=device)
    viewmat = look_at((20.0, -25.0, 15.0), (0.0, 0.0, 0.0), (0.0, 0.0, 1.0), device=device)
    return Cameras(viewmat[None], K[None], width, height)


def _sample(function, device: str, calls: int) -> float:
    """Seconds per call of `calls` back-to-back calls (as an optimisation loop makes them), from
    an idle device to the end of their work."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        function()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls


def _run(gaussians: Gaussians, cameras: Cameras, lighting: LightingConfig, backend: str) -> list[torch.Tensor]:
    """physmorph's render (Phong, rgb + alpha + depth + normals), or gsplat called directly with the
    same Gaussians, settings and output channels (colour and normal features, accumulated depth)."""
    if backend != "gsplat-direct":
        fused = backend != "gsplat-reference"
        images = render(gaussians, cameras, shading=lighting, backend=backend.split("-")[0], fused=fused)
        return [images.rgb, images.alpha, images.depth, images.normal]
    import gsplat

    image, alpha, _ = gsplat.rasterization(
        gaussians.means,
        None,
        None,
        gaussians.opacities,
        gaussians.colors,
        cameras.viewmats,
        cameras.Ks,
        cameras.width,
        cameras.height,
        near_plane=cameras.znear,
        far_plane=cameras.zfar,
        eps2d=0.3,
        packed=False,
        render_mode="RGB+D",
        rasterize_mode="antialiased",
        covars=gaussians.covariances,
    )
    return [image, alpha]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default=None, help="Gaussian counts, e.g. 50k,200k,1M")
    parser.add_argument("--resolutions", default=None, help="WxH list, e.g. 512x512,1920x1080")
    parser.add_argument(
        "--backends",
        default=None,
        help="torch,gsplat,gsplat-reference,gsplat-direct (default: all usable; direct = gsplat alone)",
    )
    parser.add_argument("--repeats", type=int, default=9, help="rounds; each backend takes one sample per round")
    parser.add_argument("--calls", type=int, default=None, help="back-to-back calls per sample (CUDA 10, CPU 1)")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.calls = args.calls or (10 if cuda else 1)
    sizes = args.sizes or ("50k,200k,1M" if cuda else "50k")
    resolutions = args.resolutions or ("512x512,1920x1080" if cuda else "256x256,512x512")
    usable = cuda and gsplat_available()
    backends = args.backends or ("torch,gsplat,gsplat-reference,gsplat-direct" if usable else "torch")
    lighting = LightingConfig()
    name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"device: {name}; torch {torch.__version__}; ms per call, median of {args.repeats} rounds of "
        f"{args.calls} back-to-back calls after one warm-up, the backends taking turns in each round"
    )
    print(
        f"{'backend':16} {'gaussians':>10} {'resolution':>10} {'forward ms':>11} {'fwd+bwd ms':>11} {'vs direct':>16}"
    )
    order = sorted(backends.split(","), key=lambda name: name != "gsplat-direct")
    for size in sizes.split(","):
        count = _count(size)
        base = _scene(count, args.device)
        for resolution in resolutions.split(","):
            width, height = (int(v) for v in resolution.lower().split("x"))
            cameras = _camera(width, height, args.device)
            calls = {}
            for backend in order:
                leaves = [base.means.clone().requires_grad_(True), base.covariances.clone().requires_grad_(True)]
                colors = None
                if backend == "gsplat-direct":  # the six channels physmorph gives gsplat: colour, normal
                    colors = torch.cat([torch.full_like(base.normals, 0.5), base.normals], -1)
                gaussians = Gaussians(leaves[0], leaves[1], base.normals, colors, base.opacities)

                def forward(gaussians=gaussians, cameras=cameras, backend=backend):
                    with torch.no_grad():
                        _run(gaussians, cameras, lighting, backend)

                def forward_backward(gaussians=gaussians, cameras=cameras, backend=backend):
                    sum(output.sum() for output in _run(gaussians, cameras, lighting, backend)).backward()

                calls[backend] = (forward, forward_backward)
                forward_backward()
            samples = {backend: ([], []) for backend in order}
            for _ in range(args.repeats):
                for backend, functions in calls.items():
                    for function, times in zip(functions, samples[backend]):
                        times.append(_sample(function, args.device, args.calls))
            medians = {backend: tuple(statistics.median(t) for t in times) for backend, times in samples.items()}
            for backend, seconds in medians.items():
                reference = medians.get("gsplat-direct")
                ratio = "" if reference is None else "/".join(f"{t / r - 1:+.0%}" for t, r in zip(seconds, reference))
                print(
                    f"{backend:16} {count:>10,} {resolution:>10} {1e3 * seconds[0]:>11.2f} {1e3 * seconds[1]:>11.2f} "
                    f"{ratio:>16}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
