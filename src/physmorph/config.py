"""The typed YAML config of physmorph runs; the reference system's config file loads unchanged."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
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

    def validate(self) -> None:
        s = "simulation"
        require(self.grid_dx > 0, f"{s}.grid_dx", f"must be positive, got {self.grid_dx}")
        require(
            all(lo < hi for lo, hi in zip(self.grid_min_point, self.grid_max_point)),
            f"{s}.grid_max_point",
            f"must exceed grid_min_point on every axis ({self.grid_min_point} vs {self.grid_max_point})",
        )
        require(1 <= self.points_per_cell_cuberoot <= 8, f"{s}.points_per_cell_cuberoot", "must be 1..8")
        require(math.isfinite(self.dt) and self.dt > 0, f"{s}.dt", f"must be a positive time step, got {self.dt}")
        require(self.density > 0, f"{s}.density", f"must be positive, got {self.density}")
        require(self.drag >= 0, f"{s}.drag", f"must be ≥ 0, got {self.drag}")
        require(
            0 <= self.smoothing_factor < 1, f"{s}.smoothing_factor", f"must be in [0, 1), got {self.smoothing_factor}"
        )
        require(0 < self.min_jacobian < 1, f"{s}.min_jacobian", f"must be in (0, 1), got {self.min_jacobian}")
        require(self.boundary_cells >= 0, f"{s}.boundary_cells", "must be ≥ 0")
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
            require(self.lam > -2.0 / 3.0 * self.mu, f"{s}.lam", "must exceed −2μ/3 (positive bulk modulus)")


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
    learning_rate: float = 0.02  # adam: first step size (ΔF units)
    final_learning_rate_ratio: float = 0.1  # adam: cosine schedule ends at lr · ratio
    patience: int = 4  # adam: stop after this many iterations without improvement
    arrival_speed_weight: float = 20.0  # adds w · mean |v|² of the last state (s²/grid units²); 0 = reference loss
    # adds w · Chamfer distance (grid units) of the last state to the target particles (mesh or
    # shape targets); 0 = mass field only. Larger fits thin parts closer but ejects a few particles.
    chamfer_weight: float = 2000.0
    seed: int = 0  # seeds every random choice of the run
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    dtype: Literal["float32", "float64"] = "float32"
    checkpoint_steps: bool = False  # recompute each step in backward (memory O(T·state))
    backend: Literal["auto", "torch", "triton"] = "auto"  # MPM step implementation

    def validate(self) -> None:
        o = "optimization"
        require(self.num_animations >= 1, f"{o}.num_animations", "must be ≥ 1")
        require(self.num_timesteps >= 1, f"{o}.num_timesteps", "must be ≥ 1")
        require(self.release_steps >= 0, f"{o}.release_steps", f"must be ≥ 0, got {self.release_steps}")
        require(self.control_stride >= 1, f"{o}.control_stride", "must be ≥ 1")
        require(
            self.num_timesteps >= self.control_stride,
            f"{o}.num_timesteps",
            f"({self.num_timesteps}) must be at least control_stride ({self.control_stride}); "
            "lower control_stride or raise num_timesteps",
        )
        require(self.max_gd_iters >= 1, f"{o}.max_gd_iters", "must be ≥ 1")
        require(self.max_ls_iters >= 1, f"{o}.max_ls_iters", "must be ≥ 1")
        require(self.initial_alpha > 0, f"{o}.initial_alpha", "must be positive")
        require(self.gd_tol >= 0, f"{o}.gd_tol", "must be ≥ 0")
        require(self.passes >= 1, f"{o}.passes", "must be ≥ 1")
        require(self.iterations >= 1, f"{o}.iterations", "must be ≥ 1")
        require(self.learning_rate > 0, f"{o}.learning_rate", "must be positive")
        require(0 < self.final_learning_rate_ratio <= 1, f"{o}.final_learning_rate_ratio", "must be in (0, 1]")
        require(self.patience >= 1, f"{o}.patience", "must be ≥ 1")
        require(self.arrival_speed_weight >= 0, f"{o}.arrival_speed_weight", "must be ≥ 0")
        require(self.chamfer_weight >= 0, f"{o}.chamfer_weight", "must be ≥ 0")


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
    opacity: float = 1.0  # peak opacity of every Gaussian
    render_backend: Literal["auto", "torch", "gsplat"] = "auto"
    video_size: int = 320  # pixels of the orbit-camera morph video

    def validate(self) -> None:
        require(self.num_train_views >= 1 or self.target_images, "e2e.num_train_views", "must be ≥ 1")
        require(self.num_heldout_views >= 0, "e2e.num_heldout_views", "must be ≥ 0")
        require(self.width >= 8 and self.height >= 8, "e2e.width", "and e2e.height must be at least 8 pixels")
        require(0 < self.fov_deg < 170, "e2e.fov_deg", f"must be in (0, 170), got {self.fov_deg}")
        require(self.orbit_radius is None or self.orbit_radius > 0, "e2e.orbit_radius", "must be positive")
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
    """The mapping in a YAML config file; ConfigError when it is missing, invalid or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found; pass the path of a YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"config file '{path}' is not valid YAML: {error}") from None
    if data is None:
        return {}
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
    optimization = dict(data.pop("optimization", None) or {})
    loss = render_loss_config_from_mapping(optimization.pop("loss", None))
    sampling = dict(data.pop("sampling", None) or {})
    surface, surface_unused = surface_config_from_mapping(sampling.pop("runtime_surface", None))
    unused += surface_unused
    if sampling:
        raise ConfigError(f"unknown config key 'sampling.{sorted(sampling)[0]}'; known: sampling.runtime_surface")
    config = MorphConfig(
        source=from_mapping(
            ShapeConfig, data.pop("source", None) or {"shape": "sphere", "params": {"radius": 6.0}}, "source"
        ),
        target=from_mapping(ShapeConfig, data.pop("target", None) or {"shape": "dumbbell"}, "target"),
        output_dir=str(data.pop("output_dir", "outputs/morph")),
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
    if data:
        known = (
            "source, target, input_mesh_path, target_mesh_path, output_dir, simulation, optimization, mode, "
            "sampling, camera, render, e2e"
        )
        raise ConfigError(f"unknown config key '{sorted(data)[0]}'; known top-level keys: {known}")
    if unused:
        warnings.warn(
            "physmorph does not need these reference config keys: " + ", ".join(unused),
            UnusedKeysWarning,
            stacklevel=2,
        )
    return config


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
