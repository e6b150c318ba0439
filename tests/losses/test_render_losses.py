"""Tests for the render losses: values on cases with known answers, float64 gradchecks, config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from physmorph.errors import ConfigError, InputError
from physmorph.losses.render_losses import (
    RenderLossConfig,
    covariance_alignment_loss,
    covariance_regularization,
    curvature_target_covariances,
    depth_loss,
    dssim_loss,
    edge_alignment_loss,
    gaussian_neighbors,
    normal_smoothness_loss,
    principal_curvatures,
    project_covariances,
    psnr,
    render_loss_config_from_mapping,
    rgb_loss,
    silhouette_edges,
    silhouette_iou,
    silhouette_loss,
    ssim,
)
from physmorph.losses.schedules import schedule_factor, training_progress
from physmorph.render.cameras import Cameras, intrinsics

F64 = torch.float64


def _gradcheck(function, *inputs):
    return torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def _front_camera(size=24, focal=20.0):
    """Camera at the origin looking down +z."""
    K = intrinsics(focal, focal, size / 2, size / 2, F64)
    return Cameras(torch.eye(4, dtype=F64)[None], K[None], size, size)


def _half_plane_mask(size=24, column=12):
    """Object left of `column` (a vertical silhouette edge), [1, H, W]."""
    mask = torch.zeros(1, size, size, dtype=F64)
    mask[..., :column] = 1.0
    return mask


def _elongated(direction, long=0.4, short=0.05):
    """Covariance [3, 3] with standard deviation `long` along unit `direction`, `short` across."""
    d = torch.tensor(direction, dtype=F64)
    d = d / d.norm()
    return short**2 * torch.eye(3, dtype=F64) + (long**2 - short**2) * torch.outer(d, d)


def test_silhouette_depth_and_rgb_values():
    alpha = torch.tensor([[[0.2, 0.9], [1.0, 0.0]]], dtype=F64)
    target = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]], dtype=F64)
    assert silhouette_loss(alpha, target).item() == pytest.approx((0.2 + 0.1 + 0.0 + 1.0) / 4)
    depth = torch.tensor([[[5.0, 2.5], [3.0, 100.0]]], dtype=F64)
    target_depth = torch.tensor([[[9.0, 2.0], [4.0, 0.0]]], dtype=F64)
    # uncovered (α* = 0) and depth-less (d* = 0) pixels are ignored, however wrong
    assert depth_loss(depth, target_depth, target).item() == pytest.approx((0.5 + 1.0) / 2)
    assert depth_loss(depth, target_depth, torch.zeros_like(target)).item() == 0.0
    rgb = torch.rand(2, 3, 4, 3, dtype=F64)
    assert rgb_loss(rgb, rgb + 0.25).item() == pytest.approx(0.25)


def test_ssim_values():
    torch.manual_seed(0)
    image = torch.rand(2, 16, 16, 3, dtype=F64)
    assert ssim(image, image).item() == pytest.approx(1.0)
    assert dssim_loss(image, image).item() == pytest.approx(0.0, abs=1e-12)
    # constant images: no variance, SSIM = luminance term (2ab + c1) / (a² + b² + c1)
    a, b = torch.full((1, 12, 12, 3), 0.3, dtype=F64), torch.full((1, 12, 12, 3), 0.7, dtype=F64)
    c1 = 0.01**2
    assert ssim(a, b).item() == pytest.approx((2 * 0.21 + c1) / (0.09 + 0.49 + c1))
    noisy = (image + 0.2 * torch.randn_like(image)).clamp(0, 1)
    assert 0.0 < ssim(image, noisy).item() < 0.9
    with pytest.raises(InputError, match="smaller than"):
        ssim(torch.rand(1, 8, 8, 3), torch.rand(1, 8, 8, 3))


def test_iou_and_psnr_values():
    alpha = torch.zeros(2, 4, 4, dtype=F64)
    target = torch.zeros(2, 4, 4, dtype=F64)
    alpha[0, :2] = 0.9  # 8 pixels
    target[0, 1:3] = 1.0  # 8 pixels, 4 shared
    assert silhouette_iou(alpha, target).tolist() == pytest.approx([4 / 12, 1.0])
    rgb = torch.zeros(2, 4, 4, 3, dtype=F64)
    assert psnr(rgb, rgb + 0.1).tolist() == pytest.approx([20.0, 20.0])


def test_silhouette_edges_give_the_tangent_of_a_vertical_edge():
    edges = silhouette_edges(_half_plane_mask(column=12), radius=2)
    strength = edges.strength[0]
    # Sobel responds on columns 11 and 12; pooling spreads it 2 pixels further each way
    near = strength[:, 9:15]
    assert (near > 0).all()
    assert (strength[:, :9] == 0).all() and (strength[:, 15:] == 0).all()
    # vertical tangent: φ = 90°, (cos 2φ, sin 2φ) = (−1, 0)
    assert torch.allclose(edges.doubled[0, :, 9:15], torch.tensor([-1.0, 0.0], dtype=F64).expand(24, 6, 2))
    # a diagonal edge (object where x > y) has φ = 45°: cos 2φ = 0
    ii, jj = torch.meshgrid(torch.arange(24), torch.arange(24), indexing="ij")
    diagonal = silhouette_edges((jj > ii).to(F64)[None], radius=1)
    on_edge = diagonal.strength[0] > 0.1
    on_edge[:4] = on_edge[-4:] = False  # the image corners bend the edge
    assert torch.allclose(diagonal.doubled[0][on_edge][:, 0], torch.zeros(int(on_edge.sum()), dtype=F64), atol=1e-9)
    assert torch.allclose(diagonal.doubled[0][on_edge][:, 1].abs(), torch.ones(int(on_edge.sum()), dtype=F64))


def test_project_covariances_on_the_axis():
    camera = _front_camera(24, focal=20.0)
    means = torch.tensor([[0.0, 0.0, 4.0]], dtype=F64)
    pixels, depth, cov2d = project_covariances(means, 0.25 * torch.eye(3, dtype=F64)[None], camera)
    assert pixels[0, 0].tolist() == pytest.approx([12.0, 12.0])
    assert depth[0, 0].item() == 4.0
    assert torch.allclose(cov2d[0, 0], (20.0 * 0.5 / 4.0) ** 2 * torch.eye(2, dtype=F64))


def test_edge_alignment_values():
    camera = _front_camera(24, focal=20.0)
    edges = silhouette_edges(_half_plane_mask(column=12))
    # a Gaussian on the edge (pixel x ≈ 12): image y is world y, image x is world x
    means = torch.tensor([[0.0, 0.0, 4.0]], dtype=F64)
    along = edge_alignment_loss(means, _elongated([0.0, 1.0, 0.0])[None], camera, edges)
    across = edge_alignment_loss(means, _elongated([1.0, 0.0, 0.0])[None], camera, edges)
    round_ = edge_alignment_loss(means, 0.1 * torch.eye(3, dtype=F64)[None], camera, edges)
    assert along.item() == pytest.approx(0.0, abs=1e-6)
    assert across.item() == pytest.approx(1.0, abs=2e-3)
    assert round_.item() == pytest.approx(1.0 - math.sqrt(0.5), abs=1e-6)
    # far from the edge, or behind the camera, a Gaussian does not count
    far = torch.tensor([[-1.6, 0.0, 4.0], [0.0, 0.0, -4.0]], dtype=F64)
    cov = _elongated([1.0, 0.0, 0.0]).expand(2, 3, 3)
    assert edge_alignment_loss(far, cov, camera, edges).item() == 0.0
    # weights are normalised: adding a far Gaussian does not change the value
    both = torch.cat((means, far[:1]))
    two = torch.stack((_elongated([1.0, 0.0, 0.0]), _elongated([0.0, 1.0, 0.0])))
    assert edge_alignment_loss(both, two, camera, edges).item() == pytest.approx(across.item())


def test_edge_alignment_gradcheck():
    camera = _front_camera(24, focal=20.0)
    edges = silhouette_edges(_half_plane_mask(column=12))
    torch.manual_seed(1)
    means = torch.tensor([[0.05, 0.1, 4.0], [-0.03, -0.2, 4.2], [0.1, 0.3, 3.9]], dtype=F64)
    factor = 0.2 * torch.randn(3, 3, 3, dtype=F64)
    covariances = factor @ factor.transpose(-1, -2) + 0.01 * torch.eye(3, dtype=F64)
    assert _gradcheck(
        lambda m, c: edge_alignment_loss(m, c, camera, edges),
        means.requires_grad_(),
        covariances.requires_grad_(),
    )


def _sphere_points(radius=2.0, count=400, seed=0):
    """Near-uniform points on a sphere (Fibonacci lattice) and their outward normals."""
    index = torch.arange(count, dtype=F64) + 0.5
    polar = torch.acos(1 - 2 * index / count)
    azimuth = math.pi * (1 + math.sqrt(5)) * index
    normals = torch.stack(
        (
            torch.sin(polar) * torch.cos(azimuth),
            torch.sin(polar) * torch.sin(azimuth),
            torch.cos(polar),
        ),
        -1,
    )
    return radius * normals, normals


def test_principal_curvatures_of_a_sphere_and_a_cylinder():
    points, normals = _sphere_points(radius=2.0)
    neighbors = gaussian_neighbors(points, 12)
    curvatures, _ = principal_curvatures(points, normals, neighbors)
    assert torch.allclose(curvatures, torch.full_like(curvatures, 0.5), atol=0.02)
    # cylinder of radius 2 along z: κ = (0, 1/2), the flat direction along the axis
    angle = torch.linspace(0, 2 * math.pi, 41, dtype=F64)[:-1]
    height = torch.linspace(-2, 2, 13, dtype=F64)
    a, h = torch.meshgrid(angle, height, indexing="ij")
    normals = torch.stack((torch.cos(a), torch.sin(a), torch.zeros_like(a)), -1).reshape(-1, 3)
    points = 2.0 * normals + torch.stack((0 * a, 0 * a, h), -1).reshape(-1, 3)
    curvatures, directions = principal_curvatures(points, normals, gaussian_neighbors(points, 10))
    assert torch.allclose(curvatures[:, 0], torch.zeros(len(points), dtype=F64), atol=1e-6)
    assert torch.allclose(curvatures[:, 1], torch.full((len(points),), 0.5, dtype=F64), atol=0.01)
    assert torch.allclose(directions[:, 0, 2].abs(), torch.ones(len(points), dtype=F64), atol=1e-6)


def test_curvature_target_covariances():
    points, normals = _sphere_points(radius=2.0)
    sigma0 = 0.1
    targets = curvature_target_covariances(points, normals, sigma0, gaussian_neighbors(points, 12), gain=2.0)
    eigenvalues, vectors = torch.linalg.eigh(targets)
    tangent = (sigma0 / (1 + 2.0 * 0.5)) ** 2
    assert torch.allclose(eigenvalues[:, 0], torch.full((len(points),), (0.3 * sigma0) ** 2, dtype=F64))
    assert torch.allclose(eigenvalues[:, 1:], torch.full((len(points), 2), tangent, dtype=F64), rtol=0.05)
    # the smallest axis is the normal
    assert torch.allclose((vectors[:, :, 0] * normals).sum(-1).abs(), torch.ones(len(points), dtype=F64))


def _spd(count=4, seed=0, scale=0.1):
    generator = torch.Generator().manual_seed(seed)
    factor = scale * torch.randn(count, 3, 3, generator=generator, dtype=F64)
    return factor @ factor.transpose(-1, -2) + 0.1 * scale**2 * torch.eye(3, dtype=F64)


def test_covariance_alignment_values_and_gradcheck():
    target = _spd(seed=1)
    assert covariance_alignment_loss(target, target).item() == pytest.approx(0.0, abs=1e-12)
    assert covariance_alignment_loss(4 * target, target).item() == pytest.approx(3 * math.log(4) ** 2)
    assert _gradcheck(lambda c: covariance_alignment_loss(c, target), _spd(seed=2).requires_grad_())


@pytest.mark.parametrize(("mode", "doubled"), [("eigenvalue", 1.0), ("trace", 1.0), ("frobenius", 3.0)])
def test_covariance_regularization_values_and_gradcheck(mode, doubled):
    s = 0.02
    eye = torch.eye(3, dtype=F64).expand(5, 3, 3)
    assert covariance_regularization(s**2 * eye, mode, s).item() == pytest.approx(0.0, abs=1e-20)
    assert covariance_regularization(2 * s**2 * eye, mode, s).item() == pytest.approx(doubled)
    assert _gradcheck(lambda c: covariance_regularization(c, mode, 0.1), _spd(seed=3).requires_grad_())
    with pytest.raises(InputError, match="regularisation mode"):
        covariance_regularization(eye, "volume", s)


def test_normal_smoothness_values_and_gradcheck():
    normals = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    neighbors = torch.tensor([[2], [0], [0]])
    # pairs (0,2): 0, (1,0): 1, (2,0): 0
    assert normal_smoothness_loss(normals, neighbors).item() == pytest.approx(1 / 3)
    random = torch.randn(6, 3, dtype=F64)
    random_neighbors = gaussian_neighbors(torch.randn(6, 3, dtype=F64), 2)
    assert _gradcheck(lambda n: normal_smoothness_loss(n, random_neighbors), random.requires_grad_())


def test_image_losses_gradcheck():
    torch.manual_seed(2)
    alpha, target = torch.rand(1, 5, 6, dtype=F64), torch.rand(1, 5, 6, dtype=F64)
    assert _gradcheck(lambda a: silhouette_loss(a, target), alpha.clone().requires_grad_())
    depth, target_depth = 3 + torch.rand(1, 5, 6, dtype=F64), 3 + torch.rand(1, 5, 6, dtype=F64)
    assert _gradcheck(lambda d: depth_loss(d, target_depth, target), depth.requires_grad_())
    rgb, target_rgb = torch.rand(1, 12, 13, 3, dtype=F64), torch.rand(1, 12, 13, 3, dtype=F64)
    assert _gradcheck(lambda c: rgb_loss(c, target_rgb), rgb.clone().requires_grad_())
    assert _gradcheck(lambda c: dssim_loss(c, target_rgb), rgb.clone().requires_grad_())


def test_schedules():
    assert schedule_factor("constant", 0.0) == 1.0
    assert schedule_factor("linear", 0.25) == 0.25
    assert schedule_factor("cosine", 0.5) == pytest.approx(0.5)
    assert schedule_factor("cosine", 0.0) == 0.0 and schedule_factor("cosine", 1.0) == pytest.approx(1.0)
    assert schedule_factor("linear", 3.0) == 1.0
    assert training_progress(3, 7) == 0.5
    assert training_progress(0, 1) == 0.0
    with pytest.raises(ConfigError, match="schedule"):
        schedule_factor("step", 0.5)


def test_config_loads_the_reference_section_unchanged(shared_dir: Path):
    data = yaml.safe_load((shared_dir / "reference" / "sphere_to_bunny.yaml").read_text())
    config = render_loss_config_from_mapping(data["optimization"]["loss"])
    assert (config.w_alpha, config.w_depth, config.w_edge, config.w_cov_align) == (
        0.5,
        0.2,
        0.1,
        0.3,
    )
    assert (config.w_cov_reg, config.cov_reg_mode, config.target_cov_scale) == (
        0.01,
        "eigenvalue",
        0.02,
    )
    assert config.enabled and config.schedule == "constant" and config.w_normal_smooth == 0.0


def test_config_weights_and_errors():
    config = RenderLossConfig(schedule="linear", w_rgb=0.4)
    weights = config.weights(0.5)
    assert weights["alpha"] == pytest.approx(0.25) and weights["rgb"] == pytest.approx(0.2)
    assert all(value == 0 for value in RenderLossConfig(enabled=False).weights(1.0).values())
    with pytest.raises(ConfigError, match=r"optimization\.loss\.w_edge"):
        render_loss_config_from_mapping({"w_edge": -1.0})
    with pytest.raises(ConfigError, match=r"optimization\.loss\.cov_reg_mode"):
        render_loss_config_from_mapping({"cov_reg_mode": "volume"})
    with pytest.raises(ConfigError, match=r"unknown config key 'optimization\.loss\.w_alfa'"):
        render_loss_config_from_mapping({"w_alfa": 1.0})
    with pytest.raises(ConfigError, match="target_cov_scale"):
        render_loss_config_from_mapping({"target_cov_scale": 0.0})


def test_multiscale_silhouette_pulls_beyond_the_mismatch_and_passes_gradcheck():
    target = torch.zeros(1, 16, 16, dtype=torch.float64)
    target[:, 4:12, 4:12] = 1.0
    alpha = target.clone()
    alpha[:, 4:12, 10:12] = 0.0  # the prediction misses two columns of the target
    alpha.requires_grad_(True)
    silhouette_loss(alpha, target).backward()
    assert alpha.grad[0, 6, 8] == 0  # a matching pixel next to the gap feels nothing per pixel
    alpha.grad = None
    silhouette_loss(alpha, target, levels=3).backward()
    assert alpha.grad[0, 6, 8] < 0  # at coarser scales it is asked to grow toward the gap
    assert alpha.grad[0, 6, 1] == 0  # far away (another 4×4 block), still nothing
    smooth = torch.rand(2, 9, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    partial = target[:, :9, :7].expand(2, 9, 7)
    assert torch.autograd.gradcheck(lambda a: silhouette_loss(a, partial, 3), (smooth.requires_grad_(),))
