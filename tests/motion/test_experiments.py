"""Tiny train -> sample -> evaluate -> export runs of every motion experiment (CPU, seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from polydiff.motion.bvh import bvh_to_joints22, read_bvh
from polydiff.motion.pipeline import EDIT_TASKS, edit_mask, edit_run
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
    "evaluate.replications=2",
    "evaluate.mm_prompts=2",
    "evaluate.mm_repeats=2",
    "evaluate.mm_times=2",
    "data.hooks.files=1",
]


@pytest.mark.parametrize(
    "experiment,extra",
    [
        pytest.param(
            "motion/text2motion",
            ["data.text.name=words", "data.text_dim=32", "data.hooks.metrics=kinematic"],
            marks=pytest.mark.slow,  # CFG doubles every sampling step
        ),
        pytest.param(
            "motion/text2motion_geo",
            ["data.text.name=words", "data.text_dim=32", "data.hooks.metrics=kinematic"],
            marks=pytest.mark.slow,  # geometric losses through the whole train / sample path
        ),
        ("motion/action2motion", []),
        pytest.param(
            "motion/edit_inbetween",
            ["data.text.name=words", "data.text_dim=32", "data.hooks.metrics=kinematic"],
            marks=pytest.mark.slow,  # + four edit jobs
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
    # two replications (seeds 1, 2): means with 95% half-widths; smaller sizes are named
    assert m["replications"] == 2 and m["foot_skating_ratio_ci95"] >= 0.0
    assert result["protocol"]["replications"] == 2
    assert "replications=2 (protocol 20)" in result["protocol_note"]
    if experiment == "motion/edit_inbetween":
        for task in EDIT_TASKS:
            summary = edit_run(run, [f"edit.task={task}", "edit.n=3"], out=tmp_path / task)
            assert summary["max_kept_error"] < 1e-4  # the kept frames / joints are exact
            edited = np.load(tmp_path / task / "joints.npz")["features"]
            source = np.load(tmp_path / task / "source" / "joints.npz")["features"]
            lengths = np.load(tmp_path / task / "joints.npz")["lengths"]
            free = ~edit_mask(task, lengths.tolist(), edited.shape[1]).numpy()
            assert np.abs(edited - source)[free].mean() > 1e-3  # the rest was generated


@pytest.mark.slow
def test_t2m_protocol_of_polydiff_evaluate(tmp_path):
    """Replicated T2M numbers, the real and retrieval rows and MultiModality of a tiny run."""
    extra = ["data.text.name=words", "data.text_dim=32", "data.hooks.evaluator.steps=20",
             "data.n=40", f"data.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    run = train(["experiment=motion/text2motion", *TINY, *extra], run_dir=tmp_path / "run")
    small = ["evaluate.n=32", "evaluate.mm_prompts=3", "evaluate.mm_repeats=4",
             "evaluate.mm_times=3"]  # fmt: skip
    result = evaluate_run(run, small, out=tmp_path / "eval.json")
    m = result["metrics"]
    for key in ("r_precision_top3", "fid", "diversity", "mm_dist"):
        assert np.isfinite(m[key]) and f"{key}_ci95" in m and f"retrieval_{key}" in m
    assert 0.0 <= m["r_precision_top1_real"] <= m["r_precision_top3_real"] <= 1.0
    assert m["multimodality"] > 0.0 and m["diversity_pairs"] == 32
    assert "mm_prompts=3 (protocol 100)" in result["protocol_note"]
    assert "n=32 < diversity_times" in result["protocol_note"]


def test_edit_masks():
    m = edit_mask("inbetween", [20, 12], 24)
    assert m[0, :5].all() and m[0, 15:20].all() and not m[0, 5:15].any() and m[0, 20:].all()
    assert m[1, :3].all() and not m[1, 3:9].any() and m[1, 9:].all()
    c = edit_mask("continuation", [20], 24)
    assert c[0, :10].all() and not c[0, 10:20].any()
    u = edit_mask("upper_body", [10], 10)[0, 0]
    assert u[:4].all() and u[259:].all() and int(u.sum()) == 4 + 8 * 9 + 9 * 3 + 4
    t = edit_mask("trajectory", [10], 10)[0, 0]
    assert t[:4].all() and not t[4:].any()
    with pytest.raises(ValueError, match="unknown edit task"):
        edit_mask("dance", [10], 10)


def test_data_mismatch_names_both_values(tmp_path):
    with pytest.raises(ConfigError, match=r"data.num_classes=4 but the built-in motions has 9"):
        train(["experiment=motion/action2motion", *TINY, "data.num_classes=4",
               f"data.cache_dir={tmp_path}"], run_dir=tmp_path / "run")  # fmt: skip


@pytest.mark.slow
def test_quick_demo(tmp_path, monkeypatch):
    from polydiff.motion.demo import run

    monkeypatch.setenv("POLYDIFF_CACHE", str(tmp_path / "cache"))
    summary = run(tmp_path / "demo", quick=True)
    assert (tmp_path / "demo" / "motion_text2motion.gif").is_file()
    assert summary["edit_max_kept_error"] < 1e-4 and "foot_skating_ratio" in summary["metrics"]
