"""Runtime surface settings (particles -> Gaussians) and the loader for the reference's YAML."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

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
    # the reference's PCA surface detection, anchor sampling, jitter and density equalisation:
    # physmorph samples its smooth implicit surface evenly instead
    "k_surface",
    "thr_percentile",
    "soft_tau",
    "surface_power",
    "density_gamma",
    "surf_jitter_alpha",
    "thickness",
    "use_adaptive_scale",
    "post_equalize",
)


@dataclass
class SurfaceConfig:
    """How particles (x, F) become M surfels: flat anisotropic Gaussians on the body's mesh (or,
    without one, the particles' smooth implicit surface), following the particles through F.
    Lengths in grid units; `smoothing` applies to the implicit surface only.

    `sigma0` fixes the surfels' in-plane standard deviation at F = I; left unset, it is
    `coverage`·sqrt(area / M), which closes the surface for any M and body size.
    """

    M: int = 50_000  # number of Gaussians
    k_F: int = 32  # noqa: N815 (the reference's name) particles each Gaussian interpolates
    h_mul: float = 1.5  # kernel bandwidth of that interpolation, in units of local spacing h
    smoothing: float = 1.3  # blur of the occupancy that defines the surface, in particle spacings
    coverage: float = 1.0  # automatic σ_t, in units of the mean surfel spacing sqrt(area / M)
    sigma0: float | None = None  # in-plane std σ_t at F = I, grid units (None: from coverage)
    flatness: float = 0.2  # σ_n / σ_t, the surfels' thickness across the surface
    seed: int = 0  # seed of the bind-time sampling
    # the F the surfels follow: "state", the particles' own F (which the reference's F smoothing
    # keeps from following the motion), or "measured", the affine fit of how each particle's
    # nearest `deformation_neighbors` moved (surface.measured_deformation). The physics-only
    # isosphere → bunny morph (reference config, 3 episodes, 256², CPU) renders with held-out
    # silhouette error 0.142 through "state" and 0.120 through "measured", without its cracks;
    # at dx 0.5, though, "measured" renders it twice as far from the bunny (0.289 against 0.156,
    # H200, 512²), and e2e gains less through it at dx 1 (BENCHMARKS.md, issue 13), hence the default.
    deformation: Literal["measured", "state"] = "state"
    deformation_neighbors: int = 12

    def validate(self) -> None:
        require(self.M >= 1, "M", f"must be >= 1, got {self.M}")
        require(self.k_F >= 1, "k_F", f"must be >= 1, got {self.k_F}")
        require(self.h_mul > 0.0, "h_mul", f"must be > 0, got {self.h_mul}")
        require(0.25 <= self.smoothing <= 4.0, "smoothing", f"must be in [0.25, 4] spacings, got {self.smoothing}")
        require(self.coverage > 0.0, "coverage", f"must be > 0, got {self.coverage}")
        require(
            self.sigma0 is None or self.sigma0 > 0.0,
            "sigma0",
            f"must be > 0 (grid units) or unset, got {self.sigma0}",
        )
        require(0.0 < self.flatness <= 1.0, "flatness", f"must be in (0, 1], got {self.flatness}")
        require(
            self.deformation in ("measured", "state"),
            "deformation",
            f"must be 'measured' or 'state', got {self.deformation!r}",
        )
        require(
            self.deformation_neighbors >= 4,
            "deformation_neighbors",
            f"must be >= 4 (a 3D fit needs 4 points), got {self.deformation_neighbors}",
        )


def surface_config_from_mapping(
    mapping: Mapping[str, Any] | None, section: str = "sampling.runtime_surface"
) -> tuple[SurfaceConfig, list[str]]:
    """Build a SurfaceConfig from a YAML mapping; return it and the keys it did not need.

    Accepts physmorph's own keys and the reference's `sampling.runtime_surface` section
    unchanged. A reference section (it has `use_hybrid_e2e`) sizes its Gaussians with
    `base_gaussian_scale` or `sigma0`, about 0.02 grid units, which leaves holes in a surface
    sampled by M surfels; physmorph sizes them from the surface area instead and names those
    keys, with the reason, among the not-needed ones. The second return value lists the
    not-needed keys as `section.key`, for one warning. Unknown keys raise ConfigError.
    """
    values = dict(mapping or {})
    unused: list[str] = []
    if "use_hybrid_e2e" in values:
        for key in ("base_gaussian_scale", "sigma0"):
            if key in values:
                unused.append(
                    f"{section}.{key} (the reference's {values.pop(key)} would leave holes; physmorph sizes "
                    "surfels from the surface area, see sampling.runtime_surface.coverage)"
                )
    elif "base_gaussian_scale" in values:
        values.pop("base_gaussian_scale")
        unused.append(f"{section}.base_gaussian_scale")
    config = from_mapping(SurfaceConfig, values, section, REFERENCE_UNUSED_KEYS, unused)
    return config, unused
