"""The digits recipe through the config path: the default weights (``sample.ema=auto``) no
worse than the raw weights.

Before issue #14, ``polydiff train experiment=image/digits_cond model.size=tiny
trainer.batch_size=64 trainer.max_steps=1500`` then ``polydiff evaluate`` gave class accuracy
0.47 with the default 0.999 EMA (22% of it still the step-1 weights) vs 0.998 with
``sample.ema=false``. The recipe now keeps the trainer's default EMAs and samples with
``auto``: after training, raw / stored / post-hoc EMA weights are evaluated on 256 samples
(seed 104729, not the evaluation's) and the best by FID is kept
(``polydiff.train.ema_sweep.select_ema_by_metric``; benchmarks/results/train_ema.md).
Slow: 300 / 1500 CPU steps of a small U-Net, the choice, two 500-sample evaluations.
"""

from __future__ import annotations

import pytest

from polydiff.train.run import evaluate_run, train

# two standard errors of a difference of two class accuracies over 500 samples each
# (binomial s.e. <= 0.022 each); FID over 500 samples moves by ~0.5 between sampling seeds
ACC_NOISE = 0.062
FID_NOISE = 1.0


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
    a, r = auto["metrics"], raw["metrics"]
    assert a["class_accuracy"] >= r["class_accuracy"] - ACC_NOISE, (a, r)
    assert a["fid"] <= r["fid"] + FID_NOISE, (a, r)
