"""Samplers: pure functions ``fn(denoiser, x, sigmas, *, cond, generator, callback, **options)``.

Contract shared by every sampler (checked by ``tests/core/test_samplers_contract.py``):

- ``denoiser(x, sigma, cond) -> x0_hat`` in VE form, ``sigma`` a (B,) tensor;
- ``x`` enters scaled for ``sigmas[0]`` (``x = noise * sigmas[0]``), any rank, any float dtype
  (kept: bf16 stays bf16); sigma bookkeeping is done in float64;
- ``sigmas`` is a 1-D, non-negative, non-increasing grid (repeated values are zero-length steps
  and are skipped); the result is ``x`` at ``sigmas[-1]``, and a final step into sigma 0 is a
  clean denoise;
- all noise comes from ``generator`` (same seed, same samples); no state survives a call;
- the denoiser sees sigma as float32 (float64 for float64 ``x``); a non-finite output raises
  FloatingPointError naming the step and sigma;
- ``callback`` gets ``{"x", "i", "sigma", "sigma_hat", "denoised"}`` once per step (``adaptive``:
  per iteration, with per-row sigma tensors and ``"nfe"``; pass ``info={}`` to get its NFE);
- grad mode is the caller's: wrap in ``torch.no_grad()`` for inference.

Families: ``karras`` (Euler / Heun / DPM-2 with EDM churn ``s_churn, s_tmin, s_tmax, s_noise``,
ancestral variants, LMS, DDIM / DDPM in sigma space), ``dpm_solver`` (DPM-Solver++ 2S / SDE /
2M / 2M-SDE / 3M-SDE), ``unipc``, ``adaptive`` (error-controlled embedded solvers) and
``score_sde`` (annealed Langevin, predictor-corrector).

Add a sampler: write the function, add one line to ``SAMPLERS``, pass the contract tests.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from polydiff.core.samplers._base import ancestral_step, churn
from polydiff.core.samplers.adaptive import adaptive
from polydiff.core.samplers.dpm_solver import (
    dpmpp_2m,
    dpmpp_2m_sde,
    dpmpp_2s_ancestral,
    dpmpp_3m_sde,
    dpmpp_sde,
)
from polydiff.core.samplers.karras import (
    ddim,
    ddpm,
    dpm2,
    dpm2_ancestral,
    euler,
    euler_ancestral,
    heun,
    lms,
)
from polydiff.core.samplers.score_sde import langevin, pc
from polydiff.core.samplers.unipc import unipc
from polydiff.core.utils import Cond

__all__ = [
    "DETERMINISTIC",
    "SAMPLERS",
    "adaptive",
    "ancestral_step",
    "churn",
    "ddim",
    "ddpm",
    "dpm2",
    "dpm2_ancestral",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_2s_ancestral",
    "dpmpp_3m_sde",
    "dpmpp_sde",
    "euler",
    "euler_ancestral",
    "heun",
    "langevin",
    "lms",
    "pc",
    "sample",
    "unipc",
]

Sampler = Callable[..., torch.Tensor]

SAMPLERS: dict[str, Sampler] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "euler": euler,
    "euler_ancestral": euler_ancestral,
    "heun": heun,
    "dpm2": dpm2,
    "dpm2_ancestral": dpm2_ancestral,
    "lms": lms,
    "dpmpp_2s_ancestral": dpmpp_2s_ancestral,
    "dpmpp_sde": dpmpp_sde,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "dpmpp_3m_sde": dpmpp_3m_sde,
    "unipc": unipc,
    "adaptive": adaptive,
    "langevin": langevin,
    "pc": pc,
}

# samplers that draw no noise with their default options (ODE solvers)
DETERMINISTIC = frozenset({"ddim", "euler", "heun", "dpm2", "lms", "dpmpp_2m", "unipc", "adaptive"})


def sample(
    denoiser: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    method: str,
    *,
    cond: Cond = None,
    generator: torch.Generator | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> torch.Tensor:
    """Run the sampler ``method`` (a key of ``SAMPLERS``) from ``x`` (scaled for sigmas[0])."""
    try:
        fn = SAMPLERS[method]
    except KeyError:
        raise ValueError(f"unknown sampler {method!r}; valid: {', '.join(SAMPLERS)}") from None
    params = inspect.signature(fn).parameters
    unknown = [k for k in options if k not in params]
    if unknown:
        valid = [
            k
            for k in params
            if k not in ("denoiser", "x", "sigmas", "cond", "generator", "callback")
        ]
        raise TypeError(f"sampler {method!r} has no option(s) {unknown}; its options: {valid}")
    return fn(denoiser, x, sigmas, cond=cond, generator=generator, callback=callback, **options)
