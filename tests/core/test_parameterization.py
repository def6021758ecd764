"""Parameterisations: an oracle network that outputs the exact target gives D = x0 exactly.

The oracle computes each target from first principles in the network's own (native) space,
independently of ``Parameterization.target``, and checks the input it is shown.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch import nn

from peers import load_k_diffusion_sampling
from polydiff.core.objective import DiffusionObjective
from polydiff.core.parameterization import (
    EDMParameterization,
    EDMPrecond,
    EpsDenoiser,
    FlowDenoiser,
    NetworkDenoiser,
    VDenoiser,
    X0Denoiser,
    make_parameterization,
)
from polydiff.core.schedules import ContinuousVPSchedule, FlowSchedule, VESchedule, VPSchedule
from polydiff.core.utils import append_dims

F64 = torch.float64


class Zero(nn.Module):
    def forward(self, x_in, t, cond=None):
        return torch.zeros_like(x_in)


class Oracle(nn.Module):
    """Returns ``target_fn(x0, eps, sigma)`` and records what it was shown."""

    accepts_null_mask = True

    def __init__(self, x0, eps, sigma, target_fn) -> None:
        super().__init__()
        self.x0, self.eps, self.sigma, self.target_fn = x0, eps, sigma, target_fn
        self.seen: dict[str, torch.Tensor] = {}
        self.scale = nn.Parameter(torch.ones(()))  # so .to() has something to move

    def forward(self, x_in, t, cond=None):
        self.seen = {"x_in": x_in, "t": t, "cond": cond}
        return self.target_fn(self.x0, self.eps, self.sigma) * self.scale


def _problem(shape=(6, 3), sigma=None, dtype=F64):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(shape, generator=g, dtype=dtype)
    eps = torch.randn(shape, generator=g, dtype=dtype)
    if sigma is None:
        sigma = torch.exp(torch.linspace(-3, 4, shape[0], dtype=F64))
    x = x0 + append_dims(sigma, x0.ndim).to(dtype) * eps
    return x0, eps, sigma, x


def _ab(sigma, ndim):  # alpha_bar = 1 / (1 + sigma^2)
    return append_dims(1 / (1 + sigma**2), ndim)


@pytest.mark.parametrize("shape", [(6, 3), (6, 2, 5), (6, 1, 4, 4), (6, 2, 2, 3, 3)])
def test_vp_oracles_recover_x0_and_see_vp_input(shape) -> None:
    sched = VPSchedule.linear()
    idx = torch.tensor([0, 1, 10, 200, 700, 999])
    sigma = sched.sigmas[idx]
    x0, eps, sigma, x = _problem(shape, sigma)
    ab = _ab(sigma, x0.ndim)
    x_vp = ab.sqrt() * x0 + (1 - ab).sqrt() * eps  # what a DDPM network sees
    targets = {
        EpsDenoiser: lambda x0, eps, s: eps,
        X0Denoiser: lambda x0, eps, s: x0,
        VDenoiser: lambda x0, eps, s: ab.sqrt() * eps - (1 - ab).sqrt() * x0,  # Salimans & Ho
    }
    for cls, fn in targets.items():
        net = Oracle(x0, eps, sigma, fn)
        d = cls(net, sched)
        torch.testing.assert_close(d(x, sigma), x0, rtol=0, atol=1e-9)
        torch.testing.assert_close(net.seen["x_in"], x_vp, rtol=1e-12, atol=1e-12)
        assert torch.equal(net.seen["t"], idx.to(F64))  # the integer timesteps, exactly
        torch.testing.assert_close(d.network_output(x, sigma), fn(x0, eps, sigma))


def test_discrete_vp_net_sees_interpolated_timestep() -> None:
    sched = VPSchedule.scaled_linear()
    t = torch.tensor([3.25, 500.5, 998.75], dtype=F64)
    sigma = sched.t_to_sigma(t)
    x0, eps, sigma, x = _problem((3, 4), sigma)
    net = Oracle(x0, eps, sigma, lambda x0, eps, s: eps)
    EpsDenoiser(net, sched)(x, sigma)
    torch.testing.assert_close(net.seen["t"], t, rtol=0, atol=1e-9)


def test_continuous_vp_oracle() -> None:
    sched = ContinuousVPSchedule.linear()
    t = torch.tensor([0.01, 0.3, 0.9], dtype=F64)
    sigma = sched.t_to_sigma(t)
    x0, eps, sigma, x = _problem((3, 2), sigma)
    net = Oracle(x0, eps, sigma, lambda x0, eps, s: eps)
    torch.testing.assert_close(EpsDenoiser(net, sched)(x, sigma), x0, rtol=0, atol=1e-10)
    torch.testing.assert_close(net.seen["t"], t, rtol=1e-10, atol=1e-12)


def test_ve_eps_network_sees_unscaled_input() -> None:
    sched = VESchedule(0.01, 50.0)
    x0, eps, sigma, x = _problem()
    net = Oracle(x0, eps, sigma, lambda x0, eps, s: eps)
    torch.testing.assert_close(EpsDenoiser(net, sched)(x, sigma), x0, rtol=0, atol=1e-10)
    assert torch.equal(net.seen["x_in"], x)


@pytest.mark.parametrize("shape", [(6, 3), (6, 2, 3, 3)])
def test_flow_oracle(shape) -> None:
    x0, eps, sigma, x = _problem(shape)
    t = sigma / (1 + sigma)
    net = Oracle(x0, eps, sigma, lambda x0, eps, s: eps - x0)
    torch.testing.assert_close(FlowDenoiser(net)(x, sigma), x0, rtol=0, atol=1e-10)
    tt = append_dims(t, x0.ndim)
    torch.testing.assert_close(net.seen["x_in"], (1 - tt) * x0 + tt * eps)  # rectified flow x_t
    torch.testing.assert_close(net.seen["t"], t)
    assert torch.equal(net.seen["t"], FlowSchedule().sigma_to_t(sigma))
    # very high noise: the network sees ~pure noise, t ~ 1, and D stays accurate
    big = torch.full((x0.shape[0],), 1e8, dtype=F64)
    xb = x0 + append_dims(big, x0.ndim) * eps
    net = Oracle(x0, eps, big, lambda x0, eps, s: eps - x0)
    torch.testing.assert_close(FlowDenoiser(net)(xb, big), x0, rtol=0, atol=1e-6)
    torch.testing.assert_close(net.seen["x_in"], eps, rtol=0, atol=1e-7)
    assert FlowDenoiser(Zero()).param.noise_input(torch.tensor([math.inf])).item() == 1.0


def test_edm_coefficients_match_paper_table_1() -> None:
    sd = 0.5
    p = EDMParameterization(sd)
    for s in [0.002, 0.1, 0.5, 1.0, 7.3, 80.0]:
        sigma = torch.tensor([s], dtype=F64)
        c_skip, c_out, c_in = (c.item() for c in p.scalings(sigma))
        assert c_skip == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-14)
        assert c_out == pytest.approx(s * sd / math.sqrt(s**2 + sd**2), rel=1e-14)
        assert c_in == pytest.approx(1 / math.sqrt(s**2 + sd**2), rel=1e-14)
        assert p.noise_input(sigma).item() == pytest.approx(math.log(s) / 4, rel=1e-14)
    x0, eps, sigma, x = _problem()
    c_skip, c_out, _ = (append_dims(c, 2) for c in p.scalings(sigma))
    net = Oracle(x0, eps, sigma, lambda x0, eps, s: (x0 - c_skip * x) / c_out)  # eq. 8 target
    torch.testing.assert_close(EDMPrecond(net, sd)(x, sigma), x0, rtol=0, atol=1e-10)
    torch.testing.assert_close(net.seen["x_in"], x / append_dims((sigma**2 + sd**2).sqrt(), 2))
    torch.testing.assert_close(net.seen["t"], sigma.log() / 4)


@pytest.mark.parametrize("kind", ["eps", "x0", "v", "flow", "edm"])
def test_target_is_the_preconditioning_inverse(kind: str) -> None:
    """``target == (x0 - c_skip x) / c_out``: the one identity that ties loss and sampling."""
    p = make_parameterization(kind, VPSchedule.linear())
    x0, eps, sigma, x = _problem((6, 2, 3))
    c_skip, c_out, _ = (append_dims(c, x.ndim) for c in p.scalings(sigma))
    torch.testing.assert_close(p.target(x0, eps, sigma), (x0 - c_skip * x) / c_out)
    assert p.name == kind


def test_module_behaviour_and_null_mask_passthrough() -> None:
    x0, eps, sigma, x = _problem()
    net = Oracle(x0, eps, sigma, lambda x0, eps, s: eps)
    d = EpsDenoiser(net, VPSchedule.linear())
    assert isinstance(d, nn.Module) and d.accepts_null_mask
    assert list(d.parameters()) == [net.scale]
    assert d.eval() is d and not net.training
    cond = {"class": torch.zeros(6, dtype=torch.long)}
    d(x, sigma, cond)
    assert net.seen["cond"] is cond
    plain = EDMPrecond(Zero())
    assert plain.accepts_null_mask is False


def test_half_precision_keeps_dtype_and_float32_time() -> None:
    x0, eps, sigma, x = _problem(
        sigma=torch.linspace(0.05, 1.0, 6, dtype=F64), dtype=torch.bfloat16
    )
    net = Oracle(x0, eps, sigma, lambda x0, eps, s: eps)
    out = EpsDenoiser(net, VPSchedule.linear())(x, sigma)
    assert out.dtype == torch.bfloat16 and net.seen["t"].dtype == torch.float32
    torch.testing.assert_close(out.float(), x0.float(), rtol=0.05, atol=0.1)


def test_errors() -> None:
    x0, eps, sigma, x = _problem()
    d = EDMPrecond(Zero())
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        d(x, sigma[:3])
    assert d(x, torch.tensor(1.0)).shape == x.shape  # a scalar sigma is broadcast
    with pytest.raises(ValueError, match="VP schedules"):
        VDenoiser(Zero(), VESchedule())
    with pytest.raises(ValueError, match="valid: edm, eps, flow, v, x0"):
        make_parameterization("score")
    with pytest.raises(ValueError, match="needs a schedule"):
        make_parameterization("eps")
    with pytest.raises(ValueError, match="sigma_data"):
        EDMPrecond(Zero(), sigma_data=-1.0)
    assert isinstance(NetworkDenoiser(Zero(), make_parameterization("flow")), nn.Module)


class _RandomNet(nn.Module):
    """A fixed random function of (x_in, t), float64."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.w = torch.randn(dim, dim, generator=g, dtype=F64) / dim**0.5
        self.u = torch.randn(dim, generator=g, dtype=F64)

    def forward(self, x_in, t, cond=None):
        return torch.tanh(x_in @ self.w + append_dims(t.to(F64), 2) * 1e-3 * self.u)


