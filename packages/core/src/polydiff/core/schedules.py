"""Noise schedules and sigma grids, all in variance-exploding form ``x = x0 + sigma * eps``.

A *schedule* says how a network's own time variable ``t`` maps to the VE noise level ``sigma``
(``t_to_sigma`` / ``sigma_to_t``), what a network sees as its input scale (``alpha(sigma)``, the
signal coefficient of the schedule's native form ``x_native = alpha * x``), and which ``t``
range training draws from. A *sigma grid* is a 1-D decreasing float64 tensor of ``n + 1`` values
ending in 0 that a sampler walks along.

- discrete VP (DDPM family): :class:`VPSchedule` with ``linear``, ``scaled_linear``, ``cosine``,
  ``sigmoid`` betas, Lin et al. (2023) zero-terminal-SNR rescaling, k-diffusion's log-sigma
  interpolation between integer timesteps, and diffusers' leading / trailing / linspace spacings;
- continuous: :class:`ContinuousVPSchedule` (score-SDE linear, cosine), :class:`VESchedule`,
  :class:`EDMSchedule`, :class:`FlowSchedule` (rectified flow with SD3 shift);
- grids: :func:`karras_sigmas`, :func:`exponential_sigmas` (= uniform in log-SNR),
  :func:`polyexponential_sigmas`, :func:`vp_sigmas` (uniform in VP time), :func:`flow_sigmas`,
  :func:`ays_sigmas` (Align Your Steps' published grids, log-linearly interpolated);
- fitted grids: :func:`optimize_sigmas` fits a grid to a denoiser and sampler on its own noise
  against a fine solve (cached by a fingerprint of the denoiser's outputs);
- fitted solvers: :func:`optimize_solver` fits a grid and the weights of the ``fitted``
  multistep sampler jointly by gradient descent (:class:`FittedSolver`, saved as JSON).

All bookkeeping is float64; callers cast to their working dtype.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from polydiff.core.fileio import atomic_write_text
from polydiff.core.utils import append_zero

Spacing = Literal["leading", "trailing", "linspace"]
SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace")

# Zero-terminal-SNR schedules have alphas_cumprod[-1] == 0 and thus sigma == inf there; for the
# sigma grid we clamp alphas_cumprod to fp16's smallest subnormal as diffusers does
# (EulerDiscreteScheduler), which gives a finite terminal sigma of ~4096.
ZERO_SNR_ALPHA_CUMPROD = 2.0**-24

_F64 = torch.float64


def _as_f64(x: torch.Tensor | float, like: torch.Tensor | None = None) -> torch.Tensor:
    device = like.device if isinstance(like, torch.Tensor) else None
    return torch.as_tensor(x, dtype=_F64, device=device)


def _check_n(n: int, name: str = "n") -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")


def _check_sigma_range(sigma_min: float, sigma_max: float) -> None:
    if not (0 < sigma_min < sigma_max and math.isfinite(sigma_max)):
        raise ValueError(
            f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, "
            f"sigma_max={sigma_max}"
        )


# ---------------------------------------------------------------------------------------------
# Schedule protocol
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class NoiseSchedule(Protocol):
    """What parameterisations, densities and grids need from a schedule."""

    t_min: float  # smallest training time
    t_max: float  # largest training time
    discrete: bool  # True: the network was trained on integer t in [t_min, t_max]

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor: ...

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor: ...

    def alpha(self, sigma: torch.Tensor) -> torch.Tensor: ...

    def sigmas_for(self, n: int) -> torch.Tensor: ...


def vp_alpha(sigma: torch.Tensor) -> torch.Tensor:
    """Signal coefficient of a VP model, ``alpha = 1 / sqrt(1 + sigma^2)`` (x_vp = alpha * x)."""
    return torch.rsqrt(1 + sigma**2)


def _finite_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma of each timestep; a zero terminal alpha_cumprod gets a finite stand-in.

    As diffusers' EulerDiscreteScheduler, the terminal ``alphas_cumprod == 0`` is replaced by
    ``ZERO_SNR_ALPHA_CUMPROD`` (sigma ~ 4096). Where that would not exceed the previous sigma
    (e.g. rescaled ``linear`` betas, where diffusers' grid becomes non-monotone), the terminal
    log sigma is extrapolated linearly from the last two timesteps instead.
    """
    ac = alphas_cumprod
    if ac[-1] > 0:
        return ((1 - ac) / ac).sqrt()
    head = ((1 - ac[:-1]) / ac[:-1]).sqrt()
    z = ZERO_SNR_ALPHA_CUMPROD
    last = math.sqrt((1 - z) / z)
    if last <= head[-1]:
        last = float(head[-1] ** 2 / head[-2])
    return torch.cat([head, head.new_tensor([last])])


def _linspace_like_numpy(start: float, stop: float, n: int) -> torch.Tensor:
    """``np.linspace`` in float64 (``start + i * step``, exact endpoint): diffusers rounds these
    values, so ties at .5 must come out exactly as numpy's."""
    if n == 1:
        return torch.tensor([start], dtype=_F64)
    step = (stop - start) / (n - 1)
    out = torch.arange(n, dtype=_F64) * step + start
    out[-1] = stop
    return out


