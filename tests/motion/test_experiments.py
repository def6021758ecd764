"""Tiny train -> sample -> evaluate -> export runs of every motion experiment (CPU, seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from polydiff.motion.bvh import bvh_to_joints22, read_bvh
from polydiff.train.config import ConfigError
from polydiff.train.run import evaluate_run, sample_run, train

TINY = [
    "model.size=tiny",
    "data.n=24",
    "data.min_len=20",
    "data.max_len=24",
    "trainer=tiny",
    "trainer.max_steps=4",
    "trainer.batch_size=8",
    "trainer.ckpt_every=4",
    "sampler.steps=3",
    "sample.n=4",
    "evaluate.n=4",
]


@pytest.mark.parametrize(
    "experiment,extra",
    [
        (
            "motion/text2motion",
            ["data.text.name=words", "data.text_dim=32", "data.hooks.metrics=kinematic"],
        ),
        ("motion/action2motion", []),
        (
            "motion/edit_inbetween",
            ["data.text.name=words", "data.text_dim=32", "data.hooks.metrics=kinematic"],
        ),
    ],
)
def test_tiny_train_sample_export(tmp_path, experiment, extra):
    cache = [f"data.cache_dir={tmp_path / 'cache'}"]
    run = train([f"experiment={experiment}", *TINY, *extra, *cache], run_dir=tmp_path / "run")
    out = sample_run(run, ["sample.n=4"], out=tmp_path / "samples")
    z = np.load(out / "samples.npz", allow_pickle=False)
    assert z["samples"].shape == (4, 24, 263) and np.isfinite(z["samples"]).all()
    assert (z["lengths"] >= 19).all() and (z["lengths"] <= 24).all()
    files = json.loads((out / "sample.json").read_text())["files"]
    assert "joints.npz" in files and "motion_00.gif" in files and "motion_00.bvh" in files
    j = np.load(out / "joints.npz", allow_pickle=False)["joints"]
    n0 = int(z["lengths"][0])
    assert np.abs(bvh_to_joints22(read_bvh(out / "motion_00.bvh")) - j[0, :n0]).max() < 1e-3
    result = evaluate_run(run, ["evaluate.n=4"], out=tmp_path / "eval.json")
    m = result["metrics"]
    assert 0.0 <= m["foot_skating_ratio"] <= 1.0 and m["bone_length_error_real"] < 1e-3


def test_data_mismatch_names_both_values(tmp_path):
    with pytest.raises(ConfigError, match=r"data.num_classes=4 but the built-in motions has 9"):
        train(["experiment=motion/action2motion", *TINY, "data.num_classes=4",
               f"data.cache_dir={tmp_path}"], run_dir=tmp_path / "run")  # fmt: skip
