"""The reference `render` config section: frames to render, background, colour and lighting."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from physmorph.settings import require


@dataclass
class LightingConfig:
    """How Gaussians are shaded (reference `render.lighting`)."""

    model: Literal["phong", "lambert", "flat"] = "phong"
    type: Literal["directional"] = "directional"
    direction: tuple[float, float, float] = (0.3, -0.5, 0.8)  # world, from the scene toward the light
    # Surfels carry outward normals of a closed surface, so back faces need no light of their own;
    # flipping them (true) lights grazing surfels from behind and darkens silhouettes.
    two_sided: bool = False  # light back faces as if their normal faced the camera
    ambient: float = 0.18  # fraction of albedo always visible
    diffuse: float = 0.85  # Lambert weight
    specular: float = 0.10  # white Phong highlight weight
    shininess: float = 32.0  # Phong exponent

    def validate(self) -> None:
        require(
            any(v != 0.0 for v in self.direction),
            "render.lighting.direction",
            "must be a non-zero vector",
        )
        for key in ("ambient", "diffuse", "specular"):
            value = getattr(self, key)
            require(value >= 0.0, f"render.lighting.{key}", f"must be >= 0, got {value}")
        require(
            self.shininess > 0.0,
            "render.lighting.shininess",
            f"must be positive, got {self.shininess}",
        )


@dataclass
class RenderConfig:
    """The reference `render` section."""

    num_frames: int = 1  # how many simulation steps of an episode to render
    schedule: Literal["uniform", "last_n"] = "uniform"  # spread over the episode, or the last ones
    bg: tuple[float, float, float] = (1.0, 1.0, 1.0)  # background colour, linear [0, 1]
    particle_color: tuple[float, float, float] = (0.27, 0.51, 0.71)  # albedo, [0, 1]
    lighting: LightingConfig = field(default_factory=LightingConfig)

    def validate(self) -> None:
        require(self.num_frames >= 1, "render.num_frames", f"must be >= 1, got {self.num_frames}")
        for key in ("bg", "particle_color"):
            value = getattr(self, key)
            require(
                all(0.0 <= v <= 1.0 for v in value),
                f"render.{key}",
                f"must have components in [0, 1], got {list(value)}",
            )
        self.lighting.validate()
