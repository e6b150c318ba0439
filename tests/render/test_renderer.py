"""Tests for `render`: analytic footprint, gradients, occlusion, culling, tiling, outputs."""

from __future__ import annotations

import math

import pytest
import torch

from physmorph.errors import InputError
from physmorph.render.cameras import Cameras, intrinsics, orbit_cameras
from physmorph.render.config import LightingConfig
from physmorph.render.rasterize import MIN_ALPHA, _lowest_exponent
from physmorph.render.renderer import gsplat_available, render
from physmorph.surface.gaussians import Gaussians

F64 = torch.float64


def _front_camera(width, height, focal, dtype=F64, znear=0.01):
    """Camera at the origin looking down +z (identity world-to-camera)."""
    K = intrinsics(focal, focal, width / 2, height / 2, dtype)
    return Cameras(torch.eye(4, dtype=dtype)[None], K[None], width, height, znear, 100.0)


def _gaussian(mean, sigma, color=(1.0, 1.0, 1.0), opacity=0.5, dtype=F64):
    return Gaussians(
        torch.tensor([mean], dtype=dtype),
        torch.eye(3, dtype=dtype)[None] * sigma**2,
        colors=torch.tensor([color], dtype=dtype),
        opacities=torch.tensor([opacity], dtype=dtype),
    )


@pytest.mark.parametrize("antialias", [False, True])
def test_single_gaussian_matches_the_analytic_footprint(antialias):
    # At the optical axis the projected covariance is (f σ / z)² I + 0.3 I, in pixels².
    focal, z, sigma, raw_opacity = 40.0, 4.0, 0.5, 0.5
    cameras = _front_camera(64, 64, focal)
    gaussian = _gaussian([0.0, 0.0, z], sigma, opacity=raw_opacity)
    images = render(gaussian, cameras, background=(0, 0, 0), antialias=antialias)
    alpha = images.alpha[0]
    variance = (focal * sigma / z) ** 2 + 0.3
    # Antialiased, the opacity is scaled by √(det Σ₂ / det(Σ₂ + 0.3 I)) = (f σ / z)² / variance.
    opacity = raw_opacity * ((focal * sigma / z) ** 2 / variance if antialias else 1.0)
    # The centre sits on the corner of four pixels, each half a pixel away in x and y.
    centre = opacity * math.exp(-0.5 * 0.5 / variance)
    assert alpha[31, 31].item() == pytest.approx(centre, rel=1e-3)
    assert alpha[32, 32].item() == pytest.approx(centre, rel=1e-3)
    # Inside the 1/255 cut-off radius R, the Gaussian integrates to 2π var (o − 1/255).
    integral = 2 * math.pi * variance * (opacity - MIN_ALPHA)
    assert alpha.sum().item() == pytest.approx(integral, rel=1e-3)
    assert torch.allclose(images.rgb[0, ..., 0], alpha)  # white over black
    covered = alpha > 0
    assert torch.allclose(images.depth[0][covered], torch.full_like(alpha[covered], z))
    assert torch.all(images.depth[0][~covered] == 0)


def _tiny_scene(dtype=F64):
    torch.manual_seed(1)
    means = torch.tensor([[0.1, 0.05, 3.0], [-0.2, 0.1, 3.5], [0.15, -0.1, 4.0]], dtype=dtype)
    factor = torch.randn(3, 3, 3, dtype=dtype) * 0.1
    covariances = factor @ factor.transpose(-1, -2) + 0.02 * torch.eye(3, dtype=dtype)
    colors = torch.rand(3, 3, dtype=dtype)
    opacities = torch.tensor([0.7, 0.5, 0.8], dtype=dtype)
    normals = torch.randn(3, 3, dtype=dtype)
    return means, covariances, colors, opacities, normals


