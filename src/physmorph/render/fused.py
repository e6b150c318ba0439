"""Triton kernels around gsplat: per-Gaussian shading and preparation, per-pixel depth/normal normalisation.

The reference path (renderer.py, shading.py) runs each of these steps as separate PyTorch
kernels: about 45 launches forward and 90 backward, which on the GPU cost more than gsplat
itself. Here each side is one kernel forward and one backward, with hand-written adjoints:

- `prepare_gaussians`: the inputs of gsplat's projection and rasteriser: the symmetrised
  covariances in gsplat's upper-triangle layout [M, 6], opacities clamped at 0.99 and the
  per-camera features [C, M, 4 or 8]: colour shaded as `shading.shade` does, the raw normal,
  the camera depth of the centre (what gsplat's RGB+D mode appends) and a zero channel, with
  the camera centres and depth axes read from the view matrices inside the kernel;
- `finish_images`: the rendered features [C, H, W, 4 or 8] and alpha to the composited rgb,
  the depth Σ w z / α and the unit normal, as `renderer.render` defines them.

Only imported where Triton is (CUDA runs; tests use Triton's CPU interpreter).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from physmorph.device_constants import device_constant
from physmorph.render.config import LightingConfig
from physmorph.render.shading import require_normals
from physmorph.triton_jit import launched_kernel

SHADING_MODELS = {"flat": 0, "lambert": 1, "phong": 2}
BLOCK = 256

# Feature rows: colour + depth (4 channels), or colour, normal, depth and one zero channel (8:
# gsplat's rasteriser takes 8 channels but not 7, which it would pad and copy).


def feature_channels(has_normals: bool) -> int:
    """Channels of a feature row (see _layout)."""
    return 8 if has_normals else 4


@triton.jit
def _layout(HAS_NORMALS: tl.constexpr):
    """(channels, depth channel) of a feature row: (r, g, b, nx, ny, nz, depth, 0) or (r, g, b, depth)."""
    if HAS_NORMALS:
        return 8, 6
    else:
        return 4, 3


@triton.jit
def _lighting(parameters):
    """The nine settings of `_parameters`, in its order: light direction (3), ambient, diffuse,
    specular, shininess, the normals' eps and the opacity clamp."""
    return (tl.load(parameters + 0), tl.load(parameters + 1), tl.load(parameters + 2), tl.load(parameters + 3),
            tl.load(parameters + 4), tl.load(parameters + 5), tl.load(parameters + 6), tl.load(parameters + 7),
            tl.load(parameters + 8))  # fmt: skip


