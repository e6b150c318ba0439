"""Optimise one episode's deformation controls against the mass loss: Adam or the reference line search."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from physmorph.config import OptimizationConfig
from physmorph.errors import SimulationDiverged
from physmorph.losses import chamfer_distance, elastic_energy_per_mass, mass_loss
from physmorph.mpm import Model, State, Trajectory, control_steps, simulate
from physmorph.optimize.adam import AdamOutcome, Divergence, ParameterGroup, Progress, adam_descent
from physmorph.optimize.control_lattice import control_lattice_weights, interpolate_rates
from physmorph.optimize.graphs import captured_evaluation
from physmorph.optimize.setup import MorphSetup
from physmorph.optimize.units import REFERENCE_DX, control_scale, learning_rate_scale

# Reference optimiser constants (SPEC §5).
ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-3
MAX_STEP_ABSOLUTE = 5e-3
MAX_STEP_RELATIVE = 0.05


@dataclass
class EpisodeProblem:
    """One episode: roll out `num_steps` driven steps from `initial`, then `release_steps` free
    ones, and compare the end to the target field."""

    model: Model
    initial: State
    target_grid_mass: torch.Tensor
    num_steps: int
    control_stride: int
    checkpoint_steps: bool = False
    backend: str = "auto"
    arrival_speed_weight: float = 0.0
    target_points: torch.Tensor | None = None
    chamfer_weight: float = 0.0
    release_steps: int = 0
    # image-only target: target_grid_mass is the visual hull carved from the images
    target_is_hull: bool = False
    elastic_energy_weight: float = 0.0
    # [N, L] weights from the control lattice's nodes to the particles (None: a control per particle)
    control_weights: torch.Tensor | None = None

    @staticmethod
    def of(setup: MorphSetup, initial: State, settings: OptimizationConfig) -> EpisodeProblem:
        """The episode that `settings` describes, from `initial`, on `setup`'s model and target."""
        return EpisodeProblem(
            setup.model,
            initial,
            setup.target_grid_mass,
            settings.num_timesteps,
            settings.control_stride,
            settings.checkpoint_steps,
            settings.backend,
            settings.arrival_speed_weight,
            setup.target_points if setup.target_points is not None else setup.hull_points,
            settings.chamfer_weight,
            settings.release_steps,
            setup.target_images is not None and setup.target_grid_mass is not None,
            settings.elastic_energy_weight,
            _control_weights(setup, settings.control_spacing),
        )

    @property
    def num_controls(self) -> int:
        return len(control_steps(self.num_steps, self.control_stride))

    def zero_controls(self) -> torch.Tensor:
        x = self.initial.positions
        return torch.zeros(self.num_controls, x.shape[0], 3, 3, dtype=x.dtype, device=x.device)

    def zero_rates(self) -> torch.Tensor:
        """Zero control rates [K, L, 3, 3], what Adam optimises: one per control-lattice node, or
        per particle (L = N) without a control lattice."""
        if self.control_weights is None:
            return self.zero_controls()
        x = self.initial.positions
        return torch.zeros(self.num_controls, self.control_weights.shape[1], 3, 3, dtype=x.dtype, device=x.device)

    @property
    def rate_step_scale(self) -> float:
        """Factor on Adam's step of the control rates: sqrt(dx) per particle
        (units.learning_rate_scale, against the ripples of finer lattices), 1 on a control lattice
        (it has no detail below its spacing)."""
        return 1.0 if self.control_weights is not None else learning_rate_scale(self.model)

    @property
    def control_scale(self) -> float:
        """ΔF per control step of a unit control rate (physmorph.optimize.units): dt / (1/120 s)."""
        return control_scale(self.model)

    def controls_from_rates(self, rates: torch.Tensor) -> torch.Tensor:
        """The ΔF [K, N, 3, 3] that control rates `rates` (ΔF per reference step, what Adam
        optimises) apply at this problem's step: the same deformation per unit of simulated time
        at any dt (exactly `rates` at dt = 1/120 s); rates on a control lattice are interpolated
        to the particles first."""
        if self.control_weights is not None:
            rates = interpolate_rates(self.control_weights, rates)
        return rates * self.control_scale

    def rollout(
        self, controls: torch.Tensor, start: int = 0, state: State | None = None, check_divergence: bool = True
    ) -> Trajectory:
        """Roll out from step `start` (whose state is `state`, default the initial one) to the end
        of the release; index `num_steps − start` of the result is the last driven step's state.
        check_divergence: raise SimulationDiverged as `simulate` does (False: the caller checks)."""
        driven = simulate(
            state or self.initial,
            self.model,
            self.num_steps,
            controls,
            self.control_stride,
            checkpoint_steps=self.checkpoint_steps,
            backend=self.backend,
            start_step=start,
            check_divergence=check_divergence,
        )
        if not self.release_steps:
            return driven
        released = simulate(
            driven.final,
            self.model,
            self.release_steps,
            checkpoint_steps=self.checkpoint_steps,
            backend=self.backend,
            check_divergence=check_divergence,
        )
        return driven.then(released, driven.num_steps)

    def loss(self, trajectory: Trajectory) -> torch.Tensor:
        """Mass loss of the last state, plus `arrival_speed_weight` · mean |v|² of the last state
        (so the body arrives at rest and the next episode does not overshoot), plus
        `elastic_energy_weight` · its elastic energy per unit mass (so it arrives stress-free and
        stays: with the F smoothing a small strain left in F relaxes by a large motion), plus
        `chamfer_weight` · its Chamfer distance to the target particles (or an image target's hull) when there are any
        (the mass field barely sees a few stray particles or a thin missing feature)."""
        return self.loss_and_distance(trajectory)[0]

    def loss_and_distance(self, trajectory: Trajectory) -> tuple[torch.Tensor, float | None]:
        """`loss` and the last state's `distance` to the target, from one evaluation."""
        loss, distance = self.loss_terms(trajectory)
        return loss, None if distance is None else distance.item()

    def loss_terms(self, trajectory: Trajectory) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`loss_and_distance` with the distance left on the device (detached): no host sync."""
        final = trajectory.final
        mass = self._mass_loss_of(final)
        loss = mass
        if self.arrival_speed_weight:
            loss = loss + self.arrival_speed_weight * (final.velocities**2).sum(-1).mean()
        if self.elastic_energy_weight:
            energy = elastic_energy_per_mass(
                final.deformation_gradients,
                self.model.volumes,
                self.model.masses.expand(final.num_particles),
                self.model.material,
            )
            loss = loss + self.elastic_energy_weight * energy
        if self.target_points is None:
            return loss, None
        if self.chamfer_weight:
            chamfer = chamfer_distance(final.positions, self.target_points)
            return loss + self.chamfer_weight * chamfer, chamfer.detach()
        return loss, mass.detach()

    def distance(self, state: State) -> float | None:
        """How far `state` is from the target, the measure by which an episode must not make the
        morph worse: its Chamfer distance to the target particles with the Chamfer term on, else
        its mass loss (then the term optimised); None for an image-only target."""
        if self.target_points is None:
            return None
        with torch.no_grad():
            if self.chamfer_weight:
                return chamfer_distance(state.positions, self.target_points).item()
            return self._mass_loss_of(state).item()

    def mass_loss(self, trajectory: Trajectory) -> torch.Tensor:
        return self._mass_loss_of(trajectory.final)

    def _mass_loss_of(self, state: State) -> torch.Tensor:
        return mass_loss(
            state.positions,
            self.model.masses.expand(state.num_particles),
            self.target_grid_mass,
            self.model.grid,
            self.model.kernel,
        )


@dataclass
class EpisodeResult:
    """Optimised controls [K, N, 3, 3], their trajectory, the loss history (first = no control),
    the evaluations that diverged and the kept controls' loss (None: the least in the history)."""

    controls: torch.Tensor
    trajectory: Trajectory
    losses: list[float] = field(default_factory=list)
    divergences: list[Divergence] = field(default_factory=list)  # evaluations that gave no finite loss
    kept_loss: float | None = None  # set when the kept iterate is not the least-loss one

    @property
    def loss_before(self) -> float:
        return self.losses[0]

    @property
    def loss_after(self) -> float:
        return min(self.losses) if self.kept_loss is None else self.kept_loss


