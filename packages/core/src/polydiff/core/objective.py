"""Training objective: schedule + prediction target + loss weighting + noise-level density.

:class:`DiffusionObjective` knows how to train a network and how to sample from it::

    obj = DiffusionObjective(VPSchedule.linear(), prediction="v", weighting="min_snr")
    loss = obj.loss(net, x0, cond, generator=g)  # scalar
    D = obj.denoiser(net)  # D(x, sigma, cond) -> x0_hat for every sampler

One training step draws ``sigma ~ density``, ``eps ~ N(0, I)``, forms ``x = x0 + sigma eps``
and regresses the network output ``F(c_in x, c_noise)`` onto the parameterisation's target
(:mod:`polydiff.core.parameterization`, the same code path the denoiser uses). Weightings are
defined in x0 space, ``lambda(sigma) ||D - x0||^2`` (Kingma & Gao 2023), and converted to the
target's space with ``c_out^2``, since ``D - x0 = c_out (F - target)``; ``uniform`` is the plain
MSE on the target (DDPM's L_simple, flow matching, EDM's eq. 8 with its own lambda).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from polydiff.core.parameterization import (
    EDMParameterization,
    NetworkDenoiser,
    Parameterization,
    make_parameterization,
)
from polydiff.core.schedules import EDMSchedule, FlowSchedule, NoiseSchedule
from polydiff.core.utils import Cond, append_dims

_F64 = torch.float64


def _device_of(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) float64 draws from ``generator`` (on its device), moved to ``device``."""
    g_dev = _device_of(generator, device)
    return torch.rand(n, generator=generator, device=g_dev, dtype=_F64).to(device)


