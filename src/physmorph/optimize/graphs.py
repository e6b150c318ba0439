"""An Adam iteration's rollout, loss and gradient replayed as two CUDA graphs instead of thousands of kernel launches.

At the reference config's size (11k particles, 10 steps) the GPU finishes each kernel of an
evaluation faster than Python launches the next, so an episode's time is launch overhead.
`torch.cuda.make_graphed_callables` records one evaluation (the rollout from the episode's first
state, the loss and its distance to the target, the divergence counts) forward and backward, and
every later evaluation replays the two graphs. The recording needs an evaluation that never waits
for the host: the fused MPM step, the k-NN of the Chamfer term in one kernel (surface.knn), the
control lattice by corner sums, host constants made once (physmorph.device_constants) and the
divergence check read once, after the replay. A problem that does not qualify, or whose capture
fails, runs eagerly with the same result.

The episode's first state, the control rates and the loss are the graphs' inputs and outputs, so
the episodes of a run (each starting where the last ended) replay the same graphs: they are kept
per model, target, control lattice and shape (CACHED_EVALUATIONS at a time).
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from physmorph.mpm import State
from physmorph.mpm.simulate import divergence_counts, graph_fits, raise_if_diverged
from physmorph.surface.knn import searches_without_host_sync

if TYPE_CHECKING:
    from physmorph.optimize.episode import EpisodeProblem

# Captured evaluations kept at once: each holds its graphs' memory (the rollout's autograd graph)
# and its problem's tensors.
CACHED_EVALUATIONS = 2
# Eager evaluations on a side stream before the capture (kernels compiled, allocations settled).
WARM_UP_EVALUATIONS = 2

Graphed = Callable[..., tuple[torch.Tensor, torch.Tensor]]
_CAPTURED: OrderedDict[tuple, CapturedEvaluation | None] = OrderedDict()


class GraphCaptureWarning(UserWarning):
    """An evaluation could not be captured as a CUDA graph; it runs eagerly (same result, slower)."""


@dataclass
class CapturedEvaluation:
    """An episode's evaluation as CUDA graphs: call it with the control rates and the first state.

    graphed:       (rates, x, v, F, C, α) → (loss, report); the report holds the loss, the distance
                   to the target (NaN without one) and each step's count of diverged particles
    problem:       the problem it was captured from (its tensors stay alive while it is kept)
    """

    graphed: Graphed
    problem: EpisodeProblem

    def __call__(self, rates: torch.Tensor, initial: State) -> tuple[torch.Tensor, float, float | None]:
        """(loss to differentiate, its value, the last state's distance to the target or None);
        raises SimulationDiverged as the eager rollout does. The loss aliases the graph's output:
        read and differentiate it before the next call."""
        loss, report = self.graphed(rates, *initial.tensors)
        values = report.tolist()  # the evaluation's one host sync
        counts = [int(count) for count in values[2:]]
        driven = self.problem.num_steps
        raise_if_diverged(counts[:driven], initial.num_particles, 0)
        raise_if_diverged(counts[driven:], initial.num_particles, 0)
        distance = None if self.problem.target_points is None else values[1]
        return loss, values[0], distance


def captured_evaluation(problem: EpisodeProblem, rates: torch.Tensor) -> CapturedEvaluation | None:
    """The CUDA-graph evaluation of `problem` at rates shaped like `rates` (a cached one when a
    problem of the same model, targets and shapes was captured before), or None where the
    evaluation must run eagerly: not on CUDA, not the fused step, a graph too large to keep, a
    gradient wanted in the first state or the model, a Chamfer search that waits for the host,
    or a capture that failed (GraphCaptureWarning, once per problem)."""
    if not _qualifies(problem, rates):
        return None
    key = _key(problem, rates)
    if key in _CAPTURED:
        _CAPTURED.move_to_end(key)
        return _CAPTURED[key]
    try:
        captured = CapturedEvaluation(_capture(problem, rates), problem)
    except RuntimeError as error:  # CUDA refuses an operation in capture: run eagerly instead
        warnings.warn(
            f"the episode's evaluation could not be captured as a CUDA graph ({str(error).splitlines()[0]}); it runs "
            "eagerly (the same result, slower); set optimization.cuda_graph: false to skip the attempt",
            GraphCaptureWarning,
            stacklevel=3,
        )
        captured = None
    _CAPTURED[key] = captured
    while len(_CAPTURED) > CACHED_EVALUATIONS:
        _CAPTURED.popitem(last=False)
    return captured


def _qualifies(problem: EpisodeProblem, rates: torch.Tensor) -> bool:
    from physmorph.mpm.fused import supports_fused

    initial, model = problem.initial, problem.model
    if not rates.is_cuda or problem.backend == "torch" or not supports_fused(initial, model):
        return False
    if problem.checkpoint_steps:
        return False
    if not graph_fits(initial, model, problem.num_steps + problem.release_steps, fused=True):
        return False
    constants = (*initial.tensors, model.material.lam, model.material.mu, model.material.density, model.volumes)
    if any(isinstance(t, torch.Tensor) and t.requires_grad for t in constants):
        return False
    if problem.chamfer_weight and problem.target_points is not None:
        positions, target = initial.positions, problem.target_points
        return searches_without_host_sync(positions, target, 1) and searches_without_host_sync(target, positions, 1)
    return True


def _key(problem: EpisodeProblem, rates: torch.Tensor) -> tuple:
    """What a captured evaluation depends on besides its inputs: the problem's tensors (by
    identity: the cache holds them, so an id is not reused while its entry lives), its settings
    and the inputs' shapes."""
    held = (problem.model, problem.target_grid_mass, problem.target_points, problem.control_weights)
    settings = (
        problem.num_steps,
        problem.control_stride,
        problem.release_steps,
        problem.backend,
        problem.arrival_speed_weight,
        problem.chamfer_weight,
        problem.elastic_energy_weight,
        problem.target_is_hull,
    )
    shapes = tuple(tuple(t.shape) for t in (rates, *problem.initial.tensors))
    return (*(id(value) for value in held), *settings, shapes, rates.dtype, rates.device)


def _capture(problem: EpisodeProblem, rates: torch.Tensor) -> Graphed:
    def evaluate(rates: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        episode = replace(problem, initial=State(*state))
        trajectory = episode.rollout(episode.controls_from_rates(rates), check_divergence=False)
        loss, distance = episode.loss_terms(trajectory)
        missing = loss.new_full((1,), math.nan)
        distance = missing if distance is None else distance.reshape(1).to(loss.dtype)
        counts = divergence_counts(trajectory, episode.model).to(loss.dtype)
        return loss, torch.cat((loss.detach().reshape(1), distance, counts))

    sample = (torch.zeros_like(rates).requires_grad_(), *(t.detach().clone() for t in problem.initial.tensors))
    try:
        with warnings.catch_warnings():
            # the sample's gradient accumulator is made on the warm-up stream: the captured backward
            # waits for that stream once, which costs nothing in the replays
            warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream does not match")
            return torch.cuda.make_graphed_callables(evaluate, sample, num_warmup_iters=WARM_UP_EVALUATIONS)
    except RuntimeError:
        _end_broken_capture()
        raise


def _end_broken_capture() -> None:
    """After a capture that CUDA invalidated (an operation that waits for the host), the random
    generators still count as capturing, since the capture's end raised before releasing them,
    and the next random draw on the GPU would fail: one empty capture ends that state."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The CUDA Graph is empty")
            with torch.cuda.graph(torch.cuda.CUDAGraph()):
                pass
    except RuntimeError:
        pass  # nothing was left capturing
