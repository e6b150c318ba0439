"""Turn a MorphConfig into tensors: filled source and target bodies, the MPM model and target field."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import trimesh

from physmorph.config import MorphConfig, PlasticityConfig, SimulationConfig
from physmorph.errors import ConfigError, InputError
from physmorph.geometry.config import ShapeConfig, build_shape
from physmorph.geometry.fill import MaterialPoints, fill_mesh
from physmorph.geometry.visual_hull import carve_visual_hull
from physmorph.io.targets import TargetImages, load_image_targets
from physmorph.mpm import Grid, Material, Model, State, grid_volume_estimate, splat_mass
from physmorph.mpm.plasticity import Plasticity
from physmorph.optimize.memory import check_rollout_fits
from physmorph.surface import SurfaceBinding, SurfaceConfig, bind_surface

# Fewer material points than a 3 × 3 × 3 block cannot resolve a deformation: a shape that
# small for the lattice is almost certainly a unit mistake (a mesh in metres on a grid in cm).
MIN_PARTICLES = 27


@dataclass
class MorphSetup:
    """The tensors of a morph run.

    model:            MPM model of the source body
    initial:          source particles at rest
    target_points:    target particle positions [M, 3], grid units (None: image-only target)
    target_grid_mass: target mass field on the grid, flat [G]; for an image-only target, the
                      field of the visual hull carved from the images (None: no hull term)
    target_images:    the image-only target's views (None: the target is a shape)
    hull_points:      the image-only target's visual hull as points [H, 3] (None: no hull)
    source_mesh:      the mesh the source particles were filled from, grid units (the surface
                      the Gaussians are sampled from)
    target_mesh:      the target's mesh, grid units (None: image-only target)
    """

    model: Model
    initial: State
    target_points: torch.Tensor | None
    target_grid_mass: torch.Tensor | None
    target_images: TargetImages | None = None
    hull_points: torch.Tensor | None = None
    source_mesh: trimesh.Trimesh | None = None
    target_mesh: trimesh.Trimesh | None = None
    # control-lattice weights over `initial` by spacing, made once per run: every episode's problem
    # then holds the same tensor (and a CUDA graph of its evaluation stays valid, optimize.graphs)
    control_weights_by_spacing: dict[float, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def bind_source_surface(self, surface: SurfaceConfig) -> SurfaceBinding:
        """Gaussians bound to the undeformed source particles, sampled from the source mesh
        when it is known: the one surface a run's metric, video and e2e training share."""
        initial = self.initial
        return bind_surface(initial.positions, initial.deformation_gradients, surface, mesh=self.source_mesh)

    def chamfer_searches(self) -> list[tuple[int, int]]:
        """(queries, points) sizes of the k = 1 nearest-neighbour searches of the Chamfer terms:
        the particles against the target's points (or its visual hull's), and back."""
        reference = self.target_points if self.target_points is not None else self.hull_points
        if reference is None:
            return []
        particles, points = self.initial.num_particles, reference.shape[0]
        return [(particles, points), (points, particles)]


def resolve_device(name: str) -> torch.device:
    """'auto' → cuda when available, else cpu; 'cuda' without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but no CUDA device is available; use --device cpu")
    return torch.device(name)


def make_grid(simulation: SimulationConfig) -> Grid:
    return Grid(simulation.grid_dx, simulation.grid_min_point, simulation.grid_max_point)


def make_material(simulation: SimulationConfig, dtype: torch.dtype, device: torch.device) -> Material:
    def tensor(value: float) -> torch.Tensor:
        return torch.tensor(value, dtype=dtype, device=device)

    if simulation.youngs_modulus is not None:
        return Material.from_youngs_modulus(
            tensor(simulation.youngs_modulus),
            tensor(simulation.poisson_ratio),
            tensor(simulation.density),
            simulation.material,
        )
    return Material(tensor(simulation.lam), tensor(simulation.mu), tensor(simulation.density), simulation.material)


def make_plasticity(plasticity: PlasticityConfig) -> Plasticity | None:
    """The model's return mapping, None for an elastic body."""
    if plasticity.model == "none":
        return None
    return Plasticity(plasticity.yield_stress, plasticity.hardening)


def fill_body(
    config: MorphConfig, which: str, dtype: torch.dtype, device: torch.device, mesh: trimesh.Trimesh | None = None
) -> MaterialPoints:
    """Material points of the `source` or `target` shape of `config` (or of its built `mesh`)."""
    sim = config.simulation
    if mesh is None:
        mesh = build_body(getattr(config, which), config.base_dir, which)
    points = fill_mesh(
        mesh,
        dx=sim.grid_dx,
        points_per_cell_cuberoot=sim.points_per_cell_cuberoot,
        density=sim.density,
        box_min=sim.grid_min_point,
        box_max=sim.grid_max_point,
        name=f"{which} shape",
        dtype=dtype,
        device=device,
    )
    if points.count < MIN_PARTICLES:
        raise InputError(
            f"the {which} shape fills only {points.count} material points at lattice spacing {points.spacing:g} "
            f"(at least {MIN_PARTICLES} are needed to resolve a body); scale the shape up, or raise "
            "simulation.points_per_cell_cuberoot or lower simulation.grid_dx"
        )
    return points


