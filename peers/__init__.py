"""Peer implementations (k-diffusion, diffusers) driven by a polydiff VE denoiser, for cross-checks.

Shared by tests/ and benchmarks/ (which never import each other); run from the repository
root (``python -m pytest``, ``python -m benchmarks.run``)::

    from peers import load_k_diffusion_sampling, k_diffusion_model, run_diffusers_scheduler

- ``load_k_diffusion_sampling()`` imports k-diffusion's ``sampling.py`` without executing
  ``k_diffusion/__init__.py`` (which pulls wandb / clean-fid).
- ``k_diffusion_model(denoiser, cond)`` adapts ``D(x, sigma, cond)`` to k-diffusion's
  ``model(x, sigma, **extra_args)`` calling convention.
- ``scheduler_sigmas(scheduler)`` is the VE sigma grid (n + 1 values, float64) that a diffusers
  scheduler integrates over after ``set_timesteps``; give the same grid to a polydiff sampler.
- ``generator_noise_sampler`` / ``paired_noise_sampler`` give k-diffusion's stochastic samplers
  the noise polydiff draws from a ``torch.Generator`` (same order), for exact comparisons.
- ``ode_reference(denoiser, x, sigma_from, sigma_to)`` is the exact probability-flow ODE solution
  (scipy DOP853 at tight tolerance, in ``u = log sigma``) for a closed-form denoiser.
- ``run_diffusers_scheduler(scheduler, denoiser, x)`` runs the scheduler's own loop on the VP
  (or, for the k-diffusion-style schedulers, VE) model equivalent to ``denoiser``, starting from
  the VE state ``x`` (scaled for ``sigmas[0]``), and returns the final VE state.

VE <-> VP: with ``alpha_bar = 1 / (1 + sigma^2)``, a VP state ``x_t = sqrt(alpha_bar) x0 +
sqrt(1 - alpha_bar) eps`` is ``x_ve = x_t / sqrt(alpha_bar) = x0 + sigma * eps``. So the VP
eps-model equivalent to a VE denoiser D is
``eps(x_t, t) = (x_t / sqrt(alpha_bar_t) - D(x_t / sqrt(alpha_bar_t), sigma_t)) / sigma_t``
and the VP x0-model is ``x0(x_t, t) = D(x_t / sqrt(alpha_bar_t), sigma_t)``.
"""

from __future__ import annotations

import importlib
import math
import sys
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "VE_FORM_SCHEDULERS",
    "generator_noise_sampler",
    "k_diffusion_model",
    "load_k_diffusion_sampling",
    "ode_reference",
    "paired_noise_sampler",
    "run_diffusers_scheduler",
    "scheduler_sigmas",
]

Denoiser = Callable[..., torch.Tensor]

# diffusers schedulers whose ``sample`` is already in VE form (x0 + sigma * eps) and whose
# ``scale_model_input`` divides by sqrt(1 + sigma^2); every other scheduler keeps VP states.
VE_FORM_SCHEDULERS = frozenset(
    {
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "LMSDiscreteScheduler",
    }
)


# ---------------------------------------------------------------------------
# k-diffusion
# ---------------------------------------------------------------------------


def load_k_diffusion_sampling() -> types.ModuleType:
    """Import ``k_diffusion.sampling`` without running ``k_diffusion/__init__.py``.

    A bare package module with the right ``__path__`` is registered as ``k_diffusion`` so the
    relative import ``from . import utils`` in ``sampling.py`` resolves to the installed file.
    """
    name = "k_diffusion.sampling"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed (pip install --no-deps k-diffusion)")
    pkg = sys.modules.get("k_diffusion")
    if pkg is None:
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = [str(Path(p)) for p in spec.submodule_search_locations]
        pkg.__package__ = "k_diffusion"
        sys.modules["k_diffusion"] = pkg
    return importlib.import_module(name)


def k_diffusion_model(
    denoiser: Denoiser, cond: Mapping[str, torch.Tensor] | None = None
) -> Callable[..., torch.Tensor]:
    """Adapt ``D(x, sigma, cond)`` to k-diffusion's ``model(x, sigma, **extra_args)``."""

    def model(x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        return denoiser(x, sigma, cond)

    return model


def generator_noise_sampler(
    x: torch.Tensor, generator: torch.Generator
) -> Callable[[Any, Any], torch.Tensor]:
    """k-diffusion ``noise_sampler`` drawing N(0, I) like ``x`` from ``generator`` on each call."""

    def noise_sampler(sigma: Any, sigma_next: Any) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)

    return noise_sampler


def paired_noise_sampler(
    x: torch.Tensor, generator: torch.Generator
) -> Callable[[Any, Any], torch.Tensor]:
    """k-diffusion ``noise_sampler`` for ``sample_dpmpp_sde`` reproducing polydiff's Brownian pair.

    k-diffusion queries ``(sigma, sigma_mid)`` then ``(sigma, sigma_next)`` per step; the first
    call draws both increments ``W(sigma_mid) - W(sigma)`` and ``W(sigma_next) - W(sigma_mid)``
    (in that order, as ``polydiff.core.samplers._base.brownian_pair``) and returns the first
    normalised, the second call returns their normalised sum.
    """
    state: dict[str, Any] = {}

    def noise_sampler(sigma: Any, sigma_to: Any) -> torch.Tensor:
        t0, t1 = float(sigma), float(sigma_to)
        if "pending" not in state:
            z1 = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            z2 = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            state["pending"] = (t0, t1, z1, z2)
            return z1
        s0, s_mid, z1, z2 = state.pop("pending")
        a, b = abs(s_mid - s0), abs(t1 - s_mid)
        return (z1 * math.sqrt(a) + z2 * math.sqrt(b)) / math.sqrt(a + b)

    return noise_sampler


