"""Tests for video writing and atomic writes."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from physmorph.io import atomic_path, ffmpeg_available, write_video


def test_gif_frames_round_trip(tmp_path):
    frames = [np.full((6, 8, 3), value, dtype=np.uint8) for value in (0, 128, 255)]
    path = write_video(tmp_path / "clip.gif", frames, fps=10)
    assert path == tmp_path / "clip.gif"
    read = iio.imread(path, index=None)
    assert read.shape[0] == 3 and abs(int(read[1, 0, 0, 0]) - 128) <= 2


@pytest.mark.skipif(not ffmpeg_available(), reason="imageio-ffmpeg has no ffmpeg binary")
def test_mp4_with_odd_size(tmp_path):
    frames = torch.rand(4, 9, 11, 3)
    path = write_video(tmp_path / "clip.mp4", frames)
    assert path.suffix == ".mp4" and path.stat().st_size > 0
    assert iio.imread(path, index=None, plugin="FFMPEG").shape[:3] == (4, 10, 12)


def test_gif_fallback_without_ffmpeg(tmp_path, monkeypatch):
    monkeypatch.setattr("physmorph.io.video.ffmpeg_available", lambda: False)
    path = write_video(tmp_path / "clip.mp4", [np.zeros((4, 4, 3))])
    assert path == tmp_path / "clip.gif" and path.is_file()


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with atomic_path(target) as temporary:
        temporary.write_text("new")
    assert target.read_text() == "new"