def optimize_adam(
    problem: EpisodeProblem, settings: OptimizationConfig, progress: Progress | None = None
) -> EpisodeResult:
    """All controls of the episode at once: the Adam loop of physmorph.optimize.adam (cosine
    learning-rate decay, early stop after `patience` iterations without improvement, step halved
    after a diverged rollout) on the exact gradient. Adam steps the control rates (ΔF per
    reference step, see physmorph.optimize.units), so `settings.learning_rate` means the same at
    any time step; its step is that rate times EpisodeProblem.rate_step_scale. On CUDA, with
    `settings.cuda_graph`, the evaluations replay CUDA graphs where the problem allows
    (physmorph.optimize.graphs; the same result).

    Keeps the controls of least loss, unless their last state is farther from the target
    (`EpisodeProblem.distance`) than the episode's first state, and another iterate's is not:
    then the least-loss iterate among those that do not make the morph worse. (The loss can fall
    while the Chamfer rises a little: it also weighs the mass field and the speed.) When every
    iterate ends farther (late in a morph the zero-control start drifts off, and the first steps
    overshoot), or no iterate beats the zero control, the descent starts again from zero controls
    with half the learning rate, up to RETRIES times; the loss history holds every attempt's
    evaluations."""
    start = problem.distance(problem.initial)
    losses: list[float] = []
    divergences: list[Divergence] = []
    for attempt in range(RETRIES + 1):
        rate = settings.learning_rate * 0.5**attempt
        best, kept_loss, admissible, outcome = _descend(problem, replace(settings, learning_rate=rate), start, progress)
        offset = len(losses)
        losses += outcome.losses
        divergences += [Divergence(offset + d.iteration, d.reason) for d in outcome.divergences]
        # a descent none of whose steps beat the zero control overshot from its first step
        improved = min(outcome.losses[1:], default=math.inf) < outcome.losses[0]
        if (admissible or start is None) and improved:
            break
    best_controls = problem.controls_from_rates(best)
    with torch.no_grad():
        trajectory = problem.rollout(best_controls)
    return EpisodeResult(best_controls, trajectory, losses, divergences, kept_loss)