@pytest.mark.parametrize("tile_size", [4, 16])
def test_gradcheck_tiny_image(tile_size):
    inputs = [t.requires_grad_(True) for t in _tiny_scene()]
    cameras = _front_camera(8, 6, 8.0)
    weights = [torch.randn(shape, dtype=F64) for shape in [(6, 8, 3), (6, 8), (6, 8), (6, 8, 3)]]

    def loss(means, covariances, colors, opacities, normals):
        images = render(
            Gaussians(means, covariances, normals, colors, opacities),
            cameras,
            background=(0.2, 0.3, 0.4),
            tile_size=tile_size,
            chunk_elements=64,  # several blocks per tile: exercises the blocked backward
        )
        outputs = [images.rgb[0], images.alpha[0], images.depth[0], images.normal[0]]
        return sum((o * w).sum() for o, w in zip(outputs, weights))

    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_through_pixels_that_stop_at_the_transmittance_floor():
    """Six nearly opaque Gaussians stacked along the view ray take transmittance past 1e-4
    inside a block and across blocks: the stopped Gaussians and everything behind them must
    get no gradient, the ones in front the exact one."""
    depths = torch.linspace(3.0, 5.5, 6, dtype=F64)
    offsets = torch.tensor([[0.1, 0.0], [-0.1, 0.1], [0.0, -0.1], [0.1, 0.1], [-0.1, -0.1], [0.0, 0.05]], dtype=F64)
    means = torch.cat([offsets * depths[:, None] / 8.0, depths[:, None]], -1)
    covariances = torch.eye(3, dtype=F64).expand(6, 3, 3) * 0.6**2
    colors = torch.rand(6, 3, dtype=F64, generator=torch.Generator().manual_seed(5))
    opacities = torch.tensor([0.97, 0.96, 0.98, 0.95, 0.97, 0.9], dtype=F64)
    inputs = [t.clone().requires_grad_(True) for t in (means, covariances, colors, opacities)]
    cameras = _front_camera(8, 8, 8.0)
    weights = torch.randn(8, 8, 3, dtype=F64, generator=torch.Generator().manual_seed(6))

    def loss(means, covariances, colors, opacities):
        gaussians = Gaussians(means, covariances, None, colors, opacities)
        images = render(gaussians, cameras, tile_size=4, chunk_elements=48, antialias=False)
        return (images.rgb[0] * weights).sum() + images.alpha[0].sum()

    all_six = render(Gaussians(means, covariances, None, colors, opacities), cameras, antialias=False).rgb[0, 4, 4]
    five = Gaussians(means[:5], covariances[:5], None, colors[:5], opacities[:5])
    front_five = render(five, cameras, antialias=False).rgb[0, 4, 4]
    assert torch.equal(all_six, front_five)  # the floor is reached in front of the last one
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_lowest_exponent_over_a_tile_matches_a_dense_search():
    torch.manual_seed(8)
    count = 200
    axes = torch.rand(count, 2) * 3 + 0.2
    angle = torch.rand(count) * math.pi
    rotation = torch.stack([torch.cos(angle), -torch.sin(angle), torch.sin(angle), torch.cos(angle)], -1).view(-1, 2, 2)
    inverse = rotation @ torch.diag_embed(axes.pow(-2)) @ rotation.transpose(1, 2)
    conics = torch.stack([inverse[:, 0, 0], inverse[:, 0, 1], inverse[:, 1, 1]], -1).double()
    lower = (torch.rand(count, 2) * 16 - 8).double()
    upper = lower + torch.rand(count, 2).double() * 6
    s = torch.linspace(0, 1, 201, dtype=F64)
    grid_x = lower[:, 0, None] + s * (upper - lower)[:, 0, None]
    grid_y = lower[:, 1, None] + s * (upper - lower)[:, 1, None]
    x, y = grid_x[:, :, None], grid_y[:, None, :]
    a, b, c = (v[:, None, None] for v in conics.unbind(-1))
    dense = (0.5 * (a * x * x + 2 * b * x * y + c * y * y)).flatten(1).min(-1).values
    exact = _lowest_exponent(conics, lower, upper)
    assert torch.all(exact <= dense + 1e-9)  # never above the true minimum: nothing visible is culled
    assert torch.allclose(exact, dense, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("near_first", [True, False])
def test_near_gaussian_occludes_far_one_whatever_the_input_order(near_first):
    red = ([0.0, 0.0, 3.0], (1.0, 0.0, 0.0))
    blue = ([0.0, 0.0, 6.0], (0.0, 0.0, 1.0))
    order = [red, blue] if near_first else [blue, red]
    gaussians = Gaussians(
        torch.tensor([m for m, _ in order], dtype=F64),
        torch.eye(3, dtype=F64).expand(2, 3, 3) * 0.3**2,
        colors=torch.tensor([c for _, c in order], dtype=F64),
        opacities=torch.full((2,), 0.95, dtype=F64),
    )
    images = render(gaussians, _front_camera(32, 32, 30.0), background=(0, 0, 0))
    centre = images.rgb[0, 16, 16]
    # Red in front: red gets 0.95·(peak falloff), blue only what red lets through.
    assert centre[0] > 0.85 and centre[2] < 0.1 * centre[0]
    assert images.depth[0, 16, 16] < 3.5


def test_gaussians_in_front_of_the_near_plane_are_culled():
    cameras = _front_camera(16, 16, 16.0, znear=1.0)
    behind = render(_gaussian([0.0, 0.0, 0.9], 0.2), cameras)
    assert torch.all(behind.alpha == 0) and torch.all(behind.rgb == 1)
    assert torch.all(render(_gaussian([0.0, 0.0, -3.0], 0.2), cameras).alpha == 0)
    assert render(_gaussian([0.0, 0.0, 1.1], 0.2), cameras).alpha.max() > 0.4


def test_tiles_and_blocks_give_the_same_image_as_one_chunk():
    torch.manual_seed(3)
    count = 300
    means = torch.randn(count, 3) * torch.tensor([1.5, 1.0, 0.5]) + torch.tensor([0.0, 0.0, 6.0])
    factor = torch.randn(count, 3, 3) * 0.08
    gaussians = Gaussians(
        means,
        factor @ factor.transpose(-1, -2) + 0.003 * torch.eye(3),
        normals=torch.randn(count, 3),
        colors=torch.rand(count, 3),
        opacities=torch.rand(count) * 0.9 + 0.05,
    )
    cameras = _front_camera(40, 30, 25.0, torch.float32)
    whole = render(gaussians, cameras, tile_size=64, chunk_elements=1 << 24)
    assert whole.alpha.max() > 0.9 and (whole.alpha > 0.1).float().mean() > 0.3
    # float32: the Gaussian exponent is evaluated in tile-local coordinates, so tile sizes
    # differ by rounding only (about 1e-4 at most for a 64-pixel tile).
    for tile_size, chunk in [(8, 1 << 20), (4, 100), (16, 3000), (64, 1000)]:
        tiled = render(gaussians, cameras, tile_size=tile_size, chunk_elements=chunk)
        for name in ("rgb", "alpha", "depth"):
            assert torch.allclose(getattr(tiled, name), getattr(whole, name), atol=2e-4), name
        # Unit normals are ill-conditioned where alpha is small: compare them weighted.
        weighted = tiled.normal * tiled.alpha[..., None]
        assert torch.allclose(weighted, whole.normal * whole.alpha[..., None], atol=2e-4)


def test_several_cameras_background_image_and_normals():
    K = intrinsics(30.0, 30.0, 12.0, 10.0)
    cameras = orbit_cameras(K, 24, 20, radius=6.0, elevation=10.0, count=3)
    torch.manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(400, 3), dim=-1)
    gaussians = Gaussians(
        directions * 1.5,
        torch.eye(3).expand(400, 3, 3) * 0.15**2,
        normals=directions * 3.0,  # unnormalised on purpose
        opacities=torch.full((400,), 0.9),
    )
    background = torch.rand(20, 24, 3)
    images = render(gaussians, cameras, background=background, shading=LightingConfig())
    assert images.rgb.shape == (3, 20, 24, 3) and images.normal.shape == (3, 20, 24, 3)
    empty = images.alpha < 1e-6
    assert empty.any() and torch.allclose(images.rgb[empty], background.expand(3, 20, 24, 3)[empty])
    covered = images.alpha > 0.5
    lengths = images.normal[covered].norm(dim=-1)
    assert torch.allclose(lengths, torch.ones_like(lengths), atol=1e-5)
    # The sphere's visible normals point back toward each camera.
    toward = cameras.positions[:, None, None, :] - 0.0
    assert ((images.normal * toward).sum(-1)[covered] > 0).float().mean() > 0.95


