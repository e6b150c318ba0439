import pytest
import torch

from physmorph.errors import ConfigError
from physmorph.mpm.grid import Grid, cubic_bspline, quadratic_bspline, stencil


@pytest.mark.parametrize("kernel", ["cubic", "quadratic"])
def test_weights_partition_unity_and_reproduce_linear(kernel):
    grid = Grid(0.5, (-2.0, -2.0, -2.0), (2.0, 2.0, 2.0))
    x = torch.rand(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    st = stencil(x, grid, kernel)
    assert st.weight.shape == (50, 64 if kernel == "cubic" else 27)
    torch.testing.assert_close(st.weight.sum(1), torch.ones(50, dtype=torch.float64))
    # Σ w (x_i − x_p) = 0 and the offsets point at real nodes
    torch.testing.assert_close((st.weight.unsqueeze(-1) * st.offset).sum(1), torch.zeros(50, 3, dtype=torch.float64))
    nodes = grid.node_positions(dtype=torch.float64)[st.node_index]
    torch.testing.assert_close(nodes - x.unsqueeze(1), st.offset)
    assert not st.outside.any()


def test_affine_scale_inverts_inertia():
    # Σ w (x_i − x_p)(x_i − x_p)ᵀ = D = dx²/3 I for the cubic kernel, dx²/4 I for the quadratic
    grid = Grid(0.5, (-2.0, -2.0, -2.0), (2.0, 2.0, 2.0))
    x = torch.rand(20, 3, dtype=torch.float64) - 0.5
    for kernel, factor in (("cubic", 3.0), ("quadratic", 4.0)):
        st = stencil(x, grid, kernel)
        D = torch.einsum("ns,nsi,nsj->nij", st.weight, st.offset, st.offset)
        torch.testing.assert_close(D, (grid.dx**2 / factor) * torch.eye(3, dtype=torch.float64).expand(20, 3, 3))


@pytest.mark.parametrize("spline", [cubic_bspline, quadratic_bspline])
def test_bspline_gradcheck(spline):
    r = torch.tensor([-1.7, -1.2, -0.6, -0.3, 0.2, 0.45, 0.8, 1.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(spline, (r,))


def test_stencil_weight_gradcheck():
    grid = Grid(1.0, (-3.0, -3.0, -3.0), (3.0, 3.0, 3.0))
    x = torch.tensor([[0.3, -0.2, 0.71], [-1.4, 0.55, 0.1]], dtype=torch.float64, requires_grad=True)
    for kernel in ("cubic", "quadratic"):
        assert torch.autograd.gradcheck(lambda p, k=kernel: stencil(p, grid, k).weight, (x,))


def test_cubic_values():
    assert cubic_bspline(torch.tensor(0.0)).item() == pytest.approx(2 / 3)
    assert cubic_bspline(torch.tensor(1.0)).item() == pytest.approx(1 / 6)
    assert cubic_bspline(torch.tensor(2.0)).item() == 0.0


def test_grid_dims_and_bad_grid():
    assert Grid().dims == (33, 33, 33)
    with pytest.raises(ConfigError, match="whole number"):
        Grid(0.7, (0.0, 0.0, 0.0), (10.0, 10.0, 10.0))
    with pytest.raises(ConfigError, match="positive"):
        Grid(0.0)


def test_outside_particles_are_flagged():
    grid = Grid(1.0, (-3.0, -3.0, -3.0), (3.0, 3.0, 3.0))
    st = stencil(torch.tensor([[0.0, 0.0, 0.0], [2.6, 0.0, 0.0]]), grid)
    assert st.outside.tolist() == [False, True]
