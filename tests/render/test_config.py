"""Tests for the render config section: the reference values load unchanged; bad ones fail."""

from __future__ import annotations

import pytest

from physmorph.errors import ConfigError
from physmorph.render.config import RenderConfig
from physmorph.settings import from_mapping

REFERENCE_RENDER = {
    "num_frames": 1,
    "schedule": "uniform",
    "bg": [1.0, 1.0, 1.0],
    "particle_color": [0.27, 0.51, 0.71],
    "lighting": {
        "model": "phong",
        "type": "directional",
        "direction": [0.3, -0.5, 0.8],
        "two_sided": True,
        "ambient": 0.18,
        "diffuse": 0.85,
        "specular": 0.10,
        "shininess": 32,
    },
}


def test_reference_render_section_loads():
    config = from_mapping(RenderConfig, REFERENCE_RENDER, "render")
    assert config.particle_color == (0.27, 0.51, 0.71)
    assert config.lighting.shininess == 32.0 and config.lighting.two_sided
    assert config.lighting.direction == (0.3, -0.5, 0.8)


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ({"num_frames": 0}, "render.num_frames"),
        ({"bg": [1.5, 0, 0]}, "render.bg"),
        ({"schedule": "random"}, "render.schedule"),
        ({"lighting": {"model": "pbr"}}, "render.lighting.model"),
        ({"lighting": {"shininess": 0}}, "render.lighting.shininess"),
        ({"lighting": {"direction": [0, 0, 0]}}, "render.lighting.direction"),
    ],
)
def test_bad_render_values_name_the_key(mapping, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_mapping(RenderConfig, mapping, "render")
