"""An Adam iteration's rollout, loss and gradient replayed as two CUDA graphs instead of thousands of kernel launches.

At the reference config's size (11k particles, 10 steps) the GPU finishes each kernel of an
evaluation faster than Python launches the next, so an episode's time is launch overhead. One
evaluation (the rollout from the episode's first state, the loss and its distance to the target,
the divergence counts) is recorded forward and backward, and every later evaluation replays the
two graphs. The recording needs an evaluation that never waits
for the host: the fused MPM step, the k-NN of the Chamfer term in one kernel (surface.knn), the
control lattice by corner sums, host constants made once (physmorph.device_constants) and the
divergence check read once, after the replay. A problem that does not qualify, or whose capture
fails, runs eagerly with the same result.

An e2e evaluation captures the rollout and its 3D loss alone (`captured_rollout`): the states
are the graphs' outputs, and the surface, render and image terms run eagerly on them (gsplat and
the surface binding wait for the host). Its backward replays twice per forward (the balanced
gradient's two passes). torch.cuda.make_graphed_callables records the backward with autograd
freeing the forward's saved tensors as it goes, so its graph reuses their memory and a second
replay reads indices overwritten by the first (a device-side assert in index_add); `_record`
keeps them (retain_graph) and copies each gradient out of the graph's memory.

The episode's first state, the control rates and the loss are the graphs' inputs and outputs, so
the episodes of a run (each starting where the last ended) replay the same graphs: they are kept
per kind, model, target, control lattice and shape (CACHED_EVALUATIONS at a time).
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from physmorph.mpm import State, Trajectory
from physmorph.mpm.simulate import divergence_counts, graph_fits, raise_if_diverged
from physmorph.surface.knn import searches_without_host_sync

if TYPE_CHECKING:
    from physmorph.optimize.episode import EpisodeProblem

# Captured evaluations kept at once: each holds its graphs' memory (the rollout's autograd graph)
# and its problem's tensors.
CACHED_EVALUATIONS = 2
# Eager evaluations on a side stream before the capture (kernels compiled, allocations settled).
WARM_UP_EVALUATIONS = 2

Graphed = Callable[..., tuple[torch.Tensor, ...]]
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


@dataclass
class CapturedRollout:
    """An e2e evaluation's rollout and 3D loss as CUDA graphs: call it with the control rates and the first state.

    graphed:       (rates, x, v, F, C, α) → (loss, x, v, F, C, α series, report); x and F carry
                   gradients (the images see them), the report is as CapturedEvaluation's
    problem:       the problem it was captured from (its tensors stay alive while it is kept)
    """

    graphed: Graphed
    problem: EpisodeProblem

    def __call__(self, rates: torch.Tensor, initial: State) -> tuple[Trajectory, torch.Tensor]:
        """(the rollout, its 3D loss), both differentiable back to `rates`; raises SimulationDiverged
        as the eager rollout does. They alias the graph's outputs: use them before the next call."""
        loss, *series, report = self.graphed(rates, *initial.tensors)
        counts = [int(count) for count in report[2:].tolist()]  # the forward's one host sync
        driven = self.problem.num_steps
        raise_if_diverged(counts[:driven], initial.num_particles, 0)
        raise_if_diverged(counts[driven:], initial.num_particles, 0)
        return Trajectory(*series), loss


def captured_evaluation(problem: EpisodeProblem, rates: torch.Tensor) -> CapturedEvaluation | None:
    """The CUDA-graph evaluation of `problem` at rates shaped like `rates` (a cached one when a
    problem of the same model, targets and shapes was captured before), or None where the
    evaluation must run eagerly: not on CUDA, not the fused step, a graph too large to keep, a
    gradient wanted in the first state or the model, a Chamfer search that waits for the host,
    or a capture that failed (GraphCaptureWarning, once per problem)."""
    return _cached(
        "evaluation", problem, rates, lambda: CapturedEvaluation(_capture(problem, rates, _evaluation), problem)
    )


def captured_rollout(problem: EpisodeProblem, rates: torch.Tensor) -> CapturedRollout | None:
    """`captured_evaluation` for an e2e evaluation: the rollout and its 3D loss (EpisodeProblem.loss)
    as CUDA graphs, the image terms left to run eagerly on the states; None where it must run eagerly."""
    return _cached("rollout", problem, rates, lambda: CapturedRollout(_capture(problem, rates, _rollout), problem))


