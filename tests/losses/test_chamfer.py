import torch

from physmorph.losses import chamfer_distance


def test_chamfer_known_values_and_symmetry():
    a = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 0.0, 0.5]], dtype=torch.float64)
    # a→b: 0.5 and √1.25; b→a: 0.5
    expected = 0.5 * ((0.5 + 1.25**0.5) / 2 + 0.5)
    assert abs(chamfer_distance(a, b).item() - expected) < 1e-12
    assert abs(chamfer_distance(b, a).item() - expected) < 1e-12
    assert chamfer_distance(a, a).item() == 0.0


def test_chunking_matches_one_block_and_gradcheck():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(40, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(chamfer_distance(a, b, chunk=7), chamfer_distance(a, b, chunk=1000))
    assert torch.autograd.gradcheck(lambda p: chamfer_distance(p, b, chunk=16), (a,))
