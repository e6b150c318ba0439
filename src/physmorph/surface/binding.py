"""Bind a runtime surface to a particle state once: anchors, kernel weights and rest offsets."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import torch

from physmorph.errors import InputError
from physmorph.surface.config import SurfaceConfig
from physmorph.surface.detection import detect_surface
from physmorph.surface.equalize import equalize_density
from physmorph.surface.knn import nearest_neighbors

# Anchor sampling weight ∝ p_surf ** _PROBABILITY_POWER / h ** density_gamma (SPEC section 6).
_PROBABILITY_POWER = 1.5
# Particles whose surface probability is below this fraction of the largest never carry
# Gaussians: it keeps the interior (p ~ 1e-4 of the surface's) empty even for M >> N.
_CANDIDATE_FRACTION = 1e-2
# Bounds of the density-adaptive scale factor h / mean(h).
_ADAPTIVE_SCALE_RANGE = (0.3, 2.0)


@dataclass
class SurfaceBinding:
    """Which particles each of M Gaussians follows, and how (fixed for a trajectory/episode).

    A Gaussian's centre is μ = x̄ + F̄ r with x̄ = Σ_k w_k x_k, F̄ = Σ_k w_k F_k over its
    k_F neighbouring particles; see `synthesize_surface`. N particles, M Gaussians.

    anchors:          [M] int64, the surface particle each Gaussian was sampled at
    neighbor_indices: [M, k_F] int64, the particles it interpolates
    neighbor_weights: [M, k_F] kernel weights w_k (each row sums to 1)
    rest_offsets:     [M, 3] r, grid units in the material frame of F̄
    material_normals: [M, 3] unit normals N in the material frame (n = cof(F̄) N, normalised)
    scales:           [M] σ0 of each Gaussian, grid units
    interpolation:    sparse CSR [M, N] holding the weights (the per-frame product)
    interpolation_t:  sparse CSR [N, M], its transpose (the backward product)
    """

    anchors: torch.Tensor
    neighbor_indices: torch.Tensor
    neighbor_weights: torch.Tensor
    rest_offsets: torch.Tensor
    material_normals: torch.Tensor
    scales: torch.Tensor
    interpolation: torch.Tensor
    interpolation_t: torch.Tensor

    @property
    def count(self) -> int:
        """M, the number of Gaussians."""
        return int(self.rest_offsets.shape[0])

    @property
    def particle_count(self) -> int:
        """N, the number of particles this binding expects."""
        return int(self.interpolation.shape[1])

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> SurfaceBinding:
        """A copy on `device` with floating-point tensors in `dtype` (indices stay int64)."""
        return replace(
            self,
            anchors=self.anchors.to(device),
            neighbor_indices=self.neighbor_indices.to(device),
            neighbor_weights=self.neighbor_weights.to(device, dtype),
            rest_offsets=self.rest_offsets.to(device, dtype),
            material_normals=self.material_normals.to(device, dtype),
            scales=self.scales.to(device, dtype),
            interpolation=self.interpolation.to(device, dtype),
            interpolation_t=self.interpolation_t.to(device, dtype),
        )


def _check_state(positions: torch.Tensor, deformation_gradients: torch.Tensor) -> None:
    """Raise InputError unless positions [N, 3] and F [N, 3, 3] are finite float tensors."""
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise InputError(f"particle positions must have shape [N, 3], got {list(positions.shape)}")
    n = positions.shape[0]
    if deformation_gradients.shape != (n, 3, 3):
        raise InputError(
            f"deformation gradients must have shape [N, 3, 3] = [{n}, 3, 3] to match the "
            f"positions, got {list(deformation_gradients.shape)}"
        )
    if not positions.is_floating_point() or not deformation_gradients.is_floating_point():
        raise InputError("particle positions and deformation gradients must be float tensors")


def _tangent_frame(normals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two unit tangents [M, 3] completing unit `normals` [M, 3] to a right-handed frame."""
    axis = torch.zeros_like(normals)
    axis.scatter_(1, normals.abs().argmin(dim=1, keepdim=True), 1.0)
    t1 = torch.linalg.cross(normals, axis)
    t1 = t1 / t1.norm(dim=1, keepdim=True)
    return t1, torch.linalg.cross(normals, t1)