def _control_weights(setup: MorphSetup, spacing: float | str | None) -> torch.Tensor | None:
    """The control lattice's weights over the source's rest particles, or None when `spacing` is
    None or no coarser than the particle lattice (then each particle is its own node). "auto":
    REFERENCE_DX, one node per cell of the resolution the optimiser was tuned at."""
    if spacing is None:
        return None
    particle_spacing = float(setup.model.lattice_volumes.reshape(-1)[0]) ** (1.0 / 3.0)
    if spacing == "auto":
        spacing = REFERENCE_DX
    if spacing <= 1.001 * particle_spacing:
        return None
    cache = setup.control_weights_by_spacing
    if spacing not in cache:
        cache[spacing] = control_lattice_weights(setup.initial.positions, spacing)
    return cache[spacing]


# optimize_adam's descents with halved learning rates when every iterate ends farther from the target
# or none beats the zero control
RETRIES = 2


def _descend(
    problem: EpisodeProblem, settings: OptimizationConfig, start: float | None, progress: Progress | None
) -> tuple[torch.Tensor, float | None, bool, AdamOutcome]:
    """One Adam descent from zero control rates: the kept rates, their loss when they are not the
    least-loss iterate (else None), whether some iterate ends no farther than `start`, and the
    descent's outcome."""
    rates = problem.zero_rates().requires_grad_()
    captured = captured_evaluation(problem, rates) if settings.cuda_graph else None
    # the least-loss iterate whose last state is no farther from the target than the first state
    admissible_loss, admissible_rates = math.inf, None

    def evaluate(iteration: int, fraction: float) -> tuple[torch.Tensor, float]:
        nonlocal admissible_loss, admissible_rates
        if captured is not None:
            loss, value, distance = captured(rates, problem.initial)
        else:
            loss, distance = problem.loss_and_distance(problem.rollout(problem.controls_from_rates(rates)))
            value = loss.item()
        if distance is not None and distance <= start and value < admissible_loss:
            admissible_loss, admissible_rates = value, rates.detach().clone()
        return loss, value

    step = settings.learning_rate * problem.rate_step_scale
    outcome = adam_descent([ParameterGroup([rates], step)], evaluate, settings, progress)
    if admissible_rates is not None and admissible_loss > min(outcome.losses):
        return admissible_rates, admissible_loss, True, outcome  # the least-loss iterate ends farther away
    return outcome.best[0], None, admissible_rates is not None, outcome


