"""Tests for 3DGS PLY and point-cloud PLY files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from physmorph.errors import InputError
from physmorph.io.ply import (
    SH_C0,
    read_gaussians_ply,
    read_points_ply,
    write_gaussians_ply,
    write_points_ply,
)
from physmorph.surface.gaussians import Gaussians


def _gaussians(count=64):
    torch.manual_seed(0)
    factor = torch.randn(count, 3, 3, dtype=torch.float64) * 0.3
    return Gaussians(
        torch.randn(count, 3, dtype=torch.float64) * 5,
        factor @ factor.transpose(-1, -2) + 0.01 * torch.eye(3, dtype=torch.float64),
        torch.nn.functional.normalize(torch.randn(count, 3, dtype=torch.float64), dim=-1),
        torch.rand(count, 3, dtype=torch.float64),
        torch.rand(count, dtype=torch.float64) * 0.9 + 0.05,
    )


def test_gaussian_ply_round_trip(tmp_path):
    gaussians = _gaussians()
    back = read_gaussians_ply(write_gaussians_ply(tmp_path / "g.ply", gaussians))
    for name in ("means", "covariances", "colors", "opacities", "normals"):
        original, restored = getattr(gaussians, name), getattr(back, name).double()
        assert torch.allclose(restored, original, rtol=1e-5, atol=1e-5 * original.abs().max()), name


def test_gaussian_ply_layout_matches_3dgs(tmp_path):
    rotation = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    scales = torch.tensor([0.5, 0.2, 0.1], dtype=torch.float64)
    gaussians = Gaussians(
        torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64),
        ((rotation * scales**2) @ rotation.T)[None],
        colors=torch.tensor([[1.0, 0.5, 0.0]], dtype=torch.float64),
        opacities=torch.tensor([0.75], dtype=torch.float64),
    )
    path = write_gaussians_ply(tmp_path / "g.ply", gaussians)
    data = path.read_bytes()
    header, body = data.split(b"end_header\n")
    assert header.startswith(b"ply\nformat binary_little_endian 1.0\nelement vertex 1\n")
    names = [line.split()[-1] for line in header.decode().splitlines() if line.startswith("property")]
    assert names[:10] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    values = np.frombuffer(body, dtype="<f4")
    assert values.shape == (17,)
    assert np.allclose(values[6:9], (np.array([1.0, 0.5, 0.0]) - 0.5) / SH_C0)
    assert values[9] == pytest.approx(np.log(0.75 / 0.25), rel=1e-6)
    assert np.allclose(np.sort(np.exp(values[10:13])), np.sort(scales.numpy()), rtol=1e-6)
    quaternion = values[13:17] * np.sign(values[13])
    # eigh sorts scales ascending, so the stored frame permutes axes; it must still rebuild Σ.
    assert np.isclose(np.linalg.norm(quaternion), 1.0)
    rebuilt = read_gaussians_ply(path).covariances[0].double()
    assert torch.allclose(rebuilt, gaussians.covariances[0], atol=1e-7)


def test_quaternion_convention_is_w_first(tmp_path):
    # A Gaussian long along world y: with eigh's ascending order the largest axis is the third,
    # so R maps the third axis onto ±y, a quarter turn about x: q = (cos 45°, ±sin 45°, 0, 0).
    covariance = torch.diag(torch.tensor([0.01, 1.0, 0.04], dtype=torch.float64))
    path = write_gaussians_ply(tmp_path / "q.ply", Gaussians(torch.zeros(1, 3), covariance[None]))
    values = np.frombuffer(path.read_bytes().split(b"end_header\n")[1], dtype="<f4")
    assert np.allclose(np.abs(values[13:17]), [np.sqrt(0.5), np.sqrt(0.5), 0.0, 0.0], atol=1e-6)


def test_points_ply_round_trip(tmp_path):
    points = torch.randn(10, 3)
    colors = torch.rand(10, 3)
    read_points, read_colors = read_points_ply(write_points_ply(tmp_path / "p.ply", points, colors))
    assert torch.equal(read_points, points)
    assert (read_colors - colors).abs().max() <= 0.5 / 255 + 1e-6
    only_points, none = read_points_ply(write_points_ply(tmp_path / "q.ply", points.numpy()))
    assert torch.equal(only_points, points) and none is None


def test_unreadable_ply_raises_input_error(tmp_path):
    (tmp_path / "a.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nend_header\n")
    with pytest.raises(InputError, match="binary_little_endian"):
        read_gaussians_ply(tmp_path / "a.ply")
    write_points_ply(tmp_path / "p.ply", torch.zeros(2, 3))
    with pytest.raises(InputError, match="not a 3DGS PLY"):
        read_gaussians_ply(tmp_path / "p.ply")
