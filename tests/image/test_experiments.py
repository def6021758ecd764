"""A tiny train -> sample -> export run of every image experiment (seconds, tiny models)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from polydiff.train.run import sample_run, train

COMMON = [
    "trainer.max_steps=3",
    "trainer.batch_size=8",
    "trainer.ckpt_every=0",
    "trainer.log_every=1",
    "trainer.progress=false",
    "trainer.lr_warmup_steps=0",
    "data.hooks.metrics=null",
]
TEXT = ["data.text.name=hashed", "data.text_dim=16", "data.dataset.n=120"]
CASES = {
    "image/digits_unet": ([], (1, 16, 16)),
    "image/digits_cond": ([], (1, 16, 16)),
    "image/shapes_text": (TEXT, (3, 32, 32)),
    "image/shapes_latent_dit": (
        [
            "data.text.name=hashed",
            "data.text_dim=16",
            "data.dataset.base.n=120",
            "data.autoencoder.n=64",
            "data.autoencoder.steps=3",
            "data.autoencoder.batch_size=8",
            "data.autoencoder.base_channels=8",
        ],
        (3, 32, 32),
    ),
}


@pytest.mark.parametrize("experiment", sorted(CASES))
def test_tiny_train_sample_export(experiment, tmp_path, monkeypatch):
    monkeypatch.setenv("POLYDIFF_CACHE", str(tmp_path / "cache"))
    extra, shape = CASES[experiment]
    size = "model.size=tiny" if "dit" in experiment else "model.size=tiny-c16"  # DiT / U-Net
    run = train(
        [f"experiment={experiment}", size, *COMMON, *extra, f"runs_root={tmp_path / 'runs'}"]
    )
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    out = sample_run(run, ["sample.n=16", "sampler.steps=2"], out=tmp_path / "samples")
    with np.load(out / "samples.npz") as z:
        samples = z["samples"]
        assert samples.shape == (16, *shape)  # latents decoded to pixels by the hooks
        assert np.isfinite(samples).all() and samples.min() >= -1 and samples.max() <= 1
        if "shapes" in experiment:
            assert z["prompts"].shape == (16,) and str(z["prompts"][0]).startswith("a ")
        if experiment == "image/digits_cond":
            assert sorted(z["cond_class"].tolist()) == sorted(list(range(10)) + list(range(6)))
    grid = np.asarray(Image.open(out / "grid.png"))
    side = 4 * (8 * (shape[1] + 2) + 2)  # 8 per row, padding 2, upscaled x4
    assert grid.shape[1] == side
    info = json.loads((out / "sample.json").read_text())
    assert info["files"] == ["samples.npz", "grid.png"]
