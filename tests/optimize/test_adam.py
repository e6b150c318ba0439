import itertools

import pytest
import torch

from physmorph.config import OptimizationConfig
from physmorph.errors import SimulationDiverged
from physmorph.optimize.adam import ParameterGroup, adam_descent


def _linear_descent(diverge_at: set[int], iterations: int = 6):
    """Adam on loss = Σ p: the gradient is constant, so every Adam step moves each entry by
    exactly the learning rate. Evaluations listed in `diverge_at` raise SimulationDiverged."""
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    visited: list[float] = []

    def evaluate(iteration: int, fraction: float) -> tuple[torch.Tensor, float]:
        visited.append(p.detach()[0].item())
        if iteration in diverge_at:
            raise SimulationDiverged(f"simulation diverged at step 2 (iteration {iteration})")
        loss = p.sum()
        return loss, loss.item()

    settings = OptimizationConfig(iterations=iterations, learning_rate=0.1, final_learning_rate_ratio=1.0, patience=10)
    return adam_descent([ParameterGroup([p], 0.1)], evaluate, settings), visited


def test_a_diverged_evaluation_steps_back_and_halves_the_step_for_the_rest_of_the_episode():
    outcome, visited = _linear_descent({3})
    steps = [a - b for a, b in itertools.pairwise(visited)]
    # iterations 0→1→2→3 step by 0.1; 3 diverges: back to iteration 2's point, then steps of 0.05
    assert steps == pytest.approx([0.1, 0.1, 0.1, -0.1, 0.05, 0.05], abs=1e-6)
    assert [d.iteration for d in outcome.divergences] == [3]
    assert "step 2" in outcome.divergences[0].reason
    assert outcome.losses[3] == float("inf")
    assert outcome.best[0][0].item() == pytest.approx(visited[-1])


def test_without_divergence_the_step_keeps_its_size():
    outcome, visited = _linear_descent(set())
    steps = [a - b for a, b in itertools.pairwise(visited)]
    assert steps == pytest.approx([0.1] * 6, abs=1e-6) and outcome.divergences == []


def test_a_diverging_starting_point_is_an_error_not_an_empty_result():
    with pytest.raises(SimulationDiverged, match="before any control was applied: simulation diverged at step 2"):
        _linear_descent({0})
