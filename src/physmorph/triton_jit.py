"""triton.jit for kernels launched from the host, without Triton's specialisation on argument values."""

from __future__ import annotations

import inspect

import triton


def launched_kernel(fn):
    """triton.jit for a kernel launched from the host, without Triton's specialisation on argument values.

    Triton compiles a separate variant for each integer argument equal to 1 or divisible by 16
    and each pointer aligned to 16 bytes. In a morph those vary from call to call (a control
    ΔF or a cotangent is a slice of a stacked [T, N, ...] tensor, aligned or not by its offset;
    a Gaussian count or a stride-0 default opacity), and each variant costs a full compile,
    while physmorph's kernels gain nothing from them: every access is a strided gather of
    single scalars, never a vector load.
    """
    names = runtime_arguments(fn)
    return triton.jit(do_not_specialize=names, do_not_specialize_on_alignment=names)(fn)


def runtime_arguments(fn) -> list[str]:
    """Names of the arguments of kernel function `fn` that are not constexpr."""
    parameters = inspect.signature(fn).parameters.items()
    return [name for name, param in parameters if "constexpr" not in str(param.annotation)]
