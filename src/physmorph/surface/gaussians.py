"""The Gaussians dataclass: anisotropic 3D Gaussians passed from the surface stage to the renderer."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Gaussians:
    """A set of M anisotropic 3D Gaussians (batch dimensions, if any, come first).

    means:       [..., M, 3]    centres, grid units
    covariances: [..., M, 3, 3] symmetric positive definite, grid units squared
    normals:     [..., M, 3]    unit outward normals (for shading and normal maps), or None
    colors:      [..., M, 3]    albedo in [0, 1], or None (the renderer's default colour)
    opacities:   [..., M]       peak opacity in (0, 1], or None (the renderer's default)
    """

    means: torch.Tensor
    covariances: torch.Tensor
    normals: torch.Tensor | None = None
    colors: torch.Tensor | None = None
    opacities: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return int(self.means.shape[-2])

    def detach(self) -> Gaussians:
        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach()

        return Gaussians(
            self.means.detach(),
            self.covariances.detach(),
            cut(self.normals),
            cut(self.colors),
            cut(self.opacities),
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Gaussians:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return Gaussians(
            move(self.means),
            move(self.covariances),
            move(self.normals),
            move(self.colors),
            move(self.opacities),
        )
