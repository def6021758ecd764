"""Samplers stepping the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` in sigma.

Euler / Heun / DPM-2 (with EDM churn), their ancestral variants, linear multistep, and DDIM /
DDPM written in sigma space (Karras et al. 2022, sec. 3: DDIM with eta=0 *is* the Euler step).
The one-step samplers share two loops (EDM's churn loop, the ancestral loop) and differ in
their step function; multistep history lives in local variables.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from polydiff.core.samplers._base import (
    Callback,
    Generator,
    Model,
    add_noise,
    ancestral_step,
    as_grid,
    bind,
    churn,
    ddim_step,
)
from polydiff.core.utils import Cond

__all__ = ["ddim", "ddpm", "dpm2", "dpm2_ancestral", "euler", "euler_ancestral", "heun", "lms"]


def _report(callback: Callback | None, x, i, sigma, sigma_hat, denoised) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def _churn_loop(
    model: Model,
    grid: list[float],
    x: torch.Tensor,
    step: Callable[..., torch.Tensor],
    *,
    callback: Callback | None,
    generator: Generator,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
) -> torch.Tensor:
    """EDM's loop (Karras et al. 2022, Alg. 2): churn sigma_i up to sigma_hat (lines 4-6),
    denoise there, then ``step(model, x, denoised, sigma_hat, sigma_next, i)`` (lines 7-11)."""
    n = len(grid) - 1
    for i in range(n):
        x, s_hat = churn(x, grid[i], n, s_churn, s_tmin, s_tmax, s_noise, generator)
        denoised = model(x, s_hat, i)
        _report(callback, x, i, grid[i], s_hat, denoised)
        x = step(model, x, denoised, s_hat, grid[i + 1], i)
    return x


def _ancestral_loop(
    model: Model,
    grid: list[float],
    x: torch.Tensor,
    step: Callable[..., torch.Tensor],
    *,
    callback: Callback | None,
    generator: Generator,
    eta: float,
    s_noise: float,
) -> torch.Tensor:
    """Ancestral sampling: denoise at sigma_i, ``step(model, x, denoised, sigma_i, sigma_down,
    i)``, then add fresh noise ``s_noise * sigma_up`` (:func:`ancestral_step` splits the step)."""
    for i in range(len(grid) - 1):
        s = grid[i]
        denoised = model(x, s, i)
        _report(callback, x, i, s, s, denoised)
        s_down, s_up = ancestral_step(s, grid[i + 1], eta)
        x = add_noise(step(model, x, denoised, s, s_down, i), s_noise * s_up, generator)
    return x


def _euler_step(
    model: Model, x: torch.Tensor, denoised: torch.Tensor, s: float, s_to: float, i: int
) -> torch.Tensor:
    """One Euler step ``s -> s_to`` of the probability-flow ODE (= the DDIM step)."""
    return ddim_step(x, denoised, s, s_to)  # = x + (s_to - s) * d


def _heun_step(
    model: Model, x: torch.Tensor, denoised: torch.Tensor, s_hat: float, s_next: float, i: int
) -> torch.Tensor:
    """Heun's step ``s_hat -> s_next`` (Karras et al. 2022, Alg. 2 lines 7-11)."""
    d = (x - denoised) / s_hat
    x_euler = x + d * (s_next - s_hat)
    if s_next == 0:  # line 8: the last step is Euler (a clean denoise)
        return x_euler
    d_next = (x_euler - model(x_euler, s_next, i)) / s_next  # lines 9-11: trapezoidal correction
    return x + (d + d_next) * ((s_next - s_hat) / 2)


