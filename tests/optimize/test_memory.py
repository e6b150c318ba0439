import pytest
import torch
import trimesh

import physmorph.optimize.memory as memory
from physmorph.config import SimulationConfig
from physmorph.errors import InputError
from physmorph.optimize.memory import check_rollout_fits, peak_bytes, rollout_bytes

CPU = torch.device("cpu")


def _fits(free, checkpoint_steps, monkeypatch):
    monkeypatch.setattr(memory, "free_memory", lambda device: free)
    return check_rollout_fits(
        [trimesh.creation.box((8.0, 8.0, 8.0))], SimulationConfig(), 40, 4, CPU, checkpoint_steps, "this morph", "FIX"
    )


def test_a_rollout_that_fits_whole_keeps_its_graph_else_recomputes_its_steps(monkeypatch):
    box = [trimesh.creation.box((8.0, 8.0, 8.0))]
    whole = rollout_bytes(box, SimulationConfig(), 40, 4, True, False)
    recomputed = rollout_bytes(box, SimulationConfig(), 40, 4, True, True)
    assert recomputed.bytes < whole.bytes / 5
    assert _fits(whole.bytes * 2, False, monkeypatch).bytes == whole.bytes
    assert _fits(whole.bytes * 2, True, monkeypatch).bytes == recomputed.bytes
    assert _fits(recomputed.bytes * 1.5, False, monkeypatch).bytes == recomputed.bytes


def test_a_rollout_that_cannot_fit_even_recomputed_is_refused_with_estimates_and_fix(monkeypatch):
    box = [trimesh.creation.box((8.0, 8.0, 8.0))]
    recomputed = rollout_bytes(box, SimulationConfig(), 40, 4, True, True)
    with pytest.raises(InputError, match=r"this morph needs about .* even with each MPM step recomputed.*free; FIX"):
        _fits(recomputed.bytes / 2, False, monkeypatch)


def test_peak_bytes_on_the_cpu_is_the_resident_peak():
    before = peak_bytes(CPU)
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert peak_bytes(CPU) >= max(before, block.numel() * 4)
