"""``ema=auto`` by the modality's metric (issue #14): after training, raw / stored / post-hoc
EMA weights are evaluated on a small fixed budget and the best by ``hooks.primary_metric()``
is stored and used by sample / evaluate; hooks without a metric keep the loss choice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from polydiff.train.checkpoint import CheckpointError, latest_checkpoint, read_state
from polydiff.train.config import compose
from polydiff.train.ema_sweep import (
    AUTO_METRIC_SEED,
    METRIC_SIGMA_RELS,
    auto_metric_n,
    select_ema_by_metric,
    stored_metric_choice,
)
from polydiff.train.hooks import primary_metric
from polydiff.train.run import evaluate_run, open_run, sample_run, train

N = 96  # the items trained on (12 x 8): ToyHooks' SWD asks for 2000, ema_auto_n for 48
RUN = [
    "experiment=toy/gmm",
    "trainer=tiny",
    "trainer.max_steps=12",
    "trainer.ckpt_every=6",
    "trainer.ema_decays=[0.9]",
    "trainer.ema_sigma_rels=[0.05,0.1]",
    "trainer.batch_size=8",
    "trainer.ema_auto_n=48",
    "trainer.num_threads=1",
    "model.hidden=32",
    "sampler.steps=4",
]


class _Declares:
    def __init__(self, declared):
        self.declared = declared

    def primary_metric(self):
        return self.declared


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return train(RUN, run_dir=tmp_path_factory.mktemp("metric") / "run")


def _record(run: Path) -> tuple[Path, dict]:
    ckpt = latest_checkpoint(run / "checkpoints")
    path = run / "eval" / f"ema_auto-step{read_state(ckpt)['step']:08d}.json"
    return path, json.loads(path.read_text())


def test_training_stores_the_metric_argmax_over_candidates_with_raw_among_them(run):
    path, rec = _record(run)
    state = read_state(latest_checkpoint(run / "checkpoints"))
    # ToyHooks: the exact mean log-likelihood of the samples, higher is better
    assert rec["metric"] == "log_likelihood" and rec["direction"] == "max" and rec["n"] == N
    assert rec["seed"] == AUTO_METRIC_SEED and rec["step"] == state["step"] == 12
    # every candidate: raw, the stored EMAs, the post-hoc widths (twins evaluated once)
    wanted = {"false", "0.9", "sigma_rel:0.05", "sigma_rel:0.1"}
    wanted |= {f"sigma_rel:{s:g}" for s in METRIC_SIGMA_RELS}
    assert set(rec["scores"]) | set(rec["same_as"]) == wanted
    assert "false" in rec["scores"]
    finite = {k: v for k, v in rec["scores"].items() if v is not None}
    assert rec["choice"] == max(finite, key=finite.get)
    # the scores are what polydiff evaluate reports for each candidate on the selection sample
    for spec in ("false", rec["choice"]):
        again = evaluate_run(
            run,
            [f"evaluate.n={N}", f"evaluate.seed={AUTO_METRIC_SEED}", f"sample.ema={spec}"],
            out=run / "check" / f"{spec}.json",
        )
        assert again["metrics"]["log_likelihood"] == pytest.approx(rec["scores"][spec], rel=1e-6)
    # the loss choice of the checkpoint is kept alongside
    assert rec["loss_choice"] == state["ema_auto"]


def test_sample_and_evaluate_with_auto_use_the_stored_metric_choice(run):
    _, rec = _record(run)
    opened = open_run(run)  # sample.ema defaults to auto
    assert opened.weights == rec["weights"] and opened.ema_choice["metric"] == "log_likelihood"
    out = sample_run(run, ["sample.n=8"])
    saved = json.loads((out / "sample.json").read_text())
    assert saved["ema"] == "auto" and saved["weights"] == rec["weights"]
    assert saved["ema_choice"]["choice"] == rec["choice"]
    # the reported evaluation (evaluate.seed default) is not the selection sample
    assert compose([]).evaluate.seed != AUTO_METRIC_SEED != compose([]).sample.seed


def test_argmin_for_a_lower_is_better_metric_and_the_loss_fallback(run, tmp_path):
    other = tmp_path / "copy"
    shutil.copytree(run, other)
    path, _ = _record(other)
    # a record of another metric is not used: the candidates are ranked again
    rec = select_ema_by_metric(other, _Declares(("swd", "min")), log=lambda m: None)
    assert rec["metric"] == "swd"
    finite = {k: v for k, v in rec["scores"].items() if v is not None}
    assert rec["choice"] == min(finite, key=finite.get)
    assert "lower is better" in rec["criterion"]
    ckpt = latest_checkpoint(other / "checkpoints")
    assert stored_metric_choice(other, ckpt, "swd") == rec
    assert stored_metric_choice(other, ckpt, "log_likelihood") is None
    # hooks without a metric: the loss choice, said in one named line
    path.unlink()
    lines: list[str] = []
    assert select_ema_by_metric(other, object(), log=lines.append) is None
    assert len(lines) == 1 and "declare no primary metric" in lines[0]
    assert "fixed-noise loss" in lines[0] and not path.exists()
    loss = read_state(latest_checkpoint(other / "checkpoints"))["ema_auto"]
    assert loss["weights"] in lines[0]
    # open_run does not repeat it (its JSON records the criterion used)
    assert select_ema_by_metric(other, object(), log=lines.append, announce_fallback=False) is None
    assert len(lines) == 1


def test_stale_and_damaged_records(run, tmp_path):
    other = tmp_path / "copy"
    shutil.copytree(run, other)
    path, rec = _record(other)
    ckpt = latest_checkpoint(other / "checkpoints")
    path.write_text(json.dumps({**rec, "state_sha256": "0" * 64}))
    assert stored_metric_choice(other, ckpt) is None  # another checkpoint of that step
    path.write_text(json.dumps({**rec, "choice": "rm -rf"}))
    with pytest.raises(CheckpointError, match="ema_auto-step00000012.json: not a valid"):
        stored_metric_choice(other, ckpt)
    path.write_text("{")
    with pytest.raises(CheckpointError, match="delete it to choose again"):
        open_run(other)


def test_primary_metric_declarations_and_budget():
    assert primary_metric(None) is None and primary_metric(object()) is None
    assert primary_metric(_Declares(("fid", "min"))) == ("fid", -1)
    assert primary_metric(_Declares(("acc", "max"))) == ("acc", 1)
    with pytest.raises(TypeError, match="expected \\(metric name, 'min' or 'max'\\)"):
        primary_metric(_Declares(("fid", "lower")))
    # never more samples than items trained on; missing (older runs): 256; 0: off
    assert auto_metric_n({"ema_auto_n": 256, "max_steps": 3, "batch_size": 10}) == 30
    assert auto_metric_n({"max_steps": 1000, "batch_size": 64}) == 256
    assert auto_metric_n({"ema_auto_n": 0, "max_steps": 1000, "batch_size": 64}) == 0
    # a metric that needs more samples gets them (the toy's SWD: 2000), unless turned off
    assert auto_metric_n({"ema_auto_n": 256, "max_steps": 1000, "batch_size": 64}, 2000) == 2000
    assert auto_metric_n({"ema_auto_n": 0, "max_steps": 1000, "batch_size": 64}, 2000) == 0


def test_guard_metrics_keep_an_ema_that_trades_one_metric_for_another_out():
    """The digits 300-step case: every EMA has a better FID but a lower class accuracy than the
    raw weights; with class accuracy as a guard the raw weights stay the default."""
    from polydiff.train.ema_sweep import rank_candidates

    rows = [
        {"ema": "false", "weights": "model", "metrics": {"fid": 8.8, "class_accuracy": 0.375}},
        {"ema": "0.999", "weights": "ema", "metrics": {"fid": 8.1, "class_accuracy": 0.32}},
        {"ema": "sigma_rel:0.1", "weights": "p", "metrics": {"fid": 8.6, "class_accuracy": 0.38}},
    ]
    best, scores, excluded = rank_candidates(rows, "fid", -1)
    assert best == "0.999" and scores["false"] == 8.8 and excluded == {}
    best, _, excluded = rank_candidates(rows, "fid", -1, [("class_accuracy", 1)])
    assert best == "sigma_rel:0.1" and list(excluded) == ["0.999"]
    assert "class_accuracy 0.32 worse than the raw weights' 0.375" in excluded["0.999"]
    rows[2]["metrics"]["class_accuracy"] = 0.37
    assert rank_candidates(rows, "fid", -1, [("class_accuracy", 1)])[0] == "false"
    # a guard the evaluation does not report (unconditional model) is ignored
    assert rank_candidates(rows, "fid", -1, [("precision", 1)])[0] == "0.999"
    with pytest.raises(ValueError, match="finite fid"):
        rank_candidates([{"ema": "false", "metrics": {"fid": float("nan")}}], "fid", -1)


def test_a_record_ranked_without_the_current_guards_is_ranked_again_from_its_rows(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    path, rec = _record(copy)
    ckpt = latest_checkpoint(copy / "checkpoints")
    rows = rec["rows"]
    worst = min(rows, key=lambda r: r["metrics"]["log_likelihood"])["ema"]
    # a guard on which only the raw weights and the worst candidate pass
    for r in rows:
        r["metrics"]["guard"] = 1.0 if r["ema"] in ("false", worst) else 0.0
    path.write_text(json.dumps(rec))
    again = stored_metric_choice(copy, ckpt, "log_likelihood", [("guard", 1)])
    assert again["choice"] == "false"  # raw beats (or is) the worst candidate
    assert again["guards"] == [["guard", "max"]]
    assert set(again["excluded"]) == {r["ema"] for r in rows} - {"false", worst}
    assert json.loads(path.read_text())["choice"] == again["choice"]  # rewritten


def test_a_run_directory_that_cannot_be_written_still_samples(run, tmp_path, monkeypatch):
    """Runs are shared read-only: the choice is made and used, one line says it was not saved."""
    import polydiff.train.ema_sweep as ema_sweep

    other = tmp_path / "copy"
    shutil.copytree(run, other)
    path, rec = _record(other)
    path.unlink()

    def read_only(*_a, **_k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(ema_sweep, "atomic_write_text", read_only)
    lines: list[str] = []
    again = select_ema_by_metric(other, _Declares(("log_likelihood", "max")), log=lines.append)
    assert again["choice"] in again["scores"] and not path.exists()
    assert any("could not save the choice" in m and "Read-only" in m for m in lines)
