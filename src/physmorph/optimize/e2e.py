"""End-to-end training: image losses and the physics loss reach the controls through one graph."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import trimesh

from physmorph.config import OptimizationConfig
from physmorph.errors import ConfigError, InputError
from physmorph.io.targets import TargetImages
from physmorph.losses.render_losses import (
    RenderLossConfig,
    SilhouetteEdges,
    covariance_alignment_loss,
    covariance_regularization,
    curvature_target_covariances,
    depth_loss,
    dssim_loss,
    edge_alignment_loss,
    gaussian_neighbors,
    normal_smoothness_loss,
    psnr,
    rgb_loss,
    silhouette_edges,
    silhouette_iou,
    silhouette_loss,
)
from physmorph.losses.silhouette_chamfer import SilhouettePixels, silhouette_chamfer_loss, silhouette_pixels
from physmorph.mpm import Material, Trajectory
from physmorph.optimize.adam import Divergence, ParameterGroup, Progress, adam_descent
from physmorph.optimize.balance import balanced_objective, balanced_surrogate
from physmorph.optimize.episode import EpisodeProblem
from physmorph.optimize.graphs import captured_rollout
from physmorph.render import Cameras, Images, RenderConfig, render
from physmorph.render.renderer import Backend
from physmorph.surface import (
    Gaussians,
    SurfaceBinding,
    SurfaceConfig,
    bind_surface,
    synthesize_surface,
)

MaterialParameters = Literal["none", "lame", "youngs"]

CURVATURE_NEIGHBORS = 16  # Gaussians whose normals estimate the curvature at each Gaussian
NORMAL_NEIGHBORS = 8  # Gaussians each normal is compared with in the smoothness term


@dataclass
class RenderSettings:
    """How Gaussians are rendered, for the prediction and for targets made from particles.

    config:  background, albedo and lighting (flat albedo when its lighting model is 'flat')
    opacity: peak opacity of every Gaussian, (0, 1]
    backend: 'auto', 'torch' or 'gsplat' (see physmorph.render.render)
    surface_scale, surface_flatness: the surfels' size factor and σ_n / σ_t (None: the
             binding's), floats or tensors that may require grad (see synthesize_surface)
    fused:   with gsplat, shade and normalise in the Triton kernels (physmorph.render.render)
    """

    config: RenderConfig = field(default_factory=RenderConfig)
    opacity: float = 1.0
    backend: Backend = "auto"
    surface_scale: torch.Tensor | float = 1.0
    surface_flatness: torch.Tensor | float | None = None
    fused: bool = True


def render_state(
    positions: torch.Tensor,
    deformation_gradients: torch.Tensor,
    binding: SurfaceBinding,
    cameras: Cameras,
    settings: RenderSettings | None = None,
) -> tuple[Gaussians, Images]:
    """Gaussians of a particle state (positions [N, 3], F [N, 3, 3]) and their images."""
    settings = settings or RenderSettings()
    flatness = settings.surface_flatness
    if flatness is not None:
        flatness = torch.as_tensor(flatness, dtype=positions.dtype, device=positions.device)
    gaussians = synthesize_surface(positions, deformation_gradients, binding, settings.surface_scale, flatness)
    images = render(
        gaussians,
        cameras,
        background=settings.config.bg,
        shading=settings.config.lighting,  # a 'flat' model gives the albedo
        default_color=settings.config.particle_color,
        default_opacity=settings.opacity,
        backend=settings.backend,
        fused=settings.fused,
    )
    return gaussians, images


@torch.no_grad()
def target_images_from_particles(
    target_positions: torch.Tensor,
    cameras: Cameras,
    surface: SurfaceConfig,
    settings: RenderSettings | None = None,
    mesh: trimesh.Trimesh | None = None,
) -> TargetImages:
    """Target images of a target particle set [P, 3]: bind and synthesise its surface with F = I
    (sampled from `mesh`, the target mesh they were filled from, when given) and render it with
    `cameras`, the same way the prediction is rendered (SPEC §8)."""
    eye = torch.eye(3, dtype=target_positions.dtype, device=target_positions.device)
    identity = eye.expand(target_positions.shape[0], 3, 3)
    binding = bind_surface(target_positions, identity, surface, mesh=mesh)
    _, images = render_state(target_positions, identity, binding, cameras, settings)
    names = [f"view{index:03d}" for index in range(len(cameras))]
    return TargetImages(cameras, images.alpha, images.depth, images.rgb, names)


@torch.no_grad()
def view_metrics(images: Images, targets: TargetImages) -> dict[str, list[float]]:
    """Per-view silhouette IoU (α > 0.5) and, when the targets have colour, PSNR (dB) of rgb."""
    metrics = {"iou": silhouette_iou(images.alpha, targets.alpha.to(images.alpha)).tolist()}
    if targets.rgb is not None:
        metrics["psnr"] = psnr(images.rgb, targets.rgb.to(images.rgb)).tolist()
    return metrics


@dataclass
class RenderObjective:
    """The weighted render losses of supervised steps of a trajectory against their targets.

    binding:   the surface bound to the episode's particles
    targets:   one TargetImages per supervised step
    steps:     trajectory indices supervised (−1 = last state)
    losses:    weights and settings
    settings:  how the prediction is rendered
    edges:     silhouette tangents of each target's masks
    neighbors: [M, CURVATURE_NEIGHBORS] Gaussian neighbours at the episode's start, or None
    silhouettes: distance fields and covered pixels of each target's masks (when their term is on)
    """

    binding: SurfaceBinding
    targets: list[TargetImages]
    steps: list[int]
    losses: RenderLossConfig
    settings: RenderSettings
    edges: list[SilhouetteEdges]
    neighbors: torch.Tensor | None
    silhouettes: list[SilhouettePixels | None]

    @staticmethod
    def build(
        binding: SurfaceBinding,
        targets: TargetImages | Sequence[TargetImages],
        losses: RenderLossConfig,
        initial_positions: torch.Tensor,
        initial_deformation_gradients: torch.Tensor,
        num_steps: int,
        supervised_steps: Sequence[int] = (-1,),
        settings: RenderSettings | None = None,
    ) -> RenderObjective:
        """Check the targets and precompute what does not change during training (no gradient)."""
        target_list = [targets] if isinstance(targets, TargetImages) else list(targets)
        steps = list(supervised_steps)
        if len(target_list) == 1 and len(steps) > 1:
            target_list = target_list * len(steps)
        if len(target_list) != len(steps) or not steps:
            raise InputError(
                f"got {len(target_list)} target image sets for {len(steps)} supervised steps "
                f"{steps}; give one set, or one per step"
            )
        for step in steps:
            if not -(num_steps + 1) <= step <= num_steps:
                raise InputError(f"supervised step {step} is outside the episode's 0..{num_steps} (−1 = last)")
        like = initial_positions
        target_list = [t.to(device=like.device, dtype=like.dtype) for t in target_list]
        for target in target_list:
            if target.alpha.shape != (len(target), target.cameras.height, target.cameras.width):
                raise InputError(
                    f"target alpha has shape {tuple(target.alpha.shape)}; expected [{len(target)}, "
                    f"{target.cameras.height}, {target.cameras.width}] for its cameras"
                )
        neighbors = None
        if losses.enabled and (losses.w_cov_align > 0 or losses.w_normal_smooth > 0):
            with torch.no_grad():
                rest = synthesize_surface(initial_positions, initial_deformation_gradients, binding)
            neighbors = gaussian_neighbors(rest.means, min(CURVATURE_NEIGHBORS, binding.count - 1))
        edges = [silhouette_edges(target.alpha) for target in target_list]
        with_silhouettes = losses.enabled and losses.w_silhouette_chamfer > 0
        silhouettes = [silhouette_pixels(t.alpha) if with_silhouettes else None for t in target_list]
        return RenderObjective(
            binding, target_list, steps, losses, settings or RenderSettings(), edges, neighbors, silhouettes
        )

    def __call__(self, trajectory: Trajectory) -> tuple[dict[str, torch.Tensor], list[Images]]:
        """The unweighted render terms whose configured weight is non-zero (each summed over the
        supervised steps) and the images of each supervised step."""
        weights = self.losses.weights(1.0)
        positions = trajectory.positions
        terms: dict[str, torch.Tensor] = {}
        all_images = []
        for step, target, edges, silhouette in zip(self.steps, self.targets, self.edges, self.silhouettes):
            gaussians, images = render_state(
                positions[step],
                trajectory.deformation_gradients[step],
                self.binding,
                target.cameras,
                self.settings,
            )
            all_images.append(images)
            for name, value in self._terms(gaussians, images, target, edges, silhouette, weights).items():
                terms[name] = terms.get(name, 0.0) + value
        return terms, all_images

    def _terms(
        self,
        gaussians: Gaussians,
        images: Images,
        target: TargetImages,
        edges: SilhouetteEdges,
        silhouette: SilhouettePixels | None,
        weights: dict[str, float],
    ) -> dict[str, torch.Tensor]:
        """The unweighted terms whose weight is non-zero."""
        terms: dict[str, torch.Tensor] = {}
        if weights["silhouette_chamfer"] > 0 and silhouette is not None:
            terms["silhouette_chamfer"] = silhouette_chamfer_loss(gaussians.means, target.cameras, silhouette)
        if weights["alpha"] > 0:
            terms["alpha"] = silhouette_loss(images.alpha, target.alpha, self.losses.alpha_levels)
        if weights["depth"] > 0 and target.depth is not None:
            terms["depth"] = depth_loss(images.depth, target.depth, target.alpha)
        if weights["edge"] > 0:
            terms["edge"] = edge_alignment_loss(gaussians.means, gaussians.covariances, target.cameras, edges)
        if weights["cov_align"] > 0 and self.neighbors is not None:
            reference = curvature_target_covariances(
                gaussians.means.detach(),
                gaussians.normals.detach(),
                self.binding.tangent_scales,
                self.neighbors,
            )
            terms["cov_align"] = covariance_alignment_loss(gaussians.covariances, reference)
        if weights["cov_reg"] > 0:
            terms["cov_reg"] = covariance_regularization(
                gaussians.covariances, self.losses.cov_reg_mode, self.losses.target_cov_scale
            )
        if weights["normal_smooth"] > 0 and self.neighbors is not None:
            terms["normal_smooth"] = normal_smoothness_loss(gaussians.normals, self.neighbors[:, :NORMAL_NEIGHBORS])
        if target.rgb is not None:
            if weights["rgb"] > 0:
                terms["rgb"] = rgb_loss(images.rgb, target.rgb)
            if weights["ssim"] > 0:
                terms["ssim"] = dssim_loss(images.rgb, target.rgb)
        return terms


def _material_parameters(material: Material, kind: MaterialParameters, like: torch.Tensor) -> list[torch.Tensor]:
    """Unconstrained parameters of `material`: (log λ, log μ), or (log E, r) with
    ν = 0.75 tanh(r) − 0.25."""
    lam = torch.as_tensor(material.lam, dtype=like.dtype, device=like.device).detach()
    mu = torch.as_tensor(material.mu, dtype=like.dtype, device=like.device).detach()
    if kind == "lame":
        if not bool((lam > 0).all()):
            raise InputError("material parameterisation 'lame' optimises log λ and needs λ > 0; use 'youngs'")
        return [torch.log(lam).requires_grad_(), torch.log(mu).requires_grad_()]
    youngs = mu * (3 * lam + 2 * mu) / (lam + mu)
    poisson = lam / (2 * (lam + mu))
    return [
        torch.log(youngs).requires_grad_(),
        torch.atanh((poisson + 0.25) / 0.75).requires_grad_(),
    ]


def _material(base: Material, kind: MaterialParameters, parameters: list[torch.Tensor]) -> Material:
    if kind == "none":
        return base
    if kind == "lame":
        return Material(torch.exp(parameters[0]), torch.exp(parameters[1]), base.density, base.model)
    poisson = 0.75 * torch.tanh(parameters[1]) - 0.25
    return Material.from_youngs_modulus(torch.exp(parameters[0]), poisson, base.density, base.model)


@dataclass
class E2EResult:
    """Best controls [K, N, 3, 3] and material, their trajectory and the history of the run.

    losses:  objective (full, unscheduled weights; with balanced gradients the relative
             `balanced_objective`, 1 + ratio at the start) per iteration; the first: zero controls,
             initial material; the best of them chose the result
    terms:   unweighted loss terms per iteration ('phys' and the render terms)
    metrics: per supervised step, per-view 'iou' (and 'psnr' when targets have colour) of the result
    divergences: evaluations that gave no finite objective
    surface: the learned surfel 'scale' and 'flatness' (e2e.surface_parameters), else None
    """

    controls: torch.Tensor
    material: Material
    trajectory: Trajectory
    losses: list[float] = field(default_factory=list)
    terms: list[dict[str, float]] = field(default_factory=list)
    metrics: list[dict[str, list[float]]] = field(default_factory=list)
    divergences: list[Divergence] = field(default_factory=list)
    surface: dict[str, float] | None = None

    @property
    def loss_before(self) -> float:
        return self.losses[0]

    @property
    def loss_after(self) -> float:
        return min(self.losses)


@dataclass
class E2EEvaluation:
    """One forward pass of end-to-end training.

    loss:       w_phys · physics loss + Σ scheduled weight · render term (differentiable), or
                the balanced surrogate (see e2e_loss)
    objective:  the same with the full (unscheduled) weights: comparable across iterations
    parts:      that objective's physics part and render part
    terms:      unweighted terms by name ('phys', 'alpha', 'depth', ...)
    trajectory: the rollout
    images:     rendered images of each supervised step
    """

    loss: torch.Tensor
    objective: torch.Tensor
    terms: dict[str, torch.Tensor]
    trajectory: Trajectory
    images: list[Images]
    parts: tuple[float, float] = (0.0, 0.0)


def anchor_term(problem: EpisodeProblem, losses: RenderLossConfig) -> tuple[str | None, float]:
    """The 3D term that the image terms are added to, and its weight: 'phys' (the target mass
    field, with arrival speed and Chamfer) when w_phys > 0; for an image-only target, 'hull'
    (the same loss against the visual hull carved from the images) when w_hull > 0; else none."""
    if losses.w_phys > 0:
        return "phys", losses.w_phys
    if losses.w_hull > 0 and problem.target_is_hull:
        return "hull", losses.w_hull
    return None, 0.0


def e2e_loss(
    problem: EpisodeProblem,
    objective: RenderObjective,
    controls: torch.Tensor | None,
    material: Material | None = None,
    progress: float = 1.0,
    parameters: Sequence[torch.Tensor] | None = None,
    simulated: tuple[Trajectory, torch.Tensor] | None = None,
) -> E2EEvaluation:
    """The anchor term (w_phys · physics loss, or w_hull · hull loss for an image-only target;
    see `anchor_term`) + weighted render terms at training `progress` ∈ [0, 1] for `controls`
    [K, N, 3, 3] and `material` (default the problem's): one graph back to the controls and any
    material tensor requiring grad.

    With `losses.render_gradient_ratio` set and the trained leaf tensors given as `parameters`,
    `loss` is instead a surrogate whose gradient is the balanced one (`balanced_gradient`: the
    render gradient scaled to that share of the physics gradient, its opposing part dropped);
    `objective` stays the plain weighted sum.

    simulated: the rollout of the controls under the problem's material and its
    EpisodeProblem.loss, made already (a CUDA-graph replay, physmorph.optimize.graphs); then
    `controls` and `material` are not used."""
    if simulated is None:
        if material is not None and material is not problem.model.material:
            problem = dataclasses.replace(problem, model=problem.model.with_material(material))
        trajectory, physics_loss = problem.rollout(controls), None
    else:
        trajectory, physics_loss = simulated
    terms, images = objective(trajectory)
    losses = objective.losses
    anchor, anchor_weight = anchor_term(problem, losses)
    if anchor is not None:
        terms = {anchor: problem.loss(trajectory) if physics_loss is None else physics_loss, **terms}
    scheduled = {anchor: anchor_weight, **losses.weights(progress)}
    full = {anchor: anchor_weight, **losses.weights(1.0)}
    like = trajectory.positions
    zero = torch.zeros((), dtype=like.dtype, device=like.device)
    loss = sum((scheduled[name] * term for name, term in terms.items()), zero)
    unscheduled = sum((full[name] * term.detach() for name, term in terms.items()), zero)
    physics = terms.get(anchor)
    if losses.balanced and physics is not None and parameters is not None and loss.requires_grad:
        render_part = sum((scheduled[name] * term for name, term in terms.items() if name != anchor), zero)
        if render_part.requires_grad:
            loss = balanced_surrogate(
                anchor_weight * physics,
                render_part,
                list(parameters),
                losses.render_gradient_ratio,
                losses.drop_conflicting_gradient,
            )
    physics_part = float(anchor_weight * physics.detach()) if physics is not None else 0.0
    parts = (physics_part, float(unscheduled) - physics_part)
    return E2EEvaluation(loss, unscheduled, terms, trajectory, images, parts)


def optimize_e2e(
    problem: EpisodeProblem,
    binding: SurfaceBinding,
    targets: TargetImages | Sequence[TargetImages],
    losses: RenderLossConfig,
    settings: OptimizationConfig,
    *,
    supervised_steps: Sequence[int] = (-1,),
    render_settings: RenderSettings | None = None,
    material: MaterialParameters = "none",
    material_learning_rate: float = 0.05,
    surface_parameters: bool = False,
    progress: Progress | None = None,
) -> E2EResult:
    """Adam on all controls of the episode (and optionally the material) against
    w_phys · physics loss (EpisodeProblem.loss: mass field, arrival speed and Chamfer terms)
    + Σ_steps Σ_views weighted render losses, through one autograd graph:
    controls → simulate → synthesize_surface → render → loss → backward.

    binding: surface bound to `problem.initial`'s particles. targets: one TargetImages for all
    `supervised_steps` (trajectory indices, −1 = last) or one per step. material: 'lame' also
    optimises log λ, log μ; 'youngs' log E and ν (kept in (−1, 0.5)); their learning rate is
    `material_learning_rate` (log units). surface_parameters: also trains the surfels' log
    size and flatness logit (learned values in E2EResult.surface). The loop is physmorph.optimize.adam's (cosine decay,
    early stop after `settings.patience` iterations without improvement, halved steps after a
    diverged rollout); the best iterate is kept. With losses.enabled false or all render
    weights 0 this is physics-only; w_phys = 0 is render-only.
    """
    if losses.w_phys == 0 and not any(losses.weights(1.0).values()):
        raise ConfigError(
            "optimization.loss: w_phys is 0 and every render weight is 0 (or enabled is false), "
            "so there is nothing to optimise; set w_phys > 0 or enable a render term"
        )
    objective = RenderObjective.build(
        binding,
        targets,
        losses,
        problem.initial.positions,
        problem.initial.deformation_gradients,
        problem.num_steps,
        supervised_steps,
        render_settings,
    )
    base_material = problem.model.material
    # Adam steps the control rates (ΔF per reference step, physmorph.optimize.units), like optimize_adam
    controls = problem.zero_rates().requires_grad_()
    material_parameters = [] if material == "none" else _material_parameters(base_material, material, controls)
    groups = [ParameterGroup([controls], settings.learning_rate * problem.rate_step_scale)]
    if material_parameters:
        groups.append(ParameterGroup(material_parameters, material_learning_rate))
    surface_leaves = _surface_parameters(binding, controls) if surface_parameters else []
    if surface_leaves:
        groups.append(ParameterGroup(surface_leaves, SURFACE_LEARNING_RATE))
    base_settings = objective.settings
    trained = [controls, *material_parameters, *surface_leaves]
    term_history: list[dict[str, float]] = []
    start: tuple[float, float] | None = None  # objective parts at the episode's start

    # the rollout and its 3D loss replay CUDA graphs where the problem allows (the material is then fixed)
    with_graph = settings.cuda_graph and material == "none" and anchor_term(problem, losses)[0] is not None
    captured = captured_rollout(problem, controls) if with_graph else None

    def evaluate(iteration: int, fraction: float) -> tuple[torch.Tensor, float]:
        nonlocal start
        term_history.append({})  # stays empty when the rollout diverges
        objective.settings = _with_surface(base_settings, surface_leaves)
        evaluation = e2e_loss(
            problem,
            objective,
            None if captured is not None else problem.controls_from_rates(controls),
            _material(base_material, material, material_parameters),
            fraction,
            trained,
            captured(controls, problem.initial) if captured is not None else None,
        )
        value = evaluation.objective.item()
        if losses.balanced:
            start = start or evaluation.parts
            value = balanced_objective(*evaluation.parts, start, losses.render_gradient_ratio)
        term_history[-1] = {name: float(term.detach()) for name, term in evaluation.terms.items()}
        return evaluation.loss, value

    outcome = adam_descent(groups, evaluate, settings, progress)
    best, history = outcome.best, outcome.losses

    material_count = len(material_parameters)
    best_controls = problem.controls_from_rates(best[0])
    best_material = _material(base_material, material, best[1 : 1 + material_count])
    best_surface = best[1 + material_count :]
    objective.settings = _with_surface(base_settings, best_surface)
    with torch.no_grad():
        final = e2e_loss(problem, objective, best_controls, best_material)
    metrics = [view_metrics(images, target) for images, target in zip(final.images, objective.targets)]
    if material != "none":
        best_material = Material(
            torch.as_tensor(best_material.lam).detach(),
            torch.as_tensor(best_material.mu).detach(),
            base_material.density,
            base_material.model,
        )
    surface = None
    if best_surface:
        learned = _with_surface(base_settings, best_surface)
        surface = {"scale": float(learned.surface_scale), "flatness": float(learned.surface_flatness)}
    return E2EResult(
        best_controls,
        best_material,
        final.trajectory,
        history,
        term_history,
        metrics,
        outcome.divergences,
        surface,
    )


SURFACE_LEARNING_RATE = 0.05  # Adam step of the surfels' log size and flatness logit


def _surface_parameters(binding: SurfaceBinding, like: torch.Tensor) -> list[torch.Tensor]:
    """Unconstrained leaves (log scale, logit flatness) starting at the binding's surfels."""
    flatness = (binding.normal_scales[0] / binding.tangent_scales[0]).to(like).clamp(1e-3, 1 - 1e-3)
    log_scale = torch.zeros((), dtype=like.dtype, device=like.device, requires_grad=True)
    return [log_scale, torch.logit(flatness).detach().requires_grad_()]


def _with_surface(settings: RenderSettings, leaves: Sequence[torch.Tensor]) -> RenderSettings:
    """`settings` rendering surfels of size exp(leaves[0]) and flatness sigmoid(leaves[1])."""
    if not leaves:
        return settings
    return dataclasses.replace(settings, surface_scale=leaves[0].exp(), surface_flatness=torch.sigmoid(leaves[1]))