def euler(
    denoiser: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    generator: Generator = None,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Euler steps with optional churn (Karras et al. 2022, Alg. 2 with the Euler step only)."""
    grid, model = as_grid(sigmas), bind(denoiser, x, cond)
    opts = dict(s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    return _churn_loop(model, grid, x, _euler_step, callback=callback, generator=generator, **opts)


def heun(
    denoiser: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    generator: Generator = None,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """EDM stochastic sampler with Heun's 2nd-order correction (Karras et al. 2022, Alg. 2).

    ``s_churn, s_tmin, s_tmax, s_noise`` are EDM's S_churn, S_tmin, S_tmax, S_noise; with
    ``s_churn=0`` (default) this is the deterministic Heun ODE solver (Alg. 1).
    """
    grid, model = as_grid(sigmas), bind(denoiser, x, cond)
    opts = dict(s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    return _churn_loop(model, grid, x, _heun_step, callback=callback, generator=generator, **opts)


def dpm2(
    denoiser: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    generator: Generator = None,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver-2-style midpoint steps (geometric midpoint in sigma) with EDM churn."""
    grid, model = as_grid(sigmas), bind(denoiser, x, cond)
    opts = dict(s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    return _churn_loop(
        model, grid, x, _midpoint_step, callback=callback, generator=generator, **opts
    )


def _midpoint_step(
    model: Model, x: torch.Tensor, denoised: torch.Tensor, s: float, s_to: float, i: int
) -> torch.Tensor:
    """One DPM-2 step ``s -> s_to``: Euler to ``sqrt(s * s_to)``, full step with the slope there."""
    d = (x - denoised) / s
    if s_to == 0:
        return x - d * s  # Euler to 0: the clean denoise
    s_mid = math.sqrt(s * s_to)
    x_mid = x + d * (s_mid - s)
    return x + (x_mid - model(x_mid, s_mid, i)) * ((s_to - s) / s_mid)


def euler_ancestral(
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
    """Ancestral sampling with Euler steps: Euler to sigma_down, then fresh noise sigma_up."""
    grid, model = as_grid(sigmas), bind(denoiser, x, cond)
    return _ancestral_loop(
        model,
        grid,
        x,
        _euler_step,
        callback=callback,
        generator=generator,
        eta=eta,
        s_noise=s_noise,
    )


def ddim(
    denoiser: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    generator: Generator = None,
    callback: Callback | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) in sigma space.

    With ``x = x_t / sqrt(alpha_bar_t)`` the DDIM update is ``x_next = D + sigma_down * eps_hat
    + sigma_up * z`` with ``(sigma_down, sigma_up) = ancestral_step(sigma, sigma_next, eta)``:
    for eta=0 exactly the Euler step of the probability-flow ODE, for eta=1 DDPM's posterior.
    """
    return euler_ancestral(
        denoiser, x, sigmas, cond=cond, generator=generator, callback=callback, eta=eta
    )


def ddpm(
    denoiser: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    generator: Generator = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2) as the posterior q(x_next | x, x0=D).

    In VE form ``x_next = x0 + sigma_next * eps`` and ``x = x_next + sqrt(sigma^2 -
    sigma_next^2) * n``, so the posterior is Gaussian with mean ``D + (sigma_next^2 /
    sigma^2) (x - D)`` and variance ``sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2``
    (the beta-tilde "fixed_small" variance of the VP chain, rescaled by 1 / alpha_bar): the
    DDIM step with eta=1 (``ancestral_step`` splits it exactly so).
    """
    return euler_ancestral(
        denoiser, x, sigmas, cond=cond, generator=generator, callback=callback, eta=1.0
    )


def dpm2_ancestral(
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
    """Ancestral sampling with DPM-2 midpoint steps to sigma_down, then fresh noise sigma_up."""
    grid, model = as_grid(sigmas), bind(denoiser, x, cond)
    return _ancestral_loop(
        model,
        grid,
        x,
        _midpoint_step,
        callback=callback,
        generator=generator,
        eta=eta,
        s_noise=s_noise,
    )


def lms_coefficients(nodes: list[float], s_from: float, s_to: float) -> list[float]:
    """Adams-Bashforth weights: integrals over [s_from, s_to] of the Lagrange basis on ``nodes``.

    Exact polynomial integration in float64 (k-diffusion uses scipy.integrate.quad).
    """
    weights = []
    for j, tj in enumerate(nodes):
        basis = np.poly1d([1.0])
        for k, tk in enumerate(nodes):
            if k != j:
                basis = basis * np.poly1d([1.0, -tk]) / (tj - tk)
        integral = np.polyint(basis)
        weights.append(float(integral(s_to) - integral(s_from)))
    return weights


def lms(
    denoiser: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    generator: Generator = None,
    callback: Callback | None = None,
    order: int = 4,
) -> torch.Tensor:
    """Linear multistep (Adams-Bashforth on the sigma grid, k-diffusion's LMS), order <= 4.

    Warms up with lower orders; the final step to sigma 0 is first order (a clean denoise).
    """
    if order < 1:
        raise ValueError(f"lms order must be >= 1, got {order}")
    grid, model = as_grid(sigmas), bind(denoiser, x, cond)
    ds: list[torch.Tensor] = []  # newest last
    for i in range(len(grid) - 1):
        s, s_next = grid[i], grid[i + 1]
        denoised = model(x, s, i)
        _report(callback, x, i, s, s, denoised)
        ds = [*ds[-(order - 1) :], (x - denoised) / s] if order > 1 else [(x - denoised) / s]
        if s_next == 0:
            x = denoised
            continue
        nodes = grid[i - len(ds) + 1 : i + 1][::-1]  # newest first
        coeffs = lms_coefficients(nodes, s, s_next)
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x
