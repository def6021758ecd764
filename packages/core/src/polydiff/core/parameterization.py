"""Parameterisations: how a trained network ``F(x_in, t, cond)`` becomes the denoiser ``D``.

Every target is one preconditioning (Karras et al. 2022, eq. 7)::

    D(x, sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, c_noise(sigma), cond)

with ``x = x0 + sigma * eps`` in VE form. A :class:`Parameterization` owns the coefficients, the
network's time input ``c_noise`` and the regression ``target(x0, eps, sigma)`` (which always
equals ``(x0 - c_skip x) / c_out``, written in a form that stays finite at the ends), so the
objective and the sampler-side wrapper share one formula per target:

===========  ============================  ===============  ========================  =========
target       c_skip                        c_out            c_in                      t (net)
===========  ============================  ===============  ========================  =========
eps          1                             -sigma           alpha(sigma)              schedule
x0           0                             1                alpha(sigma)              schedule
v            1 / (1 + s^2)                 -s / sqrt(1+s^2) 1 / sqrt(1 + s^2)         schedule
flow         1 / (1 + s)                   -s / (1 + s)     1 / (1 + s)               s / (1+s)
edm          sd^2 / (s^2 + sd^2)           s sd / sqrt(.)   1 / sqrt(s^2 + sd^2)      ln(s) / 4
===========  ============================  ===============  ========================  =========

``alpha(sigma)`` is the schedule's input scale (``1 / sqrt(1 + sigma^2)`` for VP schedules, so
VP networks see ``x_vp = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps``), and "schedule" means
``schedule.sigma_to_t(sigma)``: the continuous t, or for a discrete schedule the log-sigma
interpolated timestep. :class:`NetworkDenoiser` (and the named subclasses :class:`EpsDenoiser`,
:class:`X0Denoiser`, :class:`VDenoiser`, :class:`FlowDenoiser`, :class:`EDMPrecond`) wraps a
network with one parameterisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from polydiff.core.schedules import (
    ContinuousVPSchedule,
    FlowSchedule,
    NoiseSchedule,
    VPSchedule,
    vp_alpha,
)
from polydiff.core.utils import Cond, append_dims, batch_sigma

_F64 = torch.float64
Scalings = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (c_skip, c_out, c_in), each (B,)


class Parameterization:
    """Coefficients of ``D = c_skip x + c_out F(c_in x, c_noise)`` and the target of ``F``.

    All methods take ``sigma`` of shape (B,) and compute in float64.
    """

    name: ClassVar[str]

    def scalings(self, sigma: torch.Tensor) -> Scalings:
        """``(c_skip, c_out, c_in)``, each of ``sigma``'s shape."""
        raise NotImplementedError

    def noise_input(self, sigma: torch.Tensor) -> torch.Tensor:
        """The network's time input ``c_noise(sigma)``."""
        raise NotImplementedError

    def target(self, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """What ``F`` regresses to for ``x = x0 + sigma * eps``: ``(x0 - c_skip x) / c_out``."""
        raise NotImplementedError


class _ScheduleTime(Parameterization):
    """Targets of networks that see ``alpha(sigma) x`` and the schedule's own ``t``."""

    def __init__(self, schedule: NoiseSchedule) -> None:
        self.schedule = schedule

    def noise_input(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.schedule.sigma_to_t(sigma)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.schedule!r})"


