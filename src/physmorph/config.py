"""The typed YAML config of physmorph runs; the reference system's config file loads unchanged."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from physmorph.errors import ConfigError
from physmorph.geometry.config import ShapeConfig
from physmorph.losses.render_losses import RenderLossConfig, render_loss_config_from_mapping
from physmorph.render.cameras import CameraConfig
from physmorph.render.config import RenderConfig
from physmorph.settings import from_mapping, require
from physmorph.surface.config import SurfaceConfig, surface_config_from_mapping

Vector = tuple[float, float, float]


# The walls and the B-spline stencil take 3 cells on each side; a grid needs a cell between them.
MIN_GRID_CELLS = 7
# Image sides beyond this are a typo (the renderer's per-pixel buffers would not fit a GPU).
MAX_IMAGE_SIDE = 8192
# Cameras of one orbit: one per degree.
MAX_VIEWS = 360
# Gaussians of a runtime surface: beyond this its binding and renders exhaust any device.
MAX_GAUSSIANS = 10_000_000
# `simulation.refine`: 16 already multiplies the particles by 4096 (45M for the reference pair).
MAX_REFINE = 16


class UnusedKeysWarning(UserWarning):
    """Reference-system keys that physmorph accepts but does not use."""


@dataclass
class PlasticityConfig:
    """The `simulation.plasticity` section: von Mises plasticity on the Hencky strain (F = Fe·Fp)."""

    model: Literal["none", "von_mises"] = "none"  # 'none': elastic (the reference's behaviour)
    yield_stress: float = 1000.0  # τ_y: bound on ‖deviatoric Kirchhoff stress‖ (Frobenius), stress units
    hardening: float = 0.0  # H: τ_y grows by H per unit of accumulated plastic strain, stress units

    def validate(self) -> None:
        p = "simulation.plasticity"
        require(
            math.isfinite(self.yield_stress) and self.yield_stress > 0,
            f"{p}.yield_stress",
            f"must be a positive stress, got {self.yield_stress}",
        )
        finite_hardening = math.isfinite(self.hardening) and self.hardening >= 0
        require(finite_hardening, f"{p}.hardening", f"must be ≥ 0, got {self.hardening}")
        defaults = PlasticityConfig()
        if self.model == "none":
            for key in ("yield_stress", "hardening"):
                if getattr(self, key) != getattr(defaults, key):
                    warnings.warn(
                        f"config key '{p}.{key}' has no effect with {p}.model 'none'; set model: von_mises",
                        UserWarning,
                        stacklevel=2,
                    )


@dataclass
class SimulationConfig:
    """The `simulation` section: grid, particles, material and step settings (reference keys)."""

    grid_dx: float = 1.0  # cell size, grid units
    grid_min_point: Vector = (-16.0, -16.0, -16.0)  # node (0,0,0), grid units
    grid_max_point: Vector = (16.0, 16.0, 16.0)  # last node, grid units
    points_per_cell_cuberoot: int = 2  # ppc: ppc³ material points per cell
    lam: float | None = 38888.89  # Lamé λ (stress units); or give youngs_modulus + poisson_ratio
    mu: float | None = 58333.3  # Lamé μ (stress units)
    youngs_modulus: float | None = None  # E (stress units), replaces lam/mu when set
    poisson_ratio: float | None = None  # ν in (−1, 0.5)
    density: float = 75.0  # mass units per grid unit³
    dt: float = 1.0 / 120.0  # time step, s
    drag: float = 0.5  # momentum damping per second
    external_force: Vector = (0.0, 0.0, 0.0)  # acceleration on the grid (e.g. gravity), grid units / s²
    smoothing_factor: float = 0.955  # β in F' ← (1 − β) F' + β F
    material: Literal["fixed_corotated", "neo_hookean"] = "fixed_corotated"
    kernel: Literal["cubic", "quadratic"] = "cubic"  # B-spline: 64 or 27 nodes per particle
    boundary: Literal["slip", "sticky", "none"] = "slip"  # wall condition near the grid's faces
    boundary_cells: int = 3  # width of the wall layer, cells
    bulk_viscosity: float = 0.25  # ζ
    min_jacobian: float = 0.6  # J floor of the per-step compression trust region
    plasticity: PlasticityConfig = field(default_factory=PlasticityConfig)
    # refine by k: grid_dx / k, dt / k, optimization.num_timesteps and release_steps · k (the same
    # physical time), the same points per cell (k³ times the particles); see `refined`
    refine: int = 1

    def validate(self) -> None:
        s = "simulation"
        require(
            1 <= self.refine <= MAX_REFINE,
            f"{s}.refine",
            f"must be a whole number from 1 (the config as written) to {MAX_REFINE}, got {self.refine}; "
            "refine k divides grid_dx and dt by k and multiplies the steps by k (k³ times the particles)",
        )
        require(self.grid_dx > 0, f"{s}.grid_dx", f"must be positive, got {self.grid_dx}")
        require(
            all(lo < hi for lo, hi in zip(self.grid_min_point, self.grid_max_point)),
            f"{s}.grid_max_point",
            f"must exceed grid_min_point on every axis ({self.grid_min_point} vs {self.grid_max_point})",
        )
        require(
            1 <= self.points_per_cell_cuberoot <= 8,
            f"{s}.points_per_cell_cuberoot",
            f"must be 1..8, got {self.points_per_cell_cuberoot}",
        )
        cells = [(hi - lo) / self.grid_dx for lo, hi in zip(self.grid_min_point, self.grid_max_point)]
        require(
            min(cells) >= MIN_GRID_CELLS,
            f"{s}.grid_dx",
            f"({self.grid_dx}) leaves only {min(cells):.3g} cells across the grid box {self.grid_min_point} to "
            f"{self.grid_max_point}; at least {MIN_GRID_CELLS} are needed (walls and stencil take 3 on each side): "
            "lower grid_dx or enlarge the box",
        )
        require(math.isfinite(self.dt) and self.dt > 0, f"{s}.dt", f"must be a positive time step, got {self.dt}")
        require(self.density > 0, f"{s}.density", f"must be positive, got {self.density}")
        require(self.drag >= 0, f"{s}.drag", f"must be ≥ 0, got {self.drag}")
        require(
            0 <= self.smoothing_factor < 1, f"{s}.smoothing_factor", f"must be in [0, 1), got {self.smoothing_factor}"
        )
        require(0 < self.min_jacobian < 1, f"{s}.min_jacobian", f"must be in (0, 1), got {self.min_jacobian}")
        require(self.boundary_cells >= 0, f"{s}.boundary_cells", f"must be ≥ 0, got {self.boundary_cells}")
        if self.youngs_modulus is not None or self.poisson_ratio is not None:
            require(
                self.youngs_modulus is not None and self.poisson_ratio is not None,
                f"{s}.youngs_modulus",
                "and poisson_ratio must be given together",
            )
            require(self.youngs_modulus > 0, f"{s}.youngs_modulus", f"must be positive, got {self.youngs_modulus}")
            require(
                -1 < self.poisson_ratio < 0.5, f"{s}.poisson_ratio", f"must be in (-1, 0.5), got {self.poisson_ratio}"
            )
        else:
            require(self.lam is not None and self.mu is not None, f"{s}.lam", "and mu are needed (or E and ν)")
            require(self.mu > 0, f"{s}.mu", f"must be positive, got {self.mu}")
            require(
                self.lam > -2.0 / 3.0 * self.mu,
                f"{s}.lam",
                f"must exceed −2μ/3 (positive bulk modulus), got {self.lam}",
            )
        # CFL: an explicit step must not let the pressure wave cross more than a cell
        wave_speed = math.sqrt(self.p_wave_modulus / self.density)
        stable_dt = self.grid_dx / wave_speed
        require(
            self.dt <= stable_dt,
            f"{s}.dt",
            f"({self.dt:g} s) exceeds the explicit stability limit dx / c = {stable_dt:.3g} s (pressure-wave speed "
            f"c = √((λ + 2μ)/ρ) = {wave_speed:.3g} grid units/s); lower dt below {stable_dt:.3g} (a third of it is "
            "safe) or soften the material",
        )

    @property
    def p_wave_modulus(self) -> float:
        """λ + 2μ (stress units), from lam/mu or from E and ν."""
        if self.youngs_modulus is not None:
            E, nu = self.youngs_modulus, self.poisson_ratio
            return E * (1 - nu) / ((1 + nu) * (1 - 2 * nu))
        return self.lam + 2 * self.mu


@dataclass
class OptimizationConfig:
    """The `optimization` section: episodes, control steps and the optimiser (reference keys first)."""

    num_animations: int = 2  # episodes; each starts from the previous one's last state
    num_timesteps: int = 10  # MPM steps per episode
    # free steps (no control) after each episode's driven steps; the loss is taken at their end and
    # the next episode starts from the released state. 0: the reference (loss at the last driven step)
    release_steps: int = 0
    control_stride: int = 1  # a ΔF control every `control_stride` steps
    max_gd_iters: int = 1  # reference optimiser: gradient steps per control step and pass
    max_ls_iters: int = 10  # reference optimiser: line-search halvings
    initial_alpha: float = 0.01  # reference optimiser: first line-search step size
    gd_tol: float = 1e-4  # reference optimiser: stop when |g| < gd_tol·|g₀|
    passes: int = 3  # reference optimiser: sweeps over the control steps per episode
    optimizer: Literal["adam", "reference"] = "adam"  # 'adam' optimises all controls of an episode at once
    iterations: int = 12  # adam: gradient steps per episode
    learning_rate: float = 0.02  # adam: first step size, ΔF per 1/120 s of simulated time (optimize.units)
    # adam: optimise the control rates on the nodes of a lattice of this spacing (grid units) over
    # the rest body, each particle's interpolated from its cell's 8 nodes (optimize.control_lattice),
    # so a refined config keeps the same control space. auto: 1 grid unit, the cell the optimiser
    # was tuned at (optimize.units.REFERENCE_DX); null, or no coarser than the particle spacing: one
    # control per particle (the reference). Reference pair, 5 episodes on an H200, Chamfer with auto
    # against one control per particle: dx 1 0.241 / 0.240, dx 0.5 0.143 / 0.149, refine 4 (714k
    # particles) 0.102 / 0.189 (a 0.5 lattice: 0.160).
    control_spacing: float | Literal["auto"] | None = "auto"
    final_learning_rate_ratio: float = 0.1  # adam: cosine schedule ends at lr · ratio
    patience: int = 4  # adam: stop after this many iterations without improvement
    arrival_speed_weight: float = 20.0  # adds w · mean |v|² of the last state (s²/grid units²); 0 = reference loss
    # adds w · the last state's elastic energy per unit mass, Σ V ψ(F) / Σ m (grid units²/s²): the
    # stress that would still move the body once the controls stop; 0 = off (the reference loss)
    elastic_energy_weight: float = 0.0
    # adds w · Chamfer distance (grid units) of the last state to the target particles (mesh or
    # shape targets); 0 = mass field only. Larger fits thin parts closer but ejects a few particles.
    chamfer_weight: float = 2000.0
    seed: int = 0  # seeds every random choice of the run
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    dtype: Literal["float32", "float64"] = "float32"
    checkpoint_steps: bool = False  # recompute each step in backward (memory O(T·state))
    backend: Literal["auto", "torch", "triton"] = "auto"  # MPM step implementation
    # adam on CUDA: capture an iteration's rollout, loss and gradient as CUDA graphs, replayed by
    # every iteration of the run (optimize.graphs); false: launch every kernel from Python
    cuda_graph: bool = True

    def validate(self) -> None:
        o = "optimization"
        require(self.num_animations >= 1, f"{o}.num_animations", f"must be ≥ 1, got {self.num_animations}")
        require(self.num_timesteps >= 1, f"{o}.num_timesteps", f"must be ≥ 1, got {self.num_timesteps}")
        require(self.release_steps >= 0, f"{o}.release_steps", f"must be ≥ 0, got {self.release_steps}")
        require(self.control_stride >= 1, f"{o}.control_stride", f"must be ≥ 1, got {self.control_stride}")
        require(
            self.num_timesteps >= self.control_stride,
            f"{o}.num_timesteps",
            f"({self.num_timesteps}) must be at least control_stride ({self.control_stride}); "
            "lower control_stride or raise num_timesteps",
        )
        require(self.max_gd_iters >= 1, f"{o}.max_gd_iters", f"must be ≥ 1, got {self.max_gd_iters}")
        require(self.max_ls_iters >= 1, f"{o}.max_ls_iters", f"must be ≥ 1, got {self.max_ls_iters}")
        require(self.initial_alpha > 0, f"{o}.initial_alpha", f"must be positive, got {self.initial_alpha}")
        require(self.gd_tol >= 0, f"{o}.gd_tol", f"must be ≥ 0, got {self.gd_tol}")
        require(self.passes >= 1, f"{o}.passes", f"must be ≥ 1, got {self.passes}")
        require(self.iterations >= 1, f"{o}.iterations", f"must be ≥ 1, got {self.iterations}")
        require(self.learning_rate > 0, f"{o}.learning_rate", f"must be positive, got {self.learning_rate}")
        require(
            self.control_spacing in (None, "auto") or self.control_spacing > 0,
            f"{o}.control_spacing",
            f"must be a positive spacing, auto or null, got {self.control_spacing}",
        )
        require(
            0 < self.final_learning_rate_ratio <= 1,
            f"{o}.final_learning_rate_ratio",
            f"must be in (0, 1], got {self.final_learning_rate_ratio}",
        )
        require(self.patience >= 1, f"{o}.patience", f"must be ≥ 1, got {self.patience}")
        require(
            self.arrival_speed_weight >= 0, f"{o}.arrival_speed_weight", f"must be ≥ 0, got {self.arrival_speed_weight}"
        )
        require(self.chamfer_weight >= 0, f"{o}.chamfer_weight", f"must be ≥ 0, got {self.chamfer_weight}")
        require(
            self.elastic_energy_weight >= 0,
            f"{o}.elastic_energy_weight",
            f"must be ≥ 0, got {self.elastic_energy_weight}",
        )


@dataclass
class E2EConfig:
    """The `e2e` section: cameras, targets and extras of end-to-end (image-loss) training."""

    num_train_views: int = 4  # orbit cameras whose images supervise the controls
    num_heldout_views: int = 4  # orbit cameras used only to evaluate (IoU, PSNR)
    width: int = 256  # image size of training and evaluation views, pixels
    height: int = 256
    fov_deg: float = 40.0  # horizontal field of view of the orbit cameras, degrees
    orbit_radius: float | None = None  # camera distance from the target's centre; None: fit the grid box
    elevation_deg: float = 20.0  # elevation of the training orbit, degrees
    heldout_elevation_deg: float = 40.0  # elevation of the held-out orbit (azimuths offset by half a step)
    target_images: str | None = None  # image-only target: folder with cameras.json (see io/targets.py)
    targets: Literal["mesh", "particles"] = "mesh"  # target views ray cast from the mesh, or Gaussians of its particles
    supervised_steps: list[int] = field(default_factory=lambda: [-1])  # trajectory indices, −1 = last
    material: Literal["none", "lame", "youngs"] = "none"  # also optimise material parameters
    surface_parameters: bool = False  # also train the surfels' size and flatness (σ0 and thickness)
    opacity: float = 1.0  # peak opacity of every Gaussian
    render_backend: Literal["auto", "torch", "gsplat"] = "auto"
    video_size: int = 320  # pixels of the orbit-camera morph video

    def validate(self) -> None:
        require(
            self.num_train_views >= 1 or self.target_images,
            "e2e.num_train_views",
            f"must be ≥ 1, got {self.num_train_views}",
        )
        require(self.num_heldout_views >= 0, "e2e.num_heldout_views", f"must be ≥ 0, got {self.num_heldout_views}")
        require(
            max(self.num_train_views, self.num_heldout_views) <= MAX_VIEWS,
            "e2e.num_train_views",
            f"and num_heldout_views must be at most {MAX_VIEWS} (one camera per degree), got "
            f"{self.num_train_views} and {self.num_heldout_views}",
        )
        require(
            self.width >= 8 and self.height >= 8,
            "e2e.width",
            f"and e2e.height must be at least 8 pixels, got {self.width}x{self.height}",
        )
        require(
            max(self.width, self.height, self.video_size) <= MAX_IMAGE_SIDE,
            "e2e.width",
            f"x height ({self.width}x{self.height}) and video_size ({self.video_size}) must stay within "
            f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixels",
        )
        require(self.video_size >= 8, "e2e.video_size", f"must be at least 8 pixels, got {self.video_size}")
        require(0 < self.fov_deg < 170, "e2e.fov_deg", f"must be in (0, 170), got {self.fov_deg}")
        require(
            self.orbit_radius is None or self.orbit_radius > 0,
            "e2e.orbit_radius",
            f"must be positive, got {self.orbit_radius}",
        )
        require(0 < self.opacity <= 1, "e2e.opacity", f"must be in (0, 1], got {self.opacity}")
        require(bool(self.supervised_steps), "e2e.supervised_steps", "must list at least one step")


# Sections of the reference config that physmorph accepts without using them.
REFERENCE_SECTIONS = ("output", "loss_schedule", "advanced_cov_reg")


@dataclass
class MorphConfig:
    """A whole morph run: source and target shapes, simulation and optimisation settings."""

    source: ShapeConfig = field(default_factory=lambda: ShapeConfig(shape="sphere", params={"radius": 6.0}))
    target: ShapeConfig = field(default_factory=lambda: ShapeConfig(shape="dumbbell"))
    output_dir: str = "outputs/morph"  # relative paths start at the current folder
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    mode: Literal["physics", "e2e"] = "physics"  # e2e: image losses through the renderer too
    loss: RenderLossConfig = field(default_factory=RenderLossConfig)  # `optimization.loss`
    surface: SurfaceConfig = field(default_factory=SurfaceConfig)  # `sampling.runtime_surface`
    camera: CameraConfig = field(default_factory=CameraConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    e2e: E2EConfig = field(default_factory=E2EConfig)
    base_dir: Path = field(default_factory=Path.cwd)  # folder that relative mesh paths start from
    unused: list[str] = field(default_factory=list)  # reference keys accepted but not used


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file; ConfigError when it is missing, a folder, not UTF-8,
    invalid, empty or not a mapping."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config path '{path}' is a folder, not a file; pass the path of a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found; pass the path of a YAML file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"config file '{path}' is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
            f"{error.start}); save it as UTF-8"
        ) from None
    except OSError as error:
        raise ConfigError(f"config file '{path}' cannot be read ({error.strerror}); check its permissions") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"config file '{path}' is not valid YAML: {error}") from None
    if data is None:
        raise ConfigError(
            f"config file '{path}' holds no settings (it is empty or only comments); add settings, or run "
            "without a config for the built-in demo"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | Path) -> MorphConfig:
    """Read a YAML config file; relative mesh paths resolve against the file's folder."""
    return config_from_mapping(read_yaml(path), base_dir=Path(path).resolve().parent)


