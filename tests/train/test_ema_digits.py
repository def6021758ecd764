"""The digits recipe through the config path: the default weights (``sample.ema=auto``) no
worse than the raw weights.

Before issue #14, ``polydiff train experiment=image/digits_cond model.size=tiny
trainer.batch_size=64 trainer.max_steps=1500`` then ``polydiff evaluate`` gave class accuracy
0.47 with the default 0.999 EMA (22% of it still the step-1 weights) vs 0.998 with
``sample.ema=false``. The recipe now keeps the trainer's default EMAs and samples with
``auto`` (the lowest fixed-noise loss among raw / EMAs / post-hoc EMAs, chosen per
checkpoint). Slow: 300 / 1500 CPU steps of a small U-Net plus two 500-sample evaluations.
"""

from __future__ import annotations

import pytest

from polydiff.train.run import evaluate_run, train

ACC_NOISE = 0.045  # class accuracy over 500 samples: binomial s.e. <= 0.022


@pytest.mark.slow
@pytest.mark.parametrize("steps", [300, 1500])
def test_digits_default_weights_no_worse_than_raw(tmp_path, steps):
    pytest.importorskip("polydiff.image")
    run_dir = train(
        ["experiment=image/digits_cond", f"trainer.max_steps={steps}", "trainer.progress=false"],
        run_dir=tmp_path / "run",
    )
    auto = evaluate_run(run_dir, ["evaluate.n=500"])  # the default: sample.ema=auto
    raw = evaluate_run(run_dir, ["evaluate.n=500", "sample.ema=false"])
    assert auto["ema"] == "auto" and auto["ema_choice"]["weights"] == auto["weights"]
    assert raw["weights"] == "model"
    key = "class_accuracy"
    assert auto["metrics"][key] >= raw["metrics"][key] - ACC_NOISE, (auto, raw["metrics"])
