"""The Triton kernels around gsplat (render/fused.py) against the PyTorch reference ops.

On any machine with Triton the kernels run in its CPU interpreter (float64 values, hand-written
adjoints and a gradcheck); on a GPU they run compiled, float64 and float32, and the whole
gsplat render is compared with and without them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from physmorph.render import LightingConfig, intrinsics, look_at, render
from physmorph.render.cameras import Cameras
from physmorph.render.renderer import finish_images, gsplat_available
from physmorph.render.shading import shade
from physmorph.surface.gaussians import Gaussians

REPOSITORY = Path(__file__).resolve().parents[2]
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")

LIGHTINGS = {
    "phong": LightingConfig(),
    "phong-two-sided-soft": LightingConfig(two_sided=True, shininess=3.0, specular=0.5),
    "lambert": LightingConfig(model="lambert", direction=(-1.0, 0.2, 0.4)),
    "flat": LightingConfig(model="flat"),
}


def _viewmats(dtype: torch.dtype, device: str) -> torch.Tensor:
    eyes = [(20.0, -25.0, 15.0), (-18.0, 10.0, 5.0), (3.0, 2.0, -30.0)]
    return torch.stack([look_at(eye, (0.0, 0.0, 0.0), (0.0, 0.0, 1.0)) for eye in eyes]).to(dtype=dtype, device=device)


def _gaussian_inputs(count: int, dtype: torch.dtype, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random Gaussians: normals facing every way (some lit from behind), asymmetric covariances,
    opacities on both sides of the 0.99 clamp."""
    g = torch.Generator().manual_seed(seed)
    values = {
        "albedo": torch.rand(count, 3, generator=g),
        "means": 8.0 * torch.randn(count, 3, generator=g),
        "normals": torch.randn(count, 3, generator=g) * (0.5 + torch.rand(count, 1, generator=g)),
        "covariances": torch.randn(count, 3, 3, generator=g),
        "opacities": 1.2 * torch.rand(count, generator=g),
    }
    return {name: value.to(dtype=dtype, device=device) for name, value in values.items()}


def reference_prepare(albedo, means, normals, covariances, opacities, viewmats, lighting):
    rotation, translation = viewmats[:, :3, :3], viewmats[:, :3, 3]
    positions = -(rotation.transpose(-1, -2) @ translation[..., None])[..., 0]
    colors = shade(albedo, means, normals, positions, lighting)
    depths = means @ rotation[:, 2, :, None] + translation[:, 2, None, None]  # [C, M, 1] camera z
    channels = [colors, depths]
    if normals is not None:
        normal = normals.expand(len(viewmats), *normals.shape)
        channels = [colors, normal, depths, torch.zeros_like(depths)]
    symmetric = 0.5 * (covariances + covariances.transpose(-1, -2))
    upper = symmetric[:, [0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2]]
    return torch.cat(channels, -1), upper, opacities.clamp(max=0.99)


def _relative(a: torch.Tensor | None, r: torch.Tensor | None) -> float:
    if a is None or r is None:
        return 0.0 if a is None and r is None else float("inf")
    return float((a - r).norm() / r.norm().clamp(min=1e-30)) if r.norm() > 0 else float(a.norm())


def _compare(function, reference, inputs: dict, differentiable: list[str], select=slice(None)) -> dict[str, float]:
    """Relative errors of outputs and gradients (random cotangents on the `select`ed outputs)."""
    results = []
    for implementation in (function, reference):
        leaves = {k: v if v is None else v.detach().requires_grad_(k in differentiable) for k, v in inputs.items()}
        outputs = [o for o in implementation(**leaves)[select] if o is not None]
        g = torch.Generator().manual_seed(7)
        cotangents = [torch.randn(o.shape, generator=g, dtype=o.dtype).to(o.device) for o in outputs]
        grads = torch.autograd.grad(
            outputs, [leaves[k] for k in differentiable], cotangents, allow_unused=True, materialize_grads=True
        )
        results.append(([o.detach() for o in outputs], grads))
    (outputs, grads), (ref_outputs, ref_grads) = results
    errors = {f"output{i}": _relative(a, r) for i, (a, r) in enumerate(zip(outputs, ref_outputs))}
    errors.update({f"d{name}": _relative(a, r) for name, a, r in zip(differentiable, grads, ref_grads)})
    return errors


