import pytest
import torch

from physmorph.errors import InputError
from physmorph.surface import nearest_neighbors


def _brute_force(queries, points, k):
    distances = torch.cdist(queries, points, compute_mode="donot_use_mm_for_euclid_dist")
    return torch.topk(distances, k, dim=1, largest=False)


def test_matches_brute_force_on_cpu():
    generator = torch.Generator().manual_seed(3)
    points = torch.rand(300, 3, generator=generator, dtype=torch.float64)
    queries = torch.rand(50, 3, generator=generator, dtype=torch.float64)
    distances, indices = nearest_neighbors(queries, points, 7)
    expected_distances, expected_indices = _brute_force(queries, points, 7)
    assert torch.equal(indices, expected_indices)
    torch.testing.assert_close(distances, expected_distances)


def test_too_many_neighbours_is_an_input_error():
    with pytest.raises(InputError, match="k=5"):
        nearest_neighbors(torch.zeros(2, 3), torch.zeros(4, 3), 5)


@pytest.mark.gpu
def test_gpu_search_matches_cpu():
    generator = torch.Generator().manual_seed(4)
    points = torch.rand(5000, 3, generator=generator)
    queries = torch.rand(700, 3, generator=generator)
    cpu_distances, cpu_indices = nearest_neighbors(queries, points, 9)
    gpu_distances, gpu_indices = nearest_neighbors(queries.cuda(), points.cuda(), 9)
    torch.testing.assert_close(gpu_distances.cpu(), cpu_distances)
    assert (gpu_indices.cpu() == cpu_indices).float().mean() > 0.999
