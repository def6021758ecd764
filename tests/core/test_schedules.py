"""Schedules and sigma grids, checked against diffusers, k-diffusion and closed forms.

diffusers computes betas and ``alphas_cumprod`` in float32 and ours are float64, so betas agree
to 1e-6 but ``cumprod`` over 1000 float32 factors only to ~1e-5 relative; the float64 formulas
of diffusers' ``rescale_zero_terminal_snr`` are compared at 1e-12 on our betas.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from peers import load_k_diffusion_sampling
from polydiff.core.schedules import (
    ContinuousVPSchedule,
    EDMSchedule,
    FlowSchedule,
    NoiseSchedule,
    VESchedule,
    VPSchedule,
    exponential_sigmas,
    flow_sigmas,
    karras_sigmas,
    polyexponential_sigmas,
    shift_time,
    uniform_logsnr_sigmas,
    vp_sigmas,
)

diffusers = pytest.importorskip("diffusers")

# diffusers' numpy interop warns under numpy 2 (copy keyword); not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

F64 = torch.float64

# name -> (our constructor, diffusers kwargs)
BETAS = {
    "linear": (VPSchedule.linear, {"beta_schedule": "linear"}),
    "scaled_linear": (
        VPSchedule.scaled_linear,
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    ),
    "squaredcos_cap_v2": (VPSchedule.cosine, {"beta_schedule": "squaredcos_cap_v2"}),
    "sigmoid": (VPSchedule.sigmoid, {"beta_schedule": "sigmoid"}),
}


def _ours(name: str, zero_snr: bool) -> VPSchedule:
    s = BETAS[name][0]()
    return s.rescale_zero_terminal_snr() if zero_snr else s


def _k_external():
    load_k_diffusion_sampling()
    return importlib.import_module("k_diffusion.external")


# ---------------------------------------------------------------------------------------------
# discrete VP vs diffusers
# ---------------------------------------------------------------------------------------------


@pytest.mark.peers
@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize("name", list(BETAS))
def test_alphas_cumprod_match_diffusers_ddpm(name: str, zero_snr: bool) -> None:
    ref = diffusers.DDPMScheduler(**BETAS[name][1], rescale_betas_zero_snr=zero_snr)
    ours = _ours(name, zero_snr)
    assert ours.alphas_cumprod.dtype == F64 and ours.num_steps == 1000
    torch.testing.assert_close(
        ours.alphas_cumprod, ref.alphas_cumprod.to(F64), rtol=3e-5, atol=1e-9
    )
    if not zero_snr:
        torch.testing.assert_close(ours.betas, ref.betas.to(F64), rtol=1e-6, atol=1e-9)
    else:
        assert ours.alphas_cumprod[-1] == 0 and ref.alphas_cumprod[-1] == 0
        # the same algorithm in float64: diffusers' function applied to our un-rescaled betas
        ref64 = diffusers.schedulers.scheduling_ddpm.rescale_zero_terminal_snr(
            _ours(name, False).betas
        )
        torch.testing.assert_close(ours.betas, ref64, rtol=1e-12, atol=1e-14)


def test_zero_snr_keeps_first_alpha_and_gives_finite_increasing_sigmas() -> None:
    for name in BETAS:
        base, z = _ours(name, False), _ours(name, True)
        torch.testing.assert_close(z.alphas_cumprod[0], base.alphas_cumprod[0], rtol=1e-12, atol=0)
        assert torch.isfinite(z.sigmas).all() and (z.sigmas.diff() > 0).all()
    # where diffusers' 2**-24 stand-in is monotone we use it: sigma_max = sqrt(2**24 - 1)
    assert _ours("scaled_linear", True).sigma_max == pytest.approx(math.sqrt(2**24 - 1), rel=1e-12)


N_VALUES = [1, 3, 7, 10, 16, 20, 25, 48, 50, 64, 333, 999]


@pytest.mark.peers
@pytest.mark.parametrize("steps_offset", [0, 1])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timesteps_match_diffusers(spacing: str, steps_offset: int) -> None:
    ours = VPSchedule.scaled_linear()
    kw = dict(BETAS["scaled_linear"][1], timestep_spacing=spacing, steps_offset=steps_offset)
    ddim, euler = diffusers.DDIMScheduler(**kw), diffusers.EulerDiscreteScheduler(**kw)
    for n in N_VALUES:
        ts = ours.timesteps(n, spacing, steps_offset)
        assert ts.dtype == F64 and ts.shape == (n,) and (ts.diff() < 0).all()
        ddim.set_timesteps(n)
        euler.set_timesteps(n)
        # DDIM rounds linspace timesteps to int; Euler keeps them fractional (float32)
        expected_int = ts.round() if spacing == "linspace" else ts
        assert torch.equal(ddim.timesteps.to(F64), expected_int), (spacing, n)
        torch.testing.assert_close(euler.timesteps.to(F64), ts, rtol=0, atol=1e-4)


@pytest.mark.peers
@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_sigma_grid_matches_euler_discrete(spacing: str, zero_snr: bool) -> None:
    """Integer timesteps: the grid is exact; float32 on diffusers' side limits rtol to ~1e-4."""
    ours = _ours("scaled_linear", zero_snr)
    kw = dict(BETAS["scaled_linear"][1], timestep_spacing=spacing, steps_offset=1)
    euler = diffusers.EulerDiscreteScheduler(**kw, rescale_betas_zero_snr=zero_snr)
    for n in [5, 10, 25, 50]:
        euler.set_timesteps(n)
        grid = ours.sigmas_for(n, spacing, steps_offset=1)
        assert grid.shape == (n + 1,) and grid[-1] == 0 and (grid.diff() < 0).all()
        torch.testing.assert_close(grid, euler.sigmas.to(F64), rtol=1e-4, atol=0)


