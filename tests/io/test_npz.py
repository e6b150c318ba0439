"""Tests for the Gaussians NPZ archive."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from physmorph.errors import InputError
from physmorph.io.npz import load_gaussians_npz, save_gaussians_npz
from physmorph.surface.gaussians import Gaussians


def test_npz_round_trip_keeps_keys_and_values(tmp_path):
    gaussians = Gaussians(
        torch.randn(4, 3), torch.eye(3).expand(4, 3, 3) * 0.1, colors=torch.rand(4, 3), opacities=torch.rand(4)
    )
    path = save_gaussians_npz(tmp_path / "g.npz", gaussians)
    with np.load(path) as archive:
        assert sorted(archive.files) == ["cov", "mu", "opacity", "rgb"]
    back = load_gaussians_npz(path)
    assert torch.equal(back.means, gaussians.means) and torch.equal(back.colors, gaussians.colors)
    assert torch.equal(back.covariances, gaussians.covariances) and back.normals is None


def test_npz_without_means_is_rejected(tmp_path):
    np.savez(tmp_path / "x.npz", cov=np.zeros((1, 3, 3)))
    with pytest.raises(InputError, match="mu"):
        load_gaussians_npz(tmp_path / "x.npz")
