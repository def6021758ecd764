"""DiffusionObjective: exact zero loss for an oracle, weighting formulas, densities, CFG dropout."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from polydiff.core.objective import (
    DiffusionObjective,
    EDMWeighting,
    GaussianTime,
    LogitNormal,
    LogNormal,
    MinSNRWeighting,
    SNRWeighting,
    TruncatedSNRWeighting,
    UniformTime,
    UniformWeighting,
)
from polydiff.core.parameterization import make_parameterization
from polydiff.core.schedules import (
    ContinuousVPSchedule,
    EDMSchedule,
    FlowSchedule,
    VESchedule,
    VPSchedule,
)
from polydiff.core.utils import append_dims

F64 = torch.float64


class PointOracle(nn.Module):
    """Exact network for data concentrated at one point ``c``: inverts the parameterisation.

    From ``(x_in, t)`` it recovers sigma, then ``x = x_in / c_in`` and returns the target
    ``(c - c_skip x) / c_out`` (Karras et al. 2022, eq. 8), so D(x, sigma) == c.
    """

    accepts_null_mask = True

    def __init__(self, c: torch.Tensor, param, sigma_of_t) -> None:
        super().__init__()
        self.c, self.param, self.sigma_of_t = c, param, sigma_of_t
        self.calls: list[dict] = []

    def forward(self, x_in, t, cond=None):
        self.calls.append({"t": t, "cond": cond})
        sigma = self.sigma_of_t(t.to(F64))
        c_skip, c_out, c_in = (append_dims(k, x_in.ndim) for k in self.param.scalings(sigma))
        x = x_in / c_in
        return (self.c - c_skip * x) / c_out


class Zero(nn.Module):
    accepts_null_mask = True

    def forward(self, x_in, t, cond=None):
        return torch.zeros_like(x_in)


def _setups():
    vp = VPSchedule.linear()
    cvp = ContinuousVPSchedule.linear()
    edm = EDMSchedule()
    return {
        "eps-discrete": (vp, "eps", vp.t_to_sigma),
        "x0-discrete": (vp, "x0", vp.t_to_sigma),
        "v-discrete-zero-snr": (
            vp.rescale_zero_terminal_snr(),
            "v",
            vp.rescale_zero_terminal_snr().t_to_sigma,
        ),
        "v-continuous": (cvp, "v", cvp.t_to_sigma),
        "eps-ve": (VESchedule(), "eps", VESchedule().t_to_sigma),
        "flow": (FlowSchedule(), "flow", lambda t: t / (1 - t)),
        "edm": (edm, "edm", lambda t: torch.exp(4 * t)),
    }


SETUPS = _setups()


@pytest.mark.parametrize("rank", [2, 3, 5])
@pytest.mark.parametrize("name", list(SETUPS))
def test_oracle_has_zero_loss_and_zero_net_positive(name: str, rank: int) -> None:
    schedule, prediction, sigma_of_t = SETUPS[name]
    weighting = "edm" if prediction == "edm" else "min_snr"
    obj = DiffusionObjective(schedule, prediction, weighting)
    shape = (64, 2, 3, 2, 2)[:rank]
    g = torch.Generator().manual_seed(0)
    c = torch.randn((1, *shape[1:]), generator=g, dtype=F64)
    x0 = c.expand(shape).clone()
    oracle = PointOracle(c, obj.param, sigma_of_t)
    loss = obj.loss(oracle, x0, generator=g)
    assert loss.ndim == 0 and loss.dtype == F64
    assert loss.item() < 1e-12
    assert obj.loss(Zero(), x0, generator=g).item() > 1e-2
    # and the denoiser of the oracle is exact: same path for training and sampling
    sigma = obj.sample_sigma(64, g)
    x = x0 + append_dims(sigma, x0.ndim) * torch.randn(shape, generator=g, dtype=F64)
    torch.testing.assert_close(obj.denoiser(oracle)(x, sigma), x0, rtol=0, atol=1e-7)


SIGMAS = torch.tensor([0.01, 0.2, 0.4472135955, 1.0, 3.0, 80.0], dtype=F64)


def test_weightings_match_their_formulas() -> None:
    s = SIGMAS
    snr = 1 / s**2
    vp = VPSchedule.linear()
    eps, v, x0 = (make_parameterization(k, vp) for k in ("eps", "v", "x0"))
    flow, edm = make_parameterization("flow"), make_parameterization("edm")
    ones = torch.ones_like(s)
    # uniform: plain MSE on the target, for every target
    for p in (eps, v, x0, flow, edm):
        torch.testing.assert_close(UniformWeighting()(s, p), ones)
    # SNR weighting on eps prediction is L_simple: weight 1
    torch.testing.assert_close(SNRWeighting()(s, eps), ones)
    torch.testing.assert_close(SNRWeighting()(s, x0), snr)
    # min-SNR-gamma, Hang et al. 2023: x0 min(SNR, g); eps min(SNR, g)/SNR; v min(SNR, g)/(SNR+1)
    for gamma in (5.0, 1.0):
        w = MinSNRWeighting(gamma)
        torch.testing.assert_close(w(s, x0), snr.clamp(max=gamma))
        torch.testing.assert_close(w(s, eps), snr.clamp(max=gamma) / snr)
        torch.testing.assert_close(w(s, v), snr.clamp(max=gamma) / (snr + 1))
    # SNR = 5 exactly at sigma = 1/sqrt(5): the kink of min-SNR-5
    assert MinSNRWeighting(5.0)(s[2:3], eps).item() == pytest.approx(1.0, rel=1e-9)
    # truncated SNR: max(SNR, 1) in x0 space
    torch.testing.assert_close(TruncatedSNRWeighting()(s, x0), snr.clamp(min=1))
    torch.testing.assert_close(TruncatedSNRWeighting()(s, eps), snr.clamp(min=1) / snr)
    # EDM lambda = (s^2 + sd^2) / (s sd)^2; on the EDM target it is exactly 1
    sd = 0.5
    lam = (s**2 + sd**2) / (s * sd) ** 2
    torch.testing.assert_close(EDMWeighting(sd).x0_weight(s), lam)
    torch.testing.assert_close(EDMWeighting(sd)(s, edm), ones)
    torch.testing.assert_close(EDMWeighting(sd)(s, x0), lam)
    # flow: c_out^2 = t^2
    t = s / (1 + s)
    torch.testing.assert_close(MinSNRWeighting(5.0)(s, flow), snr.clamp(max=5.0) * t**2)


def test_per_sample_loss_is_weighted_mse_of_the_target() -> None:
    vp = VPSchedule.linear()
    obj = DiffusionObjective(vp, "v", "min_snr")
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(6, 4, 5, generator=g, dtype=F64)
    noise = torch.randn(6, 4, 5, generator=g, dtype=F64)
    sigma = SIGMAS
    per = obj.per_sample_loss(Zero(), x0, sigma=sigma, noise=noise)
    a = append_dims(1 / (1 + sigma**2), 3).sqrt()
    v = a * noise - (1 - a**2).sqrt() * x0  # v target, Salimans & Ho
    snr = 1 / sigma**2
    expected = torch.minimum(snr, torch.tensor(5.0, dtype=F64)) / (snr + 1) * (v**2).mean((1, 2))
    torch.testing.assert_close(per, expected)


def test_loss_mask_restricts_the_mean() -> None:
    obj = DiffusionObjective(EDMSchedule(), "x0", "uniform")  # target = x0, Zero net: err = x0^2
    x0 = torch.ones(2, 4, 3, dtype=F64)
    x0[:, 2:] = 10.0  # padded frames with large values
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    per = obj.per_sample_loss(
        Zero(), x0, {"loss_mask": mask}, sigma=torch.ones(2, dtype=F64), noise=torch.zeros_like(x0)
    )
    torch.testing.assert_close(per, torch.ones(2, dtype=F64))
    per = obj.per_sample_loss(Zero(), x0, sigma=torch.ones(2, dtype=F64))
    torch.testing.assert_close(per, torch.full((2,), 50.5, dtype=F64))
    with pytest.raises(ValueError, match="loss_mask"):
        obj.per_sample_loss(Zero(), x0, {"loss_mask": mask[:, :3]})


N = 100_000


def test_log_normal_density_moments() -> None:
    g = torch.Generator().manual_seed(0)
    log_sigma = LogNormal().sample(N, EDMSchedule(), g).log()
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.02)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.02)
    obj = DiffusionObjective(EDMSchedule(), "edm", "edm")  # default density for edm
    assert isinstance(obj.noise_density, LogNormal)


def test_logit_normal_density_is_sd3_on_flow() -> None:
    g = torch.Generator().manual_seed(0)
    sched = FlowSchedule()
    t = sched.sigma_to_t(LogitNormal().sample(N, sched, g))
    logit = torch.log(t / (1 - t))
    assert logit.mean().item() == pytest.approx(0.0, abs=0.02)
    assert logit.std().item() == pytest.approx(1.0, abs=0.02)
    assert t.median().item() == pytest.approx(0.5, abs=0.01)


def test_uniform_time_discrete_and_continuous() -> None:
    g = torch.Generator().manual_seed(0)
    vp = VPSchedule.linear()
    sigma = UniformTime().sample(N, vp, g)
    t = vp.sigma_to_t(sigma)
    assert torch.equal(t, t.round())  # exactly the training timesteps
    counts = torch.bincount(t.long(), minlength=1000)
    assert counts.numel() == 1000 and counts.min() > 50  # ends get full mass too
    assert t.mean().item() == pytest.approx(499.5, abs=3.0)
    assert t.std().item() == pytest.approx(math.sqrt((1000**2 - 1) / 12), rel=0.01)
    cvp = ContinuousVPSchedule.linear()
    tc = cvp.sigma_to_t(UniformTime().sample(N, cvp, g))
    assert tc.min() >= cvp.t_min - 1e-9 and tc.max() <= 1.0 + 1e-9
    assert tc.mean().item() == pytest.approx((1 + cvp.t_min) / 2, abs=0.005)
    assert tc.var().item() == pytest.approx((1 - cvp.t_min) ** 2 / 12, rel=0.02)


def test_gaussian_time_is_centred_mid_sequence() -> None:
    g = torch.Generator().manual_seed(0)
    vp = VPSchedule.linear()
    t = vp.sigma_to_t(GaussianTime(0.5, 0.1).sample(N, vp, g))
    assert t.mean().item() == pytest.approx(499.5, abs=2.0)
    assert t.std().item() == pytest.approx(99.9, rel=0.02)
    # heavily truncated: all mass still inside the range, mean pulled toward the centre
    u = FlowSchedule().sigma_to_t(GaussianTime(0.9, 0.5).sample(N, FlowSchedule(), g))
    assert u.min() >= 0 and u.max() <= 1 and 0.5 < u.mean().item() < 0.9
    with pytest.raises(ValueError, match="std"):
        GaussianTime(0.5, 0.0)


def test_condition_dropout_rate_and_existing_mask() -> None:
    obj = DiffusionObjective(EDMSchedule(), "edm", "edm", cond_drop_prob=0.3)
    g = torch.Generator().manual_seed(0)
    spy = PointOracle(torch.zeros(1, 2, dtype=F64), obj.param, lambda t: torch.exp(4 * t))
    b = 20_000
    y = torch.zeros(b, dtype=torch.long)
    obj.loss(spy, torch.zeros(b, 2, dtype=F64), {"class": y}, generator=g)
    mask = spy.calls[-1]["cond"]["null_mask"]
    assert mask.dtype == torch.bool and mask.shape == (b,)
    assert mask.float().mean().item() == pytest.approx(0.3, abs=0.015)
    assert spy.calls[-1]["cond"]["class"] is y
    # an existing null mask is kept (OR)
    old = torch.zeros(b, dtype=torch.bool)
    old[:1000] = True
    obj.loss(spy, torch.zeros(b, 2, dtype=F64), {"class": y, "null_mask": old}, generator=g)
    mask = spy.calls[-1]["cond"]["null_mask"]
    assert mask[:1000].all() and mask[1000:].float().mean().item() == pytest.approx(0.3, abs=0.015)
    # no condition, nothing to drop; no dropout, cond untouched
    obj.loss(spy, torch.zeros(8, 2, dtype=F64), None, generator=g)
    assert spy.calls[-1]["cond"] is None
    cond = {"class": y[:8]}
    DiffusionObjective(EDMSchedule(), "edm").loss(spy, torch.zeros(8, 2, dtype=F64), cond)
    assert spy.calls[-1]["cond"] is cond


def test_reproducible_with_generator() -> None:
    obj = DiffusionObjective(VPSchedule.cosine(), "eps", "min_snr", cond_drop_prob=0.1)
    x0 = torch.randn(32, 3)
    cond = {"class": torch.zeros(32, dtype=torch.long)}
    net = _Mlp(3)
    losses = [
        obj.loss(net, x0, cond, generator=torch.Generator().manual_seed(7)).item() for _ in range(2)
    ]
    assert losses[0] == losses[1]
    other = obj.loss(net, x0, cond, generator=torch.Generator().manual_seed(8)).item()
    assert other != losses[0]


def test_errors_name_the_valid_choices() -> None:
    vp = VPSchedule.linear()
    with pytest.raises(ValueError, match="valid: edm, eps, flow, v, x0"):
        DiffusionObjective(vp, "score")
    with pytest.raises(ValueError, match="valid: edm, min_snr, snr, truncated_snr, uniform"):
        DiffusionObjective(vp, "eps", "p2")
    with pytest.raises(ValueError, match="valid: gaussian, log_normal, logit_normal, uniform"):
        DiffusionObjective(vp, "eps", noise_density="beta")
    with pytest.raises(ValueError, match="cond_drop_prob"):
        DiffusionObjective(vp, "eps", cond_drop_prob=1.5)
    with pytest.raises(ValueError, match="gamma"):
        MinSNRWeighting(0.0)

    class NoNull(nn.Module):
        def forward(self, x, t, cond=None):
            return x

    obj = DiffusionObjective(vp, "eps", cond_drop_prob=0.1)
    with pytest.raises(ValueError, match="accepts_null_mask"):
        obj.loss(NoNull(), torch.zeros(4, 2), {"class": torch.zeros(4, dtype=torch.long)})
    with pytest.raises(ValueError, match="rank >= 2"):
        obj.loss(NoNull(), torch.zeros(4))


# ---------------------------------------------------------------------------------------------
# end to end: a tiny MLP learns a 2-D Gaussian
# ---------------------------------------------------------------------------------------------


class _Mlp(nn.Module):
    accepts_null_mask = True

    def __init__(self, dim: int = 2, width: int = 64, t_scale: float = 1.0) -> None:
        super().__init__()
        self.t_scale = t_scale
        self.body = nn.Sequential(
            nn.Linear(dim + 2, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, dim),
        )  # fmt: skip

    def forward(self, x, t, cond=None):
        t = (t.to(x.dtype) * self.t_scale)[:, None]
        return self.body(torch.cat([x, torch.sin(t), torch.cos(t)], dim=1))


TRAIN = {
    "eps-min_snr": (VPSchedule.linear(), "eps", "min_snr", None, 1e-3),
    "v-uniform": (VPSchedule.cosine(), "v", "uniform", None, 1e-3),
    "flow-logit_normal": (FlowSchedule(), "flow", "uniform", "logit_normal", 1.0),
    "edm": (EDMSchedule(), "edm", "edm", None, 1.0),
}


@pytest.mark.parametrize("name", list(TRAIN))
def test_loss_decreases_training_tiny_mlp_on_gaussian(name: str) -> None:
    schedule, prediction, weighting, density, t_scale = TRAIN[name]
    obj = DiffusionObjective(schedule, prediction, weighting, density)
    torch.manual_seed(0)
    net = _Mlp(t_scale=t_scale)
    mean, std = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 1.5])

    def eval_loss() -> float:
        with torch.no_grad():
            x0 = mean + std * torch.randn(4096, 2, generator=torch.Generator().manual_seed(1))
            return obj.loss(net, x0, generator=torch.Generator().manual_seed(2)).item()

    before = eval_loss()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(3)
    for _ in range(200):
        x0 = mean + std * torch.randn(256, 2, generator=g)
        loss = obj.loss(net, x0, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert math.isfinite(after) and after < 0.75 * before, (before, after)