def _finish_inputs(
    dtype: torch.dtype, device: str, normals: bool, per_camera_background: bool, height: int = 9, width: int = 17
) -> dict:
    g = torch.Generator().manual_seed(3)
    cameras = 2
    alpha = torch.rand(cameras, height, width, 1, generator=g)
    alpha[0, :3] = 0.0
    alpha[1, 0, :5] = 1e-3  # below the covered threshold
    channels = 8 if normals else 4
    features = torch.randn(cameras, height, width, channels, generator=g) * alpha
    background = torch.rand(cameras, height, width, 3, generator=g) if per_camera_background else torch.rand(3)
    values = {"features": features, "alpha": alpha, "background": background}
    return {name: value.to(dtype=dtype, device=device) for name, value in values.items()}


def _reference_finish(features, alpha, background):
    """renderer.finish_images on the fused layout (colour, normal, depth, zero)."""
    torch_layout = features
    if features.shape[-1] == 8:
        torch_layout = torch.cat([features[..., :3], features[..., 6:7], features[..., 3:6]], -1)
    images = finish_images(torch_layout, alpha[..., 0], background)
    return images["rgb"], images["depth"], images["normal"]


def comparison_errors(device: str, dtype: torch.dtype) -> dict[str, float]:
    """Every fused kernel against its reference: the largest relative error of any output or
    gradient per case."""
    from physmorph.render.fused import finish_images as fused_finish
    from physmorph.render.fused import prepare_gaussians

    viewmats = _viewmats(dtype, device)
    errors = {}
    for name, lighting in LIGHTINGS.items():
        inputs = _gaussian_inputs(300, dtype, device)
        differentiable = ["albedo", "means", "normals", "covariances", "opacities"]

        def fused(lighting=lighting, **leaves):
            return prepare_gaussians(**leaves, viewmats=viewmats, lighting=lighting, max_opacity=0.99)

        def reference(lighting=lighting, **leaves):
            return reference_prepare(**leaves, viewmats=viewmats, lighting=lighting)

        errors[name] = max(_compare(fused, reference, inputs, differentiable).values())
        if name == "phong":
            only_colour = _compare(fused, reference, inputs, differentiable, select=slice(0, 1))
            errors["phong-colour-cotangent-only"] = max(only_colour.values())

            def widened(implementation, **leaves):
                # gsplat appends the depth column the same way: the gradient comes back as a slice
                features = implementation(**leaves)[0]
                return (torch.cat([features, features[..., :1]], -1),)

            sliced = _compare(partial(widened, fused), partial(widened, reference), inputs, differentiable)
            errors["phong-sliced-cotangent"] = max(sliced.values())
    soft = LIGHTINGS["phong-two-sided-soft"]
    degenerate = _gaussian_inputs(300, dtype, device, seed=4)
    degenerate["normals"][:3] = 0.0  # a zero normal: the unit normal's floor, as shading._unit has it
    zero_normals = _compare(
        partial(prepare_gaussians, viewmats=viewmats, lighting=soft, max_opacity=0.99),
        partial(reference_prepare, viewmats=viewmats, lighting=soft),
        degenerate,
        ["albedo", "means", "normals", "covariances", "opacities"],
    )
    errors["phong-zero-normals"] = max(zero_normals.values())
    flat = _gaussian_inputs(300, dtype, device, seed=1)
    flat["normals"] = None
    flat["albedo"] = flat["albedo"][:1].expand(300, 3)
    flat["opacities"] = flat["opacities"][:1].expand(300)
    stride_zero = _compare(
        partial(prepare_gaussians, viewmats=viewmats, lighting=None, max_opacity=0.99),
        partial(reference_prepare, viewmats=viewmats, lighting=None),
        flat,
        ["albedo", "means", "covariances", "opacities"],
    )
    errors["flat-no-normals-stride-0"] = max(stride_zero.values())
    for normals in (True, False):
        for per_camera in (True, False):
            inputs = _finish_inputs(dtype, device, normals, per_camera)

            def fused_images(**leaves):
                return fused_finish(**leaves, covered_above=0.5 / 255.0)

            case = f"finish-normals{int(normals)}-background{'CHW3' if per_camera else '3'}"
            errors[case] = max(_compare(fused_images, _reference_finish, inputs, ["features", "alpha"]).values())
            depth_only = _compare(fused_images, _reference_finish, inputs, ["features", "alpha"], select=slice(1, 2))
            errors[case + "-depth-cotangent-only"] = max(depth_only.values())
    return errors


