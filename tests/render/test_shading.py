"""Tests for per-Gaussian shading and background compositing."""

from __future__ import annotations

import pytest
import torch

from physmorph.errors import InputError
from physmorph.render.config import LightingConfig
from physmorph.render.shading import composite_background, shade

F64 = torch.float64


def _one(normal, camera=(0.0, 0.0, 10.0), **lighting):
    albedo = torch.tensor([[0.5, 0.25, 1.0]], dtype=F64)
    return shade(
        albedo,
        torch.zeros(1, 3, dtype=F64),
        torch.tensor([normal], dtype=F64),
        torch.tensor([camera], dtype=F64),
        LightingConfig(**lighting),
    )[0, 0]


def test_lambert_is_ambient_plus_cosine_term():
    color = _one([0.0, 0.0, 2.0], model="lambert", direction=(0.0, 0.6, 0.8), ambient=0.1, diffuse=0.5)
    expected = torch.tensor([0.5, 0.25, 1.0], dtype=F64) * (0.1 + 0.5 * 0.8)
    assert torch.allclose(color, expected)


def test_phong_highlight_peaks_on_the_mirror_direction():
    light = (0.0, 0.6, 0.8)
    mirror = (0.0, -6.0, 8.0)  # camera on the reflected ray: r·v = 1
    color = _one(
        [0.0, 0.0, 1.0],
        camera=mirror,
        model="phong",
        direction=light,
        ambient=0.0,
        diffuse=0.0,
        specular=0.25,
        shininess=8,
    )
    assert torch.allclose(color, torch.full((3,), 0.25, dtype=F64))
    off = _one(
        [0.0, 0.0, 1.0],
        camera=(0.0, 0.0, 10.0),
        model="phong",
        direction=light,
        ambient=0.0,
        diffuse=0.0,
        specular=0.25,
        shininess=8,
    )
    assert torch.allclose(off, torch.full((3,), 0.25 * 0.8**8, dtype=F64))


def test_two_sided_flips_normals_facing_away_from_the_camera():
    lit = dict(model="lambert", direction=(0.0, 0.0, 1.0), ambient=0.0, diffuse=1.0)
    back = _one([0.0, 0.0, -1.0], two_sided=True, **lit)
    assert torch.allclose(back, torch.tensor([0.5, 0.25, 1.0], dtype=F64))
    assert torch.allclose(_one([0.0, 0.0, -1.0], two_sided=False, **lit), torch.zeros(3, dtype=F64))


def test_flat_and_missing_normals():
    albedo = torch.rand(4, 3, dtype=F64)
    cameras = torch.randn(2, 3, dtype=F64)
    flat = shade(albedo, torch.zeros(4, 3, dtype=F64), None, cameras, None)
    assert flat.shape == (2, 4, 3) and torch.equal(flat[1], albedo)
    with pytest.raises(InputError, match="normals"):
        shade(albedo, torch.zeros(4, 3, dtype=F64), None, cameras, LightingConfig())


def test_phong_gradcheck():
    torch.manual_seed(0)
    albedo = torch.rand(5, 3, dtype=F64, requires_grad=True)
    means = torch.randn(5, 3, dtype=F64, requires_grad=True)
    normals = torch.randn(5, 3, dtype=F64, requires_grad=True)
    cameras = torch.tensor([[0.0, 0.0, 8.0], [6.0, 1.0, 2.0]], dtype=F64)
    lighting = LightingConfig(shininess=4.0, specular=0.5)
    assert torch.autograd.gradcheck(lambda a, m, n: shade(a, m, n, cameras, lighting), (albedo, means, normals))


def test_background_colour_and_image():
    color = torch.full((1, 2, 2, 3), 0.25, dtype=F64)
    alpha = torch.tensor([[[0.5, 1.0], [0.0, 0.25]]], dtype=F64)
    out = composite_background(color, alpha, torch.tensor([1.0, 0.0, 0.0], dtype=F64))
    assert torch.allclose(out[0, 1, 0], torch.tensor([1.25, 0.25, 0.25], dtype=F64))
    image = torch.arange(12, dtype=F64).reshape(2, 2, 3)
    out = composite_background(color, alpha, image)
    assert torch.allclose(out[0, 0, 0], 0.25 + 0.5 * image[0, 0])
    with pytest.raises(InputError, match="background"):
        composite_background(color, alpha, torch.zeros(3, 3, 3, dtype=F64))
