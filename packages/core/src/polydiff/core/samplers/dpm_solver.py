"""DPM-Solver++ family (Lu et al. 2022, arXiv:2211.01095) in sigma space, data prediction.

With ``lambda = -log(sigma)`` and ``h = lambda_next - lambda`` the exact solution of the
probability-flow ODE is ``x_next = (sigma_next / sigma) x + sigma_next int e^lambda D dlambda``;
the solvers approximate ``D`` along ``lambda`` (first order: ``x_next = (sigma_next / sigma) x -
expm1(-h) D``, i.e. DDIM). SDE variants follow k-diffusion's formulation. The final step to
sigma 0 is a clean denoise (``x = D``). DPM-Solver++(1) is the DDIM step (``ddim_step``).
"""

from __future__ import annotations

import math

import torch

from polydiff.core.samplers._base import (
    Callback,
    Generator,
    Model,
    add_noise,
    ancestral_step,
    as_grid,
    bind,
    brownian_pair,
    ddim_step,
)
from polydiff.core.samplers.karras import _ancestral_loop, _report
from polydiff.core.utils import Cond

__all__ = ["dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2s_ancestral", "dpmpp_3m_sde", "dpmpp_sde"]


def dpmpp_2s_ancestral(
    denoiser: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    generator: Generator = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Ancestral sampling with DPM-Solver++(2S) single-step (midpoint in lambda) updates."""
    grid, model = as_grid(sigmas), bind(denoiser, x, cond)
    return _ancestral_loop(
        model,
        grid,
        x,
        _dpmpp_2s_step,
        callback=callback,
        generator=generator,
        eta=eta,
        s_noise=s_noise,
    )


def _dpmpp_2s_step(
    model: Model, x: torch.Tensor, denoised: torch.Tensor, s: float, s_down: float, i: int
) -> torch.Tensor:
    """DPM-Solver++(2S) step ``s -> s_down``: DDIM to the lambda midpoint (r = 1/2), then the
    full step with the denoiser there; to 0 the clean denoise."""
    if s_down == 0:
        return denoised
    s_mid = math.sqrt(s * s_down)
    x_mid = ddim_step(x, denoised, s, s_mid)
    return ddim_step(x, model(x_mid, s_mid, i), s, s_down)


def dpmpp_sde(
    denoiser: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    generator: Generator = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
) -> torch.Tensor:
    """DPM-Solver++ (stochastic, k-diffusion's ``sample_dpmpp_sde``): two ancestral sub-steps.

    Both sub-steps start at sigma; their noises are increments of one Brownian path in sigma
    (``brownian_pair``), drawn from ``generator`` instead of a BrownianTree.
    """
    grid, model = as_grid(sigmas), bind(denoiser, x, cond)
    for i in range(len(grid) - 1):
        s, s_next = grid[i], grid[i + 1]
        denoised = model(x, s, i)
        _report(callback, x, i, s, s, denoised)
        if s_next == 0:
            x = denoised
            continue
        h = math.log(s / s_next)
        s_mid = s * math.exp(-r * h)
        z_mid, z_next = brownian_pair(x, s, s_mid, s_next, generator) if eta > 0 else (0, 0)
        # sub-step 1: ancestral DPM-Solver++(1) to s_mid
        sd, su = ancestral_step(s, s_mid, eta)
        x_mid = ddim_step(x, denoised, s, sd) + z_mid * (s_noise * su)
        denoised_mid = model(x_mid, s_mid, i)
        # sub-step 2: the full step with D extrapolated through (s, D) and (s_mid, D_mid)
        sd, su = ancestral_step(s, s_next, eta)
        fac = 1 / (2 * r)
        denoised_d = denoised * (1 - fac) + denoised_mid * fac
        x = ddim_step(x, denoised_d, s, sd) + z_next * (s_noise * su)
    return x


def dpmpp_2m(
    denoiser: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    generator: Generator = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) multistep (Lu et al. 2022, Alg. 2); first order at the ends."""
    grid, model = as_grid(sigmas), bind(denoiser, x, cond)
    old_denoised, h_last = None, 0.0
    for i in range(len(grid) - 1):
        s, s_next = grid[i], grid[i + 1]
        denoised = model(x, s, i)
        _report(callback, x, i, s, s, denoised)
        if old_denoised is None or s_next == 0:
            x = ddim_step(x, denoised, s, s_next)
        else:
            h = math.log(s / s_next)
            half_inv_r = h / (2 * h_last)  # 1 / (2 r), r = h_last / h
            x = ddim_step(x, denoised * (1 + half_inv_r) - old_denoised * half_inv_r, s, s_next)
        if s_next > 0:
            h_last = math.log(s / s_next)
        old_denoised = denoised
    return x


def dpmpp_2m_sde(
    denoiser: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    generator: Generator = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE (k-diffusion's ``sample_dpmpp_2m_sde``, midpoint or heun variant).

    Step noise is N(0, I) per step: increments of a Brownian path over disjoint intervals are
    independent, so this has the BrownianTree's distribution (not its cross-grid consistency).
    """
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    grid, model = as_grid(sigmas), bind(denoiser, x, cond)
    old_denoised, h_last = None, 0.0
    for i in range(len(grid) - 1):
        s, s_next = grid[i], grid[i + 1]
        denoised = model(x, s, i)
        _report(callback, x, i, s, s, denoised)
        if s_next == 0:
            x = denoised
            continue
        h = math.log(s / s_next)
        eta_h = eta * h
        phi = -math.expm1(-h - eta_h)  # 1 - e^{-(1 + eta) h}
        x = x * (s_next / s * math.exp(-eta_h)) + denoised * phi
        if old_denoised is not None:
            inv_r = h / h_last
            if solver_type == "heun":
                coeff = (phi / (-h - eta_h) + 1) * inv_r
            else:
                coeff = 0.5 * phi * inv_r
            x = x + (denoised - old_denoised) * coeff
        if eta > 0:
            x = add_noise(x, s_next * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise, generator)
        old_denoised, h_last = denoised, h
    return x


def dpmpp_3m_sde(
    denoiser: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    generator: Generator = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver++(3M) SDE (k-diffusion's ``sample_dpmpp_3m_sde``); eta=0 is the 3M ODE solver.

    With ``D(lambda) ~ D_0 + tau D' + tau^2 D'' / 2`` the exact second-derivative term is
    ``h^2 (-phi_3) D''``. k-diffusion and diffusers multiply ``-phi_3`` by ``(D1_0 - D1_1) /
    (r0 + r1)``, which is ``h^2 D'' / 2``: half the term, so their 3M is only second order
    (measured in ``tests/core/test_samplers_order.py``). Here the divided difference carries the
    factor 2 and the method is third order. Step noise is N(0, I) per step (see ``dpmpp_2m_sde``).
    """
    grid, model = as_grid(sigmas), bind(denoiser, x, cond)
    d_1 = d_2 = None  # D at the previous two steps
    h_1 = h_2 = 0.0
    for i in range(len(grid) - 1):
        s, s_next = grid[i], grid[i + 1]
        denoised = model(x, s, i)
        _report(callback, x, i, s, s, denoised)
        if s_next == 0:
            x = denoised
            continue
        h = math.log(s / s_next)
        h_eta = h * (eta + 1)
        x = x * math.exp(-h_eta) - denoised * math.expm1(-h_eta)
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        if d_2 is not None:
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (denoised - d_1) / r0
            d1_1 = (d_1 - d_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))  # ~ h D'
            d2 = (d1_0 - d1_1) * (2 / (r0 + r1))  # ~ h^2 D'' (peers: no factor 2, see docstring)
            phi_3 = phi_2 / h_eta - 0.5
            x = x + d1 * phi_2 - d2 * phi_3
        elif d_1 is not None:
            x = x + (denoised - d_1) * (phi_2 * h / h_1)
        if eta > 0:
            x = add_noise(x, s_next * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise, generator)
        d_1, d_2 = denoised, d_1
        h_1, h_2 = h, h_1
    return x
