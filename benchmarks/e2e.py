"""End-to-end training: time one iteration by phase, or compare physics-only, physics+render and
render-only training on a source/target mesh pair (Chamfer distance and held-out silhouette IoU).

    .venv/bin/python benchmarks/e2e.py                       # timing, sizes chosen for the device
    .venv/bin/python benchmarks/e2e.py --radius 8.4 --steps 10 --gaussians 200000 \\
        --views 4 --resolution 512
    .venv/bin/python benchmarks/e2e.py --mode compare --source ../shared/meshes/isosphere.obj \\
        --target ../shared/meshes/bunny.obj --iterations 12
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from physmorph.config import MorphConfig, OptimizationConfig, config_from_mapping
from physmorph.geometry.config import ShapeConfig
from physmorph.losses import chamfer_distance
from physmorph.losses.render_losses import RenderLossConfig, silhouette_iou
from physmorph.optimize.e2e import (
    RenderObjective,
    RenderSettings,
    optimize_e2e,
    render_state,
    target_images_from_particles,
)
from physmorph.optimize.episode import EpisodeProblem, optimize_adam
from physmorph.optimize.graphs import captured_rollout
from physmorph.optimize.setup import build_setup
from physmorph.render import Cameras, concatenate, intrinsics_from_fov, orbit_cameras
from physmorph.surface import SurfaceConfig

GPU_DEFAULTS = {"radius": 8.4, "steps": 10, "gaussians": 200_000, "views": 4, "resolution": 512}
CPU_DEFAULTS = {"radius": 4.0, "steps": 5, "gaussians": 10_000, "views": 2, "resolution": 128}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cameras_around(views: int, resolution: int, dtype, device, elevation=25.0, start=0.0) -> Cameras:
    """`views` cameras on a circle of radius 35 around the grid centre, 40° field of view."""
    K = intrinsics_from_fov(40.0, resolution, resolution, dtype=dtype, device=device)
    return orbit_cameras(
        K,
        resolution,
        resolution,
        radius=35.0,
        elevation=elevation,
        count=views,
        start_azimuth=start,
    )


def build(config: MorphConfig, device, dtype, steps: int, surface: SurfaceConfig):
    """Episode problem, surface binding and target particles of `config`."""
    setup = build_setup(config, device, dtype)
    problem = EpisodeProblem(
        setup.model,
        setup.initial,
        setup.target_grid_mass,
        steps,
        1,
        checkpoint_steps=config.optimization.checkpoint_steps,
        backend=config.optimization.backend,
    )
    binding = setup.bind_source_surface(surface)
    return problem, binding, setup.target_points


def timing(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    config = config_from_mapping(
        {
            "source": {"shape": "sphere", "params": {"radius": args.radius}},
            "target": {"shape": "dumbbell"},
            "optimization": {"checkpoint_steps": args.checkpoint, "backend": args.mpm_backend},
        }
    )
    surface = SurfaceConfig(M=args.gaussians, sigma0=args.sigma0)
    start = time.perf_counter()
    problem, binding, target_points = build(config, device, dtype, args.steps, surface)
    synchronize(device)
    bind_seconds = time.perf_counter() - start
    cameras = cameras_around(args.views, args.resolution, dtype, device)
    render_settings = RenderSettings(backend=args.render_backend, fused=not args.reference_render)
    targets = target_images_from_particles(target_points, cameras, surface, render_settings)
    losses = RenderLossConfig(target_cov_scale=args.sigma0)
    objective = RenderObjective.build(
        binding,
        targets,
        losses,
        problem.initial.positions,
        problem.initial.deformation_gradients,
        args.steps,
        settings=render_settings,
    )
    rates = (0.01 * torch.randn_like(problem.zero_rates())).requires_grad_()
    # the rollout and its 3D loss replay CUDA graphs where they can (as optimize_e2e's do)
    captured = None if args.no_cuda_graph else captured_rollout(problem, rates)
    simulate = "simulate + mass loss (replay)" if captured is not None else "simulate"
    phases: dict[str, list[float]] = {simulate: [], "surface+render+losses": [], "mass loss": []}
    phases["backward"] = []
    phases["iteration"] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for repeat in range(args.repeats + 1):
        synchronize(device)
        t0 = time.perf_counter()
        if captured is not None:
            trajectory, physics = captured(rates, problem.initial)
        else:
            trajectory, physics = problem.rollout(problem.controls_from_rates(rates)), None
        synchronize(device)
        t1 = time.perf_counter()
        terms, _ = objective(trajectory)
        weights = losses.weights(1.0)
        render_total = sum(weights[name] * value for name, value in terms.items())
        synchronize(device)
        t2 = time.perf_counter()
        physics = problem.loss(trajectory) if physics is None else physics
        total = render_total + losses.w_phys * physics
        synchronize(device)
        t3 = time.perf_counter()
        rates.grad = None
        total.backward()
        synchronize(device)
        t4 = time.perf_counter()
        if repeat == 0:
            continue  # warm-up (kernel compilation, allocator)
        for name, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            phases[name].append(seconds)
    particles = problem.initial.num_particles
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {device} ({name}), "
        f"{dtype}, N = {particles} particles, {args.steps} steps, M = {args.gaussians} Gaussians, "
        f"{args.views} views at {args.resolution}², mpm backend {args.mpm_backend}, "
        f"render backend {args.render_backend} ({'reference' if args.reference_render else 'fused'} ops around "
        f"gsplat), checkpoint {args.checkpoint}, "
        f"CUDA graphs {'on' if captured is not None else 'off'}"
    )
    print(f"bind (setup, once): {bind_seconds:.2f} s")
    print(f"| {'phase':<24} | {'median ms':>10} |")
    print(f"|{'-' * 26}|{'-' * 12}|")
    for name, values in phases.items():
        print(f"| {name:<24} | {1000 * statistics.median(values):>10.1f} |")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


RENDER_WEIGHTS = ("w_alpha", "w_depth", "w_edge", "w_cov_align", "w_cov_reg")


def compare(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    config = config_from_mapping(
        {
            "source": {"mesh": args.source},
            "target": {"mesh": args.target},
            "optimization": {
                "iterations": args.iterations,
                "learning_rate": args.learning_rate,
                "patience": args.iterations,
                "checkpoint_steps": args.checkpoint,
                "backend": args.mpm_backend,
            },
        }
    )
    config.source = ShapeConfig(mesh=args.source)
    config.target = ShapeConfig(mesh=args.target)
    surface = SurfaceConfig(M=args.gaussians, sigma0=args.sigma0)
    problem, binding, target_points = build(config, device, dtype, args.steps, surface)
    render_settings = RenderSettings(backend=args.render_backend)
    training = cameras_around(args.views, args.resolution, dtype, device)
    held_out = concatenate(
        [
            cameras_around(args.views, args.resolution, dtype, device, elevation=-10.0, start=45.0),
            cameras_around(1, args.resolution, dtype, device, elevation=80.0),
        ]
    )
    train_targets = target_images_from_particles(target_points, training, surface, render_settings)
    held_out_targets = target_images_from_particles(target_points, held_out, surface, render_settings)
    settings: OptimizationConfig = config.optimization
    # the mass loss sums over grid nodes (thousands); scale the reference's render weights so the
    # two parts are of comparable size in the physics + render variant
    base = RenderLossConfig(target_cov_scale=args.sigma0)
    both = dataclasses.replace(base, **{name: getattr(base, name) * args.render_weight for name in RENDER_WEIGHTS})
    variants = {
        "physics only (adam)": None,
        "physics + render": both,
        "render only": dataclasses.replace(both, w_phys=0.0),
    }
    print(
        f"{args.source} -> {args.target}: N = {problem.initial.num_particles}, {args.steps} steps, "
        f"M = {args.gaussians}, {args.views} training views + {len(held_out)} held-out at "
        f"{args.resolution}², {args.iterations} iterations, device {device}"
    )
    header = ("variant", "Chamfer", "held-out IoU", "train IoU", "time s")
    print("| {:<22} | {:>8} | {:>12} | {:>9} | {:>7} |".format(*header))
    print(f"|{'-' * 24}|{'-' * 10}|{'-' * 14}|{'-' * 11}|{'-' * 9}|")
    rows = [("no control", problem.zero_controls(), 0.0)]
    for name, losses in variants.items():
        synchronize(device)
        start = time.perf_counter()
        if losses is None:
            controls = optimize_adam(problem, settings).controls
        else:
            controls = optimize_e2e(
                problem, binding, train_targets, losses, settings, render_settings=render_settings
            ).controls
        synchronize(device)
        rows.append((name, controls, time.perf_counter() - start))
    for name, controls, seconds in rows:
        with torch.no_grad():
            final = problem.rollout(controls).final
            chamfer = chamfer_distance(final.positions, target_points).item()
            ious = []
            for cameras, targets in ((held_out, held_out_targets), (training, train_targets)):
                _, images = render_state(
                    final.positions, final.deformation_gradients, binding, cameras, render_settings
                )
                ious.append(silhouette_iou(images.alpha, targets.alpha).mean().item())
        row = (name, chamfer, ious[0], ious[1], seconds)
        print("| {:<22} | {:>8.3f} | {:>12.3f} | {:>9.3f} | {:>7.1f} |".format(*row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("timing", "compare"), default="timing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--radius", type=float, help="timing: source sphere radius (N ≈ 33.5 r³)")
    parser.add_argument("--steps", type=int, help="MPM steps per episode")
    parser.add_argument("--gaussians", type=int, help="M, Gaussians of the surface")
    parser.add_argument("--views", type=int, help="training cameras")
    parser.add_argument("--resolution", type=int, help="image side, pixels")
    parser.add_argument("--sigma0", type=float, help="Gaussian size at F = I, grid units")
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations after one warm-up")
    parser.add_argument("--mpm-backend", choices=("auto", "torch", "triton"), default="auto")
    parser.add_argument("--render-backend", choices=("auto", "torch", "gsplat"), default="auto")
    parser.add_argument(
        "--reference-render", action="store_true", help="timing: PyTorch ops around gsplat instead of the fused kernels"
    )
    parser.add_argument("--checkpoint", action="store_true", help="recompute MPM steps in backward")
    parser.add_argument("--no-cuda-graph", action="store_true", help="timing: launch the rollout's kernels eagerly")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--source", help="compare: source mesh path")
    parser.add_argument("--target", help="compare: target mesh path")
    parser.add_argument("--iterations", type=int, default=12, help="compare: Adam iterations")
    parser.add_argument("--learning-rate", type=float, default=0.02, help="compare: Adam step size")
    parser.add_argument(
        "--render-weight", type=float, default=1000.0, help="compare: factor on the reference's render weights"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    if args.mode == "compare":
        defaults = {
            **defaults,
            "gaussians": defaults["gaussians"] // 4,
            "resolution": defaults["resolution"] // 2,
        }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.sigma0 is None:
        args.sigma0 = 0.08 if device.type == "cuda" else 0.12
    if args.mode == "compare":
        if not (args.source and args.target):
            parser.error("--mode compare needs --source and --target mesh paths")
        compare(args, device, dtype)
    else:
        timing(args, device, dtype)


if __name__ == "__main__":
    main()
