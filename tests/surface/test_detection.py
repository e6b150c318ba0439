import torch

from physmorph.surface import detect_surface

from .helpers import lattice_ball


def test_lattice_ball_surface_is_probable_and_normals_point_outward():
    points = lattice_ball(radius=4.0, spacing=0.5)
    detection = detect_surface(
        points, k_surface=36, thr_percentile=8.0, soft_tau=0.08, surface_power=4.0
    )
    radius = points.norm(dim=1)
    outer = radius > 3.7
    inner = radius < 2.5
    assert detection.probability[outer].min() > 20 * detection.probability[inner].max()
    radial = points[outer] / radius[outer, None]
    assert ((detection.normals[outer] * radial).sum(dim=1) > 0.9).all()
    torch.testing.assert_close(
        detection.spacing[inner], torch.full_like(detection.spacing[inner], 0.5)
    )
