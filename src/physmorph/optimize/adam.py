"""The one Adam loop of physmorph: cosine-decayed steps, early stop, best iterate kept, step halved after divergence."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from physmorph.config import OptimizationConfig
from physmorph.errors import SimulationDiverged
from physmorph.losses.schedules import training_progress

Progress = Callable[[float], None]


@dataclass
class ParameterGroup:
    """Tensors (leaves requiring grad) optimised with one first learning rate."""

    parameters: list[torch.Tensor]
    learning_rate: float


@dataclass
class Divergence:
    """One evaluation that gave no finite loss: its iteration and why (the simulation's message)."""

    iteration: int
    reason: str

    def as_record(self) -> dict[str, int | str]:
        return {"iteration": self.iteration, "reason": self.reason}


@dataclass
class AdamOutcome:
    """The best iterate (one clone per parameter, in group order), the objective of every
    evaluation (the first: the starting point; inf where it diverged) and the divergences."""

    best: list[torch.Tensor]
    losses: list[float] = field(default_factory=list)
    divergences: list[Divergence] = field(default_factory=list)


# evaluate(iteration, progress) -> (loss to differentiate, objective compared across iterations)
Evaluate = Callable[[int, float], tuple[torch.Tensor, float]]


def adam_descent(
    groups: Sequence[ParameterGroup],
    evaluate: Evaluate,
    settings: OptimizationConfig,
    progress: Progress | None = None,
) -> AdamOutcome:
    """Adam on `groups` for up to `settings.iterations` steps.

    Each group's learning rate follows a cosine decay from its first value to
    `final_learning_rate_ratio` times it; the loop stops early after `settings.patience`
    evaluations without improvement. An evaluation that raises SimulationDiverged or gives a
    non-finite objective moves the parameters back to the best iterate and halves every group's
    learning rate for the rest of the episode (the schedule then decays the halved rate).
    Raises SimulationDiverged when the first evaluation (the starting point) diverges.
    """
    parameters = [tensor for group in groups for tensor in group.parameters]
    base_rates = [group.learning_rate for group in groups]
    optimizer = torch.optim.Adam([{"params": g.parameters, "lr": g.learning_rate} for g in groups])
    best = [tensor.detach().clone() for tensor in parameters]
    best_value, since_best = math.inf, 0
    outcome = AdamOutcome(best)
    for iteration in range(settings.iterations + 1):
        fraction = training_progress(iteration, settings.iterations)
        try:
            loss, value = evaluate(iteration, fraction)
            reason = f"the objective is {value}"
        except SimulationDiverged as error:
            loss, value, reason = None, math.inf, str(error)
        if not math.isfinite(value):
            value = math.inf
        outcome.losses.append(value)
        if progress is not None:
            progress(value)
        if value < best_value:
            best_value, since_best = value, 0
            outcome.best = [tensor.detach().clone() for tensor in parameters]
        else:
            since_best += 1
            if not math.isfinite(value):
                if not math.isfinite(best_value):
                    # the starting point itself diverged: there is no iterate to step back to
                    raise SimulationDiverged(f"the episode diverged before any control was applied: {reason}")
                outcome.divergences.append(Divergence(iteration, reason))
                with torch.no_grad():
                    for tensor, saved in zip(parameters, outcome.best):
                        tensor.copy_(saved)
                # the next evaluation (at the best iterate) gives the gradient for the smaller step
                base_rates = [rate * 0.5 for rate in base_rates]
                continue
        if iteration == settings.iterations or since_best >= settings.patience:
            break
        _set_rates(optimizer, base_rates, settings, fraction)
        if loss.requires_grad:  # false when no weighted term applies (e2e without a depth target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return outcome


def _set_rates(
    optimizer: torch.optim.Optimizer, base_rates: list[float], settings: OptimizationConfig, fraction: float
) -> None:
    """Cosine decay of each group's rate from its base value to `final_learning_rate_ratio` of it."""
    ratio = settings.final_learning_rate_ratio
    cosine = 0.5 * (1 + math.cos(math.pi * fraction))
    for group, rate in zip(optimizer.param_groups, base_rates):
        group["lr"] = rate * (ratio + (1 - ratio) * cosine)
