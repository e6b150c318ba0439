import pytest
import torch

from physmorph.losses import chamfer_distance
from physmorph.losses.chamfer import nearest_distances


def test_chamfer_known_values_and_symmetry():
    a = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 0.0, 0.5]], dtype=torch.float64)
    # a→b: 0.5 and √1.25; b→a: 0.5
    expected = 0.5 * ((0.5 + 1.25**0.5) / 2 + 0.5)
    assert abs(chamfer_distance(a, b).item() - expected) < 1e-12
    assert abs(chamfer_distance(b, a).item() - expected) < 1e-12
    assert chamfer_distance(a, a).item() == 0.0


def test_nearest_distances_match_all_pairs():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 3, generator=g, dtype=torch.float64)
    b = torch.randn(300, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(nearest_distances(a, b), torch.cdist(a, b).min(dim=1).values)


def test_chamfer_gradcheck_in_both_point_sets():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(40, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(chamfer_distance, (a, b))


@pytest.mark.gpu
def test_chamfer_on_cuda_matches_the_cpu_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5000, 3, generator=g, dtype=torch.float64)
    b = torch.randn(3000, 3, generator=g, dtype=torch.float64)
    results = []
    for device in ("cpu", "cuda"):
        # a leaf on each device: `a` itself must not require grad, or a.to("cuda") is a non-leaf
        # copy whose .grad stays None
        x = a.detach().to(device).requires_grad_(True)
        value = chamfer_distance(x, b.to(device))
        value.backward()
        results.append((value.item(), x.grad.cpu()))
    assert abs(results[0][0] - results[1][0]) < 1e-12
    torch.testing.assert_close(results[0][1], results[1][1])