def _randn(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    g_dev = _device_of(generator, device)
    return torch.randn(n, generator=generator, device=g_dev, dtype=_F64).to(device)


# ---------------------------------------------------------------------------------------------
# Noise-level densities: sample(n, schedule, generator, device) -> sigma (n,) float64
# ---------------------------------------------------------------------------------------------


def _time_from_unit(u: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """Map ``u`` in [0, 1] onto the schedule's training times (integers if discrete)."""
    t = schedule.t_min + u * (schedule.t_max - schedule.t_min)
    return t.round() if schedule.discrete else t


@dataclass(frozen=True)
class UniformTime:
    """t uniform over the schedule's training range (DDPM: integer t; else U[t_min, t_max])."""

    def sample(
        self,
        n: int,
        schedule: NoiseSchedule,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        device = torch.device(device)
        u = _rand(n, generator, device)
        if schedule.discrete:  # exact uniform over the integers, not rounding (ends get half mass)
            steps = int(schedule.t_max - schedule.t_min) + 1
            t = schedule.t_min + (u * steps).floor().clamp(max=steps - 1)
        else:
            t = schedule.t_min + u * (schedule.t_max - schedule.t_min)
        return schedule.t_to_sigma(t)


@dataclass(frozen=True)
class LogNormal:
    """``ln(sigma) ~ N(p_mean, p_std^2)`` (Karras et al. 2022, sec. 5, P_mean=-1.2, P_std=1.2)."""

    p_mean: float = -1.2
    p_std: float = 1.2

    def sample(
        self,
        n: int,
        schedule: NoiseSchedule,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        return torch.exp(self.p_mean + self.p_std * _randn(n, generator, torch.device(device)))


@dataclass(frozen=True)
class LogitNormal:
    """``logit(u) ~ N(mean, std^2)``, u mapped onto the schedule's t range (Esser et al. 2024).

    With :class:`~polydiff.core.schedules.FlowSchedule` this is SD3's rectified-flow sampling
    (and equals a log-normal in sigma, since ``sigma = t / (1 - t) = exp(logit t)``).
    """

    mean: float = 0.0
    std: float = 1.0

    def sample(
        self,
        n: int,
        schedule: NoiseSchedule,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        u = torch.sigmoid(self.mean + self.std * _randn(n, generator, torch.device(device)))
        return schedule.t_to_sigma(_time_from_unit(u, schedule))


@dataclass(frozen=True)
class GaussianTime:
    """Relative time ``u ~ N(mean, std^2)`` truncated to [0, 1] (exactly, by inverse CDF):
    training concentrated mid-sequence, mapped onto the schedule's t range."""

    mean: float = 0.5
    std: float = 0.25

    def __post_init__(self) -> None:
        if self.std <= 0:
            raise ValueError(f"GaussianTime std must be positive, got {self.std}")

    def sample(
        self,
        n: int,
        schedule: NoiseSchedule,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        def cdf(z: float) -> float:
            return 0.5 * math.erfc(-z / math.sqrt(2))

        lo, hi = cdf((0 - self.mean) / self.std), cdf((1 - self.mean) / self.std)
        p = lo + (hi - lo) * _rand(n, generator, torch.device(device))
        u = (self.mean + self.std * torch.special.ndtri(p)).clamp(0, 1)
        return schedule.t_to_sigma(_time_from_unit(u, schedule))


@runtime_checkable
class NoiseDensity(Protocol):
    """Draws training noise levels: ``sample(n, schedule, generator, device) -> sigma (n,)``."""

    def sample(
        self,
        n: int,
        schedule: NoiseSchedule,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor: ...


DENSITIES: dict[str, Callable[[], NoiseDensity]] = {
    "uniform": UniformTime,
    "log_normal": LogNormal,
    "logit_normal": LogitNormal,
    "gaussian": GaussianTime,
}


# ---------------------------------------------------------------------------------------------
# Loss weightings: weight(sigma, param) multiplies ||F - target||^2 per sample
# ---------------------------------------------------------------------------------------------


def snr(sigma: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ``alpha^2 / sigma_native^2 = 1 / sigma^2`` of any VE-form level."""
    return sigma.to(_F64) ** -2


class LossWeighting:
    """A weighting ``lambda(sigma)`` of the x0-space error ``||D - x0||^2``.

    ``weighting(sigma, param)`` returns the equivalent weight on the network's own error
    ``||F - target||^2``, i.e. ``lambda(sigma) * c_out(sigma)^2``.
    """

    def x0_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, sigma: torch.Tensor, param: Parameterization) -> torch.Tensor:
        c_out = param.scalings(sigma)[1]
        return self.x0_weight(sigma) * c_out**2


@dataclass(frozen=True)
class UniformWeighting(LossWeighting):
    """Plain MSE on the prediction target (``lambda = 1 / c_out^2``)."""

    def __call__(self, sigma: torch.Tensor, param: Parameterization) -> torch.Tensor:
        return torch.ones_like(sigma, dtype=_F64)


@dataclass(frozen=True)
class SNRWeighting(LossWeighting):
    """``lambda = SNR``: for eps prediction this is L_simple (Ho et al. 2020)."""

    def x0_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return snr(sigma)


@dataclass(frozen=True)
class MinSNRWeighting(LossWeighting):
    """Min-SNR-gamma (Hang et al. 2023): ``lambda = min(SNR, gamma)``; for eps prediction the
    weight is ``min(SNR, gamma) / SNR``, for v prediction ``min(SNR, gamma) / (SNR + 1)``."""

    gamma: float = 5.0

    def __post_init__(self) -> None:
        if self.gamma <= 0:
            raise ValueError(f"min-SNR gamma must be positive, got {self.gamma}")

    def x0_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return snr(sigma).clamp(max=self.gamma)


@dataclass(frozen=True)
class TruncatedSNRWeighting(LossWeighting):
    """``lambda = max(SNR, 1)`` (Salimans & Ho 2022, "truncated SNR")."""

    def x0_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return snr(sigma).clamp(min=1.0)


@dataclass(frozen=True)
class EDMWeighting(LossWeighting):
    """``lambda = (sigma^2 + sd^2) / (sigma sd)^2`` (Karras et al. 2022, table 1): unit weight
    on the EDM-preconditioned network's error."""

    sigma_data: float = 0.5

    def x0_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        sigma, sd = sigma.to(_F64), self.sigma_data
        return (sigma**2 + sd**2) / (sigma * sd) ** 2


WEIGHTINGS: dict[str, Callable[[Parameterization], LossWeighting]] = {
    "uniform": lambda param: UniformWeighting(),
    "snr": lambda param: SNRWeighting(),
    "min_snr": lambda param: MinSNRWeighting(),
    "truncated_snr": lambda param: TruncatedSNRWeighting(),
    "edm": lambda param: EDMWeighting(getattr(param, "sigma_data", 0.5)),
}


def _lookup(table: Mapping[str, Callable], name: str, what: str) -> Callable:
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; valid: {', '.join(sorted(table))}")
    return table[name]


# ---------------------------------------------------------------------------------------------
# The objective
# ---------------------------------------------------------------------------------------------


def _unwrap(net: nn.Module) -> nn.Module:
    """Look through DDP / FSDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(net, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(net, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return net
        net = inner


class DiffusionObjective:
    """Denoising score-matching loss and the matching denoiser for one network.

    Args:
        schedule: the noise schedule (gives the network's t and the training t range).
        prediction: ``"eps"``, ``"x0"``, ``"v"``, ``"flow"``, ``"edm"`` or a
            :class:`~polydiff.core.parameterization.Parameterization`; default (None): what the
            schedule's paper trains, ``"edm"`` preconditioning for an ``EDMSchedule`` (Karras
            et al. 2022, Table 1), ``"flow"`` for a ``FlowSchedule`` (Liu et al. 2022),
            ``"eps"`` (Ho et al. 2020) otherwise.
        weighting: ``"uniform"``, ``"snr"``, ``"min_snr"`` (gamma 5), ``"truncated_snr"``,
            ``"edm"`` or a :class:`LossWeighting` (e.g. ``MinSNRWeighting(gamma=1)``); default
            (None): ``"edm"`` (lambda = 1 / c_out^2) with ``edm`` prediction, else uniform.
        noise_density: ``"uniform"``, ``"log_normal"``, ``"logit_normal"``, ``"gaussian"`` or a
            density object; default log-normal for ``edm`` (P_mean -1.2, P_std 1.2), uniform in t
            otherwise. So ``DiffusionObjective(EDMSchedule())`` is EDM, as a k-diffusion user
            reads it; pass ``prediction="eps"`` explicitly for eps-prediction on EDM sigmas.
        cond_drop_prob: probability of setting ``cond["null_mask"]`` per row (classifier-free
            guidance training); needs a network with ``accepts_null_mask = True``.

    ``cond["loss_mask"]`` (optional, shape ``x0.shape[:k]``, bool or float) restricts the
    per-sample mean to the masked elements (e.g. padded motion frames).
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction: str | Parameterization | None = None,
        weighting: str | LossWeighting | None = None,
        noise_density: str | NoiseDensity | None = None,
        *,
        cond_drop_prob: float = 0.0,
    ) -> None:
        self.schedule = schedule
        if prediction is None:  # the schedule's own paper (see the class docstring)
            edm, flow = isinstance(schedule, EDMSchedule), isinstance(schedule, FlowSchedule)
            prediction = "edm" if edm else ("flow" if flow else "eps")
        self.param = make_parameterization(prediction, schedule)
        if weighting is None:
            weighting = "edm" if isinstance(self.param, EDMParameterization) else "uniform"
        if isinstance(weighting, str):
            weighting = _lookup(WEIGHTINGS, weighting, "loss weighting")(self.param)
        if not isinstance(weighting, LossWeighting):
            raise ValueError(f"weighting must be a name or a LossWeighting, got {weighting!r}")
        self.weighting = weighting
        if noise_density is None:
            edm = isinstance(self.param, EDMParameterization)
            noise_density = "log_normal" if edm else "uniform"
        if isinstance(noise_density, str):
            noise_density = _lookup(DENSITIES, noise_density, "noise density")()
        if not isinstance(noise_density, NoiseDensity):
            raise ValueError(f"noise_density must be a name or have .sample, got {noise_density!r}")
        self.noise_density = noise_density
        if not 0.0 <= cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must lie in [0, 1], got {cond_drop_prob}")
        self.cond_drop_prob = float(cond_drop_prob)

    def denoiser(self, net: nn.Module) -> NetworkDenoiser:
        """The denoiser ``D(x, sigma, cond)`` of ``net`` trained with this objective."""
        return NetworkDenoiser(net, self.param)

    def sample_sigma(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """``n`` training noise levels (float64) from the noise density."""
        return self.noise_density.sample(n, self.schedule, generator, device)

    def drop_condition(
        self, cond: Cond, batch: int, generator: torch.Generator | None, device: torch.device
    ) -> Cond:
        """Set ``null_mask`` on a random ``cond_drop_prob`` share of rows (ORs an existing mask)."""
        if cond is None or self.cond_drop_prob == 0.0:
            return cond
        drop = _rand(batch, generator, device) < self.cond_drop_prob
        old = cond.get("null_mask")
        if old is not None:
            drop = drop | old.to(device=device, dtype=torch.bool)
        return {**cond, "null_mask": drop}

    def per_sample_loss(
        self,
        net: nn.Module,
        x0: torch.Tensor,
        cond: Cond = None,
        generator: torch.Generator | None = None,
        *,
        sigma: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Weighted loss per sample, shape (B,). ``sigma`` / ``noise`` override the draws."""
        if x0.ndim < 2:
            raise ValueError(f"x0 must be batched with rank >= 2, got shape {tuple(x0.shape)}")
        batch, device = x0.shape[0], x0.device
        drops = self.cond_drop_prob > 0 and cond is not None
        if drops and not getattr(_unwrap(net), "accepts_null_mask", False):
            raise ValueError("cond_drop_prob > 0 needs a network with accepts_null_mask = True")
        if sigma is None:
            sigma = self.sample_sigma(batch, generator, device)
        sigma = torch.as_tensor(sigma, device=device).to(_F64)
        if sigma.shape != (batch,):
            raise ValueError(f"sigma must have shape ({batch},), got {tuple(sigma.shape)}")
        if noise is None:
            g_dev = _device_of(generator, device)
            noise = torch.randn(x0.shape, generator=generator, device=g_dev, dtype=x0.dtype)
            noise = noise.to(device)
        x = x0 + append_dims(sigma, x0.ndim).to(x0.dtype) * noise
        cond = self.drop_condition(cond, batch, generator, device)

        out = self.denoiser(net).network_output(x, sigma, cond)
        target = self.param.target(x0, noise, sigma)
        work = torch.promote_types(x0.dtype, torch.float32)
        err = (out.to(work) - target.to(work)) ** 2  # (B, ...)
        per_sample = _masked_mean(err, None if cond is None else cond.get("loss_mask"))
        return self.weighting(sigma, self.param).to(work) * per_sample

    def loss(
        self,
        net: nn.Module,
        x0: torch.Tensor,
        cond: Cond = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Scalar training loss: per-sample weighted MSE over all non-batch dims, batch mean."""
        return self.per_sample_loss(net, x0, cond, generator).mean()

    def __repr__(self) -> str:
        return (
            f"DiffusionObjective(schedule={self.schedule!r}, param={self.param!r}, "
            f"weighting={self.weighting!r}, noise_density={self.noise_density!r}, "
            f"cond_drop_prob={self.cond_drop_prob})"
        )


def _masked_mean(err: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over non-batch dims, restricted to ``mask`` (shape ``err.shape[:k]``) if given."""
    if mask is None:
        return err.flatten(1).mean(1)
    if mask.shape != err.shape[: mask.ndim] or mask.ndim < 1:
        raise ValueError(
            f"loss_mask of shape {tuple(mask.shape)} must match the leading dims of x0 "
            f"{tuple(err.shape)}"
        )
    m = append_dims(mask.to(err.dtype), err.ndim).expand_as(err)
    return (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)


__all__ = [
    "DENSITIES",
    "WEIGHTINGS",
    "DiffusionObjective",
    "EDMWeighting",
    "GaussianTime",
    "LogNormal",
    "LogitNormal",
    "LossWeighting",
    "MinSNRWeighting",
    "NoiseDensity",
    "SNRWeighting",
    "TruncatedSNRWeighting",
    "UniformTime",
    "UniformWeighting",
    "snr",
]