@pytest.mark.peers
@pytest.mark.parametrize("kind", ["eps", "v"])
def test_discrete_wrappers_match_k_diffusion(kind: str) -> None:
    load_k_diffusion_sampling()
    ext = importlib.import_module("k_diffusion.external")
    sched = VPSchedule.scaled_linear()
    net = _RandomNet(5)
    ref_cls = ext.DiscreteEpsDDPMDenoiser if kind == "eps" else ext.DiscreteVDDPMDenoiser
    ref = ref_cls(lambda x, t: net(x, t), sched.alphas_cumprod, quantize=False)
    ours = (EpsDenoiser if kind == "eps" else VDenoiser)(net, sched)
    g = torch.Generator().manual_seed(0)
    sigma = torch.exp(torch.empty(64, dtype=F64).uniform_(-3.5, 2.7, generator=g))
    x = torch.randn(64, 5, generator=g, dtype=F64) * append_dims(sigma, 2)
    torch.testing.assert_close(ours(x, sigma), ref(x, sigma), rtol=1e-10, atol=1e-12)
    # k-diffusion's training loss (unweighted MSE on the target) equals our "uniform" loss
    x0 = torch.randn(64, 5, generator=g, dtype=F64)
    noise = torch.randn(64, 5, generator=g, dtype=F64)
    obj = DiffusionObjective(sched, kind, "uniform")
    ours_loss = obj.per_sample_loss(net, x0, sigma=sigma, noise=noise)
    torch.testing.assert_close(ours_loss, ref.loss(x0, noise, sigma), rtol=1e-9, atol=1e-12)
