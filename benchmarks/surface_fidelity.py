"""Gaussian renders against ray-cast images of the true mesh: IoU, holes, far side, normals, speckles, time."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import trimesh

from physmorph.config import E2EConfig, SimulationConfig
from physmorph.geometry import fill_mesh, load_mesh, make_shape
from physmorph.io.images import write_png
from physmorph.losses.fidelity import surface_fidelity
from physmorph.optimize.e2e import RenderSettings, render_state
from physmorph.optimize.views import orbit_views
from physmorph.render import raycast_mesh
from physmorph.surface import SurfaceConfig, bind_surface

MESHES = Path(__file__).resolve().parents[1].parent / "shared" / "meshes"
TWIST = 0.04  # radians per grid unit along z of the "after a morph" deformation
BULGE = 0.15  # relative radial swelling of that deformation at its peak


def shapes(mesh_folder: Path) -> dict[str, trimesh.Trimesh]:
    """bunny and spot (when the shared meshes are there) and two procedural shapes, in grid units."""
    files = {name: mesh_folder / f"{name}.obj" for name in ("bunny", "spot")}
    found = {name: load_mesh(path) for name, path in files.items() if path.is_file()}
    found["blob"] = make_shape("blob", radius=6.5, amplitude=0.35, lobes=4)
    found["torus"] = make_shape("torus")
    return found


def deformation(points: torch.Tensor) -> torch.Tensor:
    """A smooth morph-like map φ of points [..., 3]: a twist about z and a swelling around z = 0."""
    x, y, z = points.unbind(-1)
    angle = TWIST * z
    swell = 1.0 + BULGE * torch.exp(-((z / 6.0) ** 2))
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack((swell * (cos * x - sin * y), swell * (sin * x + cos * y), z), dim=-1)


def deformed(mesh: trimesh.Trimesh, positions: torch.Tensor) -> tuple[trimesh.Trimesh, torch.Tensor, torch.Tensor]:
    """The mesh and particles carried by φ, and F = ∇φ at each particle."""
    vertices = deformation(torch.as_tensor(mesh.vertices, dtype=torch.float64)).numpy()
    moved = trimesh.Trimesh(vertices, mesh.faces, process=False)
    gradients = torch.func.vmap(torch.func.jacrev(deformation))(positions.double())
    return moved, deformation(positions.double()).to(positions), gradients.to(positions)


def timed(function, cuda: bool):
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    value = function()
    if cuda:
        torch.cuda.synchronize()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gaussians", type=int, nargs="+", default=[SurfaceConfig().M, 200_000])
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--meshes", type=Path, default=MESHES, help="folder with bunny.obj and spot.obj")
    parser.add_argument("--only", nargs="*", default=None, help="shape names to run (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (render timing)")
    parser.add_argument("--images", type=Path, default=None, help="write truth/render PNGs of view 0 here")
    parser.add_argument(
        "--surface",
        choices=("mesh", "implicit"),
        default="mesh",
        help="sample the surfels from the mesh (default, as a morph run does) or from the particles' implicit surface",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    simulation = SimulationConfig()
    settings = RenderSettings()
    cameras_config = E2EConfig(width=args.size, height=args.size)
    print(
        f"surface fidelity, {args.views} views at {args.size}², device {device}, {torch.get_num_threads()} threads, "
        f"surfels from the {args.surface} surface"
    )
    header = (
        f"{'shape':>6} | {'state':>8} | {'M':>7} | {'IoU':>6} | {'holes':>6} | {'far':>6} | {'n mean':>6} | "
        f"{'n p90':>6} | {'depth':>5} | {'speck':>5} | {'inner':>5} | {'bind s':>6} | {'ms/view':>7}"
    )
    print(header)
    for name, mesh in shapes(args.meshes).items():
        if args.only and name not in args.only:
            continue
        points = fill_mesh(
            mesh,
            dx=simulation.grid_dx,
            points_per_cell_cuberoot=simulation.points_per_cell_cuberoot,
            density=simulation.density,
            box_min=simulation.grid_min_point,
            box_max=simulation.grid_max_point,
        )
        x = points.positions.to(device)
        F = torch.eye(3, dtype=x.dtype, device=device).expand(len(x), 3, 3).contiguous()
        morphed_mesh, morphed_x, morphed_F = deformed(mesh, x)
        for state, truth_mesh, state_x, state_F in (
            ("rest", mesh, x, F),
            ("morphed", morphed_mesh, morphed_x, morphed_F),
        ):
            cameras = orbit_views(cameras_config, state_x.cpu(), args.views, cameras_config.elevation_deg)
            lighting, albedo = settings.config.lighting, settings.config.particle_color
            truth = raycast_mesh(truth_mesh, cameras, shading=lighting, color=albedo)
            for count in args.gaussians:
                bound_mesh = mesh if args.surface == "mesh" else None
                config = SurfaceConfig(M=count)
                row = measure(x, F, bound_mesh, state_x, state_F, config, cameras.to(device), truth, settings)
                metrics, bind_seconds, seconds, images = row
                print(
                    f"{name:>6} | {state:>8} | {count:>7} | {metrics.iou:>6.3f} | {metrics.holes:>6.3f} | "
                    f"{metrics.far_side:>6.3f} | {metrics.normal_mean_deg:>6.1f} | {metrics.normal_p90_deg:>6.1f} | "
                    f"{metrics.depth_error:>5.2f} | {metrics.speckles_per_view:>5.1f} | "
                    f"{metrics.interior_speckles_per_view:>5.1f} | {bind_seconds:>6.2f} | "
                    f"{1e3 * seconds / len(cameras):>7.1f}",
                    flush=True,
                )
                if args.images is not None:
                    write_view(args.images / f"{name}_{state}_{count}", truth, images)


def measure(x, F, mesh, state_x, state_F, config, cameras, truth, settings):
    """Bind at rest (x, F; to `mesh`'s surface unless it is None), render the state (state_x,
    state_F): fidelity, bind s, render s, images."""
    cuda = x.is_cuda
    binding, bind_seconds = timed(lambda: bind_surface(x, F, config, mesh=mesh), cuda)
    with torch.no_grad():
        render_state(state_x, state_F, binding, cameras[:1], settings)  # warm-up
        (_, images), seconds = timed(lambda: render_state(state_x, state_F, binding, cameras, settings), cuda)
    return surface_fidelity(images, truth), bind_seconds, seconds, images


def write_view(stem: Path, truth, images) -> None:
    """Truth beside render (shaded, and normals) of view 0."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    pair = torch.cat((truth.rgb[0], images.rgb[0].cpu().float()), dim=1)
    write_png(stem.with_name(stem.name + "_truth_vs_render.png"), pair.clamp(0, 1))
    normals = torch.cat((truth.normal[0], images.normal[0].cpu().float()), dim=1)
    write_png(stem.with_name(stem.name + "_normals.png"), (0.5 + 0.5 * normals).clamp(0, 1))


if __name__ == "__main__":
    main()
