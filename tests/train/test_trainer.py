"""The training loop: exact resume, accumulation, EMA, LR schedule, non-finite loss, logs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from polydiff.train import BatchOrder, CheckpointError, LRSchedule, NonFiniteLossError
from polydiff.train.checkpoint import list_checkpoints


def _params(trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    out.update({f"ema.{k}": v.clone() for k, v in trainer.ema.tensors().items()})
    return out


def test_resume_is_bit_exact(make_trainer, tmp_path):
    straight = make_trainer(run_dir=tmp_path / "a", max_steps=30)
    straight.fit()
    stopped = make_trainer(run_dir=tmp_path / "b", max_steps=30)
    stopped.fit(until=13)  # final save at step 13
    del stopped
    torch.manual_seed(1234)  # scramble the global RNG: the checkpoint must restore it (dropout)
    resumed = make_trainer(run_dir=tmp_path / "b", max_steps=30, resume="auto")
    assert resumed.step == 13 and resumed.data_position == 13
    resumed.fit()
    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]
    rows = [
        json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows] == [10, 13, 20, 30]


def test_gradient_accumulation_matches_big_batch(make_trainer, losses):
    from polydiff.nn import ResidualMLP

    kw = dict(loss=losses["per_sample"], max_steps=5, ema_decays=())
    torch.manual_seed(0)
    big = make_trainer(model=ResidualMLP(2, 32, 2), batch_size=64, **kw)
    big.fit()
    torch.manual_seed(0)
    acc = make_trainer(model=ResidualMLP(2, 32, 2), batch_size=32, grad_accum=2, **kw)
    acc.fit()
    for (k, a), b in zip(big.model.state_dict().items(), acc.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    assert acc.data_position == 10 and big.data_position == 5


def test_ema_follows_the_formula(make_trainer):
    t = make_trainer(max_steps=3, ema_decays=(0.5,), lr_warmup_steps=0, ema_warmup=False)
    w = []
    orig = t.train_step

    def step():
        out = orig()
        w.append(t.model.proj_in.weight.detach().clone())
        return out

    t.train_step = step
    t.fit()
    expected = w[0]  # first update copies
    for wi in w[1:]:
        expected = 0.5 * expected + 0.5 * wi
    torch.testing.assert_close(t.ema[0.5].proj_in.weight, expected)
    assert t.sampling_model() is t.ema[0.5]


def test_warmed_up_and_power_emas_follow_their_formulas(make_trainer):
    """beta_t = min(decay, 1 - t^(-2/3)) (k-diffusion EMAWarmup, inv_gamma 1, power 2/3, with
    t - 1 updates done) and beta_t = (1 - 1/t)^(gamma + 1) (EDM2 eq. 127); the first copies."""
    t = make_trainer(max_steps=6, ema_decays=(0.999,), ema_sigma_rels=(0.1,), lr_warmup_steps=0)
    w = []
    orig = t.train_step

    def step():
        out = orig()
        w.append(t.model.proj_in.weight.detach().clone().double())
        return out

    t.train_step = step
    t.fit()
    gamma = 6.937204  # sigma_rel 0.1: root of g^3 + 7 g^2 + (16 - 100) g + (12 - 100) (eq. 126)
    assert (gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)) == pytest.approx(0.01, rel=1e-6)
    warm, power = w[0], w[0]
    for i, wi in enumerate(w[1:], start=2):
        b = min(0.999, 1 - i ** (-2 / 3))
        warm = b * warm + (1 - b) * wi
        p = (1 - 1 / i) ** (gamma + 1)
        power = p * power + (1 - p) * wi
    torch.testing.assert_close(t.ema[0.999].proj_in.weight.double(), warm, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        t.ema["sigma_rel:0.1"].proj_in.weight.double(), power, rtol=1e-4, atol=1e-5
    )


def test_lr_schedule_values():
    s = LRSchedule("cosine", warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [s(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s(9) == pytest.approx(0.1 + 0.9 * 0.5)
    assert s(14) == pytest.approx(0.1) and s(100) == pytest.approx(0.1)
    assert LRSchedule("linear", 0, 10)(5) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="valid choices"):
        LRSchedule("cosin")


def test_batch_order_shards_the_same_global_batches():
    one = iter(BatchOrder(10, 4, seed=3))
    ranks = [iter(BatchOrder(10, 2, seed=3, rank=r, world_size=2)) for r in range(2)]
    for _ in range(5):  # crosses epochs (2 global batches per epoch, last 2 items dropped)
        assert torch.equal(next(one), torch.cat([next(ranks[0]), next(ranks[1])]))
    resumed = iter(BatchOrder(10, 4, seed=3, start=3))
    fresh = iter(BatchOrder(10, 4, seed=3))
    for _ in range(3):
        next(fresh)
    assert torch.equal(next(resumed), next(fresh))


def test_non_finite_loss_stops_and_saves_nothing(make_trainer, tmp_path):
    t = make_trainer(run_dir=tmp_path, max_steps=20, ckpt_every=5)
    t.fit(until=10)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    real = t.objective

    def bad(net, x, cond, generator=None):
        return real(net, x, cond, generator) * float("nan")

    t.objective = bad
    with pytest.raises(NonFiniteLossError, match=r"step 11.*nothing was saved.*step_00000010"):
        t.fit()
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == [
        "step_00000005",
        "step_00000010",
    ]
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, before[k]), k  # parameters untouched by the bad step


def test_bf16_mixed_precision_trains(make_trainer, losses):
    t = make_trainer(mixed_precision="bf16", max_steps=40, ema_decays=(), loss=losses["per_sample"])
    dtypes = set()
    t.model.proj_out.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
    first = t.fit(until=1)["loss"]
    last = t.fit()["loss"]
    assert math.isfinite(last) and last < first
    assert dtypes == {torch.bfloat16}  # the network ran under CPU autocast
    assert t.model.proj_in.weight.dtype == torch.float32  # fp32 master weights


def test_keep_last_and_bad_resume_path(make_trainer, tmp_path):
    t = make_trainer(run_dir=tmp_path, max_steps=20, ckpt_every=4, keep_last=2)
    t.fit()
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == [
        "step_00000016",
        "step_00000020",
    ]
    with pytest.raises(CheckpointError, match="nowhere"):
        make_trainer(run_dir=tmp_path, resume=str(tmp_path / "nowhere"))


def test_aux_loss_is_added(make_trainer, losses):
    from polydiff.nn import ResidualMLP

    class WithAux(ResidualMLP):
        def forward(self, x, t, cond=None):
            out = super().forward(x, t, cond)
            self.aux_loss = 100.0 * self.proj_in.weight.pow(2).mean()
            return out

    torch.manual_seed(0)
    t = make_trainer(
        model=WithAux(2, 32, 2),
        loss=losses["per_sample"],
        max_steps=1,
        ema_decays=(),
        clip_grad_norm=None,
    )
    plain = make_trainer(loss=losses["per_sample"], max_steps=1, ema_decays=(), clip_grad_norm=None)
    la, lp = t.fit()["loss"], plain.fit()["loss"]
    assert la > lp + 1.0  # 100 * mean(w^2) of the init weights is added


def test_periodic_samples_use_the_ema_and_the_hooks(ring_dataset, tmp_path):
    import functools

    import numpy as np

    from polydiff.core.objective import DiffusionObjective
    from polydiff.core.schedules import EDMSchedule
    from polydiff.nn import ResidualMLP
    from polydiff.train import SamplerSpec, Trainer, TrainerConfig

    class Hooks:
        def sample_cond(self, n, generator):
            return None

        def write(self, samples, cond, out_dir):
            (out_dir / "mean.txt").write_text(f"{float(samples.mean()):.6f}")
            return [out_dir / "mean.txt"]

    torch.manual_seed(0)
    t = Trainer(
        ResidualMLP(2, 32, 2),
        DiffusionObjective(EDMSchedule(sigma_data=1.0), "edm", "edm"),
        ring_dataset,
        functools.partial(torch.optim.AdamW, lr=3e-3),
        TrainerConfig(
            max_steps=10,
            batch_size=64,
            sample_every=5,
            sample_n=64,
            cpu=True,
            progress=False,
            ema_decays=(0.9,),
            log_every=5,
        ),
        run_dir=tmp_path,
        sampler=SamplerSpec("euler", 4),
        hooks=Hooks(),
    )
    t.fit()
    for step in (5, 10):
        d = tmp_path / "samples" / f"step_{step:08d}"
        x = np.load(d / "samples.npz")["samples"]
        assert x.shape == (64, 2) and np.isfinite(x).all()
        # the hook saw the same samples (its mean, summed in another order, to 6 digits)
        assert float((d / "mean.txt").read_text()) == pytest.approx(float(x.mean()), abs=2e-6)
    # the final samples are those of the EMA network with the same seed
    again = t.sample(64, seed=t.cfg.seed + t.step)
    np.testing.assert_allclose(again.numpy(), x, rtol=1e-5, atol=1e-6)
    assert t.sampler.sigmas()[0] == 80.0  # the grid defaults to the objective schedule's