def ode_reference(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigma_from: float,
    sigma_to: float,
    rtol: float = 1e-11,
    atol: float = 1e-11,
) -> torch.Tensor:
    """Exact probability-flow ODE solution from ``sigma_from`` to ``sigma_to > 0`` (float64).

    Integrates ``dx/du = x - D(x, e^u)`` in ``u = log(sigma)`` (non-stiff: the Jacobian's
    eigenvalues lie in [0, 1]) with scipy's DOP853 for the whole batch at once.
    """
    from scipy.integrate import solve_ivp

    if not sigma_from >= sigma_to > 0:
        raise ValueError(f"need sigma_from >= sigma_to > 0, got {sigma_from}, {sigma_to}")
    shape, batch = x.shape, x.shape[0]

    def f(u: float, y: Any) -> Any:
        xx = torch.from_numpy(y).reshape(shape)
        sigma = torch.full((batch,), math.exp(u), dtype=torch.float64)
        return (xx - denoiser(xx, sigma, None).to(torch.float64)).flatten().numpy()

    y0 = x.detach().to(torch.float64).flatten().numpy()
    sol = solve_ivp(
        f, (math.log(sigma_from), math.log(sigma_to)), y0, method="DOP853", rtol=rtol, atol=atol
    )
    if not sol.success:
        raise RuntimeError(f"ode_reference: {sol.message}")
    return torch.from_numpy(sol.y[:, -1].copy()).reshape(shape)


# ---------------------------------------------------------------------------
# diffusers
# ---------------------------------------------------------------------------


def _alphas_cumprod(scheduler: Any) -> torch.Tensor:
    return torch.as_tensor(scheduler.alphas_cumprod).to(torch.float64)


def scheduler_sigmas(scheduler: Any) -> torch.Tensor:
    """The VE sigma grid (n + 1 values, float64) of a diffusers scheduler after set_timesteps.

    Schedulers with a ``sigmas`` attribute (Euler, DPM-Solver, UniPC, ...) use it as is; DDIM /
    DDPM use ``sqrt((1 - a) / a)`` of ``alphas_cumprod`` at each timestep, then the final
    ``final_alpha_cumprod`` (1 with ``set_alpha_to_one``, i.e. sigma 0).
    """
    n = len(scheduler.timesteps)
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) == n + 1:
        return torch.as_tensor(sigmas).to(torch.float64).cpu()
    if sigmas is not None:
        raise ValueError(
            f"{type(scheduler).__name__} has {len(sigmas)} sigmas for {n} timesteps: "
            "schedulers with several evaluations per step are not supported here"
        )
    acp = _alphas_cumprod(scheduler)
    a = acp[scheduler.timesteps.long().cpu()]
    final = getattr(scheduler, "final_alpha_cumprod", None)
    if final is None:  # DDPM: the last step goes to alpha_bar = 1
        final = torch.tensor(1.0)
    a = torch.cat([a, torch.as_tensor(final, dtype=torch.float64).reshape(1)])
    return ((1 - a) / a).sqrt()


def run_diffusers_scheduler(
    scheduler: Any,
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    cond: Mapping[str, torch.Tensor] | None = None,
    step_kwargs: Mapping[str, Any] | None = None,
    return_trajectory: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Run a diffusers scheduler's own loop on the model equivalent to the VE ``denoiser``.

    ``set_timesteps`` must have been called. ``x`` is the VE start state (scaled for
    ``scheduler_sigmas(scheduler)[0]``); the result (and each trajectory entry, the state after
    every step) is returned in VE form, so it compares directly with a polydiff sampler run on
    ``scheduler_sigmas(scheduler)``. The model output follows the scheduler's
    ``prediction_type`` (``"epsilon"`` or ``"sample"``). Note that DDIM/DDPM default to
    ``clip_sample=True``: build them with ``clip_sample=False`` for an unclipped comparison.
    """
    sigmas = scheduler_sigmas(scheduler)  # (n + 1,) float64
    ve_form = type(scheduler).__name__ in VE_FORM_SCHEDULERS
    prediction_type = scheduler.config.prediction_type
    if prediction_type not in ("epsilon", "sample"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'sample', got {prediction_type!r}")
    step_kwargs = dict(step_kwargs or {})

    def to_ve(sample: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return sample if ve_form else sample * (1 + sigma**2).sqrt().to(sample.dtype)

    sample = x if ve_form else x / (1 + sigmas[0] ** 2).sqrt().to(x.dtype)
    trajectory = []
    batch = x.shape[0]
    for i, t in enumerate(scheduler.timesteps):
        sigma = sigmas[i]
        x_ve = to_ve(sample, sigma)
        denoised = denoiser(x_ve, sigma.to(x.dtype).expand(batch), cond)
        if prediction_type == "sample":
            output = denoised
        else:
            output = (x_ve - denoised) / sigma.to(x.dtype)
        if ve_form:  # these schedulers insist on scale_model_input being called
            scheduler.scale_model_input(sample, t)
        sample = scheduler.step(output, t, sample, return_dict=False, **step_kwargs)[0]
        if return_trajectory:
            trajectory.append(to_ve(sample, sigmas[i + 1]))
    out = to_ve(sample, sigmas[-1])
    return (out, trajectory) if return_trajectory else out