class VPSchedule:
    """Discrete variance-preserving schedule given by its betas (Ho et al. 2020).

    ``alphas_cumprod[i] = prod_{j<=i} (1 - betas[j])`` and the VE noise level of timestep ``i``
    is ``sigmas[i] = sqrt((1 - alphas_cumprod[i]) / alphas_cumprod[i])`` (increasing in ``i``).
    Continuous ``t`` between integer timesteps interpolates ``log(sigma)`` linearly
    (k-diffusion's ``DiscreteSchedule`` convention).
    """

    discrete = True

    def __init__(self, betas: torch.Tensor) -> None:
        betas = torch.as_tensor(betas, dtype=_F64).detach().cpu()
        if betas.ndim != 1 or betas.numel() < 2:
            raise ValueError(f"betas must be 1-D with at least 2 entries, got shape {betas.shape}")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must lie in (0, 1]")
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)  # (N,) float64, decreasing
        self.sigmas = _finite_sigmas(self.alphas_cumprod)  # (N,) increasing
        self.log_sigmas = self.sigmas.log()
        if not bool((self.log_sigmas.diff() > 0).all()):
            raise ValueError("sigmas of a VP schedule must be strictly increasing in t")

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def linear(
        cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> VPSchedule:
        """Linear betas of DDPM (Ho et al. 2020)."""
        _check_n(num_steps, "num_steps")
        return cls(torch.linspace(beta_start, beta_end, num_steps, dtype=_F64))

    @classmethod
    def scaled_linear(
        cls, num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
    ) -> VPSchedule:
        """Betas linear in sqrt(beta) (latent / Stable Diffusion)."""
        _check_n(num_steps, "num_steps")
        return cls(torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=_F64) ** 2)

    @classmethod
    def cosine(cls, num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> VPSchedule:
        """Cosine schedule (Nichol & Dhariwal 2021, eq. 17), betas capped at ``max_beta``.

        Equal to diffusers' ``squaredcos_cap_v2``.
        """
        _check_n(num_steps, "num_steps")
        t = torch.arange(num_steps + 1, dtype=_F64) / num_steps
        alpha_bar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)
        return cls(betas)

    @classmethod
    def sigmoid(
        cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> VPSchedule:
        """Sigmoid betas of GeoDiff (Xu et al. 2022): sigmoid(linspace(-6, 6)) rescaled."""
        _check_n(num_steps, "num_steps")
        ramp = torch.sigmoid(torch.linspace(-6, 6, num_steps, dtype=_F64))
        return cls(ramp * (beta_end - beta_start) + beta_start)

    def rescale_zero_terminal_snr(self) -> VPSchedule:
        """New schedule whose terminal SNR is exactly 0 (Lin et al. 2023, Algorithm 1).

        ``sqrt(alphas_cumprod)`` is shifted so its last entry is 0 and scaled so its first entry
        is unchanged. The last ``alphas_cumprod`` is then 0 (infinite sigma); ``sigmas`` clamp it
        to ``ZERO_SNR_ALPHA_CUMPROD`` so that grids and interpolation stay finite.
        """
        sqrt_ac = self.alphas_cumprod.sqrt()
        first, last = sqrt_ac[0], sqrt_ac[-1]
        sqrt_ac = (sqrt_ac - last) * (first / (first - last))
        ac = sqrt_ac**2
        alphas = torch.cat([ac[:1], ac[1:] / ac[:-1]])
        return VPSchedule(1 - alphas)

    # -- time <-> sigma -----------------------------------------------------------------------

    @property
    def num_steps(self) -> int:
        return self.betas.numel()

    @property
    def t_min(self) -> float:
        return 0.0

    @property
    def t_max(self) -> float:
        return float(self.num_steps - 1)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def alpha(self, sigma: torch.Tensor) -> torch.Tensor:
        """VP input scale ``1 / sqrt(1 + sigma^2)``."""
        return vp_alpha(sigma)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep of ``sigma``: linear in log(sigma) between integer timesteps.

        Values outside ``[sigma_min, sigma_max]`` clamp to ``t = 0`` / ``t = N - 1``.
        Returns float64 on ``sigma``'s device, same shape as ``sigma``.
        """
        sigma = torch.as_tensor(sigma)
        log_sigmas = self.log_sigmas.to(sigma.device)
        log_sigma = sigma.to(_F64).log().clamp(log_sigmas[0], log_sigmas[-1])
        low = torch.searchsorted(log_sigmas, log_sigma.reshape(-1), right=True) - 1
        low = low.clamp(0, self.num_steps - 2).reshape(log_sigma.shape)
        lo, hi = log_sigmas[low], log_sigmas[low + 1]
        w = (log_sigma - lo) / (hi - lo)
        return low.to(_F64) + w

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Sigma at continuous timestep ``t`` in [0, N-1], log-linear between integers."""
        t = torch.as_tensor(t, dtype=_F64)
        if bool(((t < 0) | (t > self.t_max)).any()):
            raise ValueError(f"t must lie in [0, {self.num_steps - 1}], got {t.min()}..{t.max()}")
        log_sigmas = self.log_sigmas.to(t.device)
        low = t.floor().long().clamp(max=self.num_steps - 2)
        w = t - low
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[low + 1]).exp()

    # -- inference spacings -------------------------------------------------------------------

    def timesteps(
        self, n: int, spacing: Spacing = "leading", steps_offset: int = 0
    ) -> torch.Tensor:
        """``n`` decreasing timesteps (float64) as diffusers' DDIM / Euler schedulers space them.

        - ``"leading"``: ``arange(n) * (N // n) + steps_offset``, reversed;
        - ``"trailing"``: ``round(N - i * N / n) - 1`` for ``i = 0..n-1`` (always starts at N-1);
        - ``"linspace"``: ``linspace(0, N - 1, n)`` reversed, fractional as in
          ``EulerDiscreteScheduler`` (``DDIMScheduler`` rounds these to integers).

        ``steps_offset`` only affects ``"leading"``, as in diffusers (Lin et al. 2023, table 2).
        """
        _check_n(n)
        big_n = self.num_steps
        if n > big_n:
            raise ValueError(f"n={n} inference steps exceed the {big_n} training steps")
        if spacing == "leading":
            ts = torch.arange(n, dtype=_F64) * (big_n // n) + steps_offset
            ts = ts.flip(0)
        elif spacing == "trailing":
            # numpy's arange(N, 0, -N / n) fills start + i * (second - start); tie-breaking at .5
            # depends on that exact float, so compute the step the same way
            step = (big_n - big_n / n) - big_n
            ts = torch.round(big_n + torch.arange(n, dtype=_F64) * step) - 1
        elif spacing == "linspace":
            ts = _linspace_like_numpy(0.0, big_n - 1.0, n).flip(0)
        else:
            raise ValueError(f"unknown spacing {spacing!r}; valid: {', '.join(SPACINGS)}")
        if ts.max() > big_n - 1 or ts.min() < 0:
            raise ValueError(
                f"spacing {spacing!r} with steps_offset={steps_offset} gives timesteps outside "
                f"[0, {big_n - 1}] for n={n}"
            )
        return ts

    def sigmas_for(
        self, n: int, spacing: Spacing = "leading", steps_offset: int = 0
    ) -> torch.Tensor:
        """Sigma grid of ``n`` steps: ``t_to_sigma(timesteps(n, ...))`` plus a final 0.

        Equal to ``EulerDiscreteScheduler.sigmas`` for the integer spacings (leading, trailing).
        For fractional ``linspace`` timesteps we interpolate log sigma (k-diffusion), where
        diffusers' default interpolates sigma linearly (1e-4 relative apart for SD's schedule).
        """
        return append_zero(self.t_to_sigma(self.timesteps(n, spacing, steps_offset)))

    def __repr__(self) -> str:
        return (
            f"VPSchedule(num_steps={self.num_steps}, sigma_min={self.sigma_min:.4g}, "
            f"sigma_max={self.sigma_max:.4g})"
        )


# ---------------------------------------------------------------------------------------------
# Continuous schedules
# ---------------------------------------------------------------------------------------------


class ContinuousVPSchedule:
    """Continuous-time VP schedule, ``alpha_bar(t)`` for ``t`` in ``[t_min, t_max]``.

    Subclasses give ``log_alpha_bar(t)`` and its inverse. ``sigma(t)^2 = 1 / alpha_bar(t) - 1``.
    Use the constructors :meth:`linear` (score SDE) and :meth:`cosine` (Nichol & Dhariwal).
    """

    discrete = False
    t_min: float
    t_max: float

    @classmethod
    def linear(
        cls, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3
    ) -> LinearVPSchedule:
        """Linear beta(t) of the VP SDE (Song et al. 2021, eq. 33)."""
        return LinearVPSchedule(beta_min, beta_max, t_min)

    @classmethod
    def cosine(
        cls, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946
    ) -> CosineVPSchedule:
        """Continuous cosine schedule (Nichol & Dhariwal 2021, eq. 17); t_max < 1: finite sigma."""
        return CosineVPSchedule(s, t_min, t_max)

    def log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def t_from_log_alpha_bar(self, log_ab: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """``sigma(t) = sqrt(1 / alpha_bar(t) - 1)``."""
        t = torch.as_tensor(t, dtype=_F64)
        return torch.expm1(-self.log_alpha_bar(t)).sqrt()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`t_to_sigma` (closed form)."""
        sigma = torch.as_tensor(sigma).to(_F64)
        return self.t_from_log_alpha_bar(-torch.log1p(sigma**2))

    def alpha(self, sigma: torch.Tensor) -> torch.Tensor:
        """VP input scale ``1 / sqrt(1 + sigma^2)``."""
        return vp_alpha(sigma)

    @property
    def sigma_min(self) -> float:
        return float(self.t_to_sigma(torch.tensor(self.t_min)))

    @property
    def sigma_max(self) -> float:
        return float(self.t_to_sigma(torch.tensor(self.t_max)))

    def sigmas_for(self, n: int) -> torch.Tensor:
        """``n`` sigmas uniform in ``t`` from ``t_max`` to ``t_min``, plus a final 0."""
        _check_n(n)
        return append_zero(self.t_to_sigma(torch.linspace(self.t_max, self.t_min, n, dtype=_F64)))


class LinearVPSchedule(ContinuousVPSchedule):
    """``log alpha_bar(t) = -(beta_min t + (beta_max - beta_min) t^2 / 2)`` (Song et al. 2021)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3) -> None:
        if not (0 <= beta_min < beta_max):
            raise ValueError(f"need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        if not (0 <= t_min < 1):
            raise ValueError(f"t_min must lie in [0, 1), got {t_min}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.t_min, self.t_max = float(t_min), 1.0

    def log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)

    def t_from_log_alpha_bar(self, log_ab: torch.Tensor) -> torch.Tensor:
        # solve beta_d t^2 / 2 + beta_min t + log_ab = 0 for t >= 0
        beta_d = self.beta_max - self.beta_min
        disc = self.beta_min**2 - 2 * beta_d * log_ab
        return 2 * (-log_ab) / (self.beta_min + disc.sqrt())  # stable root

    def __repr__(self) -> str:
        return f"LinearVPSchedule(beta_min={self.beta_min}, beta_max={self.beta_max})"


class CosineVPSchedule(ContinuousVPSchedule):
    """``alpha_bar(t) = cos^2(f(t)) / cos^2(f(0))``, ``f(t) = (t + s) / (1 + s) * pi / 2``."""

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946) -> None:
        if not (0 <= t_min < t_max < 1):
            raise ValueError(f"need 0 <= t_min < t_max < 1, got {t_min}, {t_max}")
        self.s, self.t_min, self.t_max = float(s), float(t_min), float(t_max)
        self._log_cos0 = math.log(math.cos(s / (1 + s) * math.pi / 2))

    def log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        f = (t + self.s) / (1 + self.s) * math.pi / 2
        return 2 * (torch.log(torch.cos(f)) - self._log_cos0)

    def t_from_log_alpha_bar(self, log_ab: torch.Tensor) -> torch.Tensor:
        f = torch.arccos(torch.exp(0.5 * log_ab + self._log_cos0))
        return f * 2 * (1 + self.s) / math.pi - self.s

    def __repr__(self) -> str:
        return f"CosineVPSchedule(s={self.s}, t_min={self.t_min}, t_max={self.t_max})"


class VESchedule:
    """Variance exploding, ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, t in [0, 1]
    (Song et al. 2021, NCSN++). The network sees ``x`` unscaled (``alpha = 1``)."""

    discrete = False
    t_min = 0.0
    t_max = 1.0

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        _check_sigma_range(sigma_min, sigma_max)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_ratio = math.log(sigma_max / sigma_min)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=_F64)
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma).to(_F64)
        return torch.log(sigma / self.sigma_min) / self._log_ratio

    def alpha(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(sigma)

    def sigmas_for(self, n: int) -> torch.Tensor:
        """Geometric grid from sigma_max to sigma_min plus 0 (= :func:`exponential_sigmas`)."""
        return exponential_sigmas(n, self.sigma_min, self.sigma_max)

    def __repr__(self) -> str:
        return f"VESchedule(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


class EDMSchedule:
    """EDM (Karras et al. 2022): ``sigma(t) = t``; sampling grid of eq. 5 with exponent ``rho``."""

    discrete = False

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        rho: float = 7.0,
    ) -> None:
        _check_sigma_range(sigma_min, sigma_max)
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.sigma_data, self.rho = float(sigma_data), float(rho)
        self.t_min, self.t_max = self.sigma_min, self.sigma_max

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(t, dtype=_F64)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(sigma).to(_F64)

    def alpha(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(sigma)

    def sigmas_for(self, n: int) -> torch.Tensor:
        """Karras grid (eq. 5) from sigma_max to sigma_min plus 0."""
        return karras_sigmas(n, self.sigma_min, self.sigma_max, self.rho)

    def __repr__(self) -> str:
        return (
            f"EDMSchedule(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, "
            f"sigma_data={self.sigma_data}, rho={self.rho})"
        )


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3 timestep shift ``t' = shift t / (1 + (shift - 1) t)`` (Esser et al. 2024, sec. 5.3.2)."""
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


class FlowSchedule:
    """Rectified flow ``x_t = (1 - t) x0 + t eps`` (Liu et al. 2022; Esser et al. 2024).

    In VE form ``sigma = t / (1 - t)`` and ``x_t = x / (1 + sigma)``. ``shift`` warps the
    inference grid toward high noise (:func:`shift_time`); training times are not shifted.
    """

    discrete = False
    t_min = 0.0
    t_max = 1.0

    def __init__(self, shift: float = 1.0) -> None:
        if shift <= 0:
            raise ValueError(f"shift must be positive, got {shift}")
        self.shift = float(shift)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=_F64)
        return t / (1 - t)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """``t = sigma / (1 + sigma)``, written to give 1 at sigma = inf."""
        sigma = torch.as_tensor(sigma).to(_F64)
        return 1 - 1 / (1 + sigma)

    def alpha(self, sigma: torch.Tensor) -> torch.Tensor:
        """Flow input scale ``1 - t = 1 / (1 + sigma)``."""
        return 1 / (1 + sigma)

    def sigmas_for(self, n: int, t_max: float = 0.999) -> torch.Tensor:
        """:func:`flow_sigmas` with this schedule's shift."""
        return flow_sigmas(n, self.shift, t_max)

    def __repr__(self) -> str:
        return f"FlowSchedule(shift={self.shift})"


