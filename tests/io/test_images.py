"""Tests for PNG, 16-bit depth and normal-map files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from physmorph.errors import InputError
from physmorph.io.images import (
    read_depth_png,
    read_normal_png,
    read_png,
    write_depth_png,
    write_normal_png,
    write_png,
)


def test_png_round_trip_quantises_to_8_bits(tmp_path):
    torch.manual_seed(0)
    image = torch.rand(5, 7, 3)
    path = write_png(tmp_path / "sub" / "rgb.png", image)
    back = read_png(path)
    assert back.shape == (5, 7, 3) and (back - image).abs().max() <= 0.5 / 255 + 1e-6
    grey = write_png(tmp_path / "alpha.png", torch.tensor([[0.0, 2.0], [-1.0, 0.5]]))
    assert torch.allclose(read_png(grey), torch.tensor([[0.0, 1.0], [0.0, 128 / 255]]))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["alpha.png", "rgb.png", "sub"]


def test_depth_round_trip_in_millimetre_steps(tmp_path):
    depth = torch.tensor([[0.0, 1.2345], [35.0004, 65.5]], dtype=torch.float64)
    path = write_depth_png(tmp_path / "depth.png", depth)
    back = read_depth_png(path)
    assert back.dtype == torch.float32
    assert torch.allclose(back.double(), depth, atol=0.5e-3 + 1e-6)
    assert back[0, 0] == 0.0
    coarse = write_depth_png(tmp_path / "far.png", depth * 10, scale=100.0)
    assert torch.allclose(read_depth_png(coarse, scale=100.0).double(), depth * 10, atol=5e-3 + 1e-5)


def test_depth_out_of_range_names_the_fix(tmp_path):
    with pytest.raises(InputError, match="pass scale"):
        write_depth_png(tmp_path / "d.png", np.array([[70.0]]))
    with pytest.raises(InputError, match="negative"):
        write_depth_png(tmp_path / "d.png", np.array([[-1.0]]))
    assert not list(tmp_path.iterdir())


def test_normal_map_encoding(tmp_path):
    normal = torch.tensor([[[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], [[0.0, 0.0, 1.0], [0.6, 0.0, -0.8]]])
    path = write_normal_png(tmp_path / "n.png", normal)
    raw = read_png(path)
    assert torch.allclose(raw[0, 0], torch.tensor([1.0, 0.5, 0.5]), atol=1 / 255)
    assert torch.allclose(read_normal_png(path), normal, atol=2 / 255)


def test_missing_file_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_png(tmp_path / "nope.png")
