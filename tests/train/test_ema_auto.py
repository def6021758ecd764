"""``ema=auto``: the weights of lowest fixed-noise loss, chosen at each checkpoint and used by
default when sampling (issue #14: the default EMA must never be worse than the raw weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from polydiff.nn import ResidualMLP
from polydiff.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    read_state,
)
from polydiff.train.config import ConfigError
from polydiff.train.ema import (
    HeldOutLoss,
    WeightSource,
    auto_candidates,
    auto_items,
    choose_weights,
    load_weights,
    parse_ema_spec,
)
from polydiff.train.run import evaluate_run, open_run, train


def _net() -> ResidualMLP:
    torch.manual_seed(0)
    return ResidualMLP(2, 32, 2)


def test_auto_spec_and_candidates():
    assert parse_ema_spec("auto") == ("auto", None)
    assert parse_ema_spec(" AUTO ") == ("auto", None)
    state = {"ema_decays": ["0.999"], "ema_sigma_rels": ["sigma_rel:0.05", "sigma_rel:0.1"]}
    cands = auto_candidates(state)
    assert cands[:4] == ["false", "0.999", "sigma_rel:0.05", "sigma_rel:0.1"]
    assert "sigma_rel:0.2" in cands and len(cands) == len(set(cands))
    assert auto_candidates({"ema_decays": ["0.99"]}) == ["false", "0.99"]  # nothing post hoc
    # never more items than the run trained on; 0 / unset: the default 256
    assert auto_items({"ema_auto_items": 256, "max_steps": 2, "batch_size": 4}) == 8
    assert auto_items({"ema_auto_items": 0, "max_steps": 1000, "batch_size": 64}) == 256
    assert (
        auto_items({"ema_auto_items": 100, "max_steps": 10, "batch_size": 8, "grad_accum": 2})
        == 100
    )


def test_heldout_loss_is_the_objectives_loss_on_fixed_items_and_noise(ring_dataset, losses):
    edm_like_loss = losses["edm_like"]
    net = _net()
    score = HeldOutLoss(net, edm_like_loss, ring_dataset, items=96, draws=2, batch_size=64)
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    first = score(weights)
    assert score(weights) == first  # the same noise every call
    # brute force: the mean of the loss over the same rows, drawn from the same generators
    idx = torch.randperm(len(ring_dataset), generator=torch.Generator().manual_seed(0))[:96]
    x = ring_dataset.get_batch(idx)["x"]
    total = 0.0
    for d in range(2):
        for lo in (0, 64):
            gen = torch.Generator().manual_seed((0 * 1_000_003 + d) * 1_000_003 + lo)
            with torch.no_grad():
                total += float(edm_like_loss(net.eval(), x[lo : lo + 64], None, gen)) * len(
                    x[lo : lo + 64]
                )
    assert first == pytest.approx(total / 192, rel=1e-6)
    # common random numbers: the difference between two nearby weights is far steadier
    # across noise seeds than either loss is
    near = {k: v + 0.01 * torch.randn_like(v) for k, v in weights.items()}
    other = HeldOutLoss(net, edm_like_loss, ring_dataset, items=96, draws=2, seed=1)
    spread = abs(score(weights) - other(weights))
    diff_spread = abs((score(near) - score(weights)) - (other(near) - other(weights)))
    assert diff_spread < 0.2 * spread, (diff_spread, spread)


def _source(raw: dict, ema: dict) -> WeightSource:
    tensors = {f"0.9/module.{k}": v for k, v in ema.items()}
    tensors["0.9/n_averaged"] = torch.tensor(5)
    state = {"step": 5, "ema_decays": ["0.9"], "ema_sigma_rels": []}
    return WeightSource(state, raw, tensors, None, "test")


def test_choose_weights_picks_the_lowest_loss_and_never_a_non_finite_one(ring_dataset, losses):
    edm_like_loss = losses["edm_like"]
    net = _net()
    good = {k: v.clone() for k, v in net.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    bad = {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in good.items()}
    score = HeldOutLoss(net, edm_like_loss, ring_dataset, items=128, draws=1)
    assert score(good) < score(bad)
    rec = choose_weights(_source(bad, good), score, criterion="c")
    assert (rec["choice"], rec["weights"], rec["criterion"]) == ("0.9", "ema:0.9", "c")
    assert rec["losses"]["0.9"] == pytest.approx(score(good))
    assert choose_weights(_source(good, bad), score)["choice"] == "false"
    nan = {k: torch.full_like(v, float("nan")) for k, v in good.items()}
    rec = choose_weights(_source(bad, nan), score)
    assert rec["choice"] == "false" and rec["losses"]["0.9"] is None
    with pytest.raises(CheckpointError, match="no candidate"):
        choose_weights(_source(nan, nan), score)


RUN = [
    "experiment=toy/gmm",
    "trainer=tiny",
    "trainer.max_steps=12",
    "trainer.ckpt_every=6",
    "trainer.ema_auto_items=256",  # the trainer default, which opening an unscored run uses
    "trainer.ema_auto_draws=1",
    "trainer.num_threads=1",
    "model.hidden=32",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    stored = train(RUN, run_dir=root / "stored")
    unstored = train([*RUN, "trainer.ema_auto_items=0"], run_dir=root / "unstored")
    return stored, unstored


def test_every_checkpoint_stores_its_choice_and_sampling_uses_it(runs):
    stored, _ = runs
    for ckpt in sorted((stored / "checkpoints").glob("step_*")):
        rec = read_state(ckpt)["ema_auto"]
        assert set(rec["losses"]) == set(auto_candidates(read_state(ckpt)))
        assert rec["choice"] == min(rec["losses"], key=rec["losses"].get)
        assert "fixed" in rec["criterion"]
    ckpt = latest_checkpoint(stored / "checkpoints")
    rec = read_state(ckpt)["ema_auto"]
    run = open_run(stored)  # the default sample.ema is auto
    assert run.weights == rec["weights"] and run.ema_choice == rec
    weights, label = load_weights(ckpt, "auto")
    assert label == rec["weights"]
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, weights[k])
    result = evaluate_run(stored, ["evaluate.n=64"])
    saved = json.loads(Path(result["path"]).read_text())
    assert saved["ema"] == "auto" and saved["weights"] == rec["weights"]
    assert saved["ema_choice"]["losses"] == rec["losses"]
    raw = evaluate_run(stored, ["evaluate.n=64", "sample.ema=false"])
    assert raw["weights"] == "model" and "ema_choice" not in raw


def test_a_checkpoint_without_a_choice_is_scored_when_opened(runs):
    stored, unstored = runs
    ckpt = latest_checkpoint(unstored / "checkpoints")
    assert read_state(ckpt)["ema_auto"] is None
    with pytest.raises(CheckpointError, match="stores no automatic EMA choice"):
        load_weights(ckpt, "auto")
    run = open_run(unstored)
    want = read_state(latest_checkpoint(stored / "checkpoints"))["ema_auto"]
    assert run.ema_choice["choice"] == want["choice"]
    assert "scored when opened" in run.ema_choice["criterion"]
    for spec, loss in want["losses"].items():  # same weights, items and noise: same losses
        assert run.ema_choice["losses"][spec] == pytest.approx(loss, rel=1e-5)


def test_sample_step_opens_that_checkpoint(runs):
    stored, _ = runs
    first = list_checkpoints(stored / "checkpoints")[0]
    run = open_run(stored, ["sample.step=6"])
    assert run.checkpoint == first and run.ema_choice == read_state(first)["ema_auto"]
    result = evaluate_run(stored, ["evaluate.n=64", "sample.step=6"])
    saved = json.loads(Path(result["path"]).read_text())
    assert saved["checkpoint_step"] == 6 and "-step6-" in Path(result["path"]).name
    with pytest.raises(ConfigError, match=r"^sample\.step=7: \S+ has no checkpoint of that step "
                                          r"\(it has: 6, 12\)$"):  # fmt: skip
        open_run(stored, ["sample.step=7"])
    with pytest.raises(ConfigError, match=r"sample\.step=0: expected a positive integer"):
        open_run(stored, ["sample.step=0"])