def _cached(kind: str, problem: EpisodeProblem, rates: torch.Tensor, capture: Callable[[], object]) -> object | None:
    """The cached capture of this kind for `problem` and `rates`' shape, else a new one (None,
    remembered, where the problem does not qualify or CUDA refuses the capture)."""
    if not _qualifies(problem, rates):
        return None
    key = (kind, *_key(problem, rates))
    if key in _CAPTURED:
        _CAPTURED.move_to_end(key)
        return _CAPTURED[key]
    try:
        captured = capture()
    except RuntimeError as error:  # CUDA refuses an operation in capture: run eagerly instead
        warnings.warn(
            f"the episode's {kind} could not be captured as a CUDA graph ({str(error).splitlines()[0]}); it runs "
            "eagerly (the same result, slower); set optimization.cuda_graph: false to skip the attempt",
            GraphCaptureWarning,
            stacklevel=4,
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


def _evaluation(trajectory: Trajectory, loss: torch.Tensor, report: torch.Tensor) -> tuple:
    """CapturedEvaluation's graph outputs."""
    return loss, report


def _rollout(trajectory: Trajectory, loss: torch.Tensor, report: torch.Tensor) -> tuple:
    """CapturedRollout's graph outputs: only positions and F carry gradients to the image terms."""
    positions, velocities, gradients, affine, plastic = trajectory.series
    return loss, positions, velocities.detach(), gradients, affine.detach(), plastic.detach(), report


def _capture(
    problem: EpisodeProblem,
    rates: torch.Tensor,
    outputs: Callable[[Trajectory, torch.Tensor, torch.Tensor], tuple],
) -> Graphed:
    def evaluate(rates: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        episode = replace(problem, initial=State(*state))
        trajectory = episode.rollout(episode.controls_from_rates(rates), check_divergence=False)
        loss, distance = episode.loss_terms(trajectory)
        missing = loss.new_full((1,), math.nan)
        distance = missing if distance is None else distance.reshape(1).to(loss.dtype)
        counts = divergence_counts(trajectory, episode.model).to(loss.dtype)
        return outputs(trajectory, loss, torch.cat((loss.detach().reshape(1), distance, counts)))

    sample = (torch.zeros_like(rates).requires_grad_(), *(t.detach().clone() for t in problem.initial.tensors))
    try:
        with warnings.catch_warnings():
            # the sample's gradient accumulator is made on the warm-up stream: the captured backward
            # waits for that stream once, which costs nothing in the replays
            warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream does not match")
            return _record(evaluate, sample)
    except RuntimeError:
        _end_broken_capture()
        raise


def _record(function: Callable[..., tuple[torch.Tensor, ...]], sample: tuple[torch.Tensor, ...]) -> Graphed:
    """`function` of tensors like `sample` recorded forward and backward as two CUDA graphs, as an
    autograd function of the same inputs whose outputs alias the graphs' memory. The backward
    keeps the forward's saved tensors, so it can replay more than once per forward; each replay's
    gradients are copied out."""
    leaves = [tensor for tensor in sample if tensor.requires_grad]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # kernels compiled and allocations settled outside the capture
        for _ in range(WARM_UP_EVALUATIONS):
            differentiable = [output for output in function(*sample) if output.requires_grad]
            torch.autograd.grad(differentiable, leaves, [torch.zeros_like(output) for output in differentiable])
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    pool = torch.cuda.graph_pool_handle()
    forward_graph, backward_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    with torch.cuda.graph(forward_graph, pool=pool):
        outputs = function(*sample)
    differentiable = [index for index, output in enumerate(outputs) if output.requires_grad]
    cotangents = [torch.zeros_like(outputs[index]) for index in differentiable]
    with torch.cuda.graph(backward_graph, pool=pool):
        gradients = torch.autograd.grad(
            [outputs[index] for index in differentiable], leaves, cotangents, retain_graph=True
        )

    class Replayed(torch.autograd.Function):
        @staticmethod
        def forward(ctx: torch.autograd.function.FunctionCtx, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            for recorded, given in zip(sample, inputs):
                if recorded.data_ptr() != given.data_ptr():
                    recorded.copy_(given)
            forward_graph.replay()
            results = tuple(output.detach() for output in outputs)
            ctx.mark_non_differentiable(*(results[i] for i in range(len(results)) if i not in differentiable))
            return results

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx: torch.autograd.function.FunctionCtx, *output_gradients: torch.Tensor) -> tuple:
            for index, cotangent in zip(differentiable, cotangents):
                cotangent.copy_(output_gradients[index])
            backward_graph.replay()
            copied = iter([gradient.clone() for gradient in gradients])  # the next replay overwrites them
            return tuple(next(copied) if tensor.requires_grad else None for tensor in sample)

    return Replayed.apply


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