def test_bad_inputs_raise_input_errors():
    cameras = _front_camera(8, 8, 8.0)
    with pytest.raises(InputError, match=r"\[M, 3\]"):
        render(Gaussians(torch.zeros(2, 5, 3), torch.eye(3).expand(2, 5, 3, 3)), cameras)
    with pytest.raises(InputError, match="opacities"):
        render(Gaussians(torch.zeros(5, 3), torch.eye(3).expand(5, 3, 3), opacities=torch.ones(4)), cameras)
    if not gsplat_available() or not torch.cuda.is_available():
        with pytest.raises(InputError, match="gsplat"):
            render(_gaussian([0.0, 0.0, 2.0], 0.1, dtype=torch.float32), cameras, backend="gsplat")


@pytest.mark.gpu
@pytest.mark.parametrize("antialias", [True, False])
def test_torch_and_gsplat_agree_on_cuda(antialias):
    pytest.importorskip("gsplat")
    torch.manual_seed(0)
    count = 10_000
    device = "cuda"
    directions = torch.nn.functional.normalize(torch.randn(count, 3, device=device), dim=-1)
    means = directions * (8.0 + torch.rand(count, 1, device=device))
    factor = torch.randn(count, 3, 3, device=device) * 0.15
    covariances = factor @ factor.transpose(-1, -2) + 0.01 * torch.eye(3, device=device)
    colors = torch.rand(count, 3, device=device)
    opacities = torch.rand(count, device=device) * 0.85 + 0.05
    K = intrinsics(190.0, 190.0, 128.0, 96.0, device=device)
    cameras = orbit_cameras(K, 256, 192, radius=35.0, count=2)
    shapes = [(2, 192, 256, 3), (2, 192, 256), (2, 192, 256), (2, 192, 256, 3)]
    weights = [torch.randn(shape, device=device) for shape in shapes]
    results = {}
    for backend in ("torch", "gsplat"):
        leaves = [t.clone().requires_grad_(True) for t in (means, covariances, colors, opacities)]
        normals = directions.clone().requires_grad_(True)
        images = render(
            Gaussians(leaves[0], leaves[1], normals, leaves[2], leaves[3]),
            cameras,
            backend=backend,
            background=(0.0, 0.0, 0.0),
            antialias=antialias,
        )
        # Depth and normals weighted by alpha: smooth where alpha is small.
        outputs = [
            images.rgb,
            images.alpha,
            images.depth * images.alpha / 35.0,
            images.normal * images.alpha[..., None],
        ]
        sum((o * w).sum() for o, w in zip(outputs, weights)).backward()
        results[backend] = ([o.detach() for o in outputs], [t.grad for t in [*leaves, normals]])
    assert results["torch"][0][1].mean() > 0.05  # the scene is in view
    # Relative L1 on images: a Gaussian sitting exactly at the 1/255 cut-off may be kept by one
    # backend and not the other (float rounding), which moves single pixels by up to 1/255.
    for ours, theirs in zip(results["torch"][0], results["gsplat"][0]):
        assert (ours - theirs).abs().sum() <= 1e-3 * theirs.abs().sum()
        assert (ours - theirs).abs().max() <= 2.0 / 255.0
    for ours, theirs in zip(results["torch"][1], results["gsplat"][1]):
        assert (ours - theirs).norm() <= 1e-2 * theirs.norm()
