"""Compile the Triton kernels a morph will launch, all at once in threads, before its first step.

Triton compiles a kernel the first time it is launched, so a first episode compiles its kernels
one after another. `start_warm_up` runs one dry forward and backward step of a probe of a few
particles, and one k-NN search of a few points, with Triton's compile hook set: every kernel
variant that is not compiled yet is recorded instead of compiled (and not launched). A thread per
variant then compiles it into Triton's on-disk cache (TRITON_CACHE_DIR), and the first real
launch of each finds it there. Triton's compiler spends most of its time outside the GIL (MLIR and
LLVM passes, ptxas), so the threads overlap: two adjoint kernels compile in 2.56 s together
against 3.27 s one after the other on a 2-core CPU (Triton 3.9). The kernels specialise on dtype,
wall condition, force and plasticity only (kernels.launched_kernel), so the probe's variants are
those of every rollout of the same model.

Tested with Triton 3.6 and 3.9. A Triton without the hook or the compile API that a launch's
compile is rebuilt with is passed over before any step (its kernels compile at their first launch);
a variant whose hook data cannot be rebuilt stops the dry step at that kernel, so a failed attempt
costs one launch, not a step.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

import torch

from physmorph.mpm.state import Model, State

# Particles of the probe step: enough for a cell of its own and a shared one.
PROBE_PARTICLES = 4
# The key of the variant JSON's entry that holds the kernel's hash when it was recorded (JITFunction.hash).
KERNEL_HASH = "physmorph_kernel_hash"
# What the recording and the rebuilt compiles use of Triton besides its JIT's compile hook, by module.
TRITON_API = {
    "triton._C.libtriton": ("get_cache_invalidating_env_vars",),
    "triton.backends.compiler": ("GPUTarget",),
    "triton.compiler": ("ASTSource",),
    "triton.compiler.compiler": ("make_backend",),
    "triton.runtime.cache": ("get_cache_key", "get_cache_manager"),
    "triton.runtime.driver": ("driver",),
}


class WarmUpWarning(UserWarning):
    """A kernel could not be compiled ahead; it compiles at its first launch instead."""


@dataclass
class WarmUp:
    """Kernel variants being compiled in threads; `wait` blocks until they are done.

    names: the variants' names (module.kernel), one per future
    """

    names: list[str]
    futures: list[Future]
    executor: ThreadPoolExecutor

    def wait(self) -> dict[str, float]:
        """Compile seconds of each variant (by name) once every thread has finished; failures warn, never raise."""
        # An optimiser's first construction imports torch._dynamo (torch.optim's add_param_group is
        # dynamo-disabled): 1.6 s on a 2-core CPU, 2-4 s of the first episode on a new H200 host
        # (no .pyc files there). Here it overlaps the compiles' time outside the GIL instead.
        importlib.import_module("torch._dynamo")
        seconds: dict[str, float] = {}
        failed: dict[str, str] = {}
        for name, future in zip(self.names, self.futures):
            try:
                seconds[name] = seconds.get(name, 0.0) + future.result()
            except Exception as error:  # the launch compiles it instead, and reports a real failure there
                failed[name] = repr(error)
        self.executor.shutdown()
        if failed:
            listed = "; ".join(f"{name}: {error}" for name, error in failed.items())
            message = f"ahead-of-time compile failed ({listed}); they compile at their first launch"
            warnings.warn(message, WarmUpWarning, stacklevel=2)
        return seconds


def start_warm_up(
    model: Model,
    dtype: torch.dtype,
    device: torch.device,
    workers: int | None = None,
    searches: Sequence[tuple[int, int]] | None = None,
) -> WarmUp | None:
    """Start compiling every kernel variant that rollouts of `model` (with and without ΔF control,
    and their backward) and the k = 1 nearest-neighbour `searches` will launch on `device` in
    `dtype`, in up to `workers` threads (default: one per CPU core).

    searches: the (queries, points) sizes of the k = 1 searches the run makes (knn.launch_kernels);
    None for every search kernel, an empty sequence for none.
    Only the model's settings count (grid, walls, material, plasticity), not its particle arrays.
    Returns None where the fused step would not run (no CUDA, no Triton, an unsupported model, the
    Triton interpreter), where Triton lacks what the warm-up needs (supports_warm_up), or where every
    variant is compiled already; then there is nothing to wait for.
    """
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") or not supports_warm_up():
        return None
    from physmorph.mpm.fused import supports_fused

    device = _indexed(device)
    state, probe = _probe(model, dtype, device)
    if not supports_fused(state, probe):
        return None
    return _start(lambda: pending_variants(state, probe, searches), device, workers)


def start_search_warm_up(
    like: torch.Tensor, searches: Sequence[tuple[int, int]] | None, workers: int | None = None
) -> WarmUp | None:
    """Start compiling the nearest-neighbour kernels that the k = 1 `searches` (as in start_warm_up)
    will launch on tensors of `like`'s dtype and device, for a run that knows its search sizes only
    after its step kernels started compiling. None where there is nothing to compile or wait for."""
    from physmorph.surface.knn import launch_kernels

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") or not supports_warm_up():
        return None
    device = _indexed(like.device)

    def recorded() -> dict[str, int]:
        with _recording() as variants:
            launch_kernels(like, searches)
        return variants

    return _start(recorded, device, workers)


def _indexed(device: torch.device) -> torch.device:
    """`device` with its index: the threads make it current to load the kernels."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _start(record: Callable[[], dict[str, int]], device: torch.device, workers: int | None) -> WarmUp | None:
    """Compile, in threads, the variants that `record` records and that are not cached yet."""
    try:
        recorded = record()
        variants = {variant: size for variant, size in recorded.items() if not is_cached(variant)}
    except Exception as error:  # a hook or cache that differs from 3.6-3.9's: the kernels compile when launched
        warnings.warn(f"no ahead-of-time compile of the kernels ({error!r})", WarmUpWarning, stacklevel=3)
        return None
    if not variants:
        return None
    executor = ThreadPoolExecutor(max_workers=max(1, min(len(variants), workers or os.cpu_count() or 1)))
    # longest first: the last to start should be short
    ordered = sorted(variants, key=variants.get, reverse=True)
    futures = [executor.submit(_timed_compile, variant, device) for variant in ordered]
    return WarmUp([json.loads(variant)["name"] for variant in ordered], futures, executor)