# ---------------------------------------------------------------------------------------------
# Sigma grids: n decreasing values followed by a final 0 (float64)
# ---------------------------------------------------------------------------------------------


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. 5: uniform in ``sigma^(1/rho)`` from sigma_max to sigma_min, + 0."""
    _check_n(n)
    _check_sigma_range(sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, n, dtype=_F64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform in log sigma (equivalently in log-SNR ``-2 log sigma``) from sigma_max down, + 0."""
    _check_n(n)
    _check_sigma_range(sigma_min, sigma_max)
    return append_zero(
        torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=_F64).exp()
    )


uniform_logsnr_sigmas = exponential_sigmas  # the same grid under its log-SNR name


def polyexponential_sigmas(
    n: int, sigma_min: float, sigma_max: float, rho: float = 1.0
) -> torch.Tensor:
    """log sigma polynomial (power ``rho``) in the step index; ``rho = 1`` is exponential."""
    _check_n(n)
    _check_sigma_range(sigma_min, sigma_max)
    ramp = torch.linspace(1, 0, n, dtype=_F64) ** rho
    log_min, log_max = math.log(sigma_min), math.log(sigma_max)
    return append_zero(torch.exp(ramp * (log_max - log_min) + log_min))


def vp_sigmas(
    n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3
) -> torch.Tensor:
    """Continuous VP SDE grid uniform in t from 1 to ``eps_s`` (Song et al. 2021), + 0."""
    _check_n(n)
    t = torch.linspace(1, eps_s, n, dtype=_F64)
    return append_zero(torch.expm1(beta_d * t**2 / 2 + beta_min * t).sqrt())


