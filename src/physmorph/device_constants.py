"""Small host constants as device tensors made once: a host-to-device copy waits, and a CUDA graph cannot capture it."""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=512)
def device_constant(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`values` as a 1-D tensor of `dtype` on `device`, shared by every caller: never write to it."""
    return torch.tensor(values, dtype=dtype, device=device)