def config_from_mapping(data: dict[str, Any], base_dir: Path | None = None) -> MorphConfig:
    """Build a MorphConfig from a parsed YAML mapping (physmorph or reference layout)."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    data = dict(data)
    unused: list[str] = []
    for alias, section in (("input_mesh_path", "source"), ("target_mesh_path", "target")):
        if alias in data:
            if section in data:
                raise ConfigError(f"config sets both '{alias}' and '{section}'; keep one")
            data[section] = {"mesh": data.pop(alias)}
    for section in REFERENCE_SECTIONS:
        if section in data:
            data.pop(section)
            unused.append(section)
    optimization = _section(data, "optimization")
    loss = render_loss_config_from_mapping(_section(optimization, "loss", "optimization.loss"))
    sampling = _section(data, "sampling")
    surface, surface_unused = surface_config_from_mapping(
        _section(sampling, "runtime_surface", "sampling.runtime_surface")
    )
    unused += surface_unused
    require(
        surface.M <= MAX_GAUSSIANS,
        "sampling.runtime_surface.M",
        f"({surface.M}) must be at most {MAX_GAUSSIANS} Gaussians; the surface of a body needs far fewer",
    )
    if sampling:
        raise ConfigError(f"unknown config key 'sampling.{sorted(sampling)[0]}'; known: sampling.runtime_surface")
    unused += _unused_settings(data)
    defaults = MorphConfig()
    config = MorphConfig(
        source=_shape(data, "source", defaults.source),
        target=_shape(data, "target", defaults.target),
        output_dir=_output_dir(data.pop("output_dir", defaults.output_dir)),
        simulation=from_mapping(SimulationConfig, data.pop("simulation", None), "simulation"),
        optimization=from_mapping(OptimizationConfig, optimization, "optimization"),
        mode=_mode(data.pop("mode", "physics")),
        loss=loss,
        surface=surface,
        camera=from_mapping(CameraConfig, data.pop("camera", None), "camera"),
        render=from_mapping(RenderConfig, data.pop("render", None), "render"),
        e2e=from_mapping(E2EConfig, data.pop("e2e", None), "e2e"),
        base_dir=base_dir or Path.cwd(),
        unused=unused,
    )
    config = refined(config)
    if data:
        known = (
            "source, target, input_mesh_path, target_mesh_path, output_dir, simulation, optimization, mode, "
            "sampling, camera, render, e2e"
        )
        raise ConfigError(f"unknown config key '{sorted(data)[0]}'; known top-level keys: {known}")
    if unused:
        warnings.warn(
            "physmorph accepts these config keys but does not use them: " + ", ".join(unused),
            UnusedKeysWarning,
            stacklevel=2,
        )
    return config


def refined(config: MorphConfig) -> MorphConfig:
    """`config` at the resolution `simulation.refine` = k asks for (a copy with refine 1): cells
    k times smaller (grid_dx / k), steps k times shorter (dt / k), k times as many of them
    (num_timesteps, release_steps, supervised trajectory indices), so the same box, physical
    time and points per cell, with k³ times the particles. The optimisation's units
    (physmorph.optimize.units) make the losses and controls comparable across k. A config with
    refine 1 is returned as it is."""
    k = config.simulation.refine
    if k == 1:
        return config
    sim = config.simulation
    settings = config.optimization
    # index i ≥ 0 is i·dt from the start, i < 0 is (−1 − i)·dt before the end
    steps = [step * k if step >= 0 else (step + 1) * k - 1 for step in config.e2e.supervised_steps]
    resolved = replace(
        config,
        simulation=replace(sim, grid_dx=sim.grid_dx / k, dt=sim.dt / k, refine=1),
        optimization=replace(
            settings, num_timesteps=settings.num_timesteps * k, release_steps=settings.release_steps * k
        ),
        e2e=replace(config.e2e, supervised_steps=steps),
    )
    resolved.simulation.validate()
    resolved.optimization.validate()
    return resolved


def _section(data: dict[str, Any], key: str, where: str | None = None) -> dict[str, Any]:
    """Pop section `key` of `data` as a new dict: {} when absent or null, ConfigError when it is
    not a mapping (a list, a number or a string where settings belong)."""
    value = data.pop(key, None)
    if value is None:
        return {}
    if not isinstance(value, dict):
        name = where or key
        raise ConfigError(
            f"config section '{name}' must be a mapping of 'key: value' settings, got {type(value).__name__} "
            f"{value!r:.60}; write it as '{key}: {{key: value, ...}}'"
        )
    return dict(value)


def _shape(data: dict[str, Any], key: str, default: ShapeConfig) -> ShapeConfig:
    """The `source` or `target` section; absent means the default shape, but an empty or null
    section is an error rather than a silent default."""
    if key not in data:
        return default
    value = data.pop(key)
    if value is None or value == {}:
        raise ConfigError(
            f"config section '{key}' is empty; give a mesh ({key}: {{mesh: path.obj}}) or a shape "
            f"({key}: {{shape: sphere, params: {{radius: 5}}}}), or leave the section out for the default"
        )
    if not isinstance(value, dict):
        raise ConfigError(
            f"config section '{key}' must be a mapping such as {{shape: sphere}} or {{mesh: path.obj}}, got "
            f"{type(value).__name__} {value!r:.60}"
        )
    return from_mapping(ShapeConfig, value, key)


def _output_dir(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"config key 'output_dir' must be a folder path, got {value!r:.60}")
    return value


# Settings that validate but change nothing yet: the single reference camera (physmorph renders
# orbit cameras, see the e2e section), which frames to render and the light type (always directional).
UNUSED_SETTINGS = ("camera", "render.num_frames", "render.schedule", "render.lighting.type")


def _unused_settings(data: dict[str, Any]) -> list[str]:
    """The keys of UNUSED_SETTINGS that `data` sets."""
    found = []
    for dotted in UNUSED_SETTINGS:
        node: Any = data
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            found.append(dotted)
    return found


def _mode(value: Any) -> Literal["physics", "e2e"]:
    if value not in ("physics", "e2e"):
        raise ConfigError(f"config key 'mode' must be 'physics' or 'e2e', got {value!r}")
    return value


def config_to_mapping(config: MorphConfig) -> dict[str, Any]:
    """A JSON/YAML-ready mapping of `config` that `config_from_mapping` reads back."""
    data = asdict(config)
    for derived in ("base_dir", "unused"):
        data.pop(derived)
    data["optimization"]["loss"] = data.pop("loss")
    data["sampling"] = {"runtime_surface": data.pop("surface")}
    for shape in ("source", "target"):
        data[shape] = {k: v for k, v in data[shape].items() if v is not None}
    return data