def flow_sigmas(n: int, shift: float = 1.0, t_max: float = 0.999) -> torch.Tensor:
    """Rectified-flow grid: ``t`` uniform from ``t_max`` to 0, SD3-shifted, as VE sigma.

    ``sigma = t / (1 - t)``; ``t_max < 1`` keeps the first sigma finite (``x = noise *
    sigmas[0]`` then equals the flow's pure-noise start up to ``1 - t_max``). Returns n + 1
    values ending in 0.
    """
    _check_n(n)
    if not (0 < t_max < 1):
        raise ValueError(f"t_max must lie in (0, 1), got {t_max}")
    t = shift_time(torch.linspace(t_max, 0, n + 1, dtype=_F64), shift)
    return t / (1 - t)


# ---------------------------------------------------------------------------------------------
# Align Your Steps (Sabour et al. 2024, table 3): optimised 10-step grids, sigma(t_n) .. sigma(t_0)
# ---------------------------------------------------------------------------------------------

AYS_SIGMAS: dict[str, tuple[float, ...]] = {
    "sd15": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
    "deepfloyd_if": (160.41, 8.081, 3.315, 1.885, 1.207, 0.785, 0.553, 0.293, 0.186, 0.030, 0.006),
    "svd": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
}


def ays_sigmas(n: int, model: str = "sd15") -> torch.Tensor:
    """Align Your Steps grid (Sabour et al. 2024) for ``model`` with ``n`` positive sigmas, + 0.

    The published 11-value grids are interpolated linearly in log sigma over the step index
    (the paper's recipe for other step counts). For SD-like VP models (``sd15``, ``sdxl``),
    DeepFloyd-IF stage 1 and Stable Video Diffusion, in their VE sigma.
    """
    _check_n(n)
    if model not in AYS_SIGMAS:
        raise ValueError(f"unknown AYS model {model!r}; valid: {', '.join(AYS_SIGMAS)}")
    table = np.log(np.array(AYS_SIGMAS[model][::-1]))
    ys = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(table)), table)
    return append_zero(torch.tensor(np.exp(ys)[::-1].copy(), dtype=_F64))


# ---------------------------------------------------------------------------------------------
# Fitted grids
# ---------------------------------------------------------------------------------------------

_FIT_VERSION = 4
_FIT_CACHE: dict[str, torch.Tensor] = {}
_PROBE_SEED = 20240601
Cond = Mapping[str, torch.Tensor] | None


def _cond_rows(cond: Cond, n: int) -> Cond:
    return None if cond is None else {k: v[:n] for k, v in cond.items()}


def denoiser_fingerprint(
    denoiser: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    *,
    sigma_min: float,
    sigma_max: float,
    cond: Cond = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    probes: int = 4,
) -> str:
    """SHA-256 of the denoiser's outputs at fixed probe points (fixed-seed noise at sigma_max,
    their geometric mean and sigma_min): equal for the same model, different after training."""
    g = torch.Generator().manual_seed(_PROBE_SEED)
    z = torch.randn((probes, *shape), generator=g, dtype=torch.float64)
    h = hashlib.sha256(f"{tuple(shape)}|{dtype}".encode())
    with torch.no_grad():
        for s in (sigma_max, math.sqrt(sigma_max * sigma_min), sigma_min):
            x = (z * s).to(device=device, dtype=dtype)
            sigma = torch.full((probes,), s, dtype=torch.promote_types(dtype, torch.float32))
            out = denoiser(x, sigma.to(device), _cond_rows(cond, probes))
            h.update(out.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().to("cpu").contiguous().numpy().tobytes()).hexdigest()[:16]


def _grid_from_logs(logs: list[float], sigma_max: float) -> torch.Tensor:
    return torch.tensor([sigma_max, *np.exp(logs).tolist(), 0.0], dtype=_F64)


def _cond_take(cond: Cond, idx: torch.Tensor) -> Cond:
    """Rows ``idx`` of ``cond``, cycling through its rows (``cond`` may hold fewer rows than
    the fit's noise pool)."""
    if cond is None:
        return None
    return {k: v[(idx % v.shape[0]).to(v.device)] for k, v in cond.items()}


def _pattern_search(
    objective: Callable[[list[float]], float],
    logs: list[float],
    top: float,
    bottom: float,
    *,
    delta: float,
    sweeps: int,
    gap: float = 1e-3,
) -> tuple[list[float], float]:
    """Coordinate pattern search on strictly decreasing interior log sigmas in ``(bottom, top)``.

    Each sweep tries ``+-delta`` on every coordinate in turn and keeps the better move if it
    lowers the objective; a sweep without improvement halves ``delta`` (stop below 0.01). The
    last coordinate may reach ``bottom``; neighbours keep a ``gap`` (no repeated sigmas).
    """
    best = objective(logs)
    for _ in range(sweeps):
        improved = False
        for k in range(len(logs)):
            hi = top if k == 0 else logs[k - 1]
            lo = bottom if k == len(logs) - 1 else logs[k + 1] + gap
            trials = []
            for move in (-delta, delta):
                value = min(hi - gap, max(lo, logs[k] + move))
                if value != logs[k]:
                    cand = [*logs[:k], value, *logs[k + 1 :]]
                    trials.append((objective(cand), cand))
            if trials:
                err, cand = min(trials, key=lambda t: t[0])
                if err < best:
                    best, logs, improved = err, cand, True
        if not improved:
            delta /= 2
            if delta < 0.01:
                break
    return logs, best


