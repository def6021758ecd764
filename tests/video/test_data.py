"""Built-in clips and real-file loaders (round trips on generated MP4 / GIF / WebM / frames)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from polydiff.video.data import (
    BouncingDigits,
    MovingShapes,
    VideoFileError,
    VideoFolderDataset,
    bounce,
    parse_shape_caption,
    probe_video_folder,
    read_video,
    resample_indices,
)
from polydiff.video.io import save_gif, write_video
from polydiff.video.metrics import centroids


def test_bounce_is_a_reflected_line():
    t = np.arange(50, dtype=float)
    p = bounce(3.0, 1.7, 0.0, 10.0, t)
    assert p.min() >= 0 and p.max() <= 10
    steps = np.abs(np.diff(p))
    # speed is kept; only steps that cross a wall are shorter (the reflection folds them)
    assert np.allclose(steps[steps > 1.7 - 1e-9], 1.7) and (steps <= 1.7 + 1e-9).all()
    np.testing.assert_allclose(bounce(3.0, 1.7, 0.0, 10.0, t[:3]), [3.0, 4.7, 6.4])
    np.testing.assert_allclose(bounce(9.0, 2.0, 0.0, 10.0, 1.0), 9.0)  # 11 folds back to 9


def test_bouncing_digits_shapes_labels_and_exact_centroids():
    ds = BouncingDigits(n=12, frames=6, size=24, seed=3)
    assert ds.videos.shape == (12, 1, 6, 24, 24) and ds.digit_size == 9
    assert float(ds.videos.min()) == -1.0 and float(ds.videos.max()) <= 1.0
    assert ds[0]["class"] == ds.labels[0, 0] and ds.labels.min() >= 0 and ds.labels.max() <= 9
    # sub-pixel bilinear placement: the intensity centroid follows the true trajectory exactly
    np.testing.assert_allclose(
        centroids(ds.videos, threshold=0.0)[:, :, :], ds.centroids[:, 0], atol=1e-4
    )
    again = BouncingDigits(n=12, frames=6, size=24, seed=3)
    assert torch.equal(ds.videos, again.videos)
    other = BouncingDigits(n=12, frames=6, size=24, seed=4)
    assert not torch.equal(ds.videos, other.videos)
    two = BouncingDigits(n=8, frames=4, size=24, num_digits=(1, 2), seed=0)
    assert set(two.counts.tolist()) <= {1, 2} and (two.labels[two.counts == 1, 1] == -1).all()
    assert "class" not in two[0]
    with pytest.raises(ValueError, match="digit_size 30 must be smaller than the canvas 24"):
        BouncingDigits(n=2, size=24, digit_size=30)


def test_moving_shapes_captions_and_motion():
    ds = MovingShapes(n=40, frames=6, size=24, seed=1)
    assert ds.videos.shape == (40, 3, 6, 24, 24)
    for spec, cap in zip(ds.specs, ds.captions):
        assert parse_shape_caption(cap) == spec
    track = centroids(ds.videos, threshold=0.0)  # any colour differs from the black background
    for spec, tr in zip(ds.specs, track):
        dy, dx = tr[-1] - tr[0]
        if spec.motion == "moves left":
            assert dx < -3 and abs(dy) < 0.5
        if spec.motion == "moves down":
            assert dy > 3 and abs(dx) < 0.5
    with pytest.raises(ValueError, match="not a moving-shapes caption: 'a red thing'"):
        parse_shape_caption("a red thing")


def test_resample_indices():
    times = np.arange(16) / 8.0  # 16 frames at 8 fps
    np.testing.assert_array_equal(resample_indices(times, 4, 4.0), [0, 2, 4, 6])
    np.testing.assert_array_equal(resample_indices(times, 4, None, start=0.5), [4, 5, 6, 7])
    np.testing.assert_array_equal(resample_indices(times, 3, 16.0), [0, 0, 1])
    assert resample_indices(times, 9, 4.0) is None  # needs 2.25 s, the video lasts 2 s
    assert resample_indices(times, 17, None) is None


def _clip(value_per_frame: list[int], size: int = 16, colour: bool = False) -> np.ndarray:
    frames = np.zeros((len(value_per_frame), size, size, 3), dtype=np.uint8)
    for i, v in enumerate(value_per_frame):
        frames[i] = v
        if colour:
            frames[i, ..., 0] = 255 - v
    return frames


def _write_frames(folder, frames):
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:03d}.png")


def test_frame_folders_round_trip_exactly_and_resample(tmp_path):
    values = [10 * i for i in range(12)]
    _write_frames(tmp_path / "clips" / "a", _clip(values))
    _write_frames(tmp_path / "clips" / "b", _clip(values[::-1]))
    ds = VideoFolderDataset(tmp_path / "clips", frames=4, fps=4.0, frame_folder_fps=8.0)
    assert ds.channels == 1 and ds.size == 16 and ds.num_classes is None and ds.captions is None
    got = ((ds.videos[:, 0, :, 0, 0] + 1) * 127.5).round()
    np.testing.assert_array_equal(got[0].numpy(), [0, 20, 40, 60])  # every other frame
    np.testing.assert_array_equal(got[1].numpy(), [110, 90, 70, 50])
    assert ds[0]["x"].shape == (1, 4, 16, 16) and "class" not in ds[0]


def test_video_files_round_trip_with_classes_and_captions(tmp_path):
    root = tmp_path / "data"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    frames = _clip([40 * i for i in range(6)], size=16, colour=True)
    write_video(frames, root / "cats" / "one.mp4", fps=8)
    save_gif(
        torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1,
        root / "dogs" / "two.gif",
        fps=8,
        scale=1,
    )
    write_video(frames, root / "dogs" / "three.webm", fps=8, codec="libvpx-vp9")
    (root / "captions.jsonl").write_text(
        "\n".join(
            json.dumps({"file": n, "caption": f"clip {n}"})
            for n in ("one.mp4", "two.gif", "three.webm")
        )
    )
    for name in ("cats/one.mp4", "dogs/two.gif", "dogs/three.webm"):
        data, times = read_video(root / name)
        assert data.shape == (6, 16, 16, 3), name
        np.testing.assert_allclose(times, np.arange(6) / 8, atol=0.03)  # GIF: 10 ms units
        err = np.abs(data.astype(float) - frames.astype(float)).mean()
        assert err < 6, (name, err)  # lossy codecs: close, not exact
    info = probe_video_folder(root)
    assert info.class_names == ["cats", "dogs"] and info.channels == 3 and info.has_captions
    ds = VideoFolderDataset(root, frames=4, size=8)
    assert ds.videos.shape == (3, 3, 4, 8, 8) and ds.labels.tolist() == [0, 1, 1]
    assert [ds[i]["caption"] for i in range(3)] == [
        "clip one.mp4",
        "clip three.webm",
        "clip two.gif",
    ]
    with pytest.raises(
        ValueError, match=r"data.channels=1 was given but the data in .* has channels=3"
    ):
        VideoFolderDataset(root, frames=4, channels=1)
    with pytest.raises(ValueError, match=r"data.num_classes=5 .* has num_classes=2"):
        VideoFolderDataset(root, frames=4, num_classes=5)


def test_corrupt_and_too_short_files_are_named_or_skipped(tmp_path):
    root = tmp_path / "v"
    root.mkdir()
    write_video(_clip([0, 50, 100, 150, 200, 250]), root / "good.mp4", fps=8)
    write_video(_clip([0, 50]), root / "short.mp4", fps=8)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 4)
    with pytest.raises(VideoFileError, match=r"broken\.mp4: cannot decode video"):
        VideoFolderDataset(root, frames=4)
    (root / "broken.mp4").unlink()
    with pytest.raises(
        VideoFileError, match=r"short\.mp4: too short for one clip of 4 frames \(2 frames"
    ):
        VideoFolderDataset(root, frames=4)
    (root / "broken.mp4").write_bytes(b"garbage" * 10)
    ds = VideoFolderDataset(root, frames=4, on_error="skip")
    assert len(ds) == 1 and sorted(p.split("/")[-1] for p, _ in ds.skipped) == [
        "broken.mp4",
        "short.mp4",
    ]
    with pytest.raises(VideoFileError, match="not a directory"):
        VideoFolderDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoFileError, match="no clips"):
        VideoFolderDataset(tmp_path / "empty")