def test_timesteps_bad_arguments() -> None:
    s = VPSchedule.linear()
    with pytest.raises(ValueError, match="spacing"):
        s.timesteps(10, "uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exceed"):
        s.timesteps(1001)
    with pytest.raises(ValueError, match="positive int"):
        s.timesteps(0)
    with pytest.raises(ValueError, match="outside"):
        s.timesteps(1000, "leading", steps_offset=1)
    with pytest.raises(ValueError, match="betas"):
        VPSchedule(torch.tensor([0.1, 1.5]))


# ---------------------------------------------------------------------------------------------
# discrete t <-> sigma
# ---------------------------------------------------------------------------------------------


@pytest.mark.peers
@pytest.mark.parametrize("zero_snr", [False, True])
def test_sigma_to_t_matches_k_diffusion_discrete_schedule(zero_snr: bool) -> None:
    ours = _ours("scaled_linear", zero_snr)
    ref = _k_external().DiscreteSchedule(ours.sigmas, quantize=False)
    g = torch.Generator().manual_seed(0)
    # inside the range, at the grid points, and clamped outside it
    sigma = torch.cat(
        [
            torch.exp(torch.empty(200, dtype=F64).uniform_(-3.6, 8.3, generator=g)),
            ours.sigmas[::97],
            torch.tensor([1e-4, 1e5], dtype=F64),
        ]
    )
    torch.testing.assert_close(ours.sigma_to_t(sigma), ref.sigma_to_t(sigma), rtol=0, atol=1e-9)
    t = torch.empty(200).uniform_(0, 999, generator=g)  # k-diffusion casts t to float32
    torch.testing.assert_close(
        ours.t_to_sigma(t.to(F64)), ref.t_to_sigma(t).to(F64), rtol=1e-6, atol=0
    )