def build_body(shape: ShapeConfig, base_dir: Path, which: str) -> trimesh.Trimesh:
    """The mesh of config section `which` ('source' or 'target'), which errors name."""
    try:
        return build_shape(shape, base_dir)
    except ConfigError as error:
        raise ConfigError(f"in '{which}': {error}") from None


def make_model(simulation: SimulationConfig, points: MaterialPoints, material: Material) -> Model:
    """The MPM model of `points`, with the grid-based rest-volume estimate of SPEC §2."""
    volumes = grid_volume_estimate(points.positions, points.masses, make_grid(simulation), simulation.kernel)
    return model_of(simulation, material, points.volumes, volumes)


def model_of(
    simulation: SimulationConfig, material: Material, lattice_volumes: torch.Tensor, volumes: torch.Tensor
) -> Model:
    """The MPM model of `simulation` for particles of these lattice and rest volumes [N]."""
    return Model(
        grid=make_grid(simulation),
        material=material,
        lattice_volumes=lattice_volumes,
        volumes=volumes,
        dt=simulation.dt,
        drag=simulation.drag,
        external_force=simulation.external_force,
        smoothing=simulation.smoothing_factor,
        bulk_viscosity=simulation.bulk_viscosity,
        min_jacobian=simulation.min_jacobian,
        kernel=simulation.kernel,
        boundary=simulation.boundary,
        boundary_cells=simulation.boundary_cells,
        plasticity=make_plasticity(simulation.plasticity),
    )


def load_target_folder(config: MorphConfig, dtype: torch.dtype, device: torch.device) -> TargetImages:
    """The image-only target of `config` (e2e.target_images, relative to the config's folder)."""
    folder = Path(config.e2e.target_images)
    if not folder.is_absolute():
        folder = config.base_dir / folder
    sim = config.simulation
    return load_image_targets(folder, (sim.grid_min_point, sim.grid_max_point), dtype, device)


def build_setup(config: MorphConfig, device: torch.device, dtype: torch.dtype = torch.float32) -> MorphSetup:
    """Fill source and target, build the model and the target mesh field; refuses, before
    filling, a run whose estimated memory exceeds what `device` has free."""
    sim = config.simulation
    if sim.refine != 1:
        # the episode's step count comes from config.optimization, which refined() also scales
        raise InputError(
            f"simulation.refine is {sim.refine} on a config that was not refined; pass "
            "physmorph.config.refined(config) (load_config and config_from_mapping already do)"
        )
    image_only = config.mode == "e2e" and config.e2e.target_images is not None
    meshes = [build_body(config.source, config.base_dir, "source")]
    if not image_only:
        meshes.append(build_body(config.target, config.base_dir, "target"))
    settings = config.optimization
    itemsize = torch.finfo(dtype).bits // 8
    # a rollout that would not fit whole recomputes its steps in backward (mpm.simulate)
    check_rollout_fits(
        meshes,
        sim,
        settings.num_timesteps,
        itemsize,
        device,
        settings.checkpoint_steps,
        "this morph",
        "lower simulation.points_per_cell_cuberoot or optimization.num_timesteps, shrink the shapes or the grid, "
        "or run on a device with more memory",
    )
    material = make_material(sim, dtype, device)
    source = fill_body(config, "source", dtype, device, meshes[0])
    model = make_model(sim, source, material)
    if image_only:
        images = load_target_folder(config, dtype, device)
        if config.loss.w_hull == 0:
            return MorphSetup(model, State.at_rest(source.positions), None, None, images, source_mesh=meshes[0])
        hull = carve_visual_hull(
            images,
            box_min=sim.grid_min_point,
            box_max=sim.grid_max_point,
            spacing=source.spacing,
            density=sim.density,
            margin=sim.boundary_cells * sim.grid_dx,
        )
        hull_mass = splat_mass(hull.positions, hull.masses, model.grid, sim.kernel)
        return MorphSetup(
            model, State.at_rest(source.positions), None, hull_mass, images, hull.positions, source_mesh=meshes[0]
        )
    target = fill_body(config, "target", dtype, device, meshes[1])
    target_grid_mass = splat_mass(target.positions, target.masses, model.grid, sim.kernel)
    return MorphSetup(
        model,
        State.at_rest(source.positions),
        target.positions,
        target_grid_mass,
        source_mesh=meshes[0],
        target_mesh=meshes[1],
    )