class EpsParameterization(_ScheduleTime):
    """Noise prediction (Ho et al. 2020): ``D = x - sigma * F``."""

    name = "eps"

    def scalings(self, sigma: torch.Tensor) -> Scalings:
        sigma = sigma.to(_F64)
        return torch.ones_like(sigma), -sigma, self.schedule.alpha(sigma)

    def target(self, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return eps


class X0Parameterization(_ScheduleTime):
    """Data prediction: ``D = F``."""

    name = "x0"

    def scalings(self, sigma: torch.Tensor) -> Scalings:
        sigma = sigma.to(_F64)
        return torch.zeros_like(sigma), torch.ones_like(sigma), self.schedule.alpha(sigma)

    def target(self, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x0


class VParameterization(_ScheduleTime):
    """v prediction ``v = alpha eps - sigma_vp x0`` (Salimans & Ho 2022, sec. 4) of a VP model."""

    name = "v"

    def __init__(self, schedule: NoiseSchedule) -> None:
        if not isinstance(schedule, (VPSchedule, ContinuousVPSchedule)):
            raise ValueError(
                f"v prediction is defined for VP schedules, got {type(schedule).__name__}"
            )
        super().__init__(schedule)

    def scalings(self, sigma: torch.Tensor) -> Scalings:
        sigma = sigma.to(_F64)
        c_in = vp_alpha(sigma)
        return c_in**2, -sigma * c_in, c_in

    def target(self, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.to(_F64)
        alpha = append_dims(vp_alpha(sigma), x0.ndim).to(x0.dtype)  # sqrt(alpha_bar)
        sigma_vp = append_dims(sigma * vp_alpha(sigma), x0.ndim).to(x0.dtype)  # sqrt(1-alpha_bar)
        return alpha * eps - sigma_vp * x0


class FlowParameterization(Parameterization):
    """Rectified-flow velocity ``v = eps - x0`` (Liu et al. 2022; Esser et al. 2024).

    The network sees ``x_t = (1 - t) x0 + t eps = x / (1 + sigma)`` and ``t = sigma / (1 + sigma)``;
    ``D = x_t - t v``.
    """

    name = "flow"
    _flow = FlowSchedule()  # t <-> sigma and the input scale; the shift only matters for grids

    def scalings(self, sigma: torch.Tensor) -> Scalings:
        one_minus_t = self._flow.alpha(sigma.to(_F64))  # 1 / (1 + sigma)
        return one_minus_t, one_minus_t - 1, one_minus_t

    def noise_input(self, sigma: torch.Tensor) -> torch.Tensor:
        return self._flow.sigma_to_t(sigma)

    def target(self, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return eps - x0

    def __repr__(self) -> str:
        return "FlowParameterization()"


class EDMParameterization(Parameterization):
    """EDM preconditioning (Karras et al. 2022, table 1, "Ours")."""

    name = "edm"

    def __init__(self, sigma_data: float = 0.5) -> None:
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.sigma_data = float(sigma_data)

    def scalings(self, sigma: torch.Tensor) -> Scalings:
        sigma, sd = sigma.to(_F64), self.sigma_data
        norm = torch.rsqrt(sigma**2 + sd**2)
        c_skip = sd**2 * norm**2  # sd^2 / (sigma^2 + sd^2)
        c_out = sigma * sd * norm  # sigma sd / sqrt(sigma^2 + sd^2)
        c_in = norm  # 1 / sqrt(sigma^2 + sd^2)
        return c_skip, c_out, c_in

    def noise_input(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma.to(_F64).log() / 4  # c_noise = ln(sigma) / 4

    def target(self, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        # (x0 - c_skip x) / c_out = (sigma / sd * x0 - sd * eps) / sqrt(sigma^2 + sd^2)
        sigma, sd = sigma.to(_F64), self.sigma_data
        norm = append_dims(torch.rsqrt(sigma**2 + sd**2), x0.ndim)
        a = (append_dims(sigma, x0.ndim) / sd * norm).to(x0.dtype)
        b = (sd * norm).to(x0.dtype)
        return a * x0 - b * eps

    def __repr__(self) -> str:
        return f"EDMParameterization(sigma_data={self.sigma_data})"


class ConsistencyParameterization(Parameterization):
    """Consistency-model preconditioning (Song et al. 2023, app. C; EDM's c_in and c_noise).

    ``c_skip = sd^2 / ((s - s_min)^2 + sd^2)``, ``c_out = (s - s_min) sd / sqrt(s^2 + sd^2)``, so
    that ``f(x, s_min) = x`` (the boundary condition) for any network.
    """

    name = "consistency"

    def __init__(self, sigma_min: float = 0.002, sigma_data: float = 0.5) -> None:
        if sigma_min <= 0 or sigma_data <= 0:
            raise ValueError(f"need sigma_min, sigma_data > 0, got {sigma_min}, {sigma_data}")
        self.sigma_min, self.sigma_data = float(sigma_min), float(sigma_data)

    def scalings(self, sigma: torch.Tensor) -> Scalings:
        sigma, sd = sigma.to(_F64), self.sigma_data
        shifted = sigma - self.sigma_min
        c_skip = sd**2 / (shifted**2 + sd**2)
        c_out = shifted * sd * torch.rsqrt(sigma**2 + sd**2)
        c_in = torch.rsqrt(sigma**2 + sd**2)
        return c_skip, c_out, c_in

    def noise_input(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma.to(_F64).log() / 4

    def target(self, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c_skip, c_out, _ = (append_dims(c, x0.ndim) for c in self.scalings(sigma))
        x = x0 + append_dims(sigma.to(_F64), x0.ndim) * eps
        return ((x0 - c_skip * x) / c_out).to(x0.dtype)

    def __repr__(self) -> str:
        return (
            f"ConsistencyParameterization(sigma_min={self.sigma_min}, sigma_data={self.sigma_data})"
        )


PARAMETERIZATIONS: dict[str, Callable[[NoiseSchedule | None], Parameterization]] = {
    "eps": lambda schedule: EpsParameterization(_need(schedule, "eps")),
    "x0": lambda schedule: X0Parameterization(_need(schedule, "x0")),
    "v": lambda schedule: VParameterization(_need(schedule, "v")),
    "flow": lambda schedule: FlowParameterization(),
    "edm": lambda schedule: EDMParameterization(getattr(schedule, "sigma_data", 0.5)),
}


def _need(schedule: NoiseSchedule | None, kind: str) -> NoiseSchedule:
    if schedule is None:
        raise ValueError(f"the {kind!r} parameterisation needs a schedule (for c_in and t)")
    return schedule


def make_parameterization(
    kind: str | Parameterization, schedule: NoiseSchedule | None = None
) -> Parameterization:
    """Parameterisation by name (``eps``, ``x0``, ``v``, ``flow``, ``edm``) or pass one through.

    ``edm`` takes ``sigma_data`` from the schedule when it has one (:class:`EDMSchedule`), else
    0.5; ``flow`` ignores the schedule.
    """
    if isinstance(kind, Parameterization):
        return kind
    if kind not in PARAMETERIZATIONS:
        raise ValueError(
            f"unknown prediction target {kind!r}; valid: {', '.join(sorted(PARAMETERIZATIONS))}"
        )
    return PARAMETERIZATIONS[kind](schedule)


# ---------------------------------------------------------------------------------------------
# Denoiser wrappers
# ---------------------------------------------------------------------------------------------


def _time_dtype(dtype: torch.dtype) -> torch.dtype:
    # timesteps up to ~1000 do not survive half precision; keep the network's t in float32
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class NetworkDenoiser(nn.Module):
    """The denoiser ``D(x, sigma, cond)`` of a network ``net(x_in, t, cond)`` trained with
    parameterisation ``param``. Any rank; ``sigma`` of shape (B,) (a scalar is broadcast)."""

    def __init__(self, net: nn.Module, param: Parameterization) -> None:
        super().__init__()
        self.net = net
        self.param = param

    @property
    def accepts_null_mask(self) -> bool:
        """Passes through the network's ``accepts_null_mask`` (classifier-free guidance)."""
        return bool(getattr(self.net, "accepts_null_mask", False))

    def network_output(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond = None
    ) -> torch.Tensor:
        """``F(c_in x, c_noise, cond)``: the raw network prediction of the parameterised target."""
        return self._run(x, batch_sigma(sigma, x), cond)[0]

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        out, c_skip, c_out = self._run(x, batch_sigma(sigma, x), cond)
        return c_skip * x + c_out * out

    def _run(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> Scalings:
        c_skip, c_out, c_in = (
            append_dims(c, x.ndim).to(x.dtype) for c in self.param.scalings(sigma)
        )
        t = self.param.noise_input(sigma).to(_time_dtype(x.dtype))  # (B,)
        out = self.net(x * c_in, t, cond).to(x.dtype)
        return out, c_skip, c_out

    def extra_repr(self) -> str:
        return f"param={self.param!r}"


class EpsDenoiser(NetworkDenoiser):
    """Denoiser of an eps-prediction network (DDPM); ``schedule`` gives its input scale and t."""

    def __init__(self, net: nn.Module, schedule: NoiseSchedule) -> None:
        super().__init__(net, EpsParameterization(schedule))


class X0Denoiser(NetworkDenoiser):
    """Denoiser of an x0-prediction network; ``schedule`` gives its input scale and t."""

    def __init__(self, net: nn.Module, schedule: NoiseSchedule) -> None:
        super().__init__(net, X0Parameterization(schedule))


class VDenoiser(NetworkDenoiser):
    """Denoiser of a v-prediction VP network (Salimans & Ho 2022)."""

    def __init__(self, net: nn.Module, schedule: NoiseSchedule) -> None:
        super().__init__(net, VParameterization(schedule))


class FlowDenoiser(NetworkDenoiser):
    """Denoiser of a rectified-flow velocity network (sees ``x / (1 + sigma)``, ``t``)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__(net, FlowParameterization())


class EDMPrecond(NetworkDenoiser):
    """EDM preconditioned network ``D = c_skip x + c_out F(c_in x, ln(sigma) / 4)``."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5) -> None:
        super().__init__(net, EDMParameterization(sigma_data))


__all__ = [
    "PARAMETERIZATIONS",
    "ConsistencyParameterization",
    "EDMParameterization",
    "EDMPrecond",
    "EpsDenoiser",
    "EpsParameterization",
    "FlowDenoiser",
    "FlowParameterization",
    "NetworkDenoiser",
    "Parameterization",
    "VDenoiser",
    "VParameterization",
    "X0Denoiser",
    "X0Parameterization",
    "make_parameterization",
]
