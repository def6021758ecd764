"""The README's own-data line on a generated folder: `polydiff train data=video_folder
data.root=<dir>` reads channels, size and classes from the clips."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from polydiff.train.config import ConfigError
from polydiff.train.run import sample_run, train
from polydiff.video.data import BouncingDigits
from polydiff.video.io import save_gif, write_video

TINY = [
    "model.size=tiny",
    "trainer.max_steps=2",
    "trainer.batch_size=4",
    "trainer.ckpt_every=0",
    "trainer.progress=false",
    "trainer.lr_warmup_steps=0",
    "trainer.cpu=true",
    "data.frames=4",
]


@pytest.fixture
def folder(tmp_path):
    clips = BouncingDigits(8, 6, 16, 6, 1, seed=0).videos
    root = tmp_path / "clips"
    for i, clip in enumerate(clips):
        cls = root / ("up" if i % 2 else "down")
        cls.mkdir(parents=True, exist_ok=True)
        if i % 4 < 2:
            save_gif(clip, cls / f"c{i}.gif", scale=1)
        else:
            frames = ((clip[0].numpy() + 1) * 127.5).round().astype(np.uint8)
            write_video(np.repeat(frames[..., None], 3, -1), cls / f"c{i}.mp4")
    return root


def test_train_on_a_video_folder_in_one_line(folder, tmp_path):
    run = train(["data=video_folder", f"data.root={folder}", *TINY, f"runs_root={tmp_path / 'r'}"])
    cfg = OmegaConf.load(run / "config.yaml")
    assert (cfg.data.channels, cfg.data.image_size, cfg.data.num_classes) == (1, 16, 2)
    assert cfg.model._target_ == "polydiff.video.models.video_unet" and cfg.model.num_classes == 2
    assert cfg.data.info.classes == ["down", "up"]
    out = sample_run(run, ["sample.n=2", "sampler.steps=2"], out=tmp_path / "s")
    with np.load(out / "samples.npz", allow_pickle=False) as z:
        assert z["samples"].shape == (2, 1, 4, 16, 16) and z["cond_class"].tolist() == [0, 1]


def test_a_contradicting_override_names_both_values_before_a_run_exists(folder, tmp_path):
    runs = tmp_path / "r"
    with pytest.raises(
        ConfigError, match=r"data.channels=3 was given but the clips under .* have channels=1"
    ):
        train(
            [
                "data=video_folder",
                f"data.root={folder}",
                "data.channels=3",
                *TINY,
                f"runs_root={runs}",
            ]
        )
    with pytest.raises(ConfigError, match=r"data.num_classes=5 .* num_classes=2"):
        train(
            [
                "data=video_folder",
                f"data.root={folder}",
                "data.num_classes=5",
                *TINY,
                f"runs_root={runs}",
            ]
        )
    assert not runs.exists()