class _ReferenceAdam:
    """AMSGrad moments of one control step, with the reference's normalised, clipped steps."""

    def __init__(self, like: torch.Tensor) -> None:
        self.first = torch.zeros_like(like)
        self.second = torch.zeros_like(like)
        self.second_max = torch.zeros_like(like)
        self.count = 0

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        return self.first.clone(), self.second.clone(), self.second_max.clone(), self.count

    def restore(self, saved: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]) -> None:
        self.first, self.second, self.second_max, self.count = (
            saved[0].clone(),
            saved[1].clone(),
            saved[2].clone(),
            saved[3],
        )

    def step(self, gradient: torch.Tensor, control: torch.Tensor, step_size: float) -> torch.Tensor:
        """The control after one step of size `step_size` along the normalised gradient."""
        gradient = gradient / gradient.norm().clamp(min=1e-30)
        beta1, beta2 = ADAM_BETAS
        self.count += 1
        self.first = beta1 * self.first + (1 - beta1) * gradient
        self.second = beta2 * self.second + (1 - beta2) * gradient**2
        self.second_max = torch.maximum(self.second_max, self.second)
        first_hat = self.first / (1 - beta1**self.count)
        second_hat = self.second_max / (1 - beta2**self.count)
        update = step_size * first_hat / (second_hat.sqrt() + ADAM_EPSILON)
        update = update.clamp(-MAX_STEP_ABSOLUTE, MAX_STEP_ABSOLUTE)
        # each particle's step is at most 5% of the size of its controlled gradient F + ΔF
        limit = MAX_STEP_RELATIVE * (control + torch.eye(3, dtype=control.dtype, device=control.device)).norm(
            dim=(-1, -2)
        )
        norm = update.norm(dim=(-1, -2)).clamp(min=1e-30)
        update = update * (limit / norm).clamp(max=1.0)[:, None, None]
        return control - update


def optimize_reference(
    problem: EpisodeProblem, settings: OptimizationConfig, progress: Progress | None = None
) -> EpisodeResult:
    """The reference algorithm (SPEC §5): sweeps over the control steps in order; per step,
    gradient descent with AMSGrad directions and a backtracking line search on the step size."""
    steps = control_steps(problem.num_steps, problem.control_stride)
    controls = problem.zero_controls()
    moments = [_ReferenceAdam(controls[0]) for _ in steps]
    with torch.no_grad():
        trajectory = problem.rollout(controls)
    losses = [problem.loss(trajectory).item()]
    if progress is not None:
        progress(losses[-1])
    alpha = settings.initial_alpha
    divergences: list[Divergence] = []
    for _ in range(settings.passes):
        for k, t in enumerate(steps):
            state_t = trajectory.state(t)
            first_norm = None
            for _ in range(settings.max_gd_iters):
                control = controls[k].clone().requires_grad_()
                trial_controls = torch.cat((controls[:k], control.unsqueeze(0), controls[k + 1 :]))
                loss = problem.loss(problem.rollout(trial_controls, t, state_t))
                (gradient,) = torch.autograd.grad(loss, control)
                current = loss.item()
                norm = gradient.norm().item()
                if first_norm is None:
                    first_norm = norm
                elif norm < settings.gd_tol * first_norm:
                    break
                saved = moments[k].snapshot()
                accepted = False
                for _ in range(settings.max_ls_iters):
                    candidate = moments[k].step(gradient, controls[k], alpha)
                    trial = torch.cat((controls[:k], candidate.unsqueeze(0), controls[k + 1 :]))
                    with torch.no_grad():
                        try:
                            candidate_trajectory = problem.rollout(trial, t, state_t)
                            value = problem.loss(candidate_trajectory).item()
                        except SimulationDiverged as error:
                            value = math.inf
                            divergences.append(Divergence(len(losses), str(error)))
                    if math.isfinite(value) and value < current:
                        controls = trial
                        trajectory = trajectory.then(candidate_trajectory, t)
                        alpha = min(1.1 * alpha, settings.initial_alpha)
                        losses.append(value)
                        if progress is not None:
                            progress(value)
                        accepted = True
                        break
                    moments[k].restore(saved)
                    alpha *= 0.5
                if not accepted:
                    break
    return EpisodeResult(controls, trajectory, losses, divergences)