def optimize_sigmas(
    denoiser: Callable[..., torch.Tensor],
    steps: int,
    *,
    shape: tuple[int, ...],
    sampler: str = "ipndm",
    sigma_min: float,
    sigma_max: float,
    n_samples: int = 256,
    pool: int | None = None,
    cond: Cond = None,
    generator: torch.Generator | None = None,
    reference_steps: int = 48,
    rounds: int = 2,
    sweeps: int = 8,
    restarts: int = 3,
    random_starts: int = 24,
    batch_size: int = 2048,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    cache: bool = True,
    cache_dir: str | Path | None = None,
    info: dict[str, Any] | None = None,
    **opts: Any,
) -> torch.Tensor:
    """A ``steps``-step sigma grid fitted to ``denoiser`` and ``sampler`` (issue #20).

    Returns ``steps + 1`` strictly decreasing float64 sigmas from exactly ``sigma_max`` to 0 (the
    last positive one is free in ``[sigma_min, sigma_max)``), minimising the RMS error of the
    final sample to a fine solve, on the fit's own noise only (``pool`` draws of per-sample
    ``shape`` from ``generator``, default seed 0; ``pool`` defaults to ``8 * n_samples``). A
    direct search in the spirit of GITS / Align Your Steps (Chen et al. 2024; Sabour et al.
    2024), made to generalise to fresh noise:

    1. reference: a Heun solve of the pool on a ``reference_steps`` Karras grid;
    2. start: of the named families (Karras ``rho`` of 1, 2, 3, 5, 7, 10, 15 and uniform in
       log-SNR) the grid with the smallest RMS error over the pool;
    3. ``rounds`` of coordinate pattern search on the interior log sigmas, each on a stratified
       subset of ``n_samples``: the ``n_samples // 4`` samples with the largest error under the
       current grid (weight 1) and a random draw from the rest (weighted up to the rest's
       size), an unbiased estimate of the pool's mean square error. The error is lumpy (a few
       starts near a boundary between modes end in another mode and carry most of it); a
       plain random subset sees too few of them and the fit then trades them away. The
       search is local and the landscape has several basins (at 5 steps, e.g., one or two
       steps spent above the mode-decision sigmas), so it starts from many grids: the family
       grids and ``random_starts`` random ones (log-uniform, sorted) are ranked on the first
       stratified subset, the best ``4 * restarts`` get two sweeps, and the best ``restarts``
       of those the full ``rounds`` (successive halving);
    4. of the fitted grids, the start and the rho-7 Karras grid the one with the smallest RMS
       error over the whole pool is returned (a fitted one on ties).

    ``cond`` holds rows for the pool (cycled if it has fewer) and ``opts`` (sampler options,
    e.g. ``order=3``) go to the sampler; solves run in chunks of ``batch_size``. The result is
    cached (in memory, and in ``cache_dir`` as JSON if given) under a key made of
    :func:`denoiser_fingerprint` and every argument, so a second call for the same model costs
    three probe evaluations. ``info`` receives the pool errors (start, fitted, Karras), the
    number of objective evaluations and ``"cached"``.
    """
    from polydiff.core.samplers import SAMPLERS, sample  # samplers import this module (DEIS)

    _check_n(steps, "steps")
    _check_sigma_range(sigma_min, sigma_max)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    if n_samples < 4:
        raise ValueError(f"n_samples must be >= 4, got {n_samples}")
    if restarts < 1 or random_starts < 0:
        raise ValueError(f"need restarts >= 1 and random_starts >= 0, got {restarts}, "
                         f"{random_starts}")  # fmt: skip
    pool = 8 * n_samples if pool is None else pool
    if pool < n_samples:
        raise ValueError(f"pool must be >= n_samples = {n_samples}, got {pool}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    noise = torch.randn((pool, *shape), generator=gen, dtype=torch.float64)
    noise = noise.to(device=device, dtype=dtype)
    subset_gen = torch.Generator().manual_seed(int(torch.randint(2**31, (), generator=gen)))
    fingerprint = denoiser_fingerprint(
        denoiser, shape, sigma_min=sigma_min, sigma_max=sigma_max, cond=cond, dtype=dtype,
        device=device,
    )  # fmt: skip
    cond_key = None if cond is None else {k: _tensor_digest(v) for k, v in sorted(cond.items())}
    key = hashlib.sha256(
        json.dumps(
            [_FIT_VERSION, fingerprint, steps, sampler, sigma_min, sigma_max, n_samples, pool,
             reference_steps, rounds, sweeps, restarts, random_starts, str(dtype),
             _tensor_digest(noise), cond_key,
             sorted((k, repr(v)) for k, v in opts.items())]
        ).encode()
    ).hexdigest()  # fmt: skip
    stats: dict[str, Any] = {"key": key, "cached": False}
    cache_file = Path(cache_dir) / f"sigmas-{key[:32]}.json" if cache_dir is not None else None
    if cache and key not in _FIT_CACHE and cache_file is not None and cache_file.is_file():
        saved = json.loads(cache_file.read_text())
        _FIT_CACHE[key] = torch.tensor(saved["sigmas"], dtype=_F64)
    if cache and key in _FIT_CACHE:
        stats["cached"] = True
        if info is not None:
            info.update(stats)
        return _FIT_CACHE[key].clone()

    everyone = torch.arange(pool)

    def solve(grid: torch.Tensor, idx: torch.Tensor, method: str, **o: Any) -> torch.Tensor:
        outs = []
        with torch.no_grad():
            for chunk in idx.split(batch_size):
                z, c = noise[chunk.to(noise.device)], _cond_take(cond, chunk)
                outs.append(sample(denoiser, z * sigma_max, grid, method, cond=c, **o).double())
        return torch.cat(outs)

    reference = solve(karras_sigmas(reference_steps, sigma_min, sigma_max), everyone, "heun")
    evaluations = 0

    def errors(grid: torch.Tensor, idx: torch.Tensor = everyone) -> torch.Tensor:
        """Per-sample mean square error to the reference (inf where the solve fails)."""
        nonlocal evaluations
        evaluations += 1
        try:
            err = solve(grid, idx, sampler, **opts) - reference[idx.to(reference.device)]
        except FloatingPointError:
            return torch.full((len(idx),), math.inf, dtype=_F64)
        err = err.square().flatten(1).mean(1).cpu()
        return torch.where(torch.isfinite(err), err, torch.full_like(err, math.inf))

    def rms(grid: torch.Tensor) -> float:
        return float(errors(grid).mean().sqrt())

    # 2. the best of the named families as the start
    top, bottom = math.log(sigma_max), math.log(sigma_min)
    families = {f"karras rho {rho:g}": karras_sigmas(steps, sigma_min, sigma_max, rho)
                for rho in (1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0)}  # fmt: skip
    families["log-snr uniform"] = exponential_sigmas(steps, sigma_min, sigma_max)
    family_errors = {name: rms(grid) for name, grid in families.items()}
    stats["start_family"] = min(family_errors, key=family_errors.__getitem__)
    start, start_err = families[stats["start_family"]], family_errors[stats["start_family"]]
    karras_rhos = [n for n in families if n.startswith("karras")]
    stats["rho"] = float(min(karras_rhos, key=family_errors.__getitem__).split()[-1])
    n_hard = n_samples // 4 if pool > n_samples else n_samples

    def stratified(logs: list[float]) -> Callable[[list[float]], float]:
        """The stratified-subset estimate of the pool's mean square error (step 3)."""
        order = torch.argsort(errors(_grid_from_logs(logs, sigma_max)), descending=True)
        hard, rest = order[:n_hard], order[n_hard:]
        easy = rest[torch.randperm(len(rest), generator=subset_gen)[: n_samples - n_hard]]
        idx = torch.cat([hard, easy])
        up = len(rest) / max(len(easy), 1)  # each random one stands for this many of the rest
        weights = torch.cat(
            [torch.ones(len(hard), dtype=_F64), torch.full((len(easy),), up, dtype=_F64)]
        )

        def objective(cand: list[float]) -> float:
            return float((weights * errors(_grid_from_logs(cand, sigma_max), idx)).sum() / pool)

        return objective

    # 3. rank the family grids and random grids on the first subset, search from the best few
    first = stratified(torch.log(start[1:-1]).tolist())
    candidates = [torch.log(grid[1:-1]).tolist() for grid in families.values()]
    for _ in range(random_starts):
        logs = torch.empty(steps - 1, dtype=_F64).uniform_(bottom, top, generator=subset_gen)
        candidates.append(logs.sort(descending=True).values.tolist())
    # successive halving: two sweeps from the best 4 * restarts, the full rounds from the best
    short = [_pattern_search(first, logs, top, bottom, delta=0.25, sweeps=2)
             for logs in sorted(candidates, key=first)[: 4 * restarts]]  # fmt: skip
    finalists: list[list[float]] = []
    for logs, _ in sorted(short, key=lambda pair: pair[1])[:restarts]:
        for round_ in range(rounds):
            objective = first if round_ == 0 else stratified(logs)
            logs, _ = _pattern_search(objective, logs, top, bottom, delta=0.25 / (round_ + 1),
                                      sweeps=sweeps)  # fmt: skip
        finalists.append(logs)
    fitted_errors = [rms(_grid_from_logs(logs, sigma_max)) for logs in finalists]
    best = min(range(len(finalists)), key=fitted_errors.__getitem__)
    fitted = _grid_from_logs(finalists[best], sigma_max)
    # 4. the best of fitted / start / Karras rho 7 over the whole pool
    karras = karras_sigmas(steps, sigma_min, sigma_max)
    pooled = {"fitted": fitted_errors[best], "start": start_err, "karras": rms(karras)}
    kept = min(pooled, key=lambda name: (pooled[name], name != "fitted"))
    result = {"fitted": fitted, "start": start, "karras": karras}[kept]
    stats.update(
        start_error=start_err, fitted_error=pooled["fitted"], karras_error=pooled["karras"],
        kept=kept, evaluations=evaluations, pool=pool, restart_errors=fitted_errors,
    )  # fmt: skip
    if cache:
        _FIT_CACHE[key] = result.clone()
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cache_file, json.dumps({"sigmas": result.tolist(), **stats}))
    if info is not None:
        info.update(stats)
    return result


