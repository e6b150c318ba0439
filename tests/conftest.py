"""Shared test fixtures: the `gpu` marker skip and the optional ../shared data folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_dir() -> Path:
    """The ../shared folder beside the checkout (meshes, reference config); skip when absent."""
    if not (SHARED / "meshes").is_dir():
        pytest.skip("../shared/meshes is not present")
    return SHARED
