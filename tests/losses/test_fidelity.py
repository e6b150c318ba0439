"""Tests for `surface_fidelity`: IoU, holes, far side, normal errors and speckles on known images."""

from __future__ import annotations

import pytest
import torch

from physmorph.losses.fidelity import surface_fidelity, true_edges
from physmorph.render import Images


def _disc(size: int = 32, radius: float = 10.0) -> Images:
    """One view of a flat disc facing the camera (normal −z) at depth 5, on a 2-deep step."""
    y, x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    inside = ((x - size / 2) ** 2 + (y - size / 2) ** 2 < radius**2).float()
    depth = torch.where(x < size / 2, 5.0, 7.0) * inside
    normal = torch.zeros(size, size, 3)
    normal[..., 2] = -inside
    return Images(inside[..., None].expand(-1, -1, 3)[None], inside[None], depth[None], normal[None])


def test_a_perfect_rendering_scores_perfectly():
    truth = _disc()
    fidelity = surface_fidelity(truth, truth)
    assert fidelity.iou == 1.0 and fidelity.holes == 0.0 and fidelity.far_side == 0.0
    assert fidelity.normal_mean_deg == pytest.approx(0.0, abs=1e-3) and fidelity.depth_error == 0.0
    assert fidelity.speckles_per_view == 0.0 and fidelity.interior_speckles_per_view == 0.0


def test_speckles_on_the_surface_and_on_its_edges_are_told_apart():
    truth = _disc()
    rendered = _disc()
    sideways = torch.tensor([1.0, 0.0, 0.0])
    rendered.normal[0, 10:12, 10:12] = sideways  # a fleck on the surface, clear of every edge
    rendered.normal[0, 16, 6] = sideways  # one pixel on the silhouette
    rendered.normal[0, 20, 15] = sideways  # one pixel beside the depth step at x = 16
    rendered.depth[0, 22:24, 18:20] += 2.0  # the far side showing through
    rendered.alpha[0, 14:16, 14:16] = 0.0  # a hole
    fidelity = surface_fidelity(rendered, truth)
    assert fidelity.speckles_per_view == 3.0
    assert fidelity.interior_speckles_per_view == 1.0
    covered = int((truth.alpha > 0).sum())
    assert fidelity.holes == pytest.approx(4 / covered)
    assert fidelity.far_side == pytest.approx(4 / (covered - 4))
    assert fidelity.iou == pytest.approx((covered - 4) / covered)


def test_true_edges_mark_silhouettes_and_depth_steps_only():
    truth = _disc()
    edges = true_edges(truth.alpha[0], truth.depth[0])
    assert edges[16, 6] and edges[20, 15] and edges[20, 16]  # silhouette; both sides of the step
    assert not edges[11, 11] and not edges[0, 0]  # inside the surface; far from it