def gradcheck_passes(device: str) -> bool:
    """torch.autograd.gradcheck (float64) of both fused functions on small cases."""
    from physmorph.render.fused import finish_images as fused_finish
    from physmorph.render.fused import prepare_gaussians

    viewmats = _viewmats(torch.float64, device)
    inputs = _gaussian_inputs(6, torch.float64, device, seed=2)
    leaves = [inputs[k].requires_grad_(True) for k in ("albedo", "means", "normals", "covariances", "opacities")]
    lighting = LIGHTINGS["phong-two-sided-soft"]
    prepared = torch.autograd.gradcheck(
        lambda *x: prepare_gaussians(*x, viewmats, lighting, 0.99), leaves, eps=1e-6, atol=1e-6, fast_mode=True
    )
    images = _finish_inputs(torch.float64, device, True, True, height=4, width=6)
    finished = torch.autograd.gradcheck(
        lambda f, a: fused_finish(f, a, images["background"], 0.5 / 255.0),
        [images["features"].requires_grad_(True), images["alpha"].requires_grad_(True)],
        eps=1e-6,
        atol=1e-6,
        fast_mode=True,
    )
    return bool(prepared and finished)


INTERPRETER_SCRIPT = """
import json
import torch
from tests.render.test_fused import comparison_errors, gradcheck_passes
print(json.dumps({"errors": comparison_errors("cpu", torch.float64), "gradcheck": gradcheck_passes("cpu")}))
"""


@needs_triton
def test_fused_render_kernels_in_the_interpreter_match_the_reference_and_pass_gradcheck():
    environment = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore"}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), environment.get("PYTHONPATH")]))
    run = subprocess.run(
        [sys.executable, "-c", INTERPRETER_SCRIPT],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["gradcheck"]
    assert len(result["errors"]) == 16 and all(error < 1e-10 for error in result["errors"].values()), result


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_render_kernels_on_the_gpu_match_the_reference():
    double = comparison_errors("cuda", torch.float64)
    assert all(error < 1e-10 for error in double.values()), double
    single = comparison_errors("cuda", torch.float32)
    assert all(error < 1e-4 for error in single.values()), single
    assert gradcheck_passes("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and gsplat_available()), reason="needs CUDA and gsplat")
def test_gsplat_render_with_and_without_the_fused_kernels_agrees():
    inputs = _gaussian_inputs(4000, torch.float32, "cuda", seed=5)
    covariances = 0.05 * inputs["covariances"] @ inputs["covariances"].transpose(-1, -2)
    K = intrinsics(300.0, 300.0, 96.0, 64.0, device="cuda")
    cameras = Cameras(_viewmats(torch.float32, "cuda"), K.expand(3, 3, 3), 192, 128)
    results = []
    for fused in (True, False):
        leaves = [t.clone().requires_grad_(True) for t in (inputs["means"], covariances, inputs["normals"])]
        gaussians = Gaussians(leaves[0], leaves[1], normals=leaves[2], colors=inputs["albedo"])
        images = render(gaussians, cameras, shading=LightingConfig(), backend="gsplat", fused=fused)
        outputs = [images.rgb, images.alpha, images.depth, images.normal]
        g = torch.Generator().manual_seed(1)
        cotangents = [torch.randn(o.shape, generator=g).cuda() for o in outputs]
        results.append([o.detach() for o in outputs] + list(torch.autograd.grad(outputs, leaves, cotangents)))
    errors = [_relative(a, r) for a, r in zip(*results)]
    assert float(results[1][1].sum()) > 100.0  # the views see the Gaussians
    assert max(errors) < 1e-4, errors
