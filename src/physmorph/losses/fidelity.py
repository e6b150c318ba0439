"""How closely rendered images match ground-truth images of the real surface (IoU, normals, cracks)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import ndimage

from physmorph.losses.render_losses import COVERED, silhouette_iou
from physmorph.render import Images

# A pixel shows the far side of the object when its depth lies this far (world units) behind
# the true surface: more than a Gaussian footprint, less than any body's thickness.
FAR_SIDE_DEPTH = 1.5
# A speckle is a connected patch of pixels whose normal is off by more than this angle.
SPECKLE_DEGREES = 45.0
# Neighbouring true depths further apart than this (world units) mark an occlusion edge.
DEPTH_EDGE = 0.5


@dataclass
class Fidelity:
    """Agreement of a rendering with the ground truth, over C views (means over views).

    iou:               silhouette IoU of α > 0.5 against the true mask
    holes:             fraction of true-mask pixels the rendering leaves uncovered
    far_side:          fraction of pixels covered by both whose depth is > FAR_SIDE_DEPTH behind
    normal_mean_deg:   mean angle between rendered and true normals over pixels covered by both
    normal_p90_deg:    its 90th percentile
    depth_error:       mean |depth − true depth| over pixels covered by both, world units
    speckles_per_view: connected patches of normal error > SPECKLE_DEGREES, per view
    interior_speckles_per_view: those of them not wholly inside the band along the true image's
                       edges (silhouettes and occlusion edges, `true_edges`): flecks on a surface,
                       as against edge pixels where the rendering blends the two sides and the
                       one-ray-per-pixel truth takes one
    """

    iou: float
    holes: float
    far_side: float
    normal_mean_deg: float
    normal_p90_deg: float
    depth_error: float
    speckles_per_view: float
    interior_speckles_per_view: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def true_edges(alpha: torch.Tensor, depth: torch.Tensor) -> np.ndarray:
    """Pixels [H, W] within one pixel (8-neighbourhood) of a silhouette of the mask alpha > COVERED
    or of a depth jump > DEPTH_EDGE between 4-neighbours, from one view's alpha and depth [H, W]."""
    covered = (alpha > COVERED).numpy()
    depth = depth.numpy()
    edge = np.zeros_like(covered)
    for axis in (0, 1):
        step = np.diff(covered, axis=axis) | (np.abs(np.diff(depth, axis=axis)) > DEPTH_EDGE)
        lead = [slice(None), slice(None)]
        lead[axis] = slice(0, -1)
        edge[tuple(lead)] |= step
        lead[axis] = slice(1, None)
        edge[tuple(lead)] |= step
    return ndimage.binary_dilation(edge, structure=np.ones((3, 3), bool))


def _speckles(wrong: np.ndarray, edges: np.ndarray) -> tuple[int, int]:
    """Connected patches of `wrong` [H, W], and how many of them reach a pixel off `edges`."""
    labels, count = ndimage.label(wrong)
    return count, len(np.unique(labels[wrong & ~edges]))


@torch.no_grad()
def surface_fidelity(images: Images, truth: Images) -> Fidelity:
    """Compare rendered `images` with ground-truth `truth` (e.g. `raycast_mesh`) of the same cameras.

    Both hold alpha [C, H, W], depth [C, H, W] and normal [C, H, W, 3] (world, unit).
    """
    alpha = images.alpha.detach().cpu().float()
    true_alpha = truth.alpha.detach().cpu().float()
    covered, true_covered = alpha > COVERED, true_alpha > COVERED
    both = covered & true_covered
    depth_gap = images.depth.detach().cpu().float() - truth.depth.detach().cpu().float()
    angles = torch.zeros_like(alpha)
    if images.normal is not None and truth.normal is not None:
        cosine = (images.normal.detach().cpu().float() * truth.normal.detach().cpu().float()).sum(-1)
        angles = torch.rad2deg(torch.acos(cosine.clamp(-1.0, 1.0)))
    both_count = max(int(both.sum()), 1)
    true_depth = truth.depth.detach().cpu().float()
    speckles = [
        _speckles(((angles[c] > SPECKLE_DEGREES) & both[c]).numpy(), true_edges(true_alpha[c], true_depth[c]))
        for c in range(len(alpha))
    ]
    chosen = angles[both]
    return Fidelity(
        iou=float(silhouette_iou(alpha, true_alpha).mean()),
        holes=float((true_covered & ~covered).sum() / max(int(true_covered.sum()), 1)),
        far_side=float((both & (depth_gap > FAR_SIDE_DEPTH)).sum() / both_count),
        normal_mean_deg=float(chosen.mean()) if len(chosen) else float("nan"),
        normal_p90_deg=float(torch.quantile(chosen, 0.9)) if len(chosen) else float("nan"),
        depth_error=float(depth_gap[both].abs().mean()) if len(chosen) else float("nan"),
        speckles_per_view=float(np.mean([count for count, _ in speckles])),
        interior_speckles_per_view=float(np.mean([interior for _, interior in speckles])),
    )
