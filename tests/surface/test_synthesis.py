import pytest
import torch

from physmorph.errors import InputError
from physmorph.surface import (
    PostEqualizeConfig,
    SurfaceConfig,
    bind_surface,
    synthesize_surface,
    synthesize_surface_once,
)

from .helpers import identity_gradients, lattice_ball, random_rotation

TINY = SurfaceConfig(M=20, k_surface=16, k_F=8, sigma0=0.1, seed=5)


def _tiny_cloud():
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(60, 3, generator=generator, dtype=torch.float64)
    radii = torch.rand(60, 1, generator=generator, dtype=torch.float64) ** (1 / 3)
    x = 2.0 * directions / directions.norm(dim=1, keepdim=True) * radii
    F = identity_gradients(60) + 0.1 * torch.randn(60, 3, 3, generator=generator).double()
    return x, F


@pytest.fixture(scope="module")
def ball():
    """Lattice ball of radius 6, spacing 0.5, with its default-config binding at F = I."""
    x = lattice_ball()
    F = identity_gradients(x.shape[0])
    return x, F, bind_surface(x, F, SurfaceConfig(M=4000, seed=1))


@pytest.fixture
def one_thread():
    """Run single-threaded: gradcheck's thousands of tiny ops only lose time to thread sync."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_gradcheck_in_positions_and_deformation_gradients():
    x, F = _tiny_cloud()
    binding = bind_surface(x, F, TINY)

    def outputs(x, F):
        gaussians = synthesize_surface(x, F, binding)
        return gaussians.means, gaussians.covariances, gaussians.normals

    x = x.clone().requires_grad_(True)
    F = F.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(outputs, (x, F))
    # fast_mode (random projections) keeps the second-order check cheap.
    assert torch.autograd.gradgradcheck(lambda F: outputs(x.detach(), F)[1], (F,), fast_mode=True)


def test_gradient_reaches_only_the_bound_neighbours():
    x, F = _tiny_cloud()
    binding = bind_surface(x, F, TINY)
    x = x.clone().requires_grad_(True)
    synthesize_surface(x, F, binding).means[3].sum().backward()
    touched = (x.grad.abs().sum(dim=1) > 0).nonzero().flatten()
    assert set(touched.tolist()) == set(binding.neighbor_indices[3].tolist())


def test_covariances_are_symmetric_positive_definite():
    x, F = _tiny_cloud()
    F = F.clone()
    F[:5] = 0.0  # a fully collapsed neighbourhood must still give SPD covariances
    covariances = synthesize_surface(x, F, bind_surface(x, identity_gradients(60), TINY))
    covariances = covariances.covariances
    torch.testing.assert_close(covariances, covariances.transpose(1, 2))
    assert (torch.linalg.eigvalsh(covariances) > 0).all()


def test_identity_gives_isotropic_sigma0_squared(ball):
    x, F, binding = ball
    covariances = synthesize_surface(x, F, binding).covariances
    expected = 0.08**2 * (1 + 1e-6) * torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(covariances, expected.expand_as(covariances))


def test_stretch_along_x_doubles_the_first_axis_and_tilts_normals(ball):
    x, F, binding = ball
    stretch = torch.diag(torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64))
    stretched = synthesize_surface(x @ stretch.T, stretch.expand_as(F), binding)
    rest = synthesize_surface(x, F, binding)
    std = stretched.covariances.diagonal(dim1=1, dim2=2).sqrt()
    torch.testing.assert_close(std[:, 0], 2 * 0.08 * torch.ones_like(std[:, 0]), rtol=1e-6, atol=0)
    torch.testing.assert_close(std[:, 1:], 0.08 * torch.ones_like(std[:, 1:]), rtol=1e-6, atol=0)
    torch.testing.assert_close(stretched.means, rest.means @ stretch.T)
    expected_normals = rest.normals * torch.tensor([0.5, 1.0, 1.0], dtype=torch.float64)
    expected_normals = expected_normals / expected_normals.norm(dim=1, keepdim=True)
    torch.testing.assert_close(stretched.normals, expected_normals)


def test_ball_gaussians_lie_on_the_particle_surface(ball):
    x, _, binding = ball
    gaussians = synthesize_surface(x, identity_gradients(x.shape[0]), binding)
    radius = gaussians.means.norm(dim=1)
    # The lattice's outer layer lies within one spacing (0.5) below r = 6; tangent jitter
    # (0.6 spacing) on a sphere of radius 6 adds < 0.01 outward.
    assert radius.min() > 6.0 - 2 * 0.5
    assert radius.max() < 6.0 + 0.1
    assert (radius > 6.0 - 0.5).float().mean() > 0.95
    radial = gaussians.means / radius[:, None]
    assert ((gaussians.normals * radial).sum(dim=1) > 0.8).all()
    assert ((gaussians.normals * radial).sum(dim=1) > 0.97).float().mean() > 0.95


def test_thickness_spreads_along_the_normal_within_the_band():
    x = lattice_ball()
    F = identity_gradients(x.shape[0])
    thin = synthesize_surface_once(x, F, SurfaceConfig(M=3000, seed=2))
    thick = synthesize_surface_once(x, F, SurfaceConfig(M=3000, seed=2, thickness=0.4))
    depth_change = thick.means.norm(dim=1) - thin.means.norm(dim=1)
    assert depth_change.abs().max() < 0.4 + 0.01
    assert depth_change.abs().max() > 0.3


def test_same_seed_same_surface_different_seed_different():
    x = lattice_ball(radius=3.0)
    F = identity_gradients(x.shape[0])
    first = synthesize_surface_once(x, F, SurfaceConfig(M=500, seed=7))
    again = synthesize_surface_once(x, F, SurfaceConfig(M=500, seed=7))
    other = synthesize_surface_once(x, F, SurfaceConfig(M=500, seed=8))
    assert torch.equal(first.means, again.means)
    assert torch.equal(first.normals, again.normals)
    assert (first.means - other.means).norm(dim=1).mean() > 0.05
    from_generator = synthesize_surface_once(x, F, SurfaceConfig(M=500), generator=torch.Generator().manual_seed(7))
    assert torch.equal(first.means, from_generator.means)


@pytest.mark.parametrize("equalize", [False, True])
def test_rigid_motion_moves_the_bound_surface_rigidly(equalize):
    x = lattice_ball(radius=3.0)
    generator = torch.Generator().manual_seed(1)
    F = identity_gradients(x.shape[0]) + 0.05 * torch.randn(x.shape[0], 3, 3, generator=generator, dtype=torch.float64)
    config = SurfaceConfig(M=800, post_equalize=PostEqualizeConfig(enabled=equalize))
    binding = bind_surface(x, F, config)
    rotation = random_rotation(2)
    shift = torch.tensor([1.5, -2.0, 0.25], dtype=torch.float64)
    before = synthesize_surface(x, F, binding)
    after = synthesize_surface(x @ rotation.T + shift, rotation @ F, binding)
    torch.testing.assert_close(after.means, before.means @ rotation.T + shift)
    torch.testing.assert_close(after.covariances, rotation @ before.covariances @ rotation.T, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(after.normals, before.normals @ rotation.T)


def test_affine_motion_maps_means_exactly():
    x = lattice_ball(radius=3.0)
    F = identity_gradients(x.shape[0])
    binding = bind_surface(x, F, SurfaceConfig(M=300))
    affine = torch.tensor([[1.2, 0.3, 0.0], [-0.1, 0.8, 0.2], [0.0, 0.4, 1.1]], dtype=torch.float64)
    before = synthesize_surface(x, F, binding)
    after = synthesize_surface(x @ affine.T + 1.0, affine.expand_as(F), binding)
    torch.testing.assert_close(after.means, before.means @ affine.T + 1.0)


def test_bound_state_reproduces_the_bind_time_centres():
    x = lattice_ball(radius=3.0)
    generator = torch.Generator().manual_seed(9)
    F = identity_gradients(x.shape[0]) + 0.1 * torch.randn(x.shape[0], 3, 3, generator=generator, dtype=torch.float64)
    binding = bind_surface(x, F, SurfaceConfig(M=300, surf_jitter_alpha=0.0))
    means = synthesize_surface(x, F, binding).means
    # Without jitter every centre is its anchor particle.
    torch.testing.assert_close(means, x[binding.anchors])


def test_float32_follows_the_inputs():
    x = lattice_ball(radius=3.0)
    F = identity_gradients(x.shape[0])
    binding = bind_surface(x, F, SurfaceConfig(M=200))
    single = synthesize_surface(x.float(), F.float(), binding)
    double = synthesize_surface(x, F, binding)
    assert single.means.dtype == torch.float32 and single.covariances.dtype == torch.float32
    torch.testing.assert_close(single.means.double(), double.means, rtol=1e-5, atol=1e-5)


def test_wrong_particle_count_is_an_input_error():
    x = lattice_ball(radius=3.0)
    F = identity_gradients(x.shape[0])
    binding = bind_surface(x, F, SurfaceConfig(M=50))
    with pytest.raises(InputError, match="bind_surface again"):
        synthesize_surface(x[:-1], F[:-1], binding)


@pytest.mark.gpu
def test_gpu_synthesis_matches_cpu_and_gpu_binding_covers_the_surface():
    # Per frame: the same binding gives the same Gaussians on either device.
    x = lattice_ball(radius=3.0)
    F = identity_gradients(x.shape[0])
    binding = bind_surface(x, F, SurfaceConfig(M=500))
    cpu = synthesize_surface(x, F, binding)
    gpu = synthesize_surface(x.cuda(), F.cuda(), binding.to("cuda"))
    torch.testing.assert_close(gpu.means.cpu(), cpu.means)
    torch.testing.assert_close(gpu.covariances.cpu(), cpu.covariances)
    torch.testing.assert_close(gpu.normals.cpu(), cpu.normals)
    # Binding on the GPU: kNN ties on a lattice may pick other (equally valid) anchors than the
    # CPU's KD-tree, so compare what matters: a surface layer with outward normals.
    on_gpu = bind_surface(x.cuda(), F.cuda(), SurfaceConfig(M=500))
    gaussians = synthesize_surface(x.cuda(), F.cuda(), on_gpu)
    radius = gaussians.means.norm(dim=-1)
    assert gaussians.means.shape == (500, 3)
    assert radius.min() > 2.0 and radius.max() < 3.2
    outward = (gaussians.normals * gaussians.means / radius[:, None]).sum(-1)
    assert (outward > 0.8).float().mean() > 0.95