def supports_warm_up() -> bool:
    """Whether the installed Triton has what the warm-up relies on: the JIT's compile hook
    (triton.knobs.runtime.jit_cache_hook) and TRITON_API. Imports only; no kernel is specialised."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        modules = {name: importlib.import_module(name) for name in TRITON_API}
        runtime = importlib.import_module("triton.knobs").runtime
    except (ImportError, AttributeError):
        return False
    names = [(modules[module], name) for module, names in TRITON_API.items() for name in names]
    return hasattr(runtime, "jit_cache_hook") and all(hasattr(module, name) for module, name in names)


def pending_variants(state: State, model: Model, searches: Sequence[tuple[int, int]] | None = None) -> dict[str, int]:
    """Triton's specialisation JSON (with target and kernel hash) of every kernel variant that a step of `state`
    under `model` (with and without ΔF control) and its backward, and the k = 1 nearest-neighbour
    `searches` (as in start_warm_up) in the state's dtype, would compile, with the length of the
    kernel's source: a dry run that launches nothing uncompiled (kernels compiled already run, on
    the probe's valid data). Raises at the first variant that cannot be rebuilt from its JSON."""
    from physmorph.mpm.fused import fused_step
    from physmorph.surface.knn import launch_kernels

    with _recording() as variants, torch.enable_grad():
        for control in (torch.zeros_like(state.deformation_gradients), None):
            leaves = [tensor.detach().clone().requires_grad_() for tensor in state.tensors[:4]]
            if control is not None:
                control.requires_grad_()
            after = fused_step(State(*leaves, *state.tensors[4:]), model, control)
            outputs = [tensor for tensor in after.tensors if tensor.requires_grad]
            torch.autograd.backward(outputs, [torch.ones_like(tensor) for tensor in outputs])
        launch_kernels(state.positions, searches)
    return variants


def _probe(model: Model, dtype: torch.dtype, device: torch.device) -> tuple[State, Model]:
    """A state of PROBE_PARTICLES at rest around the grid's centre, and `model` sized for it."""
    grid = model.grid
    centre = torch.tensor([(low + high) / 2 for low, high in zip(grid.min_corner, grid.max_corner)], dtype=dtype)
    offsets = torch.linspace(0.0, 1.5 * grid.dx, PROBE_PARTICLES, dtype=dtype)[:, None]
    positions = (centre + offsets).to(device)
    state = State.at_rest(positions)
    if model.plasticity is not None:
        state = replace(state, plastic_strain=torch.zeros(PROBE_PARTICLES, dtype=dtype, device=device))
    material = model.material
    scalars = {name: _first(getattr(material, name), dtype, device) for name in ("lam", "mu", "density")}
    ones = torch.ones(PROBE_PARTICLES, dtype=dtype, device=device)
    probe = replace(model, material=replace(material, **scalars), lattice_volumes=ones, volumes=ones)
    return state, probe


