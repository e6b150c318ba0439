"""Runtime surface settings (particles -> Gaussians) and the loader for the reference's YAML."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from physmorph.settings import from_mapping, require

# Keys of the reference's `sampling.runtime_surface` section that physmorph does not need: they
# tune its FAISS/IVF search, its per-call resampling (Gumbel temperature, EMA, hysteresis), its
# soft kNN weights, or features physmorph does not implement (normal anisotropy, normal smoothing,
# embedded-deformation F smoothing, the tangent smoother, AMP, debug PNGs). The binding makes
# them unnecessary: sampling happens once, kNN indices are exact, kernel weights are fixed.
REFERENCE_UNUSED_KEYS = (
    "use_hybrid_e2e",
    "use_normal_anisotropy",
    "anisotropy_factor",
    "use_hybrid_faiss",
    "use_faiss_ivf",
    "ivf_nlist",
    "ivf_nprobe",
    "use_soft_radius",
    "soft_radius_candidates",
    "differentiable",
    "sampling_tau",
    "knn_tau",
    "use_surface_detection",
    "hysteresis",
    "ema_beta",
    "use_F_kernel",
    "smooth_normals",
    "normal_smooth_iters",
    "normal_smooth_k",
    "normal_smooth_lambda",
    "ed",
    "smoother",
    "use_amp",
    "png",
)


@dataclass
class PostEqualizeConfig:
    """Bind-time density equalisation of Gaussian centres, then MLS projection to the surface."""

    enabled: bool = False  # the reference enables it; costs bind time that grows with M
    iters: int = 8  # repulsion iterations
    k: int = 32  # neighbouring Gaussians per repulsion step
    step: float = 0.45  # first step, as a fraction of the neighbourhood mean-shift vector
    annealing: float = 0.9  # step multiplier per iteration, in (0, 1]
    radius_mul: float = 1.2  # repulsion radius, in units of the mean Gaussian spacing
    use_mls_projection: bool = True  # project each centre back onto the particle surface
    mls_iters: int = 2  # projection iterations
    mls_step: float = 1.0  # fraction of the distance to the local plane moved per iteration
    knn_tau: float = 0.15  # MLS kernel temperature, in units of (local particle spacing)^2

    def validate(self) -> None:
        require(self.iters >= 0, "post_equalize.iters", f"must be >= 0, got {self.iters}")
        require(self.k >= 2, "post_equalize.k", f"must be >= 2, got {self.k}")
        require(self.step >= 0.0, "post_equalize.step", f"must be >= 0, got {self.step}")
        require(
            0.0 < self.annealing <= 1.0,
            "post_equalize.annealing",
            f"must be in (0, 1], got {self.annealing}",
        )
        require(
            self.radius_mul > 0.0,
            "post_equalize.radius_mul",
            f"must be > 0, got {self.radius_mul}",
        )
        require(
            self.mls_iters >= 0, "post_equalize.mls_iters", f"must be >= 0, got {self.mls_iters}"
        )
        require(
            0.0 <= self.mls_step <= 1.0,
            "post_equalize.mls_step",
            f"must be in [0, 1], got {self.mls_step}",
        )
        require(self.knn_tau > 0.0, "post_equalize.knn_tau", f"must be > 0, got {self.knn_tau}")


@dataclass
class SurfaceConfig:
    """How particles (x, F) become M anisotropic Gaussians (SPEC section 6). Lengths in grid units.

    `sigma0` is the standard deviation of every Gaussian where the material is undeformed
    (F = I): Sigma = sigma0^2 F Fᵀ. The reference has two names for it: `sigma0` (its "original"
    mode) and `base_gaussian_scale` (its "hybrid" mode, the one its bundled config runs); see
    `surface_config_from_mapping` for which one physmorph reads.
    """

    M: int = 50_000  # number of Gaussians
    k_surface: int = 36  # neighbours in the local PCA that detects the surface
    thr_percentile: float = 8.0  # percent of particles (the most planar) with p_surf >= 1/2
    soft_tau: float = 0.08  # temperature of p_surf, in units of surface variation (0..1/3)
    surface_power: float = 4.0  # p_surf = sigmoid(...)^surface_power (sharpens the selection)
    density_gamma: float = 2.5  # anchor weight ∝ p_surf^1.5 / h^density_gamma
    surf_jitter_alpha: float = 0.6  # tangent jitter half-width, in units of local spacing h
    thickness: float = 0.0  # half-width of the band along the normal, grid units
    sigma0: float = 0.08  # Gaussian standard deviation at F = I, grid units
    use_adaptive_scale: bool = False  # scale sigma0 by local spacing / mean spacing (0.3..2)
    k_F: int = 32  # noqa: N815 (the reference's name) particles each Gaussian interpolates
    h_mul: float = 1.5  # kernel bandwidth of that interpolation, in units of local spacing h
    post_equalize: PostEqualizeConfig = field(default_factory=PostEqualizeConfig)
    seed: int = 0  # seed of the bind-time sampling and jitter

    def validate(self) -> None:
        require(self.M >= 1, "M", f"must be >= 1, got {self.M}")
        require(self.k_surface >= 4, "k_surface", f"must be >= 4, got {self.k_surface}")
        require(
            0.0 < self.thr_percentile < 100.0,
            "thr_percentile",
            f"must be in (0, 100), got {self.thr_percentile}",
        )
        require(self.soft_tau > 0.0, "soft_tau", f"must be > 0, got {self.soft_tau}")
        require(self.surface_power > 0.0, "surface_power", f"must be > 0, got {self.surface_power}")
        require(
            self.density_gamma >= 0.0, "density_gamma", f"must be >= 0, got {self.density_gamma}"
        )
        require(
            self.surf_jitter_alpha >= 0.0,
            "surf_jitter_alpha",
            f"must be >= 0, got {self.surf_jitter_alpha}",
        )
        require(self.thickness >= 0.0, "thickness", f"must be >= 0, got {self.thickness}")
        require(self.sigma0 > 0.0, "sigma0", f"must be > 0 (grid units), got {self.sigma0}")
        require(self.k_F >= 1, "k_F", f"must be >= 1, got {self.k_F}")
        require(self.h_mul > 0.0, "h_mul", f"must be > 0, got {self.h_mul}")
        self.post_equalize.validate()


def surface_config_from_mapping(
    mapping: Mapping[str, Any] | None, section: str = "sampling.runtime_surface"
) -> tuple[SurfaceConfig, list[str]]:
    """Build a SurfaceConfig from a YAML mapping; return it and the keys it did not need.

    Accepts physmorph's own keys and the reference's `sampling.runtime_surface` section
    unchanged. σ0: when the mapping sets `use_hybrid_e2e: true` and gives
    `base_gaussian_scale`, that value is σ0 (as in the reference, whose hybrid mode ignores
    `sigma0`), and `sigma0` is reported as not needed; otherwise `sigma0` is σ0 and
    `base_gaussian_scale` is reported as not needed. The second return value lists the
    not-needed keys as `section.key`, for one warning. Unknown keys raise ConfigError.
    """
    values = dict(mapping or {})
    unused: list[str] = []
    hybrid = values.get("use_hybrid_e2e", False) is True
    if "base_gaussian_scale" in values:
        base_scale = values.pop("base_gaussian_scale")
        if hybrid:
            if "sigma0" in values:
                unused.append(f"{section}.sigma0")
            values["sigma0"] = base_scale
        else:
            unused.append(f"{section}.base_gaussian_scale")
    config = from_mapping(SurfaceConfig, values, section, REFERENCE_UNUSED_KEYS, unused)
    return config, unused
