"""The loss figure: both Chamfer curves when episodes have a release phase."""

from __future__ import annotations

import torch

from physmorph.io.figures import write_loss_curves
from physmorph.io.images import read_png


def _episode(index: int, after: float, driven: float) -> dict:
    return {
        "episode": index,
        "loss_history": [3.0, 2.0, 1.5],
        "chamfer_before": 0.6,
        "chamfer_after": after,
        "chamfer_after_driven": driven,
    }


def test_release_runs_draw_the_driven_chamfer_as_well(tmp_path):
    same = write_loss_curves(tmp_path / "elastic.png", [_episode(0, 0.4, 0.4), _episode(1, 0.3, 0.3)])
    released = write_loss_curves(tmp_path / "released.png", [_episode(0, 0.4, 0.35), _episode(1, 0.3, 0.25)])
    # the Chamfer at the end of the episodes is the same: only the driven curve can differ
    assert not torch.equal(read_png(same), read_png(released))
