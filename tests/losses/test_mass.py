import torch

from physmorph.losses import mass_field_loss, mass_loss
from physmorph.mpm import Grid, splat_mass

DT = torch.float64
GRID = Grid(1.0, (-4.0, -4.0, -4.0), (4.0, 4.0, 4.0))


def cloud(seed, n=12, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g, dtype=DT) * 2 - 1 + shift


def test_identical_shape_only_pays_the_min_mass_floor_at_any_mass_scale():
    x = cloud(0)
    target = splat_mass(x, torch.ones(len(x), dtype=DT), GRID)
    # the min-mass term charges every node lighter than 1e-3 at most (1e-3)²: a constant floor
    floor = GRID.num_nodes * 1e-6
    same = mass_loss(x, torch.ones(len(x), dtype=DT), target, GRID).item()
    heavy = mass_loss(x, 3 * torch.ones(len(x), dtype=DT), target, GRID).item()
    assert same <= floor and abs(heavy - same) < 1e-9
    assert mass_loss(x + 0.3, torch.ones(len(x), dtype=DT), target, GRID).item() > 100 * floor


def test_loss_grows_with_displacement():
    x = cloud(1)
    m = torch.ones(len(x), dtype=DT)
    target = splat_mass(x, m, GRID)
    losses = [mass_loss(x + d, m, target, GRID).item() for d in (0.0, 0.3, 0.8)]
    assert losses[0] < losses[1] < losses[2]


def test_mass_loss_gradient_matches_finite_differences():
    x = cloud(2).requires_grad_()
    m = torch.linspace(0.5, 1.5, len(x), dtype=DT)
    target = splat_mass(cloud(3), torch.ones(len(x), dtype=DT), GRID)
    assert torch.autograd.gradcheck(lambda p: mass_loss(p, m, target, GRID), (x,))


def test_min_mass_penalty_counts_empty_target_nodes():
    target = torch.zeros(GRID.num_nodes, dtype=DT)
    target[0] = 1.0
    current = torch.zeros(GRID.num_nodes, dtype=DT)
    current[1] = 1.0
    # node 0 is empty in the current field: it pays (1e-3)² plus its log error
    expected = 0.5 * (torch.log(torch.tensor(2.0001, dtype=DT)) - torch.log(torch.tensor(1.0001, dtype=DT))) ** 2 * 2
    expected = expected + (GRID.num_nodes - 1) * 1e-6
    torch.testing.assert_close(mass_field_loss(current, target), expected)