def test_discrete_round_trip_and_grid_points() -> None:
    s = VPSchedule.linear()
    t = torch.linspace(0, 999, 1777, dtype=F64)
    torch.testing.assert_close(s.sigma_to_t(s.t_to_sigma(t)), t, rtol=0, atol=1e-9)
    idx = torch.arange(1000, dtype=F64)
    assert torch.equal(s.sigma_to_t(s.sigmas), idx)  # exact at the integer timesteps
    torch.testing.assert_close(s.t_to_sigma(idx), s.sigmas, rtol=1e-14, atol=0)
    # half way between two timesteps is the geometric mean of their sigmas (log-linear)
    mid = s.t_to_sigma(torch.tensor([10.5], dtype=F64))
    torch.testing.assert_close(mid, (s.sigmas[10] * s.sigmas[11]).sqrt().reshape(1))
    # shape is kept, sigma 0 maps to t 0 without NaN
    assert s.sigma_to_t(torch.zeros(2, 3)).shape == (2, 3)
    assert torch.equal(s.sigma_to_t(torch.zeros(2)), torch.zeros(2, dtype=F64))
    with pytest.raises(ValueError, match="t must lie"):
        s.t_to_sigma(torch.tensor([1000.0]))


# ---------------------------------------------------------------------------------------------
# continuous schedules
# ---------------------------------------------------------------------------------------------

CONTINUOUS = {
    "vp_linear": ContinuousVPSchedule.linear(),
    "vp_cosine": ContinuousVPSchedule.cosine(),
    "ve": VESchedule(0.01, 50.0),
    "edm": EDMSchedule(),
    "flow": FlowSchedule(shift=3.0),
}


@pytest.mark.parametrize("name", list(CONTINUOUS))
def test_continuous_round_trip(name: str) -> None:
    s = CONTINUOUS[name]
    assert isinstance(s, NoiseSchedule) and not s.discrete
    t_hi = min(s.t_max, 0.999) if name == "flow" else s.t_max
    t = torch.linspace(s.t_min, t_hi, 501, dtype=F64)
    sigma = s.t_to_sigma(t)
    assert (sigma.diff() > 0).all()
    torch.testing.assert_close(s.sigma_to_t(sigma), t, rtol=1e-9, atol=1e-9)
    grid = s.sigmas_for(12)
    assert grid.shape == (13,) and grid[-1] == 0 and (grid.diff() < 0).all()


def test_continuous_vp_closed_forms() -> None:
    s = ContinuousVPSchedule.linear(beta_min=0.1, beta_max=20.0)
    t = torch.tensor([0.1, 0.5, 1.0], dtype=F64)
    log_mean_coeff = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1  # score-SDE VPSDE.marginal_prob
    alpha_bar = torch.exp(2 * log_mean_coeff)
    torch.testing.assert_close(s.t_to_sigma(t), ((1 - alpha_bar) / alpha_bar).sqrt())
    # same sigmas as k-diffusion's get_sigmas_vp (beta_d = beta_max - beta_min)
    torch.testing.assert_close(
        s.t_to_sigma(torch.linspace(1, 1e-3, 7, dtype=F64)), vp_sigmas(7)[:-1]
    )
    c = ContinuousVPSchedule.cosine()
    tt = torch.tensor([0.3], dtype=F64)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    ab = f(0.3) / f(0.0)
    torch.testing.assert_close(c.t_to_sigma(tt), torch.tensor([math.sqrt(1 / ab - 1)], dtype=F64))
    # VP input scale
    torch.testing.assert_close(s.alpha(torch.tensor([3.0])), torch.tensor([1 / math.sqrt(10)]))


def test_ve_edm_flow_closed_forms() -> None:
    ve = VESchedule(0.01, 50.0)
    torch.testing.assert_close(
        ve.t_to_sigma(torch.tensor([0.0, 0.5, 1.0], dtype=F64)),
        torch.tensor([0.01, math.sqrt(0.5), 50.0], dtype=F64),
    )
    flow = FlowSchedule()
    t = torch.tensor([0.0, 0.25, 0.5, 0.75], dtype=F64)
    torch.testing.assert_close(flow.t_to_sigma(t), t / (1 - t))
    sigma = flow.t_to_sigma(t)
    torch.testing.assert_close(flow.alpha(sigma), 1 - t)  # x_flow = x / (1 + sigma) = (1-t) x
    # SD3 shift
    torch.testing.assert_close(shift_time(t, 3.0), 3 * t / (1 + 2 * t))
    assert shift_time(torch.tensor(1.0), 3.0) == 1.0
    with pytest.raises(ValueError, match="shift"):
        FlowSchedule(shift=0.0)
    with pytest.raises(ValueError, match="sigma_min"):
        EDMSchedule(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="sigma_data"):
        EDMSchedule(sigma_data=0.0)


