"""Pure-PyTorch Gaussian splatting: EWA projection and tiled, depth-sorted alpha compositing."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf

LOW_PASS = 0.3  # px², added to the projected covariance diagonal (3DGS / gsplat low-pass filter)
MAX_ALPHA = 0.99  # per-Gaussian alpha clamp (3DGS)
MIN_ALPHA = 1.0 / 255.0  # alphas below this are skipped (3DGS)
MIN_TRANSMITTANCE = 1e-4  # a pixel stops at the Gaussian that would take T to or below this
MAX_EXTENT = 3.33  # bounding box half-width in standard deviations (gsplat)


@dataclass
class Projection:
    """The V Gaussians one camera sees, projected to its image.

    ids:       [V] indices into the input Gaussians
    means2d:   [V, 2] pixel coordinates of the projected centres
    conics:    [V, 3] (a, b, c) of the inverse 2D covariance [[a, b], [b, c]], 1/px²
    depths:    [V] camera z of the centres, world units
    radii:     [V, 2] bounding-box half-sizes in pixels (not differentiable)
    opacities: [V] opacities to composite with (scaled when antialiased)
    """

    ids: torch.Tensor
    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    radii: torch.Tensor
    opacities: torch.Tensor


def perspective_covariances(
    camera_means: torch.Tensor, camera_covariances: torch.Tensor, K: torch.Tensor, width: int, height: int
) -> torch.Tensor:
    """EWA image-plane covariances J Σ_cam Jᵀ [..., M, 2, 2] (px², no low-pass term) of Gaussians with
    camera-frame centres [..., M, 3] and covariances [..., M, 3, 3] seen through intrinsics K
    [..., 3, 3]; J is the perspective Jacobian at the centre, its x/z and y/z clamped to 1.3× the
    field of view as gsplat does (keeps footprints near and beyond the image edge bounded)."""
    x, y, z = camera_means.unbind(-1)
    fx, fy = K[..., 0, 0, None], K[..., 1, 1, None]
    cx, cy = K[..., 0, 2, None], K[..., 1, 2, None]
    margin_x = 0.3 * 0.5 * width / fx
    margin_y = 0.3 * 0.5 * height / fy
    tx = z * torch.minimum(torch.maximum(x / z, -(cx / fx + margin_x)), (width - cx) / fx + margin_x)
    ty = z * torch.minimum(torch.maximum(y / z, -(cy / fy + margin_y)), (height - cy) / fy + margin_y)
    zero = torch.zeros_like(z)
    jacobian = torch.stack(
        [
            torch.stack([fx / z, zero, -fx * tx / z**2], -1),
            torch.stack([zero, fy / z, -fy * ty / z**2], -1),
        ],
        -2,
    )
    return jacobian @ camera_covariances @ jacobian.transpose(-1, -2)


def project_gaussians(
    means: torch.Tensor,
    covariances: torch.Tensor,
    opacities: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    znear: float,
    zfar: float,
    antialias: bool = True,
) -> Projection:
    """EWA-project Gaussians (means [M, 3], covariances [M, 3, 3], opacities [M]) into one
    camera (viewmat [4, 4] world-to-camera, K [3, 3]).

    The 2D covariance is Σ₂ + 0.3·I with Σ₂ = J W Σ Wᵀ Jᵀ and J the Jacobian of the perspective
    projection at the centre (its x/z, y/z clamped to 1.3× the field of view, as gsplat does).
    antialias: scale each opacity by √(det Σ₂ / det(Σ₂ + 0.3·I)) (gsplat's "antialiased" mode),
    so the low-pass filter spreads a sub-pixel Gaussian's opacity instead of adding to it: an
    edge-on surfel at the silhouette stays as opaque as the pixels it covers, and the outline
    does not grow with the Gaussian count. Culled: centres outside [znear, zfar] in camera z,
    opacity (after the scaling) below 1/255, footprints off the image.
    """
    rotation = viewmat[:3, :3]
    camera_means = means @ rotation.T + viewmat[:3, 3]
    depth = camera_means[:, 2].detach()
    in_range = (depth >= znear) & (depth <= zfar) & (opacities.detach() >= MIN_ALPHA)
    ids = torch.nonzero(in_range).squeeze(1)
    camera_means = camera_means[ids]
    x, y, z = camera_means.unbind(-1)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    cov2d = perspective_covariances(camera_means, rotation @ covariances[ids] @ rotation.T, K, width, height)
    b = 0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0])
    a = cov2d[:, 0, 0] + LOW_PASS
    c = cov2d[:, 1, 1] + LOW_PASS
    determinant = a * c - b * b
    projected_opacities = opacities[ids]
    if antialias:
        unfiltered = cov2d[:, 0, 0] * cov2d[:, 1, 1] - b * b
        # The floor keeps the square root's gradient finite; below it the Gaussian is culled anyway.
        ratio = (unfiltered / torch.where(determinant > 0, determinant, 1.0)).clamp(min=0.25 * MIN_ALPHA**2, max=1.0)
        projected_opacities = projected_opacities * torch.sqrt(ratio)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], -1)
    kept_opacity = projected_opacities.detach()
    extent = torch.sqrt(2.0 * torch.log(kept_opacity.clamp_min(MIN_ALPHA) / MIN_ALPHA)).clamp(max=MAX_EXTENT)
    radii = torch.ceil(extent[:, None] * torch.sqrt(torch.stack([a, c], -1).detach().clamp_min(0)))
    centre = means2d.detach()
    visible = (
        (determinant.detach() > 0)
        & (kept_opacity >= MIN_ALPHA)
        & (centre[:, 0] + radii[:, 0] > 0)
        & (centre[:, 0] - radii[:, 0] < width)
        & (centre[:, 1] + radii[:, 1] > 0)
        & (centre[:, 1] - radii[:, 1] < height)
    )
    keep = torch.nonzero(visible).squeeze(1)
    a, b, c, determinant = a[keep], b[keep], c[keep], determinant[keep]
    conics = torch.stack([c / determinant, -b / determinant, a / determinant], -1)
    return Projection(ids[keep], means2d[keep], conics, z[keep], radii[keep], projected_opacities[keep])


@dataclass
class _TilePlan:
    """Which sorted intersections each tile composites, grouped into work chunks."""

    tile_size: int
    tile_count: int
    offsets: torch.Tensor  # [T] first intersection of each tile
    counts: torch.Tensor  # [T] intersections per tile
    chunks: list[tuple[torch.Tensor, int, int]]  # (tile ids, max count, block length)
    pixel_basis: torch.Tensor  # [P, 6] (1, x, y, x², xy, y²) of tile-local pixel centres
    intersections: int


def _lowest_exponent(conics: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Smallest σ = ½ dᵀ Q d [I] over the boxes lower <= d <= upper [I, 2] (offsets from each
    Gaussian's centre; Q = [[a, b], [b, c]] from conics [I, 3]): 0 if the box holds the centre,
    else the least of the four edges' minima (a convex quadratic whose minimum lies outside a box
    is least on its boundary)."""
    a, b, c = conics.unbind(-1)
    inside = (lower <= 0).all(-1) & (upper >= 0).all(-1)
    best = torch.full_like(a, math.inf)
    for x in lower[:, 0], upper[:, 0]:
        y = torch.minimum(torch.maximum(-b * x / c, lower[:, 1]), upper[:, 1])
        best = torch.minimum(best, 0.5 * (a * x * x + 2 * b * x * y + c * y * y))
    for y in lower[:, 1], upper[:, 1]:
        x = torch.minimum(torch.maximum(-b * y / a, lower[:, 0]), upper[:, 0])
        best = torch.minimum(best, 0.5 * (a * x * x + 2 * b * x * y + c * y * y))
    return torch.where(inside, 0.0, best)


def _plan_tiles(
    means2d: torch.Tensor,
    radii: torch.Tensor,
    conics: torch.Tensor,
    opacities: torch.Tensor,
    depths: torch.Tensor,
    width: int,
    height: int,
    tile_size: int,
    chunk_elements: int,
) -> tuple[_TilePlan, torch.Tensor, torch.Tensor]:
    """Tile/Gaussian intersections sorted by tile then depth; returns the plan and, per
    intersection, the Gaussian index [I] and the tile index [I].

    A tile inside a Gaussian's bounding box is dropped when the ellipse's alpha stays below
    1/255 at every pixel centre of the tile: about a quarter of the boxes' tiles for the thin,
    tilted surfels of a surface, and no pixel changes."""
    device = means2d.device
    tiles_x = -(-width // tile_size)
    tiles_y = -(-height // tile_size)
    lower = torch.floor((means2d - radii) / tile_size).long()
    upper = torch.floor((means2d + radii) / tile_size).long() + 1
    x0, y0 = lower[:, 0].clamp(0, tiles_x), lower[:, 1].clamp(0, tiles_y)
    x1, y1 = upper[:, 0].clamp(0, tiles_x), upper[:, 1].clamp(0, tiles_y)
    span_x = (x1 - x0).clamp_min(0)
    per_gaussian = span_x * (y1 - y0).clamp_min(0)
    count = means2d.shape[0]
    gaussian = torch.repeat_interleave(torch.arange(count, device=device), per_gaussian)
    first = torch.cumsum(per_gaussian, 0) - per_gaussian
    local = torch.arange(gaussian.shape[0], device=device) - first[gaussian]
    tile_x = x0[gaussian] + local % span_x[gaussian]
    tile_y = y0[gaussian] + local // span_x[gaussian]
    corner = torch.stack([tile_x, tile_y], -1).to(means2d.dtype) * tile_size - means2d[gaussian]
    lowest = _lowest_exponent(conics[gaussian], corner + 0.5, corner + (tile_size - 0.5))
    reached = torch.nonzero(lowest <= torch.log(opacities[gaussian] / MIN_ALPHA)).squeeze(1)
    gaussian = gaussian[reached]
    tile = tile_y[reached] * tiles_x + tile_x[reached]
    depth_rank = torch.empty(count, dtype=torch.long, device=device)
    depth_rank[torch.argsort(depths)] = torch.arange(count, device=device)
    order = torch.argsort(tile * count + depth_rank[gaussian])
    gaussian, tile = gaussian[order], tile[order]
    tile_count = tiles_x * tiles_y
    counts = torch.bincount(tile, minlength=tile_count)
    offsets = torch.cumsum(counts, 0) - counts

    pixels = tile_size * tile_size
    active = torch.nonzero(counts).squeeze(1)
    active = active[torch.argsort(counts[active], descending=True)]
    active_counts = counts[active].tolist()
    chunks = []
    start = 0
    while start < len(active_counts):
        longest = active_counts[start]
        block = max(1, min(longest, chunk_elements // pixels))
        chunk_tiles = max(1, chunk_elements // (pixels * block))
        chunks.append((active[start : start + chunk_tiles], longest, block))
        start += chunk_tiles

    centre = (torch.arange(tile_size, device=device, dtype=means2d.dtype) + 0.5) - tile_size / 2
    py, px = torch.meshgrid(centre, centre, indexing="ij")
    px, py = px.reshape(-1), py.reshape(-1)
    basis = torch.stack([torch.ones_like(px), px, py, px * px, px * py, py * py], -1)
    plan = _TilePlan(tile_size, tile_count, offsets, counts, chunks, basis, int(gaussian.shape[0]))
    return plan, gaussian, tile


def _block_indices(plan: _TilePlan, tiles: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """[tc, length] intersection indices of slots start..start+length of `tiles`; empty slots
    point at the padding row (index I)."""
    slot = start + torch.arange(length, device=tiles.device)
    index = plan.offsets[tiles][:, None] + slot
    return torch.where(slot < plan.counts[tiles][:, None], index, plan.intersections)


def _raw_alpha(basis: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """o·exp(−σ) [tc, P, kb] of each block Gaussian at each tile pixel (its log is basis · coefficients)."""
    return torch.matmul(basis, coefficients.transpose(1, 2)).exp_()


def _clamped(raw: torch.Tensor) -> torch.Tensor:
    """Alpha used for compositing: 0 up to 1/255, at most 0.99 (a new tensor)."""
    # threshold is one pass; a masked_fill with its comparison takes about five times longer
    return nnf.threshold(raw, MIN_ALPHA, 0.0).clamp_(max=MAX_ALPHA)


def _clamped_(raw: torch.Tensor) -> torch.Tensor:
    """_clamped in place."""
    return nnf.threshold_(raw, MIN_ALPHA, 0.0).clamp_(max=MAX_ALPHA)


def _transmittance_after(opaqueness: torch.Tensor, carried: torch.Tensor) -> torch.Tensor:
    """Transmittance just behind each block Gaussian [tc, P, kb], carried [tc, P, 1] times
    Π_{j<=k} (1 − α_j) from opaqueness = 1 − α, and 0 from the Gaussian that takes it to 1e-4 on
    (that one and those behind it are not composited)."""
    inclusive = torch.cumprod(opaqueness, -1).mul_(carried)
    return nnf.threshold_(inclusive, MIN_TRANSMITTANCE, 0.0)


def _pad(values: torch.Tensor, first: float = 0.0) -> torch.Tensor:
    """values [K, D] with the row (first, 0, ..., 0) appended: the row empty block slots read."""
    row = values.new_zeros(1, values.shape[1])
    row[0, 0] = first
    return torch.cat([values, row])


class _Composite(torch.autograd.Function):
    """Front-to-back compositing of sorted intersections per tile, with a hand-written backward
    that recomputes alphas block by block so memory stays bounded by the chunk size.

    Per pixel and block: α_k from log(o_k) − σ_k = basis · coefficients_k, transmittance behind
    each Gaussian T_k⁺ = Π_{j<=k} (1 − α_j) (a cumulative product: one pass, and no log or exp),
    weight w_k = α_k T_k with T_k = T_k⁺ / (1 − α_k); the feature channels carry an extra column
    of ones so the same matrix product gives alpha = Σ w_k.
    """

    @staticmethod
    def forward(ctx, coefficients, features, plan):  # type: ignore[override]
        # The padding row's log-alpha is −∞: empty slots composite nothing.
        coefficients = _pad(coefficients, -math.inf)
        features = _pad(torch.cat([features, features.new_ones(features.shape[0], 1)], -1))
        pixels = plan.pixel_basis.shape[0]
        image = features.new_zeros(plan.tile_count, pixels, features.shape[1])
        for tiles, longest, block in plan.chunks:
            carried = features.new_ones(tiles.shape[0], pixels, 1)
            accumulated = features.new_zeros(tiles.shape[0], pixels, features.shape[1])
            for start in range(0, longest, block):
                index = _block_indices(plan, tiles, start, block)
                alpha = _clamped_(_raw_alpha(plan.pixel_basis, coefficients[index]))
                opaqueness = torch.rsub(alpha, 1.0)
                after = _transmittance_after(opaqueness, carried)
                weight = alpha.div_(opaqueness).mul_(after)
                accumulated.baddbmm_(weight, features[index])
                carried = after[:, :, -1:].clone()
                if not bool(carried.any()):
                    break
            image[tiles] = accumulated
        ctx.plan = plan
        ctx.save_for_backward(coefficients, features, image)
        return image[..., :-1], image[..., -1]

    @staticmethod
    def backward(ctx, grad_image, grad_alpha):  # type: ignore[override]
        plan = ctx.plan
        coefficients, features, image = ctx.saved_tensors
        grad_outputs = torch.cat([grad_image, grad_alpha[..., None]], -1)
        grad_coefficients = torch.zeros_like(coefficients)
        grad_features = torch.zeros_like(features)
        basis = plan.pixel_basis
        pixels = basis.shape[0]
        for tiles, longest, block in plan.chunks:
            grad_tile = grad_outputs[tiles]
            # Σ_j w_j q_j over all of a pixel's Gaussians, from the forward outputs.
            total = (image[tiles] * grad_tile).sum(-1, keepdim=True)
            carried = features.new_ones(tiles.shape[0], pixels, 1)
            running = torch.zeros_like(carried)
            for start in range(0, longest, block):
                index = _block_indices(plan, tiles, start, block)
                raw = _raw_alpha(basis, coefficients[index])
                alpha = _clamped(raw)
                opaqueness = torch.rsub(alpha, 1.0)
                after = _transmittance_after(opaqueness, carried)
                transmittance = after / opaqueness
                weight = alpha * transmittance
                # q_k = ∂L/∂w_k = (colour gradient)·c_k + alpha gradient (the ones column).
                q = torch.bmm(grad_tile, features[index].transpose(1, 2))
                prefix = torch.cumsum(weight * q, -1).add_(running)
                # ∂L/∂α_k = T_k q_k − (Σ_{j>k} w_j q_j) / (1 − α_k)
                grad_step = transmittance.mul_(q).sub_(prefix.neg().add_(total).div_(opaqueness))
                dead = alpha != raw  # clamped or skipped: no gradient to o or σ
                if not bool(after[:, :, -1].all()):
                    dead |= after == 0  # at or behind the Gaussian that stopped the pixel
                # ∂α/∂(log α) = α: the moments against the basis are ∂L/∂coefficients.
                grad_log_alpha = grad_step.masked_fill_(dead, 0.0).mul_(raw)
                moments = torch.bmm(grad_log_alpha.transpose(1, 2), basis.expand(len(tiles), -1, -1))
                flat = index.reshape(-1)
                grad_coefficients[flat] = moments.reshape(-1, 6)
                grad_features[flat] = torch.bmm(weight.transpose(1, 2), grad_tile).reshape(-1, features.shape[1])
                running = prefix[:, :, -1:].clone()
                carried = after[:, :, -1:].clone()
                if not bool(carried.any()):
                    break
        return grad_coefficients[:-1], grad_features[:-1, :-1], None


def choose_tile_size(radii: torch.Tensor) -> int:
    """Tile side (4, 8 or 16 px) near the median footprint radius [V, 2]: small tiles waste
    fewer pixel evaluations on small Gaussians, large tiles make fewer intersections."""
    if radii.shape[0] == 0:
        return 16
    median = float(radii.max(-1).values.median())
    return 4 if median <= 5 else 8 if median <= 12 else 16


def rasterize(
    projection: Projection,
    opacities: torch.Tensor,
    features: torch.Tensor,
    width: int,
    height: int,
    tile_size: int | None = None,
    chunk_elements: int = 1 << 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite projected Gaussians front to back (sorted by centre depth per tile).

    opacities: [V] and features: [V, D] of the projected Gaussians (aligned with projection.ids).
    Per pixel, α_i = min(0.99, o_i exp(−½ dᵀ Q_i d)) (skipped below 1/255), w_i = α_i Π_{j<i}(1−α_j),
    stopping before transmittance falls to 1e-4.
    Returns the premultiplied feature image Σ w_i f_i [H, W, D] and alpha Σ w_i [H, W].
    tile_size: pixels per tile side (None: choose_tile_size); chunk_elements bounds the
    (tiles × pixels × Gaussians) block evaluated at once.
    """
    if tile_size is None:
        tile_size = choose_tile_size(projection.radii)
    plan, gaussian, tile = _plan_tiles(
        projection.means2d.detach(),
        projection.radii,
        projection.conics.detach(),
        opacities.detach(),
        projection.depths.detach(),
        width,
        height,
        tile_size,
        chunk_elements,
    )
    tiles_x = -(-width // tile_size)
    tile_index = torch.arange(plan.tile_count, device=features.device)
    tile_centres = torch.stack([(tile_index % tiles_x) * tile_size, (tile_index // tiles_x) * tile_size], -1).to(
        features.dtype
    ) + (tile_size / 2)
    mx, my = (projection.means2d[gaussian] - tile_centres[tile]).unbind(-1)
    a, b, c = projection.conics[gaussian].unbind(-1)
    ax, bx, by, cy = a * mx, b * mx, b * my, c * my
    # Below 1/255 an opacity composites nothing either way; the floor keeps its log finite.
    log_opacity = torch.log(opacities[gaussian].clamp_min(0.5 * MIN_ALPHA))
    # log α before the clamps, log(o) − σ, as a polynomial in the tile-local pixel (1, x, y, x², xy, y²)
    coefficients = torch.stack(
        [log_opacity - (0.5 * ax * mx + bx * my + 0.5 * cy * my), ax + by, bx + cy, -0.5 * a, -b, -0.5 * c], -1
    )
    tile_image, tile_alpha = _Composite.apply(coefficients, features[gaussian], plan)
    tiles_y = plan.tile_count // tiles_x
    depth = features.shape[1]
    image = (
        tile_image.reshape(tiles_y, tiles_x, tile_size, tile_size, depth)
        .permute(0, 2, 1, 3, 4)
        .reshape(tiles_y * tile_size, tiles_x * tile_size, depth)[:height, :width]
    )
    alpha = (
        tile_alpha.reshape(tiles_y, tiles_x, tile_size, tile_size)
        .permute(0, 2, 1, 3)
        .reshape(tiles_y * tile_size, tiles_x * tile_size)[:height, :width]
    )
    return image, alpha
