import pytest
import torch

from physmorph.surface import SurfaceConfig, bind_surface, synthesize_surface
from physmorph.surface.measured_deformation import measured_deformation, neighbourhood_frames

from .helpers import identity_gradients, lattice_ball, random_rotation

F64 = torch.float64


def _cloud(count: int = 40, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, generator=generator, dtype=F64) * 2.0


def test_an_affine_motion_is_measured_exactly_and_composes_with_the_bound_F():
    rest = _cloud()
    bound = identity_gradients(rest.shape[0]) + 0.1 * torch.randn(rest.shape[0], 3, 3, dtype=F64)
    frames = neighbourhood_frames(rest, bound, 8)
    stretch = torch.tensor([[1.4, 0.2, 0.0], [0.0, 0.8, 0.1], [0.3, 0.0, 1.1]], dtype=F64)
    moved = rest @ stretch.T + torch.tensor([3.0, -1.0, 0.5], dtype=F64)
    torch.testing.assert_close(measured_deformation(moved, frames), stretch @ bound)
    rotation = random_rotation(3)
    torch.testing.assert_close(measured_deformation(rest @ rotation.T, frames), rotation @ bound)


def test_a_flat_neighbourhood_keeps_the_identity_across_its_plane():
    generator = torch.Generator().manual_seed(1)
    rest = torch.cat((torch.rand(30, 2, generator=generator, dtype=F64), torch.zeros(30, 1, dtype=F64)), dim=1)
    frames = neighbourhood_frames(rest, identity_gradients(30), 8)
    shear = torch.tensor([[1.2, 0.3, 0.0], [0.0, 0.9, 0.0], [0.4, 0.1, 1.0]], dtype=F64)
    measured = measured_deformation(rest @ shear.T, frames)
    # the in-plane columns are measured, the normal one is what the plane cannot show: e_z
    torch.testing.assert_close(measured[:, :, :2], shear[:, :2].expand(30, 3, 2))
    torch.testing.assert_close(measured[:, :, 2], torch.tensor([0.0, 0.0, 1.0], dtype=F64).expand(30, 3))


def test_gradcheck_in_positions():
    rest = _cloud(24, seed=2)
    frames = neighbourhood_frames(rest, identity_gradients(24), 6)
    moved = (rest + 0.05 * torch.randn(24, 3, dtype=F64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: measured_deformation(x, frames), (moved,))


def test_gradcheck_of_the_surface_through_the_measured_deformation():
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(60, 3, generator=generator, dtype=F64)
    x = 2.0 * directions / directions.norm(dim=1, keepdim=True) * torch.rand(60, 1, generator=generator, dtype=F64)
    config = SurfaceConfig(M=20, k_F=8, sigma0=0.1, seed=5, deformation="measured", deformation_neighbors=8)
    binding = bind_surface(x, identity_gradients(60), config)
    state_F = identity_gradients(60)

    def outputs(x):
        gaussians = synthesize_surface(x, state_F, binding)
        return gaussians.means, gaussians.covariances, gaussians.normals

    moved = (x + 0.05 * torch.randn(60, 3, generator=generator, dtype=F64)).requires_grad_(True)
    assert torch.autograd.gradcheck(outputs, (moved,))


def test_surfels_follow_the_positions_when_the_state_F_lags_behind():
    x = lattice_ball(radius=3.0)
    identity = identity_gradients(x.shape[0])
    stretch = torch.diag(torch.tensor([1.5, 1.0, 1.0], dtype=F64))
    stretched = x @ stretch.T
    measured = bind_surface(x, identity, SurfaceConfig(M=2000, seed=1, deformation="measured"))
    state = bind_surface(x, identity, SurfaceConfig(M=2000, seed=1))
    # the body was stretched along x, but its F still says identity (F smoothing at its extreme)
    following = synthesize_surface(stretched, identity, measured)
    lagging = synthesize_surface(stretched, identity, state)
    exact = synthesize_surface(stretched, stretch.expand_as(identity), state)
    torch.testing.assert_close(following.means, exact.means)
    torch.testing.assert_close(following.covariances, exact.covariances)
    assert (lagging.means - exact.means).norm(dim=1).max() > 0.1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_frames_of_a_dx_half_body_match_the_cpu():
    # ~90k particles: the size at which CUDA's batched eigensolver failed inside pinv
    generator = torch.Generator().manual_seed(3)
    rest = torch.rand(90_000, 3, generator=generator, dtype=torch.float32) * 30.0
    gradients = identity_gradients(rest.shape[0]).float()
    on_gpu = neighbourhood_frames(rest.cuda(), gradients.cuda(), 12)
    on_cpu = neighbourhood_frames(rest, gradients, 12)
    assert on_gpu.inverse_moments.is_cuda
    moved = rest @ torch.tensor([[1.3, 0.1, 0.0], [0.0, 0.9, 0.2], [0.0, 0.0, 1.1]]).T
    torch.testing.assert_close(
        measured_deformation(moved.cuda(), on_gpu).cpu(), measured_deformation(moved, on_cpu), atol=1e-4, rtol=1e-4
    )