# ---------------------------------------------------------------------------------------------
# sigma grids vs k-diffusion
# ---------------------------------------------------------------------------------------------


@pytest.mark.peers
@pytest.mark.parametrize("n", [1, 2, 10, 37])
def test_grids_match_k_diffusion(n: int) -> None:
    ks = load_k_diffusion_sampling()
    cases = [
        (karras_sigmas(n, 0.002, 80.0), ks.get_sigmas_karras(n, 0.002, 80.0)),
        (karras_sigmas(n, 0.03, 14.6, rho=5.0), ks.get_sigmas_karras(n, 0.03, 14.6, rho=5.0)),
        (exponential_sigmas(n, 0.002, 80.0), ks.get_sigmas_exponential(n, 0.002, 80.0)),
        (
            polyexponential_sigmas(n, 0.01, 50.0, 2.0),
            ks.get_sigmas_polyexponential(n, 0.01, 50.0, 2.0),
        ),
    ]
    for ours, ref in cases:
        assert ours.dtype == F64 and ours.shape == (n + 1,) and ours[-1] == 0
        torch.testing.assert_close(ours, ref.to(F64), rtol=2e-6, atol=0)
    # k-diffusion's float32 exp(...) - 1 cancels near t = eps_s; we use expm1 in float64
    ours, ref = vp_sigmas(n), ks.get_sigmas_vp(n).to(F64)
    torch.testing.assert_close(ours[:-2], ref[:-2], rtol=2e-6, atol=0)
    torch.testing.assert_close(ours[-2:], ref[-2:], rtol=5e-4, atol=0)
    if n > 1:
        exact = math.sqrt(math.expm1(19.9 * 1e-3**2 / 2 + 0.1 * 1e-3))
        assert ours[-2].item() == pytest.approx(exact, rel=1e-12)


def test_grid_closed_forms() -> None:
    g = karras_sigmas(4, 0.002, 80.0, rho=7.0)
    assert g[0] == pytest.approx(80.0, rel=1e-14) and g[3] == pytest.approx(0.002, rel=1e-12)
    ramp = torch.arange(4, dtype=F64) / 3  # Karras et al. eq. 5
    expected = (80.0 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    torch.testing.assert_close(g[:-1], expected, rtol=1e-14, atol=0)
    # exponential == uniform in log-SNR
    e = uniform_logsnr_sigmas(6, 0.1, 10.0)
    log_snr = -2 * e[:-1].log()
    torch.testing.assert_close(
        log_snr.diff(), torch.full((5,), log_snr.diff()[0].item(), dtype=F64)
    )
    assert exponential_sigmas is uniform_logsnr_sigmas
    # flow: uniform in t then shifted, as VE sigma
    f = flow_sigmas(4, shift=3.0, t_max=0.999)
    t = shift_time(torch.linspace(0.999, 0, 5, dtype=F64), 3.0)
    torch.testing.assert_close(f, t / (1 - t))
    assert f[-1] == 0 and (f.diff() < 0).all()
    for bad in [
        lambda: karras_sigmas(0, 0.1, 1.0),
        lambda: karras_sigmas(5, 0.0, 1.0),
        lambda: exponential_sigmas(5, 2.0, 1.0),
        lambda: flow_sigmas(5, t_max=1.0),
    ]:
        with pytest.raises(ValueError):
            bad()


@pytest.mark.peers
def test_linspace_grid_close_to_euler_discrete() -> None:
    """Fractional timesteps: log-sigma (ours, k-diffusion) vs linear-sigma (diffusers) interp."""
    ours = _ours("scaled_linear", False)
    euler = diffusers.EulerDiscreteScheduler(
        **BETAS["scaled_linear"][1], timestep_spacing="linspace"
    )
    for n in [7, 25, 50]:
        euler.set_timesteps(n)
        torch.testing.assert_close(
            ours.sigmas_for(n, "linspace"), euler.sigmas.to(F64), rtol=2e-4, atol=0
        )
