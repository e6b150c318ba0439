"""Tests for the 2D silhouette Chamfer loss: known values, its long reach, a float64 gradcheck."""

from __future__ import annotations

import pytest
import torch

from physmorph.losses.silhouette_chamfer import silhouette_chamfer_loss, silhouette_pixels
from physmorph.render.cameras import Cameras, intrinsics

F64 = torch.float64
SIZE = 32
FOCAL = 32.0


def _front_camera() -> Cameras:
    """Camera at the origin looking down +z; a point (x, y, 4) lands at pixel 16 + 8(x, y)."""
    K = intrinsics(FOCAL, FOCAL, SIZE / 2, SIZE / 2, F64)
    return Cameras(torch.eye(4, dtype=F64)[None], K[None], SIZE, SIZE)


def _square_mask(left: int, right: int) -> torch.Tensor:
    """Covered rows and columns [left, right), [1, H, W]."""
    mask = torch.zeros(1, SIZE, SIZE, dtype=F64)
    mask[:, left:right, left:right] = 1.0
    return mask


def _points_on_pixels(pixels: torch.Tensor, depth: float = 4.0) -> torch.Tensor:
    """World points that project to pixel coordinates [M, 2] at camera depth `depth`."""
    xy = (pixels - SIZE / 2) * depth / FOCAL
    return torch.cat((xy, torch.full_like(xy[:, :1], depth)), dim=1)


def test_zero_when_the_centres_are_the_covered_pixels():
    target = silhouette_pixels(_square_mask(10, 20))
    means = _points_on_pixels(target.covered[0])
    assert silhouette_chamfer_loss(means, _front_camera(), target).item() < 1e-9


def test_value_of_a_single_centre_outside_a_single_pixel():
    mask = torch.zeros(1, SIZE, SIZE, dtype=F64)
    mask[0, 5, 5] = 1.0  # pixel centre (5.5, 5.5)
    target = silhouette_pixels(mask)
    means = _points_on_pixels(torch.tensor([[5.5, 9.5]], dtype=F64))  # 4 px below it
    loss = silhouette_chamfer_loss(means, _front_camera(), target)
    assert torch.isclose(loss, torch.tensor(0.5 * (4.0 + 4.0) / SIZE, dtype=F64))


def test_a_missing_part_pulls_centres_from_far_away():
    """The centres cover a square 6 px from the target square: the per-pixel silhouette term
    would see no overlap to move, this one moves every centre toward the target."""
    target = silhouette_pixels(_square_mask(20, 28))
    rows, columns = torch.meshgrid(torch.arange(4, 12, dtype=F64), torch.arange(4, 12, dtype=F64), indexing="ij")
    pixels = torch.stack((columns.flatten() + 0.5, rows.flatten() + 0.5), dim=1)
    means = _points_on_pixels(pixels).requires_grad_()
    silhouette_chamfer_loss(means, _front_camera(), target).backward()
    toward = torch.tensor([1.0, 1.0, 0.0], dtype=F64)
    assert bool(((-means.grad) @ toward > 0).all())


def test_centres_off_the_image_or_behind_the_camera_are_ignored():
    """A mask says nothing about what lies outside its frame, or behind its camera."""
    target = silhouette_pixels(_square_mask(10, 20))
    inside = _points_on_pixels(target.covered[0])
    off_image = _points_on_pixels(torch.tensor([[-40.0, 15.0], [15.0, 33.0]], dtype=F64))
    behind = _points_on_pixels(torch.tensor([[0.5, 0.5]], dtype=F64), depth=-4.0)
    means = torch.cat((inside, off_image, behind)).requires_grad_()
    loss = silhouette_chamfer_loss(means, _front_camera(), target)
    loss.backward()
    assert loss.item() < 1e-9
    assert bool((means.grad[len(inside) :] == 0).all())


def test_gradcheck_float64():
    mask = _square_mask(12, 22)
    mask[0, 12:15, 22:26] = 1.0  # a bump, so the distance field is not one straight ramp
    target = silhouette_pixels(mask)
    generator = torch.Generator().manual_seed(3)
    pixels = 4.0 + 24.0 * torch.rand(40, 2, generator=generator, dtype=F64)
    means = _points_on_pixels(pixels).requires_grad_()
    camera = _front_camera()
    assert torch.autograd.gradcheck(
        lambda m: silhouette_chamfer_loss(m, camera, target), (means,), eps=1e-6, atol=1e-6, rtol=1e-4
    )


@pytest.mark.gpu
def test_cuda_matches_cpu_in_value_and_gradient():
    """The CUDA path (the grid neighbour search on a flat point set) gives the CPU's loss."""
    mask = _square_mask(8, 26)
    generator = torch.Generator().manual_seed(5)
    pixels = 30.0 * torch.rand(20_000, 2, generator=generator, dtype=F64)
    results = []
    for device in ("cpu", "cuda"):
        means = _points_on_pixels(pixels).to(device).requires_grad_()
        target = silhouette_pixels(mask.to(device))
        loss = silhouette_chamfer_loss(means, _front_camera().to(device), target)
        loss.backward()
        results.append((loss.detach().cpu(), means.grad.cpu()))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-10)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-12)
