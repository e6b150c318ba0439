import pytest
import torch

from physmorph.errors import InputError
from physmorph.surface import nearest_neighbors
from physmorph.surface.knn import ALL_PAIRS_POINTS, all_pairs_nearest_neighbors, grid_nearest_neighbors


def _brute_force(queries, points, k):
    squared = ((queries[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    return squared.topk(k, dim=1, largest=False).values.sqrt()


def _assert_exact(queries, points, k, search=grid_nearest_neighbors):
    """The search's distances equal the all-pairs ones; its indices point at points at those distances."""
    distances, indices = search(queries, points, k)
    expected = _brute_force(queries, points, k)
    assert distances.shape == indices.shape == (queries.shape[0], k)
    torch.testing.assert_close(distances, expected, rtol=8 * torch.finfo(points.dtype).eps, atol=0)
    # indices may differ only among equidistant points: each must be at its reported distance
    torch.testing.assert_close(
        (points[indices] - queries[:, None, :]).norm(dim=-1), distances, rtol=8 * torch.finfo(points.dtype).eps, atol=0
    )
    assert (indices.sort(dim=1).values.diff(dim=1) > 0).all(), "a point is listed twice"


def _random(n, generator, dtype=torch.float64):
    return torch.rand(n, 3, generator=generator, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 7])
def test_grid_matches_brute_force_on_random_points(dtype, k):
    generator = torch.Generator().manual_seed(3)
    _assert_exact(_random(700, generator, dtype), _random(5000, generator, dtype), k)


@pytest.mark.parametrize("k", [1, 6, 27])
def test_grid_matches_brute_force_on_lattice_points_with_ties(k):
    # queries on the lattice and at cell centres: many neighbours at exactly equal distance
    lattice = torch.cartesian_prod(*[torch.arange(17.0, dtype=torch.float64)] * 3) * 0.5
    centres = torch.cartesian_prod(*[torch.arange(6.0, dtype=torch.float64)] * 3) * 1.5 + 0.25
    _assert_exact(torch.cat((lattice[::7], centres)), lattice, k)


@pytest.mark.parametrize("k", [1, 3])
def test_grid_on_degenerate_inputs(k):
    # k = 1 settles open queries by the octree descent, k > 1 by growing rings
    generator = torch.Generator().manual_seed(5)
    queries = torch.randn(60, 3, generator=generator, dtype=torch.float64)
    coincident = torch.ones(5000, 3, dtype=torch.float64)
    _assert_exact(queries, coincident, k)
    plane = torch.cat((_random(5000, generator)[:, :2], torch.zeros(5000, 1, dtype=torch.float64)), dim=1)
    _assert_exact(queries, plane, k)
    line = torch.zeros(5000, 3, dtype=torch.float64)
    line[:, 1] = torch.rand(5000, generator=generator, dtype=torch.float64)
    _assert_exact(queries, line, k)
    clustered = torch.cat((torch.randn(4000, 3, generator=generator, dtype=torch.float64) * 1e-3, queries * 5))
    _assert_exact(queries, clustered, k)
    # queries far outside the points' box
    _assert_exact(queries * 100, _random(5000, generator), k)
    # a hollow sphere around the queries: every block of it equally near at the top
    shell = torch.randn(6000, 3, generator=generator, dtype=torch.float64)
    _assert_exact(queries * 1e-3, shell / shell.norm(dim=1, keepdim=True), k)


@pytest.mark.parametrize("k", [1, 4])
def test_grid_on_two_offset_balls(k):
    # the Chamfer term's case: many queries lie in empty space beside the other body
    generator = torch.Generator().manual_seed(9)
    ball = torch.randn(12000, 3, generator=generator, dtype=torch.float64)
    ball = ball[ball.norm(dim=1) < 1.5]
    _assert_exact(ball[:3000] + torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64), ball[3000:], k)


def test_grid_with_k_equal_to_the_point_count():
    generator = torch.Generator().manual_seed(6)
    points = _random(ALL_PAIRS_POINTS + 10, generator)
    queries = _random(20, generator)
    distances, indices = grid_nearest_neighbors(queries, points, points.shape[0])
    assert torch.equal(indices.sort(dim=1).values, torch.arange(points.shape[0]).expand(20, -1))
    torch.testing.assert_close(distances, _brute_force(queries, points, points.shape[0]))


def test_a_grid_is_reused_only_while_its_points_are_unchanged():
    generator = torch.Generator().manual_seed(5)
    points, queries = _random(3000, generator), _random(400, generator)
    _assert_exact(queries, points, 1)
    _assert_exact(queries, points, 3)  # another k: another grid
    # moved in place: the grid built for the old positions must not answer
    points[:1500] += 0.5
    _assert_exact(queries, points, 1)
    # the same values in a new tensor, and the new values again
    _assert_exact(queries, points.clone(), 1)
    _assert_exact(queries + 0.25, points, 1)


def test_a_point_set_queried_against_itself_finds_itself_first():
    generator = torch.Generator().manual_seed(7)
    points = _random(6000, generator)
    distances, indices = grid_nearest_neighbors(points, points, 3)
    assert torch.equal(indices[:, 0], torch.arange(6000))
    assert (distances[:, 0] == 0).all()


@pytest.mark.parametrize("n_points", [300, ALL_PAIRS_POINTS + 1])
def test_nearest_neighbors_on_cpu_matches_brute_force(n_points):
    # below ALL_PAIRS_POINTS the all-pairs search, above it cKDTree
    generator = torch.Generator().manual_seed(3)
    _assert_exact(_random(50, generator), _random(n_points, generator), 7, search=nearest_neighbors)


def test_all_pairs_matches_brute_force():
    generator = torch.Generator().manual_seed(8)
    _assert_exact(_random(90, generator), _random(400, generator), 5, search=all_pairs_nearest_neighbors)


def test_too_many_neighbours_is_an_input_error():
    with pytest.raises(InputError, match="k=5"):
        nearest_neighbors(torch.zeros(2, 3), torch.zeros(4, 3), 5)
    with pytest.raises(InputError, match=r"\[Q, 3\]"):
        nearest_neighbors(torch.zeros(2, 2), torch.zeros(4, 2), 1)


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("k", "search"), [(1, grid_nearest_neighbors), (9, grid_nearest_neighbors), (1, nearest_neighbors)]
)
def test_gpu_search_matches_brute_force(k, search):
    # nearest_neighbors for k = 1 at these sizes: the all-pairs kernel
    generator = torch.Generator().manual_seed(4)
    points = torch.rand(20000, 3, generator=generator)
    queries = torch.cat((torch.rand(3000, 3, generator=generator), torch.randn(300, 3, generator=generator) * 5))
    lattice = torch.cartesian_prod(*[torch.arange(24.0)] * 3) * 0.5
    for q, p in ((queries, points), (lattice[::5] + 0.25, lattice), (queries, torch.ones(6000, 3))):
        distances, indices = search(q.cuda(), p.cuda(), k)
        assert distances.is_cuda and indices.is_cuda
        # relative, as on the CPU: the far queries lie ~20 units out, where one float32 ulp is 2e-6
        # and the GPU's and the CPU's norms may differ by an ulp or two
        tolerance = {"rtol": 8 * torch.finfo(torch.float32).eps, "atol": 1e-6}
        torch.testing.assert_close(distances.cpu(), _brute_force(q, p, k), **tolerance)
        torch.testing.assert_close((p[indices.cpu()] - q[:, None, :]).norm(dim=-1), distances.cpu(), **tolerance)