# ---------------------------------------------------------------------------------------------
# Fitted solvers (grid + multistep weights)
# ---------------------------------------------------------------------------------------------

_SOLVER_FORMAT = "polydiff-fitted-solver"
_SOLVER_VERSION = 1
_SOLVER_VERSION_SCALES = 2  # a solver with sigma_scales (older readers refuse it by name)
_SOLVER_CACHE: dict[str, dict[str, Any]] = {}


def _json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None and other non-JSON leaves as strings."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


@dataclass(frozen=True)
class FittedSolver:
    """A few-step solver fitted to one denoiser: the grid and the per-step weights of the
    ``fitted`` sampler (``sample(denoiser, x, solver.sigmas, "fitted", **solver.options)``).

    ``sigmas``: ``steps + 1`` strictly decreasing float64 values from ``sigma_max`` to 0;
    ``coefficients[i]``: step ``i``'s weights on the newest derivatives (on the newest denoiser
    outputs for the step into 0), see :func:`polydiff.core.samplers.multistep.fitted`; ``order``:
    the iPNDM order it started from; ``info``: the fit's statistics (JSON values);
    ``sigma_scales`` (optional): step ``i`` calls the denoiser at ``sigmas[i] *
    sigma_scales[i]`` (``optimize_solver(..., sigma_scales=True)``). Saved as plain JSON
    (:meth:`save` / :meth:`load`; version 2 when it has ``sigma_scales``): nothing in the file
    is executed.
    """

    sigmas: torch.Tensor
    coefficients: tuple[tuple[float, ...], ...]
    order: int = 3
    info: Mapping[str, Any] = field(default_factory=dict)
    sigma_scales: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        # samplers import this module (DEIS): their helpers are imported here, not at the top
        from polydiff.core.samplers._base import as_grid
        from polydiff.core.samplers.multistep import check_coefficients, check_sigma_scales

        grid = as_grid(self.sigmas, strict=True, name="sigmas")
        if grid[-1] != 0:
            raise ValueError(f"a fitted solver's sigmas must end in 0, got {grid[-1]}")
        rows = check_coefficients(self.coefficients, len(grid) - 1)
        scales = check_sigma_scales(self.sigma_scales, len(grid) - 1)
        object.__setattr__(self, "sigmas", torch.tensor(grid, dtype=_F64))
        object.__setattr__(self, "coefficients", tuple(tuple(r) for r in rows))
        object.__setattr__(self, "sigma_scales", None if scales is None else tuple(scales))

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def options(self) -> dict[str, Any]:
        """The ``fitted`` sampler's options: ``{"coefficients": [[...], ...]}``, and
        ``"sigma_scales": [...]`` when it has them."""
        scales = {} if self.sigma_scales is None else {"sigma_scales": list(self.sigma_scales)}
        return {"coefficients": [list(row) for row in self.coefficients], **scales}

    def to_dict(self) -> dict[str, Any]:
        version = _SOLVER_VERSION if self.sigma_scales is None else _SOLVER_VERSION_SCALES
        head = {"format": _SOLVER_FORMAT, "version": version, "order": self.order}
        return {**head, "sigmas": self.sigmas.tolist(), **self.options, "info": dict(self.info)}

    @classmethod
    def from_dict(cls, data: Any, source: str = "fitted solver") -> FittedSolver:
        """Validate a :meth:`to_dict` record; raises ValueError naming ``source`` and the key."""
        if not isinstance(data, dict) or data.get("format") != _SOLVER_FORMAT:
            raise ValueError(f"{source}: not a fitted solver (expected a JSON object with "
                             f"format={_SOLVER_FORMAT!r})")  # fmt: skip
        if data.get("version") not in (_SOLVER_VERSION, _SOLVER_VERSION_SCALES):
            raise ValueError(f"{source}: fitted solver version {data.get('version')!r}, this "
                             f"polydiff reads versions {_SOLVER_VERSION} and "
                             f"{_SOLVER_VERSION_SCALES}")  # fmt: skip
        sigmas, rows = data.get("sigmas"), data.get("coefficients")
        numbers = (int, float)
        if not isinstance(sigmas, list) or not all(
            isinstance(v, numbers) and not isinstance(v, bool) for v in sigmas
        ):
            raise ValueError(f"{source}: 'sigmas' must be a list of numbers")
        if not isinstance(rows, list) or not all(
            isinstance(r, list) and all(isinstance(v, numbers) and not isinstance(v, bool)
                                        for v in r) for r in rows
        ):  # fmt: skip
            raise ValueError(f"{source}: 'coefficients' must be a list of lists of numbers")
        scales = data.get("sigma_scales")
        if data["version"] == _SOLVER_VERSION_SCALES:
            if not isinstance(scales, list) or not all(
                isinstance(v, numbers) and not isinstance(v, bool) for v in scales
            ):
                raise ValueError(f"{source}: 'sigma_scales' must be a list of numbers")
        elif scales is not None:
            raise ValueError(f"{source}: 'sigma_scales' needs version {_SOLVER_VERSION_SCALES}")
        order, info = data.get("order", 3), data.get("info", {})
        if order not in (1, 2, 3, 4) or not isinstance(info, dict):
            raise ValueError(f"{source}: 'order' must be 1-4 and 'info' an object")
        try:
            return cls(torch.tensor(sigmas, dtype=_F64), tuple(tuple(r) for r in rows), order,
                       info, None if scales is None else tuple(scales))  # fmt: skip
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None

    def save(self, path: str | Path) -> Path:
        """Write the solver as JSON, atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False))

    @classmethod
    def load(cls, path: str | Path) -> FittedSolver:
        """Read a solver written by :meth:`save` (plain JSON, validated)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"fitted solver file {path} not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a JSON fitted solver ({err})") from None
        return cls.from_dict(data, str(path))


