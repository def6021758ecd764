"""A tiny train -> sample -> export run of every video experiment (seconds, tiny models)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from polydiff.train.run import sample_run, train
from polydiff.video.data import read_video

CASES = {
    "video/digits_cond": ([], 1),
    "video/image_to_video": ([], 1),
    "video/prediction": (["data.hooks.best_of=2"], 1),
    "video/shapes_text": ([], 3),
}
SLOW = {"video/shapes_text"}  # loads the MiniLM text encoder


@pytest.mark.parametrize(
    "experiment",
    [pytest.param(e, marks=[pytest.mark.slow] if e in SLOW else []) for e in sorted(CASES)],
)
def test_tiny_train_sample_export(experiment, tmp_path, monkeypatch, tiny_run):
    monkeypatch.setenv("POLYDIFF_CACHE", str(tmp_path / "cache"))
    extra, channels = CASES[experiment]
    if experiment == "video/shapes_text":
        extra = [*extra, "data.dataset.n=8"]
    run = train([f"experiment={experiment}", *tiny_run, *extra, f"runs_root={tmp_path / 'runs'}"])
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    out = sample_run(
        run, ["sample.n=4", "sample.batch_size=4", "sampler.steps=2"], out=tmp_path / "s"
    )
    with np.load(out / "samples.npz", allow_pickle=False) as z:
        samples = z["samples"]
        assert samples.shape == (4, channels, 4, 16, 16)
        assert np.isfinite(samples).all() and samples.min() >= -1 and samples.max() <= 1
        if experiment == "video/digits_cond":
            assert z["cond_class"].tolist() == [0, 1, 2, 3]
        if experiment == "video/shapes_text":
            assert z["prompts"].shape == (4,) and str(z["prompts"][0]).startswith("a ")
        if experiment in ("video/image_to_video", "video/prediction"):
            assert z["reference"].shape == (4, 1, 4, 16, 16)
            assert z["cond_concat"].shape[:3] == (4, 1 if "image" in experiment else 2, 4)
    frames, _ = read_video(out / "sample_000.mp4")
    assert frames.shape == (4, 64, 64, 3)  # 4 frames upscaled x4
    gif, _ = read_video(out / "sample_003.gif")
    expected = ((samples[3, :, :, 0, 0].mean(0) + 1) * 127.5).round()
    np.testing.assert_allclose(gif[:, 0, 0, 0], expected, atol=2)  # the sample, frame by frame
    grid, _ = read_video(out / "grid.gif")
    assert grid.shape == (4, 2 * (17 + 1), 2 * (4 * 17 + 1), 3)  # one row of 4 clips, x2
    info = json.loads((out / "sample.json").read_text())
    assert "samples.npz" in info["files"] and "grid.gif" in info["files"]


def test_joint_image_video_rows_and_ablation_train(tmp_path, tiny_run):
    run = train([
        "experiment=video/digits_cond", *tiny_run, "data.dataset.image_fraction=0.5",
        "model.temporal=false", f"runs_root={tmp_path / 'runs'}",
    ])  # fmt: skip
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