def _first(value: torch.Tensor | float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A per-particle or scalar material parameter as a 0-d tensor (the kernels do not specialise on which)."""
    number = float(value.reshape(-1)[0]) if isinstance(value, torch.Tensor) else float(value)
    return torch.tensor(number, dtype=dtype, device=device)


@contextmanager
def _recording() -> Iterator[dict[str, int]]:
    """Within: a launch of an uncompiled kernel records its specialisation JSON with the target and
    the kernel's hash (KERNEL_HASH), and the length of its source (a proxy of its compile time), and
    returns without compiling; one whose JSON cannot be rebuilt into its compile raises there,
    before the rest of the step."""
    import triton
    from triton.runtime.driver import driver

    variants: dict[str, int] = {}

    def record(*, fn: object, compile: dict, **_: object) -> bool:
        data = json.loads(compile["specialization_data"])
        # Triton 3.6 leaves the target out (later ones write it); its launch compiles for the
        # current device's, which the JIT takes from the same call when it first sees the device
        data.setdefault("target", asdict(driver.active.get_current_target()))
        data[KERNEL_HASH] = fn.jit_function.cache_key
        variant = json.dumps(data)
        variant_source(variant)
        variants[variant] = len(fn.jit_function.src)
        return True  # skip the compile, and with it the launch

    previous = triton.knobs.runtime.jit_cache_hook
    triton.knobs.runtime.jit_cache_hook = record
    try:
        yield variants
    finally:
        triton.knobs.runtime.jit_cache_hook = previous


def _timed_compile(variant: str, device: torch.device) -> float:
    """Seconds to compile `variant` into the disk cache and, on a GPU, to load it and build its launcher."""
    start = time.perf_counter()
    compiled = compile_variant(variant)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # the thread's current context, where Triton loads the module
        compiled._init_handles()
    return time.perf_counter() - start


def compile_variant(variant: str) -> object:
    """Compile one variant (specialisation JSON with target, as `pending_variants` records it) into
    the disk cache; returns Triton's compiled kernel."""
    import triton

    source, target, options = variant_source(variant)
    return triton.compile(source, target=target, options=options)


def variant_source(variant: str) -> tuple[object, object, dict]:
    """(ASTSource, GPUTarget, options) of a variant: what its launch would have compiled (same
    source, signature, constants, attributes, options and target, hence the same cache key)."""
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend

    data = json.loads(variant)
    module, name = data["name"].rsplit(".", 1)
    kernel = getattr(importlib.import_module(module), name)
    # Triton 3.6 folds a helper's global constants into its caller's hash only if the helper was
    # hashed first, so a kernel's hash, and with it the cache key, depends on what its process
    # hashed before: take that of the process that launches it
    kernel.hash = data[KERNEL_HASH]

    def constant(value: object) -> object:
        if isinstance(value, str) and tl.dtype.is_dtype(value):
            return tl.dtype(value)
        if isinstance(value, dict) and "constexpr" in value:
            return tl.constexpr(_tuples(value["constexpr"]))
        return _tuples(value)

    constants = {tuple(key): constant(value) for key, value in zip(data["constant_keys"], data["constant_vals"])}
    attrs = {tuple(key): value for key, value in zip(data["attrs_keys"], data["attrs_vals"])}
    signature = {key: _tuples(value) for key, value in data["signature"].items()}
    target = GPUTarget(**data["target"])
    options = make_backend(target).parse_options(
        {key: tuple(value) if isinstance(value, list) else value for key, value in data["options"].items()}
    )
    return ASTSource(kernel, signature, constants, attrs), target, options.__dict__


def is_cached(variant: str) -> bool:
    """Whether Triton's disk cache holds `variant` (its first launch would load, not compile, it)."""
    from triton.runtime.cache import get_cache_manager

    source, target, options = variant_source(variant)
    group = get_cache_manager(cache_key(source, target, options)).get_group(f"{source.name[:150]}.json")
    return bool(group) and f"{source.name[:150]}.json" in group


def cache_key(source: object, target: object, options: dict) -> str:
    """The disk-cache key under which triton.compile(source, target, options) stores its result
    (its own computation, without the compile)."""
    import hashlib

    from triton._C.libtriton import get_cache_invalidating_env_vars
    from triton.compiler.compiler import make_backend
    from triton.runtime.cache import get_cache_key

    backend = make_backend(target)
    parsed = backend.parse_options(dict(options, **source.parse_options()))
    key = get_cache_key(source, backend, parsed, env_vars=get_cache_invalidating_env_vars())
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _tuples(value: object) -> object:
    """JSON's lists back to the tuples Triton wrote (its kernel signatures hold no lists)."""
    return tuple(_tuples(item) for item in value) if isinstance(value, list) else value