def _weight_matrices(
    indices: torch.Tensor, weights: torch.Tensor, particle_count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR [M, N] holding `weights` [M, k] at columns `indices` [M, k], and its CSR transpose."""
    rows, k = indices.shape
    order = indices.argsort(dim=1)
    columns = indices.gather(1, order).reshape(-1)
    values = weights.gather(1, order).reshape(-1)
    row_starts = torch.arange(0, rows * k + 1, k, device=indices.device)
    # Entries are row-major, so a stable sort by column lists each column's rows in order
    # (int32 keys sort about twice as fast as int64).
    by_column = torch.sort(columns.to(torch.int32), stable=True).indices
    column_starts = torch.zeros(particle_count + 1, dtype=torch.int64, device=indices.device)
    column_starts[1:] = torch.bincount(columns, minlength=particle_count).cumsum(0)
    transpose_columns = torch.div(by_column, k, rounding_mode="floor")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support.*")
        matrix = torch.sparse_csr_tensor(
            row_starts, columns, values, (rows, particle_count), check_invariants=False
        )
        transpose = torch.sparse_csr_tensor(
            column_starts,
            transpose_columns,
            values[by_column],
            (particle_count, rows),
            check_invariants=False,
        )
    return matrix, transpose


@torch.no_grad()
def bind_surface(
    x_rest: torch.Tensor,
    F_rest: torch.Tensor,
    config: SurfaceConfig,
    generator: torch.Generator | None = None,
) -> SurfaceBinding:
    """Sample M Gaussians on the surface of a particle state and bind them to its particles.

    x_rest: [N, 3] particle positions, grid units; F_rest: [N, 3, 3] their deformation
    gradients (I at the start of a morph; the previous episode's F when re-binding).
    Steps (SPEC section 6): surface detection by weighted local PCA (`detect_surface`);
    M anchors drawn with replacement, weight ∝ p_surf^1.5 / h^density_gamma among particles
    with p_surf >= 1e-2 max p_surf; centre =
    anchor + surf_jitter_alpha·h·(u t1 + v t2) + thickness·z·n with u, v, z ~ U(-1, 1);
    optional density equalisation and MLS projection (`post_equalize`); then the k_F nearest
    particles of each centre with Gaussian kernel weights exp(-(d / (h_mul h))²), normalised,
    and the rest offset r = F̄⁻¹ (μ - x̄) and material normal N ∝ F̄ᵀ n. Randomness comes
    from `generator` (default: a CPU generator seeded with `config.seed`; draws are made on
    its device, so the CPU default gives the same Gaussians on every device). No gradient.
    Returns a SurfaceBinding on x_rest's device and dtype.
    """
    _check_state(x_rest, F_rest)
    config.validate()
    n_particles = x_rest.shape[0]
    needed = max(config.k_surface + 1, config.k_F)
    if n_particles < needed:
        raise InputError(
            f"the runtime surface needs at least {needed} particles (k_surface + 1 and k_F), "
            f"got {n_particles}; lower k_surface/k_F or use more particles"
        )
    if not (torch.isfinite(x_rest).all() and torch.isfinite(F_rest).all()):
        raise InputError("bind_surface got non-finite particle positions or F; check the state")
    device, dtype = x_rest.device, x_rest.dtype
    x = x_rest.detach().to(torch.float64)
    F = F_rest.detach().to(torch.float64)
    detection = detect_surface(
        x, config.k_surface, config.thr_percentile, config.soft_tau, config.surface_power
    )

    if generator is None:
        generator = torch.Generator().manual_seed(config.seed)
    draw_device = generator.device
    probability = detection.probability
    weights = probability**_PROBABILITY_POWER / detection.spacing**config.density_gamma
    weights = torch.where(probability >= _CANDIDATE_FRACTION * probability.max(), weights, 0.0)
    anchors = torch.multinomial(
        weights.to(draw_device), config.M, replacement=True, generator=generator
    )
    uvz = torch.rand(config.M, 3, generator=generator, device=draw_device, dtype=torch.float64)
    anchors, uvz = anchors.to(device), (2.0 * uvz - 1.0).to(device)

    normals = detection.normals[anchors]
    spacing = detection.spacing[anchors][:, None]
    t1, t2 = _tangent_frame(normals)
    centres = (
        x[anchors]
        + config.surf_jitter_alpha * spacing * (uvz[:, :1] * t1 + uvz[:, 1:2] * t2)
        + config.thickness * uvz[:, 2:] * normals
    )
    if config.post_equalize.enabled:
        centres, normals = equalize_density(centres, normals, x, detection, config.post_equalize)

    distances, indices = nearest_neighbors(centres, x, config.k_F)
    bandwidth = config.h_mul * detection.spacing[indices[:, :1]]
    kernel = torch.exp(-((distances / bandwidth) ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    matrix, transpose = _weight_matrices(indices, kernel, n_particles)
    averaged = matrix @ torch.cat((x, F.reshape(n_particles, 9)), dim=1)
    x_mean, F_mean = averaged[:, :3], averaged[:, 3:].reshape(-1, 3, 3)
    if not (torch.linalg.det(F_mean) > 0).all():
        raise InputError(
            "bind_surface: the kernel-averaged F_rest is singular or inverted (det <= 0) near "
            "the surface; bind to a state whose deformation gradients have det F > 0"
        )
    rest_offsets = torch.linalg.solve(F_mean, (centres - x_mean)[..., None])[..., 0]
    material_normals = (F_mean.transpose(1, 2) @ normals[..., None])[..., 0]
    material_normals = material_normals / material_normals.norm(dim=1, keepdim=True)

    scales = torch.full((config.M,), config.sigma0, dtype=torch.float64, device=device)
    if config.use_adaptive_scale:
        local = (kernel * detection.spacing[indices]).sum(dim=1)
        scales = scales * (local / local.mean()).clamp(*_ADAPTIVE_SCALE_RANGE)

    return SurfaceBinding(
        anchors=anchors,
        neighbor_indices=indices,
        neighbor_weights=kernel.to(dtype),
        rest_offsets=rest_offsets.to(dtype),
        material_normals=material_normals.to(dtype),
        scales=scales.to(dtype),
        interpolation=matrix.to(dtype=dtype),
        interpolation_t=transpose.to(dtype=dtype),
    )
