import pytest
import torch

from physmorph.errors import InputError
from physmorph.surface import SurfaceConfig, bind_surface, synthesize_surface, synthesize_surface_once

from .helpers import identity_gradients, lattice_ball, random_rotation

TINY = SurfaceConfig(M=20, k_F=8, sigma0=0.1, seed=5)


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


@pytest.mark.usefixtures("one_thread")
def test_gradcheck_in_the_learnable_surfel_size_and_flatness():
    x, F = _tiny_cloud()
    binding = bind_surface(x, F, TINY)
    scale = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    flatness = torch.full((TINY.M,), 0.25, dtype=torch.float64, requires_grad=True)

    def covariances(scale, flatness):
        return synthesize_surface(x, F, binding, scale=scale, flatness=flatness).covariances

    assert torch.autograd.gradcheck(covariances, (scale, flatness))


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


def test_identity_gives_flat_discs_tangent_to_the_surface(ball):
    x, F, binding = ball
    gaussians = synthesize_surface(x, F, binding)
    eigenvalues, eigenvectors = torch.linalg.eigh(gaussians.covariances)
    sigma_t = binding.tangent_scales[0]
    tiny = 1e-6 * sigma_t**2
    expected = torch.stack((0.2**2 * sigma_t**2 + tiny, sigma_t**2 + tiny, sigma_t**2 + tiny))
    torch.testing.assert_close(eigenvalues, expected.expand_as(eigenvalues))
    # The thin axis is the normal.
    alignment = (eigenvectors[:, :, 0] * gaussians.normals).sum(-1).abs()
    torch.testing.assert_close(alignment, torch.ones_like(alignment))


def test_automatic_size_closes_the_surface(ball):
    _, _, binding = ball
    # 4000 discs on a sphere of radius ~6: mean spacing sqrt(4π 6² / 4000) ≈ 0.34.
    spacing = (4 * torch.pi * 6.0**2 / 4000) ** 0.5
    assert binding.tangent_scales[0] == pytest.approx(spacing, rel=0.1)
    explicit = bind_surface(lattice_ball(radius=3.0), identity_gradients(925), SurfaceConfig(M=200, sigma0=0.3))
    assert torch.all(explicit.tangent_scales == 0.3)


def test_stretch_along_x_stretches_the_discs_and_tilts_normals(ball):
    x, F, binding = ball
    stretch = torch.diag(torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64))
    stretched = synthesize_surface(x @ stretch.T, stretch.expand_as(F), binding)
    rest = synthesize_surface(x, F, binding)
    torch.testing.assert_close(stretched.covariances, stretch @ rest.covariances @ stretch, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stretched.means, rest.means @ stretch.T)
    expected_normals = rest.normals * torch.tensor([0.5, 1.0, 1.0], dtype=torch.float64)
    expected_normals = expected_normals / expected_normals.norm(dim=1, keepdim=True)
    torch.testing.assert_close(stretched.normals, expected_normals)


def test_ball_surfels_lie_on_the_sphere_with_radial_normals(ball):
    x, _, binding = ball
    gaussians = synthesize_surface(x, identity_gradients(x.shape[0]), binding)
    radius = gaussians.means.norm(dim=1)
    # The lattice's outer points lie at r <= 6 and its surface about a quarter spacing beyond;
    # the centres sit 0.75 σ_t inside that.
    surface_radius = radius.mean().item() + 0.75 * binding.tangent_scales[0].item()
    assert 5.9 < surface_radius < 6.25
    assert radius.std() < 0.06
    radial = gaussians.means / radius[:, None]
    angles = torch.rad2deg(torch.acos((gaussians.normals * radial).sum(dim=1).clamp(-1, 1)))
    assert angles.mean() < 3.0 and angles.max() < 12.0


def test_surfels_spread_evenly_over_the_surface(ball):
    x, _, binding = ball
    means = synthesize_surface(x, identity_gradients(x.shape[0]), binding).means
    # Count surfels per octant-aligned cap: systematic sampling keeps counts near M / 8.
    octant = ((means > 0).long() * torch.tensor([4, 2, 1])).sum(dim=1)
    counts = torch.bincount(octant, minlength=8).double()
    assert (counts / counts.mean() - 1).abs().max() < 0.05


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


def test_rigid_motion_moves_the_bound_surface_rigidly():
    x = lattice_ball(radius=3.0)
    generator = torch.Generator().manual_seed(1)
    F = identity_gradients(x.shape[0]) + 0.05 * torch.randn(x.shape[0], 3, 3, generator=generator, dtype=torch.float64)
    config = SurfaceConfig(M=800)
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
    # Binding on the GPU: kNN ties on a lattice may pick other (equally valid) neighbours than
    # the CPU's KD-tree, so compare what matters: a surface layer with outward normals.
    on_gpu = bind_surface(x.cuda(), F.cuda(), SurfaceConfig(M=500))
    gaussians = synthesize_surface(x.cuda(), F.cuda(), on_gpu)
    radius = gaussians.means.norm(dim=-1)
    assert gaussians.means.shape == (500, 3)
    assert radius.min() > 2.4 and radius.max() < 3.2
    outward = (gaussians.normals * gaussians.means / radius[:, None]).sum(-1)
    assert (outward > 0.97).all()
    torch.testing.assert_close(on_gpu.tangent_scales.cpu(), binding.tangent_scales, rtol=1e-3, atol=0)
