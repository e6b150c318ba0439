"""benchmarks/e2e_quality.py end to end on the smallest settings: the image-only row is scored too."""

import importlib.util
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]
_SCRIPT = _ROOT / "benchmarks" / "e2e_quality.py"
_MESHES = _ROOT.parent / "shared" / "meshes"


@pytest.mark.skipif(not (_MESHES / "spot.obj").exists(), reason="../shared/meshes is not present")
def test_an_image_only_row_gets_its_scores(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("e2e_quality", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    arguments = ["--device", "cpu", "--meshes", str(_MESHES), "--targets", "spot", "--size", "32"]
    arguments += ["--gaussians", "2000", "--episodes", "1", "--iterations", "1", "--views", "1"]
    monkeypatch.setattr(sys, "argv", ["e2e_quality.py", *arguments, "--only", "image only"])
    module.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if "image only" in line]
    assert len(rows) == 1 and "failed" not in rows[0], rows
    chamfer, heldout, train = (float(cell) for cell in rows[0].strip("|").split("|")[3:6])
    assert chamfer > 0 and 0 <= heldout <= 1 and 0 <= train <= 1