@triton.jit
def _pixels(features, alpha, background, background_stride_c, background_stride_p, pixels, per_image, threshold,
            HAS_NORMALS: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """This program's pixels: (index, live, feature row, row width, depth channel, alpha, background, covered).

    covered marks α above the threshold, where depth and normal are normalised (0 elsewhere).
    """
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = p < pixels
    channels, depth_channel = _layout(HAS_NORMALS)
    a = tl.load(alpha + p, mask=live, other=0.0)
    backdrop = background + (p // per_image) * background_stride_c + (p % per_image) * background_stride_p
    return p, live, features + p * channels, channels, depth_channel, a, backdrop, a > tl.load(threshold)


@triton.jit
def _unit_scale(length, eps):
    """1 / max(length, eps): the scale of shading._unit."""
    return 1.0 / tl.maximum(length, eps)


@triton.jit
def _camera_centre(viewmats, c):
    """World centre −Rᵀ t of camera c from its [4, 4] world-to-camera matrix."""
    base = viewmats + c * 16
    r00, r01, r02 = tl.load(base + 0), tl.load(base + 1), tl.load(base + 2)
    r10, r11, r12 = tl.load(base + 4), tl.load(base + 5), tl.load(base + 6)
    r20, r21, r22 = tl.load(base + 8), tl.load(base + 9), tl.load(base + 10)
    t0, t1, t2 = tl.load(base + 3), tl.load(base + 7), tl.load(base + 11)
    return -(r00 * t0 + r10 * t1 + r20 * t2), -(r01 * t0 + r11 * t1 + r21 * t2), -(r02 * t0 + r12 * t1 + r22 * t2)


@triton.jit
def _view(viewmats, c, px, py, pz, ux, uy, uz, light_x, light_y, light_z, eps, TWO_SIDED: tl.constexpr):
    """Per Gaussian, camera c's shading terms: the unit direction v to the camera, |d| and
    1 / max(|d|, eps) of the offset d, the facing sign (−1 flips a two-sided normal that faces
    away), n·l, n·v (n the signed unit normal) and l·v."""
    ex, ey, ez = _camera_centre(viewmats, c)
    dx, dy, dz = ex - px, ey - py, ez - pz
    length = tl.sqrt(dx * dx + dy * dy + dz * dz)
    inverse = _unit_scale(length, eps)
    vx, vy, vz = dx * inverse, dy * inverse, dz * inverse
    sign = tl.full(vx.shape, 1.0, vx.dtype)
    if TWO_SIDED:
        sign = tl.where(ux * vx + uy * vy + uz * vz < 0, -1.0, 1.0)
    n_dot_l = sign * (ux * light_x + uy * light_y + uz * light_z)
    n_dot_v = sign * (ux * vx + uy * vy + uz * vz)
    l_dot_v = light_x * vx + light_y * vy + light_z * vz
    return vx, vy, vz, length, inverse, sign, n_dot_l, n_dot_v, l_dot_v


@triton.jit
def _store_upper(covariances, upper, m, live, k: tl.constexpr, j: tl.constexpr, slot: tl.constexpr):
    """Entry (k, j), k <= j, of the symmetrised covariance ½(Σ + Σᵀ) into slot `slot` of gsplat's
    upper-triangle layout (00, 01, 02, 11, 12, 22)."""
    a = tl.load(covariances + m * 9 + 3 * k + j, mask=live)
    b = tl.load(covariances + m * 9 + 3 * j + k, mask=live)
    tl.store(upper + m * 6 + slot, 0.5 * (a + b), mask=live)


@triton.jit
def _spread_upper(
    grad_upper, grad_covariances, m, live, k: tl.constexpr, j: tl.constexpr, slot: tl.constexpr, HAS: tl.constexpr
):
    """The adjoint of _store_upper: half of an off-diagonal slot's gradient to (k, j) and (j, k)."""
    value = tl.zeros(m.shape, grad_covariances.dtype.element_ty)
    if HAS:
        value = tl.load(grad_upper + m * 6 + slot, mask=live)
    if k == j:
        tl.store(grad_covariances + m * 9 + 4 * k, value, mask=live)
    else:
        tl.store(grad_covariances + m * 9 + 3 * k + j, 0.5 * value, mask=live)
        tl.store(grad_covariances + m * 9 + 3 * j + k, 0.5 * value, mask=live)


@launched_kernel
def _prepare_forward(
    albedo, albedo_stride_m, albedo_stride_k,
    means, normals, covariances, opacities, opacity_stride,
    viewmats, features, upper, clamped,
    count, cameras,
    parameters,
    MODEL: tl.constexpr, TWO_SIDED: tl.constexpr, HAS_NORMALS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    m = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = m < count
    light_x, light_y, light_z, ambient, diffuse, specular, shininess, eps, max_opacity = _lighting(parameters)
    _store_upper(covariances, upper, m, live, 0, 0, 0)
    _store_upper(covariances, upper, m, live, 0, 1, 1)
    _store_upper(covariances, upper, m, live, 0, 2, 2)
    _store_upper(covariances, upper, m, live, 1, 1, 3)
    _store_upper(covariances, upper, m, live, 1, 2, 4)
    _store_upper(covariances, upper, m, live, 2, 2, 5)
    opacity = tl.load(opacities + m * opacity_stride, mask=live)
    tl.store(clamped + m, tl.minimum(opacity, max_opacity), mask=live)
    red = tl.load(albedo + m * albedo_stride_m, mask=live)
    green = tl.load(albedo + m * albedo_stride_m + albedo_stride_k, mask=live)
    blue = tl.load(albedo + m * albedo_stride_m + 2 * albedo_stride_k, mask=live)
    channels, depth_channel = _layout(HAS_NORMALS)
    if HAS_NORMALS:
        nx = tl.load(normals + m * 3, mask=live)
        ny = tl.load(normals + m * 3 + 1, mask=live)
        nz = tl.load(normals + m * 3 + 2, mask=live)
        scale = _unit_scale(tl.sqrt(nx * nx + ny * ny + nz * nz), eps)
        ux, uy, uz = nx * scale, ny * scale, nz * scale
    px = tl.load(means + m * 3, mask=live)
    py = tl.load(means + m * 3 + 1, mask=live)
    pz = tl.load(means + m * 3 + 2, mask=live)
    for c in range(cameras):
        out = features + (c * count + m) * channels
        row = viewmats + c * 16 + 8  # camera z = R₂·x + t₂, the depth gsplat sorts and composites
        depth = tl.load(row) * px + tl.load(row + 1) * py + tl.load(row + 2) * pz + tl.load(row + 3)
        tl.store(out + depth_channel, depth, mask=live)
        if MODEL == 0:
            r, g, b = red, green, blue
        else:
            _vx, _vy, _vz, _length, _inverse, _sign, n_dot_l, n_dot_v, l_dot_v = _view(
                viewmats, c, px, py, pz, ux, uy, uz, light_x, light_y, light_z, eps, TWO_SIDED
            )
            lit = ambient + diffuse * tl.maximum(n_dot_l, 0.0)
            r, g, b = red * lit, green * lit, blue * lit
            if MODEL == 2:
                r_dot_v = tl.maximum(2.0 * n_dot_l * n_dot_v - l_dot_v, 0.0)
                power = tl.exp(shininess * tl.log(tl.maximum(r_dot_v, 1e-30)))
                highlight = specular * tl.where((n_dot_l > 0) & (r_dot_v > 0), power, 0.0)
                r, g, b = r + highlight, g + highlight, b + highlight
        tl.store(out, r, mask=live)
        tl.store(out + 1, g, mask=live)
        tl.store(out + 2, b, mask=live)
        if HAS_NORMALS:
            tl.store(out + 3, nx, mask=live)
            tl.store(out + 4, ny, mask=live)
            tl.store(out + 5, nz, mask=live)
            tl.store(out + 7, tl.zeros(nz.shape, nz.dtype), mask=live)


@launched_kernel
def _prepare_backward(
    albedo, albedo_stride_m, albedo_stride_k,
    means, normals, opacities, opacity_stride,
    viewmats, grad_features, grad_features_stride_c, grad_features_stride_m, grad_upper, grad_clamped,
    grad_albedo, grad_means, grad_normals, grad_covariances, grad_opacities,
    count, cameras,
    parameters,
    MODEL: tl.constexpr, TWO_SIDED: tl.constexpr, HAS_NORMALS: tl.constexpr,
    HAS_GRAD_FEATURES: tl.constexpr, HAS_GRAD_UPPER: tl.constexpr, HAS_GRAD_CLAMPED: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    m = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = m < count
    light_x, light_y, light_z, ambient, diffuse, specular, shininess, eps, max_opacity = _lighting(parameters)
    zero = tl.zeros([BLOCK], dtype=grad_albedo.dtype.element_ty)
    _spread_upper(grad_upper, grad_covariances, m, live, 0, 0, 0, HAS_GRAD_UPPER)
    _spread_upper(grad_upper, grad_covariances, m, live, 0, 1, 1, HAS_GRAD_UPPER)
    _spread_upper(grad_upper, grad_covariances, m, live, 0, 2, 2, HAS_GRAD_UPPER)
    _spread_upper(grad_upper, grad_covariances, m, live, 1, 1, 3, HAS_GRAD_UPPER)
    _spread_upper(grad_upper, grad_covariances, m, live, 1, 2, 4, HAS_GRAD_UPPER)
    _spread_upper(grad_upper, grad_covariances, m, live, 2, 2, 5, HAS_GRAD_UPPER)
    opacity_gradient = zero
    if HAS_GRAD_CLAMPED:
        opacity = tl.load(opacities + m * opacity_stride, mask=live)
        opacity_gradient = tl.where(opacity <= max_opacity, tl.load(grad_clamped + m, mask=live), 0.0)
    tl.store(grad_opacities + m, opacity_gradient, mask=live)

    red = tl.load(albedo + m * albedo_stride_m, mask=live)
    green = tl.load(albedo + m * albedo_stride_m + albedo_stride_k, mask=live)
    blue = tl.load(albedo + m * albedo_stride_m + 2 * albedo_stride_k, mask=live)
    g_red, g_green, g_blue = zero, zero, zero
    g_px, g_py, g_pz = zero, zero, zero
    g_ux, g_uy, g_uz = zero, zero, zero  # gradient of the unit normal
    g_nx, g_ny, g_nz = zero, zero, zero  # gradient of the raw normal's own feature channels
    if HAS_NORMALS:
        nx = tl.load(normals + m * 3, mask=live)
        ny = tl.load(normals + m * 3 + 1, mask=live)
        nz = tl.load(normals + m * 3 + 2, mask=live)
        normal_length = tl.sqrt(nx * nx + ny * ny + nz * nz)
        scale = _unit_scale(normal_length, eps)
        ux, uy, uz = nx * scale, ny * scale, nz * scale
    if MODEL != 0:
        px = tl.load(means + m * 3, mask=live)
        py = tl.load(means + m * 3 + 1, mask=live)
        pz = tl.load(means + m * 3 + 2, mask=live)
    _channels, depth_channel = _layout(HAS_NORMALS)
    if HAS_GRAD_FEATURES:
        for c in range(cameras):
            cotangent = grad_features + c * grad_features_stride_c + m * grad_features_stride_m
            g_r = tl.load(cotangent, mask=live)
            g_g = tl.load(cotangent + 1, mask=live)
            g_b = tl.load(cotangent + 2, mask=live)
            g_depth = tl.load(cotangent + depth_channel, mask=live)
            row = viewmats + c * 16 + 8
            g_px += g_depth * tl.load(row)
            g_py += g_depth * tl.load(row + 1)
            g_pz += g_depth * tl.load(row + 2)
            if HAS_NORMALS:
                g_nx += tl.load(cotangent + 3, mask=live)
                g_ny += tl.load(cotangent + 4, mask=live)
                g_nz += tl.load(cotangent + 5, mask=live)
            if MODEL == 0:
                g_red, g_green, g_blue = g_red + g_r, g_green + g_g, g_blue + g_b
            else:
                vx, vy, vz, view_length, inverse, sign, n_dot_l, n_dot_v, l_dot_v = _view(
                    viewmats, c, px, py, pz, ux, uy, uz, light_x, light_y, light_z, eps, TWO_SIDED
                )
                lit = ambient + diffuse * tl.maximum(n_dot_l, 0.0)
                g_red, g_green, g_blue = g_red + g_r * lit, g_green + g_g * lit, g_blue + g_b * lit
                # clamp_min passes its gradient at the bound (as torch's does)
                g_n_dot_l = tl.where(n_dot_l >= 0, diffuse * (g_r * red + g_g * green + g_b * blue), 0.0)
                g_n_dot_v = zero
                g_l_dot_v = zero
                if MODEL == 2:
                    raw = 2.0 * n_dot_l * n_dot_v - l_dot_v
                    r_dot_v = tl.maximum(raw, 0.0)
                    slope = shininess * tl.exp((shininess - 1.0) * tl.log(tl.maximum(r_dot_v, 1e-30)))
                    slope = tl.where((n_dot_l > 0) & (r_dot_v > 0), slope, 0.0)
                    g_raw = tl.where(raw >= 0, specular * (g_r + g_g + g_b) * slope, 0.0)
                    g_n_dot_l += 2.0 * n_dot_v * g_raw
                    g_n_dot_v = 2.0 * n_dot_l * g_raw
                    g_l_dot_v = -g_raw
                # n = sign·û; the sign only selects a branch (no gradient through the facing test)
                g_ux += sign * (g_n_dot_l * light_x + g_n_dot_v * vx)
                g_uy += sign * (g_n_dot_l * light_y + g_n_dot_v * vy)
                g_uz += sign * (g_n_dot_l * light_z + g_n_dot_v * vz)
                g_vx = g_n_dot_v * sign * ux + g_l_dot_v * light_x
                g_vy = g_n_dot_v * sign * uy + g_l_dot_v * light_y
                g_vz = g_n_dot_v * sign * uz + g_l_dot_v * light_z
                # v = d / max(|d|, eps); the mean enters d with a minus sign
                radial = tl.where(view_length >= eps, vx * g_vx + vy * g_vy + vz * g_vz, 0.0)
                g_px -= (g_vx - vx * radial) * inverse
                g_py -= (g_vy - vy * radial) * inverse
                g_pz -= (g_vz - vz * radial) * inverse
    tl.store(grad_albedo + m * 3, g_red, mask=live)
    tl.store(grad_albedo + m * 3 + 1, g_green, mask=live)
    tl.store(grad_albedo + m * 3 + 2, g_blue, mask=live)
    tl.store(grad_means + m * 3, g_px, mask=live)
    tl.store(grad_means + m * 3 + 1, g_py, mask=live)
    tl.store(grad_means + m * 3 + 2, g_pz, mask=live)
    if HAS_NORMALS:
        radial = tl.where(normal_length >= eps, ux * g_ux + uy * g_uy + uz * g_uz, 0.0)
        tl.store(grad_normals + m * 3, g_nx + (g_ux - ux * radial) * scale, mask=live)
        tl.store(grad_normals + m * 3 + 1, g_ny + (g_uy - uy * radial) * scale, mask=live)
        tl.store(grad_normals + m * 3 + 2, g_nz + (g_uz - uz * radial) * scale, mask=live)


def _parameters(
    lighting: LightingConfig | None, max_opacity: float, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, int, bool]:
    """The kernels' float settings as a tensor of the data's dtype (Triton would pass host floats
    as float32), the shading model's code and two_sided."""
    if lighting is None or lighting.model == "flat":
        return _settings(("flat", (0.0, 0.0, 1.0), 0.0, 0.0, 0.0, 1.0, False), max_opacity, dtype, device)
    light = (lighting.model, tuple(lighting.direction), lighting.ambient, lighting.diffuse, lighting.specular)
    return _settings((*light, lighting.shininess, bool(lighting.two_sided)), max_opacity, dtype, device)


@functools.lru_cache(maxsize=64)
def _settings(
    lighting: tuple, max_opacity: float, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, int, bool]:
    """_parameters of a lighting (model, direction, ambient, diffuse, specular, shininess,
    two_sided), made once: building it takes several host tensor operations."""
    model, direction, ambient, diffuse, specular, shininess, two_sided = lighting
    eps = torch.finfo(dtype).tiny ** 0.5
    # shading.shade normalises the direction in the data's dtype
    unit = torch.tensor(direction, dtype=dtype)
    unit = unit / torch.linalg.vector_norm(unit).clamp_min(eps)
    values = (*unit.tolist(), ambient, diffuse, specular, shininess, eps, max_opacity)
    return device_constant(values, dtype, device), SHADING_MODELS[model], two_sided


class _PrepareGaussians(torch.autograd.Function):
    @staticmethod
    def forward(ctx, albedo, means, normals, covariances, opacities, viewmats, lighting, max_opacity):  # type: ignore[override]
        count, cameras = means.shape[0], viewmats.shape[0]
        parameters, model, two_sided = _parameters(lighting, max_opacity, means.dtype, means.device)
        has_normals = normals is not None
        features = means.new_empty(cameras, count, feature_channels(has_normals))
        upper = means.new_empty(count, 6)
        clamped = means.new_empty(count)
        normals_arg = normals if has_normals else means
        if count > 0:
            _prepare_forward[(triton.cdiv(count, BLOCK),)](
                albedo, albedo.stride(0), albedo.stride(1),
                means, normals_arg, covariances, opacities, opacities.stride(0),
                viewmats, features, upper, clamped,
                count, cameras, parameters,
                MODEL=model, TWO_SIDED=two_sided, HAS_NORMALS=has_normals, BLOCK=BLOCK,
            )  # fmt: skip
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(albedo, means, normals_arg, opacities, viewmats, parameters)
        ctx.settings = (model, two_sided, has_normals)
        return features, upper, clamped

    @staticmethod
    def backward(ctx, grad_features, grad_upper, grad_clamped):  # type: ignore[override]
        albedo, means, normals, opacities, viewmats, parameters = ctx.saved_tensors
        model, two_sided, has_normals = ctx.settings
        count, cameras = means.shape[0], viewmats.shape[0]
        # gsplat hands the feature gradient back as a slice of its colour-and-depth gradient
        if grad_features is not None and grad_features.stride(-1) != 1:
            grad_features = grad_features.contiguous()
        feature_strides = (0, 0) if grad_features is None else grad_features.stride()[:2]
        grad_albedo = means.new_empty(count, 3)
        grad_means = torch.empty_like(means)
        grad_normals = torch.empty_like(means)
        grad_covariances = means.new_empty(count, 3, 3)
        grad_opacities = means.new_empty(count)
        if count > 0:
            _prepare_backward[(triton.cdiv(count, BLOCK),)](
                albedo, albedo.stride(0), albedo.stride(1),
                means, normals, opacities, opacities.stride(0),
                viewmats, means if grad_features is None else grad_features, *feature_strides,
                means if grad_upper is None else grad_upper.contiguous(),
                means if grad_clamped is None else grad_clamped.contiguous(),
                grad_albedo, grad_means, grad_normals, grad_covariances, grad_opacities,
                count, cameras, parameters,
                MODEL=model, TWO_SIDED=two_sided, HAS_NORMALS=has_normals,
                HAS_GRAD_FEATURES=grad_features is not None, HAS_GRAD_UPPER=grad_upper is not None,
                HAS_GRAD_CLAMPED=grad_clamped is not None, BLOCK=BLOCK,
            )  # fmt: skip
        needs = ctx.needs_input_grad
        return (
            grad_albedo if needs[0] else None,
            grad_means if needs[1] else None,
            grad_normals if needs[2] and has_normals else None,
            grad_covariances if needs[3] else None,
            grad_opacities if needs[4] else None,
            None,
            None,
            None,
        )


def prepare_gaussians(
    albedo: torch.Tensor,
    means: torch.Tensor,
    normals: torch.Tensor | None,
    covariances: torch.Tensor,
    opacities: torch.Tensor,
    viewmats: torch.Tensor,
    lighting: LightingConfig | None,
    max_opacity: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """gsplat's inputs in one kernel: features [C, M, 4] (colour, depth) or [C, M, 8] (colour,
    raw normal, depth, zero), the symmetrised covariances' upper triangles [M, 6] (00, 01, 02, 11, 12,
    22) and the opacities clamped at max_opacity [M].

    albedo [M, 3] and opacities [M] may be stride-0 views (a default colour or opacity); means,
    normals [M, 3] and covariances [M, 3, 3] are read as contiguous; viewmats [C, 4, 4] give the
    camera centres and depth axes (not differentiated). The colour is `shading.shade(albedo,
    means, normals, positions, lighting)`; the depth is the centre's camera z.
    """
    require_normals(normals, lighting)
    return _PrepareGaussians.apply(
        albedo,
        means.contiguous(),
        None if normals is None else normals.contiguous(),
        covariances.contiguous(),
        opacities,
        viewmats.detach().contiguous(),
        lighting,
        float(max_opacity),
    )


@launched_kernel
def _finish_forward(
    features, alpha, background, background_stride_c, background_stride_p,
    rgb, depth, normal, pixels, per_image, threshold,
    HAS_NORMALS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    p, live, base, _channels, depth_channel, a, backdrop, covered = _pixels(
        features, alpha, background, background_stride_c, background_stride_p, pixels, per_image, threshold,
        HAS_NORMALS, BLOCK)  # fmt: skip
    for k in tl.static_range(3):
        value = tl.load(base + k, mask=live) + (1.0 - a) * tl.load(backdrop + k, mask=live)
        tl.store(rgb + p * 3 + k, value, mask=live)
    safe_alpha = tl.where(covered, a, 1.0)
    tl.store(depth + p, tl.where(covered, tl.load(base + depth_channel, mask=live) / safe_alpha, 0.0), mask=live)
    if HAS_NORMALS:
        sx = tl.load(base + 3, mask=live)
        sy = tl.load(base + 4, mask=live)
        sz = tl.load(base + 5, mask=live)
        inverse = tl.where(covered, 1.0 / tl.maximum(tl.sqrt(sx * sx + sy * sy + sz * sz), 1e-12), 0.0)
        tl.store(normal + p * 3, sx * inverse, mask=live)
        tl.store(normal + p * 3 + 1, sy * inverse, mask=live)
        tl.store(normal + p * 3 + 2, sz * inverse, mask=live)


@launched_kernel
def _finish_backward(
    features, alpha, background, background_stride_c, background_stride_p,
    grad_rgb, grad_depth, grad_normal, grad_features, grad_alpha, pixels, per_image, threshold,
    HAS_NORMALS: tl.constexpr, HAS_GRAD_RGB: tl.constexpr, HAS_GRAD_DEPTH: tl.constexpr,
    HAS_GRAD_NORMAL: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    p, live, base, channels, depth_channel, a, backdrop, covered = _pixels(
        features, alpha, background, background_stride_c, background_stride_p, pixels, per_image, threshold,
        HAS_NORMALS, BLOCK)  # fmt: skip
    out = grad_features + p * channels
    zero = tl.zeros([BLOCK], dtype=grad_alpha.dtype.element_ty)
    g_alpha = zero
    for k in tl.static_range(3):
        g = zero
        if HAS_GRAD_RGB:
            g = tl.load(grad_rgb + p * 3 + k, mask=live)
            g_alpha -= g * tl.load(backdrop + k, mask=live)
        tl.store(out + k, g, mask=live)
    safe_alpha = tl.where(covered, a, 1.0)
    g_depth_sum = zero
    if HAS_GRAD_DEPTH:
        g = tl.where(covered, tl.load(grad_depth + p, mask=live), 0.0)
        g_depth_sum = g / safe_alpha
        g_alpha -= g_depth_sum * tl.load(base + depth_channel, mask=live) / safe_alpha
    tl.store(out + depth_channel, g_depth_sum, mask=live)
    if HAS_NORMALS:
        g_sx, g_sy, g_sz = zero, zero, zero
        if HAS_GRAD_NORMAL:
            sx = tl.load(base + 3, mask=live)
            sy = tl.load(base + 4, mask=live)
            sz = tl.load(base + 5, mask=live)
            length = tl.sqrt(sx * sx + sy * sy + sz * sz)
            inverse = tl.where(covered, 1.0 / tl.maximum(length, 1e-12), 0.0)
            gx = tl.load(grad_normal + p * 3, mask=live)
            gy = tl.load(grad_normal + p * 3 + 1, mask=live)
            gz = tl.load(grad_normal + p * 3 + 2, mask=live)
            nx, ny, nz = sx * inverse, sy * inverse, sz * inverse
            radial = tl.where(length >= 1e-12, nx * gx + ny * gy + nz * gz, 0.0)
            g_sx = (gx - nx * radial) * inverse
            g_sy = (gy - ny * radial) * inverse
            g_sz = (gz - nz * radial) * inverse
        tl.store(out + 3, g_sx, mask=live)
        tl.store(out + 4, g_sy, mask=live)
        tl.store(out + 5, g_sz, mask=live)
        tl.store(out + 7, zero, mask=live)
    tl.store(grad_alpha + p, g_alpha, mask=live)


def _background_strides(background: torch.Tensor, per_image: int) -> tuple[int, int]:
    """(per camera, per pixel) element strides of a [3], [H, W, 3] or [C, H, W, 3] background."""
    if background.ndim == 1:
        return 0, 0
    if background.ndim == 3:
        return 0, 3
    return per_image * 3, 3


class _FinishImages(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, alpha, background, covered_above):  # type: ignore[override]
        cameras, height, width, channels = features.shape
        per_image = height * width
        pixels = cameras * per_image
        has_normals = channels == 8
        rgb = features.new_empty(cameras, height, width, 3)
        depth = features.new_empty(cameras, height, width)
        normal = features.new_empty(cameras, height, width, 3) if has_normals else depth
        strides = _background_strides(background, per_image)
        threshold = device_constant((covered_above,), features.dtype, features.device)
        if pixels > 0:
            _finish_forward[(triton.cdiv(pixels, BLOCK),)](
                features, alpha, background, *strides, rgb, depth, normal, pixels, per_image, threshold,
                HAS_NORMALS=has_normals, BLOCK=BLOCK,
            )  # fmt: skip
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(features, alpha, background, threshold)
        ctx.settings = (strides, per_image, has_normals)
        return rgb, depth, normal if has_normals else None

    @staticmethod
    def backward(ctx, grad_rgb, grad_depth, grad_normal):  # type: ignore[override]
        features, alpha, background, threshold = ctx.saved_tensors
        strides, per_image, has_normals = ctx.settings
        pixels = alpha.numel()
        grad_features = torch.empty_like(features)
        grad_alpha = torch.empty_like(alpha)
        if pixels > 0:
            _finish_backward[(triton.cdiv(pixels, BLOCK),)](
                features, alpha, background, *strides,
                features if grad_rgb is None else grad_rgb.contiguous(),
                features if grad_depth is None else grad_depth.contiguous(),
                features if grad_normal is None else grad_normal.contiguous(),
                grad_features, grad_alpha, pixels, per_image, threshold,
                HAS_NORMALS=has_normals, HAS_GRAD_RGB=grad_rgb is not None,
                HAS_GRAD_DEPTH=grad_depth is not None, HAS_GRAD_NORMAL=grad_normal is not None and has_normals,
                BLOCK=BLOCK,
            )  # fmt: skip
        return grad_features, grad_alpha, None, None


def finish_images(
    features: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor, covered_above: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """rgb [C, H, W, 3], depth [C, H, W] and unit normals [C, H, W, 3] (None without normal
    channels) from rendered features [C, H, W, 4] (colour, summed depth) or [C, H, W, 8] (colour,
    summed normal, summed depth, a zero channel), as prepare_gaussians lays them out, and alpha
    [C, H, W] or [C, H, W, 1].

    rgb = Σ w c + (1 − α)·background ([3], [H, W, 3] or [C, H, W, 3]; not differentiated);
    where α > covered_above, depth = Σ w z / α and normal = Σ w n / |Σ w n|, else 0.
    """
    return _FinishImages.apply(
        features.contiguous(), alpha.contiguous(), background.detach().contiguous(), float(covered_above)
    )
