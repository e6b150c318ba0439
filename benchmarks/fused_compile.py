"""Compile time and register use of the fused MPM, k-NN and render kernels for an H100 (sm_90), no GPU needed.

Runnable as `python benchmarks/fused_compile.py [--dtype float32] [--arch 90]` wherever Triton is
installed (`pip install triton` on a CPU machine will do): Triton compiles ahead of time for the
given architecture with its bundled LLVM and ptxas, and cuobjdump reads each kernel's registers,
shared memory and local (spill) memory. Launch parameters are those of physmorph.mpm.fused.function.
A GPU morph compiles each at its first launch, in the first episode; Triton caches the result on
disk.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from physmorph.mpm.fused import function as fused
from physmorph.mpm.fused import kernels
from physmorph.mpm.fused import return_mapping as plastic
from physmorph.render import fused as render_fused
from physmorph.surface import knn_kernel

INDEX_POINTERS = {"order_ptr", "keys_ptr", "runs_ptr"}


def signature(kernel, pointer: str, constants: dict) -> ASTSource:
    """Pointers by name (`*_ptr`, `*_out`), int32 for the rest; `constants` fixes the constexprs."""
    types = {}
    for name in kernel.arg_names:
        if name in constants:
            types[name] = "constexpr"
        elif name in INDEX_POINTERS or (kernel is kernels.cell_keys and name == "keys_ptr"):
            types[name] = "*i32"
        elif name.endswith("_ptr") or name.endswith("_out"):
            types[name] = pointer
        else:
            types[name] = "i32"
    return ASTSource(kernel, types, constants)


def knn_signatures(real: str) -> list[tuple[str, ASTSource]]:
    """The two k-NN kernels (surface/knn_kernel.py) as a Chamfer evaluation launches them."""
    pointer, index = f"*{real}", "*i64"
    first = dict.fromkeys(("queries", "points", "best_squared"), pointer)
    first |= dict.fromkeys(("query_cells", "counts", "starts", "best_index"), index)
    first |= dict.fromkeys(("query_count", "shape_x", "shape_y", "shape_z"), "i32") | {"BLOCK": "constexpr"}
    walk = dict.fromkeys(("queries", "query_cells", "best_squared", "points"), pointer)
    nodes = ("node_corners", "node_levels", "node_starts", "node_counts", "node_skips")
    walk |= dict.fromkeys(("best_index", *nodes), index)
    walk |= {"query_count": "i32", "node_count": "i32", "cell": real, "slack": real, "BLOCK": "constexpr"}
    return [
        ("knn_first_pass", ASTSource(knn_kernel._nearest_in_neighbouring_cells, first, {"BLOCK": knn_kernel._BLOCK})),
        ("knn_walk", ASTSource(knn_kernel._nearest_by_traversal, walk, {"BLOCK": knn_kernel._TRAVERSAL_BLOCK})),
    ]


RENDER_INTEGERS = ("count", "cameras", "pixels", "per_image")


def render_signatures(pointer: str) -> list[tuple[str, ASTSource]]:
    """The four kernels around gsplat (render/fused.py) as an e2e render launches them: Phong,
    normals on, every gradient present."""
    shading = {"MODEL": render_fused.SHADING_MODELS["phong"], "TWO_SIDED": False, "HAS_NORMALS": True}
    present = {"HAS_GRAD_FEATURES": True, "HAS_GRAD_UPPER": True, "HAS_GRAD_CLAMPED": True}
    images = {"HAS_GRAD_RGB": True, "HAS_GRAD_DEPTH": True, "HAS_GRAD_NORMAL": True}
    block = {"BLOCK": render_fused.BLOCK}

    def source(kernel, constants: dict) -> ASTSource:
        types = {}
        for name in kernel.arg_names:
            integer = "stride" in name or name in RENDER_INTEGERS
            types[name] = "constexpr" if name in constants else "i32" if integer else pointer
        return ASTSource(kernel, types, constants)

    return [
        ("shade_prepare", source(render_fused._prepare_forward, shading | block)),
        ("shade_prep_bwd", source(render_fused._prepare_backward, shading | present | block)),
        ("finish_images", source(render_fused._finish_forward, {"HAS_NORMALS": True} | block)),
        ("finish_bwd", source(render_fused._finish_backward, {"HAS_NORMALS": True} | images | block)),
    ]


def resources(cubin: bytes) -> dict[str, int]:
    """REG, SHARED and LOCAL (spilled bytes) of a cubin, from cuobjdump."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        text = subprocess.run([str(tool), "-res-usage", file.name], capture_output=True, text=True).stdout
    return {key: int(value) for key, value in re.findall(r"(REG|SHARED|LOCAL):(\d+)", text)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability × 10 (90 = H100/H200)")
    parser.add_argument(
        "--inner-unroll", type=int, default=fused.STENCIL_INNER_UNROLL, help="unroll of the inner stencil axes (1 or 4)"
    )
    args = parser.parse_args()
    pointer = "*fp32" if args.dtype == "float32" else "*fp64"
    unroll = {"UNROLL": fused.STENCIL_UNROLL, "INNER": args.inner_unroll}
    vector = {"VECTOR_ROWS": args.dtype == "float32" and args.arch >= 90}
    scan = {"BLOCK": fused.SCAN_BLOCK} | vector
    particle = {"BLOCK": fused.PARTICLE_BLOCK} | unroll | vector
    walls = {"CELLS": 3, "BOUNDARY": kernels.BOUNDARY_CODES["slip"], "BLOCK": fused.NODE_BLOCK}
    material = {"HAS_FORCE": False, "NEWTON": fused.NEWTON_ITERATIONS}
    variants = (
        ("cell_keys", kernels.cell_keys, {"BLOCK": fused.NODE_BLOCK}, 4),
        ("p2g_forward", kernels.p2g_forward, material | scan, fused.SCAN_WARPS),
        ("grid_velocity", kernels.grid_velocity, walls, 4),
        ("g2p_forward", kernels.g2p_forward, particle, fused.PARTICLE_WARPS),
        ("g2p_backward", kernels.g2p_backward, scan | unroll, fused.SCAN_WARPS),
        ("grid_backward", kernels.grid_backward, walls, 4),
        ("p2g_backward", kernels.p2g_backward, material | particle, fused.PARTICLE_WARPS),
        ("plastic_fwd", plastic.return_mapping_forward, {"SWEEPS": plastic.JACOBI_SWEEPS, "BLOCK": plastic.BLOCK}, 4),
        (
            "plastic_bwd",
            plastic.return_mapping_backward,
            {"SWEEPS": plastic.JACOBI_SWEEPS, "BLOCK": plastic.BLOCK, "GAP": plastic.SERIES_GAP},
            4,
        ),
    )
    sources = [(name, signature(kernel, pointer, constants), warps) for name, kernel, constants, warps in variants]
    sources += [(name, source, 4) for name, source in knn_signatures(pointer[1:])]
    sources += [(name, source, 4) for name, source in render_signatures(pointer)]
    target = GPUTarget("cuda", args.arch, 32)
    triton.knobs.compilation.always_compile = True  # time the compiler, not Triton's disk cache
    print(
        f"triton {triton.__version__}; sm_{args.arch}; {args.dtype}; with ΔF control, slip walls; "
        f"stencil unroll {fused.STENCIL_UNROLL} × {args.inner_unroll}²"
    )
    print(f"{'kernel':>14} {'warps':>5} {'compile s':>9} {'registers':>9} {'shared B':>8} {'spilled B':>9}")
    total = 0.0
    for name, source, warps in sources:
        start = time.perf_counter()
        compiled = triton.compile(source, target=target, options={"num_warps": warps})
        seconds = time.perf_counter() - start
        total += seconds
        use = resources(compiled.asm["cubin"])
        print(
            f"{name:>14} {warps:>5} {seconds:>9.1f} {use.get('REG', -1):>9} {use.get('SHARED', -1):>8}"
            f" {use.get('LOCAL', -1):>9}",
            flush=True,
        )
    print(f"{'total':>14} {'':>5} {total:>9.1f}")


if __name__ == "__main__":
    main()