def optimize_solver(
    denoiser: Callable[..., torch.Tensor],
    steps: int,
    *,
    shape: tuple[int, ...],
    sigma_min: float,
    sigma_max: float,
    order: int = 3,
    history: int | None = None,
    n_samples: int = 256,
    pool: int | None = None,
    cond: Cond = None,
    generator: torch.Generator | None = None,
    reference_steps: int = 48,
    iterations: int = 300,
    lr: float = 0.01,
    holdout: float = 0.25,
    check_every: int = 10,
    robust: float | None = None,
    sigma_scales: bool = False,
    average: float | None = None,
    grid: torch.Tensor | None = None,
    grid_options: Mapping[str, Any] | None = None,
    batch_size: int = 2048,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    cache: bool = True,
    cache_dir: str | Path | None = None,
    info: dict[str, Any] | None = None,
) -> FittedSolver:
    """A ``steps``-step solver (grid and multistep weights) fitted to ``denoiser`` (issue #20).

    The ``fitted`` sampler's weights and the interior log sigmas are fitted jointly by gradient
    descent through the few-step solve, the endpoints of a fine solve as targets (S4S, Frankel
    et al. 2025, eq. 5; LD3, Tong et al. 2024; Bespoke solvers, Shaul et al. 2023), on the
    fit's own noise only:

    1. start: the iPNDM-``order`` weights (:func:`ipndm_coefficients`, zeros for the older
       derivatives up to ``history``, default all) on ``grid``, by default the grid
       :func:`optimize_sigmas` fits for ``ipndm`` (same pool, ``generator``, ``n_samples``,
       ``reference_steps``; more of its settings in ``grid_options``): the fit starts from the
       best fitted-grid iPNDM solve;
    2. reference: a Heun solve of the pool (``pool`` draws of per-sample ``shape``, default
       ``8 * n_samples``) on a ``reference_steps`` Karras grid;
    3. Adam (``lr``, cosine decay to a tenth) on the mean square error to the reference over
       the pool minus a held-out ``holdout`` fraction, ``iterations`` full-batch steps (chunks
       of ``batch_size``); the sigmas stay strictly decreasing in ``[sigma_min, sigma_max]``;
    4. every ``check_every`` iterations the held-out error is measured; the parameters with
       the smallest one are returned, the start included, so the result is never worse than
       the start on noise the descent did not see.

    ``robust`` (optional) trains on a pseudo-Huber loss of each sample's mean square error with
    that scale instead of the mean square error (the held-out selection stays on the RMS error):
    a few samples that end in another mode than the reference carry most of the error, and
    this bounds their pull. Measured on the benchmark mixtures it did not help (left off).

    ``sigma_scales=True`` also fits, per step, the noise level the denoiser is called at, as a
    factor on the grid's sigma (start 1; kept inside ``[sigma_min, sigma_max]``): the
    evaluation point is decoupled from the step, as in AMED-Solver (Zhou et al. 2024) and the
    time-shift sampler (Li et al. 2024); the result's ``sigma_scales`` are passed to the
    ``fitted`` sampler through :attr:`FittedSolver.options`.

    ``average`` (a decay in ``[0, 1)``, optional): the held-out checks and the result use an
    exponential moving average of the iterates with that decay instead of the last iterate
    (iterate averaging; the start is still a candidate).

    Gradients are taken with ``torch.autograd.grad`` with respect to the solver's parameters
    only (a network's own ``.grad`` is never touched). Cached like :func:`optimize_sigmas`
    (memory, and ``cache_dir`` as JSON): the same denoiser and arguments cost three probe
    evaluations. ``info`` receives the held-out errors (``start_error``, ``fitted_error``,
    RMS), ``best_iteration``, the start grid's fit statistics (``grid_fit``) and ``cached``.
    """
    from polydiff.core.samplers import sample  # samplers import this module (DEIS)
    from polydiff.core.samplers._base import bind
    from polydiff.core.samplers.multistep import fitted_solve, ipndm_coefficients

    _check_n(steps, "steps")
    _check_sigma_range(sigma_min, sigma_max)
    if order not in (1, 2, 3, 4):
        raise ValueError(f"order must be 1, 2, 3 or 4, got {order}")
    history = max(steps, order) if history is None else history
    if not isinstance(history, int) or history < order:
        raise ValueError(f"history must be an int >= order = {order}, got {history!r}")
    if n_samples < 4:
        raise ValueError(f"n_samples must be >= 4, got {n_samples}")
    pool = 8 * n_samples if pool is None else pool
    if pool < n_samples:
        raise ValueError(f"pool must be >= n_samples = {n_samples}, got {pool}")
    if robust is not None and not robust > 0:
        raise ValueError(f"robust must be None or > 0, got {robust}")
    if average is not None and not 0 <= average < 1:
        raise ValueError(f"average must be None or in [0, 1), got {average}")
    if not 0 < holdout < 1 or iterations < 0 or not lr > 0 or check_every < 1:
        raise ValueError(f"need 0 < holdout < 1, iterations >= 0, lr > 0, check_every >= 1; "
                         f"got {holdout}, {iterations}, {lr}, {check_every}")  # fmt: skip
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    start_state = gen.get_state()
    if grid is None:
        grid_gen = torch.Generator().manual_seed(0)
        grid_gen.set_state(start_state)
        grid_info: dict[str, Any] = {}
        grid = optimize_sigmas(
            denoiser, steps, shape=shape, sampler="ipndm", sigma_min=sigma_min,
            sigma_max=sigma_max, n_samples=n_samples, pool=pool, cond=cond, generator=grid_gen,
            reference_steps=reference_steps, batch_size=batch_size, dtype=dtype, device=device,
            cache=cache, cache_dir=cache_dir, info=grid_info, order=order,
            **dict(grid_options or {}),
        )  # fmt: skip
    else:
        grid_info = {"given": True}
    grid = torch.as_tensor(grid, dtype=_F64).cpu().clone()
    if (len(grid) != steps + 1 or not math.isclose(float(grid[0]), sigma_max, rel_tol=1e-9)
            or float(grid[-1]) != 0):  # fmt: skip
        raise ValueError(f"grid must hold {steps + 1} sigmas from sigma_max={sigma_max} to 0, "
                         f"got {grid.tolist()}")  # fmt: skip
    grid[0] = sigma_max
    noise = torch.randn((pool, *shape), generator=gen, dtype=torch.float64)
    noise = noise.to(device=device, dtype=dtype)
    fingerprint = denoiser_fingerprint(
        denoiser, shape, sigma_min=sigma_min, sigma_max=sigma_max, cond=cond, dtype=dtype,
        device=device,
    )  # fmt: skip
    cond_key = None if cond is None else {k: _tensor_digest(v) for k, v in sorted(cond.items())}
    key = hashlib.sha256(
        json.dumps(
            [_SOLVER_VERSION, fingerprint, steps, order, history, sigma_min, sigma_max, pool,
             reference_steps, iterations, lr, holdout, check_every, robust, str(dtype),
             _tensor_digest(noise), _tensor_digest(grid), cond_key]
            + (["sigma_scales"] if sigma_scales else [])
            + ([["average", average]] if average is not None else [])
        ).encode()
    ).hexdigest()  # fmt: skip
    cache_file = Path(cache_dir) / f"solver-{key[:32]}.json" if cache_dir is not None else None
    if cache and key not in _SOLVER_CACHE and cache_file is not None and cache_file.is_file():
        _SOLVER_CACHE[key] = json.loads(cache_file.read_text())
    if cache and key in _SOLVER_CACHE:
        solver = FittedSolver.from_dict(_SOLVER_CACHE[key], str(cache_file or "solver cache"))
        if info is not None:
            info.update({**solver.info, "cached": True})
        return solver

    def chunks(idx: torch.Tensor) -> list[tuple[torch.Tensor, Cond]]:
        return [(noise[c.to(noise.device)] * sigma_max, _cond_take(cond, c))
                for c in idx.split(batch_size)]  # fmt: skip

    everyone = torch.arange(pool)
    with torch.no_grad():
        karras = karras_sigmas(reference_steps, sigma_min, sigma_max)
        reference = torch.cat([sample(denoiser, x, karras, "heun", cond=c).double()
                               for x, c in chunks(everyone)])  # fmt: skip
    n_val = min(pool - 1, max(1, round(holdout * pool)))
    train_idx, val_idx = everyone[: pool - n_val], everyone[pool - n_val :]
    numel = reference[0].numel()

    # parameters: interior log sigmas and every row of weights (iPNDM's, zero-padded)
    logs = torch.log(grid[1:-1]).clone().requires_grad_(True)
    start_rows = ipndm_coefficients(steps, order)
    rows = [torch.tensor(r + [0.0] * (min(i + 1, history) - len(r)), dtype=_F64)
            for i, r in enumerate(start_rows)]  # fmt: skip
    rows = [r.requires_grad_(True) for r in rows]
    log_scales = torch.zeros(steps, dtype=_F64, requires_grad=sigma_scales)
    params = [logs, *rows, *([log_scales] if sigma_scales else [])]
    top, bottom, gap = math.log(sigma_max), math.log(sigma_min), 1e-3

    def solve(x: torch.Tensor, c: Cond) -> torch.Tensor:
        sig = torch.cat([logs.new_tensor([sigma_max]), logs.exp(), logs.new_zeros(1)])
        model = bind(denoiser, x, c)
        scales = list(log_scales.exp().unbind()) if sigma_scales else None
        return fitted_solve(lambda y, s, i: model(y, s.expand(len(y)), i), x,
                            list(sig.unbind()), [list(r.unbind()) for r in rows],
                            sigma_scales=scales)  # fmt: skip

    def sum_sq(idx: torch.Tensor, grad: bool) -> tuple[float, list[torch.Tensor] | None]:
        total, grads = 0.0, None
        for (x, c), sel in zip(chunks(idx), idx.split(batch_size)):
            with torch.set_grad_enabled(grad):
                sq = (solve(x, c).double() - reference[sel.to(reference.device)]).square()
                if grad and robust is not None:  # pseudo-Huber on each sample's mean square
                    per = sq.flatten(1).mean(1)
                    err = (robust**2 * ((1 + per / robust**2).sqrt() - 1)).sum() * numel
                else:
                    err = sq.sum()
            if grad:
                g = torch.autograd.grad(err, params)
                grads = list(g) if grads is None else [a + b for a, b in zip(grads, g)]
            total += float(err.detach())
        return total, grads

    def snapshot() -> tuple[torch.Tensor, list[list[float]], list[float]]:
        sig = torch.cat([grid[:1], logs.detach().exp(), grid[-1:]])
        return sig, [r.detach().tolist() for r in rows], log_scales.detach().exp().tolist()

    def val_error() -> float:
        try:
            err = sum_sq(val_idx, False)[0] / (n_val * numel)
        except FloatingPointError:
            return math.inf
        return math.sqrt(err) if math.isfinite(err) else math.inf

    start_error = val_error()
    best = (start_error, 0, (grid, [r.tolist() for r in rows], [1.0] * steps))  # the start
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda it: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * it / max(iterations, 1)))
    )
    n_train, stopped = len(train_idx), None
    averaged = [p.detach().clone() for p in params]  # the iterate average (with ``average``)

    def averaged_check() -> tuple[float, tuple[torch.Tensor, list[list[float]], list[float]]]:
        """The held-out error and snapshot of the averaged parameters."""
        current = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, a in zip(params, averaged):
                p.copy_(a)
        try:
            return val_error(), snapshot()
        finally:
            with torch.no_grad():
                for p, c in zip(params, current):
                    p.copy_(c)

    for it in range(1, iterations + 1):
        try:
            loss, grads = sum_sq(train_idx, True)
        except FloatingPointError as err:
            stopped = f"iteration {it}: {err}"
            break
        if not math.isfinite(loss) or grads is None:
            stopped = f"iteration {it}: non-finite loss"
            break
        for p, g in zip(params, grads):
            p.grad = g / (n_train * numel)
        opt.step()
        sched.step()
        with torch.no_grad():  # keep the interior sigmas strictly decreasing inside the range
            logs.clamp_(bottom, top - gap)
            for k in range(1, len(logs)):
                logs[k] = torch.minimum(logs[k], logs[k - 1] - gap)
            logs.clamp_(min=bottom)
            if sigma_scales:  # the evaluation sigmas inside [sigma_min, sigma_max]
                at = torch.cat([logs.new_tensor([top]), logs])
                log_scales.copy_(torch.minimum(torch.maximum(log_scales, bottom - at), top - at))
            if average is not None:  # a convex combination: the constraints above still hold
                for a, p in zip(averaged, params):
                    a.mul_(average).add_(p.detach(), alpha=1 - average)
        if it % check_every == 0 or it == iterations:
            if average is None:
                err, snap = val_error(), None
            else:
                err, snap = averaged_check()
            if err < best[0]:
                best = (err, it, snapshot() if snap is None else snap)
    fitted_error, best_it, (sigmas, coefs, scales) = best
    stats = {
        "start_error": start_error, "fitted_error": fitted_error, "best_iteration": best_it,
        "iterations": iterations, "holdout": n_val, "pool": pool, "history": history,
        "sigma_scales": sigma_scales, "average": average,
        "stopped": stopped, "grid_fit": {k: v for k, v in grid_info.items() if k != "key"},
    }  # fmt: skip
    stats = _json_safe(stats)
    solver = FittedSolver(sigmas, tuple(tuple(r) for r in coefs), order, stats,
                          tuple(scales) if sigma_scales else None)  # fmt: skip
    if cache:
        _SOLVER_CACHE[key] = solver.to_dict()
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            solver.save(cache_file)
    if info is not None:
        info.update({**stats, "cached": False})
    return solver


__all__ = [
    "AYS_SIGMAS",
    "SPACINGS",
    "ZERO_SNR_ALPHA_CUMPROD",
    "ContinuousVPSchedule",
    "CosineVPSchedule",
    "EDMSchedule",
    "FittedSolver",
    "FlowSchedule",
    "LinearVPSchedule",
    "NoiseSchedule",
    "VESchedule",
    "VPSchedule",
    "ays_sigmas",
    "denoiser_fingerprint",
    "exponential_sigmas",
    "flow_sigmas",
    "karras_sigmas",
    "optimize_sigmas",
    "optimize_solver",
    "polyexponential_sigmas",
    "shift_time",
    "uniform_logsnr_sigmas",
    "vp_alpha",
    "vp_sigmas",
]
