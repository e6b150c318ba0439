"""Tests for image-target folders: round trip through save/load and clear errors for bad folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from physmorph.errors import InputError
from physmorph.io.images import write_png
from physmorph.io.targets import CAMERAS_FILE, TargetImages, load_image_targets, save_image_targets
from physmorph.render.cameras import Cameras, intrinsics, look_at, opencv_to_opengl

BOX = ((-2.0, -2.0, -2.0), (2.0, 2.0, 2.0))


def _targets(views=2, size=16, depth=True, rgb=True) -> TargetImages:
    """Synthetic views of a disc-shaped mask seen by cameras around the origin."""
    eyes = torch.tensor([[0.0, -8.0, 0.0], [8.0, 0.0, 1.0], [0.0, 8.0, 2.0]])[:views]
    viewmats = look_at(eyes, torch.zeros_like(eyes))
    K = intrinsics(14.0, 15.0, size / 2, size / 2 + 0.5).expand(views, 3, 3)
    cameras = Cameras(viewmats, K.clone(), size, size, 0.05, 50.0)
    ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = (((ii - size / 2) ** 2 + (jj - size / 2) ** 2) < (size / 3) ** 2).float()
    alpha = disc.expand(views, size, size).clone()
    return TargetImages(
        cameras,
        alpha,
        8.0 * alpha if depth else None,
        torch.rand(views, size, size, 3) if rgb else None,
        [f"cam{i}" for i in range(views)],
    )


def _manifest(folder: Path) -> dict:
    return json.loads((folder / CAMERAS_FILE).read_text())


def _rewrite(folder: Path, manifest: dict) -> None:
    (folder / CAMERAS_FILE).write_text(json.dumps(manifest))


def test_round_trip(tmp_path):
    original = _targets()
    save_image_targets(tmp_path, original)
    loaded = load_image_targets(tmp_path, scene_box=BOX, dtype=torch.float64)
    assert loaded.names == ["cam0", "cam1"]
    assert loaded.alpha.dtype == torch.float64
    assert torch.equal(loaded.alpha, original.alpha.double())
    assert torch.allclose(loaded.depth, original.depth.double(), atol=1e-3)  # millimetre steps
    assert torch.allclose(loaded.rgb, original.rgb.double(), atol=0.5 / 255 + 1e-6)
    assert torch.allclose(loaded.cameras.viewmats, original.cameras.viewmats.double(), atol=1e-6)
    assert torch.allclose(loaded.cameras.Ks, original.cameras.Ks.double())
    assert (loaded.cameras.znear, loaded.cameras.zfar) == (0.05, 50.0)
    masks_only = _targets(depth=False, rgb=False)
    save_image_targets(tmp_path / "masks", masks_only)
    loaded = load_image_targets(tmp_path / "masks")
    assert loaded.depth is None and loaded.rgb is None


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(InputError, match=r"has no cameras\.json"):
        load_image_targets(tmp_path)
    (tmp_path / CAMERAS_FILE).write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_image_targets(tmp_path)
    save_image_targets(tmp_path, _targets())
    (tmp_path / "cam1_mask.png").unlink()
    with pytest.raises(InputError, match=r"view 'cam1'.*mask file .*cam1_mask\.png' does not exist"):
        load_image_targets(tmp_path)


def test_bad_entries(tmp_path):
    save_image_targets(tmp_path, _targets())
    manifest = _manifest(tmp_path)
    bad = json.loads(json.dumps(manifest))
    del bad["images"][0]["fx"]
    _rewrite(tmp_path, bad)
    with pytest.raises(InputError, match=r"images\[0\] lacks fx"):
        load_image_targets(tmp_path)
    bad = json.loads(json.dumps(manifest))
    bad["images"][1]["world_to_camera"][0][0] = 2.0
    _rewrite(tmp_path, bad)
    with pytest.raises(InputError, match=r"view 'cam1'.*rigid transform"):
        load_image_targets(tmp_path)
    bad = json.loads(json.dumps(manifest))
    bad["images"][1]["name"] = "cam0"
    _rewrite(tmp_path, bad)
    with pytest.raises(InputError, match="used twice"):
        load_image_targets(tmp_path)
    bad = json.loads(json.dumps(manifest))
    del bad["images"][1]["depth"]
    _rewrite(tmp_path, bad)
    with pytest.raises(InputError, match="depth is given for 1 of 2 views"):
        load_image_targets(tmp_path)


def test_size_mismatch(tmp_path):
    save_image_targets(tmp_path, _targets())
    write_png(tmp_path / "cam1.png", torch.rand(12, 16, 3))
    with pytest.raises(InputError, match=r"view 'cam1'.*cam1\.png' is 16x12 pixels but the view says 16x16"):
        load_image_targets(tmp_path)
    manifest = _manifest(tmp_path)
    manifest["images"][1]["width"] = 20
    _rewrite(tmp_path, manifest)
    with pytest.raises(InputError, match="all views of a target set must share one image size"):
        load_image_targets(tmp_path)


def test_cameras_that_do_not_see_the_object(tmp_path):
    save_image_targets(tmp_path, _targets())
    write_png(tmp_path / "cam0_mask.png", torch.zeros(16, 16))
    with pytest.raises(InputError, match=r"view 'cam0'.*empty.*does not see the object"):
        load_image_targets(tmp_path)
    save_image_targets(tmp_path, _targets())
    manifest = _manifest(tmp_path)
    # an OpenGL-convention pose (z backward) given by mistake: the scene is behind the camera
    pose = torch.tensor(manifest["images"][1]["world_to_camera"], dtype=torch.float64)
    manifest["images"][1]["world_to_camera"] = opencv_to_opengl(pose).tolist()
    _rewrite(tmp_path, manifest)
    with pytest.raises(InputError, match=r"view 'cam1'.*lies behind the camera"):
        load_image_targets(tmp_path, scene_box=BOX)
    save_image_targets(tmp_path, _targets())
    manifest = _manifest(tmp_path)
    manifest["images"][0]["cx"] = 400.0  # the box lands right of the image
    _rewrite(tmp_path, manifest)
    with pytest.raises(InputError, match=r"view 'cam0'.*projects outside the image"):
        load_image_targets(tmp_path, scene_box=BOX)
