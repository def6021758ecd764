"""Samplers: pure functions ``fn(denoiser, x, sigmas, *, cond, generator, callback, **options)``.

Contract shared by every sampler (checked by ``tests/core/test_samplers_contract.py``):

- ``denoiser(x, sigma, cond) -> x0_hat`` in VE form, ``sigma`` a (B,) tensor;
- ``x`` enters scaled for ``sigmas[0]`` (``x = noise * sigmas[0]``), any rank, any float dtype
  (kept: bf16 stays bf16); sigma bookkeeping is done in float64;
- ``sigmas`` is a 1-D, non-negative, non-increasing grid (repeated values are zero-length steps
  and are skipped); the result is ``x`` at ``sigmas[-1]``, and a final step into sigma 0 is a
  clean denoise;
- all noise comes from ``generator`` (same seed, same samples); no state survives a call;
  ``generator`` may be one ``torch.Generator`` or a list of one per sample
  (``per_sample_generators(seeds)``, EDM's ``StackedRandomGenerator``): then row i depends only
  on its own generator and start, whatever the batch size (draw the start ``x`` with
  ``randn(shape, generators)`` too). ``pc`` couples rows through its batch-averaged corrector
  step size unless ``step_norm="sample"``;
- the denoiser sees sigma as float32 (float64 for float64 ``x``); a non-finite output raises
  FloatingPointError naming the step and sigma;
- ``callback`` gets ``{"x", "i", "sigma", "sigma_hat", "denoised"}`` once per step (``adaptive``:
  per iteration, with per-row sigma tensors and ``"nfe"``; pass ``info={}`` to get its NFE);
- grad mode is the caller's: wrap in ``torch.no_grad()`` for inference.

Families: ``karras`` (Euler / Heun / DPM-2 with EDM churn ``s_churn, s_tmin, s_tmax, s_noise``,
ancestral variants, LMS, DDIM / DDPM in sigma space), ``multistep`` (iPNDM, DEIS tAB, the
fitted multistep solver), ``dpm_solver`` (DPM-Solver++ 2S / SDE /
2M / 2M-SDE / 3M-SDE), ``unipc``, ``adaptive`` (error-controlled embedded solvers) and
``score_sde`` (annealed Langevin, predictor-corrector).

Add a sampler: write the function, add one line to ``SAMPLERS`` and one to ``EVALUATIONS`` (its
number of denoiser calls on a grid), pass the contract tests.

Evaluations: ``denoiser_evaluations(method, sigmas_or_steps, **options)`` is the exact number of
denoiser calls of one ``sample`` call (a batch counts once); for ``adaptive`` it depends on the
denoiser, so wrap the denoiser in ``CountingDenoiser`` (or pass ``info={}``) instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from polydiff.core.samplers._base import (
    Generator,
    ancestral_step,
    as_grid,
    churn,
    per_sample_generators,
    randn,
)
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
from polydiff.core.samplers.multistep import deis, fitted, ipndm
from polydiff.core.samplers.score_sde import langevin, pc
from polydiff.core.samplers.unipc import unipc
from polydiff.core.utils import Cond

__all__ = [
    "BATCH_COUPLED",
    "DETERMINISTIC",
    "EVALUATIONS",
    "SAMPLERS",
    "CountingDenoiser",
    "Generator",
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
    "denoiser_evaluations",
    "euler",
    "euler_ancestral",
    "fitted",
    "heun",
    "ipndm",
    "langevin",
    "lms",
    "pc",
    "per_sample_generators",
    "randn",
    "sample",
    "steps_for_evaluations",
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
    "ipndm": ipndm,
    "deis": deis,
    "fitted": fitted,
    "adaptive": adaptive,
    "langevin": langevin,
    "pc": pc,
}

# samplers that draw no noise with their default options (ODE solvers)
DETERMINISTIC = frozenset(
    {
        "ddim",
        "euler",
        "heun",
        "dpm2",
        "lms",
        "dpmpp_2m",
        "unipc",
        "ipndm",
        "deis",
        "fitted",
        "adaptive",
    }
)

# samplers whose default options couple the rows of a batch, and the options that decouple them
# (with these, and per-sample generators, row i does not depend on the rest of the batch)
BATCH_COUPLED: dict[str, dict[str, Any]] = {"pc": {"step_norm": "sample"}}


# ------------------------------------------------------------------ denoiser evaluations
# name -> count(grid, **options): denoiser calls of one call on the validated grid (floats,
# zero-length steps dropped except for ``langevin``, which keeps repeated levels).


def _one_per_step(grid: list[float], **_: Any) -> int:
    return len(grid) - 1


def _two_unless_final(grid: list[float], **_: Any) -> int:
    """Heun / DPM-2 / DPM++ SDE: a second call per step, except a step into sigma 0."""
    return sum(2 if s_next > 0 else 1 for s_next in grid[1:])


def _two_unless_down_is_zero(grid: list[float], eta: float = 1.0, **_: Any) -> int:
    """Ancestral two-stage steps: a second call unless the deterministic part reaches 0."""
    return sum(
        2 if ancestral_step(s, s_next, eta)[0] > 0 else 1 for s, s_next in zip(grid, grid[1:])
    )


def _langevin(grid: list[float], n_steps_each: int = 2, **_: Any) -> int:
    levels = [s for s in grid if s > 0]
    return n_steps_each * len(levels) + (1 if grid[-1] == 0 and levels else 0)


def _pc(grid: list[float], n_corrector: int = 1, snr: float = 0.16, **_: Any) -> int:
    return (len(grid) - 1) * (1 + (n_corrector if snr > 0 else 0))


def _adaptive(grid: list[float], **_: Any) -> int:
    positive = [s for s in grid if s > 0]
    if len(positive) < 2:
        return 1 if positive and grid[-1] == 0 else 0
    raise ValueError(
        "adaptive: the number of denoiser evaluations depends on the denoiser and the tolerance; "
        "count them with CountingDenoiser(denoiser) or sample(..., info={})"
    )


EVALUATIONS: dict[str, Callable[..., int]] = {
    "ddpm": _one_per_step,
    "ddim": _one_per_step,
    "euler": _one_per_step,
    "euler_ancestral": _one_per_step,
    "heun": _two_unless_final,
    "dpm2": _two_unless_final,
    "dpm2_ancestral": _two_unless_down_is_zero,
    "lms": _one_per_step,
    "dpmpp_2s_ancestral": _two_unless_down_is_zero,
    "dpmpp_sde": _two_unless_final,
    "dpmpp_2m": _one_per_step,
    "dpmpp_2m_sde": _one_per_step,
    "dpmpp_3m_sde": _one_per_step,
    "unipc": _one_per_step,
    "ipndm": _one_per_step,
    "deis": _one_per_step,
    "fitted": _one_per_step,
    "adaptive": _adaptive,
    "langevin": _langevin,
    "pc": _pc,
}


def _check_method(method: str) -> Sampler:
    try:
        return SAMPLERS[method]
    except KeyError:
        raise ValueError(f"unknown sampler {method!r}; valid: {', '.join(SAMPLERS)}") from None


def denoiser_evaluations(
    method: str, sigmas: torch.Tensor | Sequence[float] | int, **options: Any
) -> int:
    """Denoiser calls made by ``sample(denoiser, x, sigmas, method, **options)``.

    ``sigmas`` is the grid, or an int ``steps`` meaning ``steps + 1`` distinct sigmas ending in
    0 (e.g. ``karras_sigmas(steps, ...)``). A batched call counts once. Raises ValueError for
    ``adaptive`` on a grid it integrates (its count depends on the denoiser: use
    ``CountingDenoiser``).
    """
    _check_method(method)
    if isinstance(sigmas, int):
        if sigmas < 1:
            raise ValueError(f"steps must be >= 1, got {sigmas}")
        grid = [float(sigmas - i) for i in range(sigmas)] + [0.0]
    else:
        grid = as_grid(sigmas, keep_repeats=method == "langevin")
    return EVALUATIONS[method](grid, **options)


def steps_for_evaluations(method: str, budget: int, **options: Any) -> int:
    """The largest ``steps`` whose grid ending in 0 costs at most ``budget`` denoiser calls.

    Raises ValueError if even one step costs more than ``budget``.
    """
    if denoiser_evaluations(method, 1, **options) > budget:
        raise ValueError(
            f"sampler {method!r}: one step already costs "
            f"{denoiser_evaluations(method, 1, **options)} evaluations, more than {budget}"
        )
    steps = 1
    while denoiser_evaluations(method, steps + 1, **options) <= budget:
        steps += 1
    return steps


class CountingDenoiser:
    """Wraps a denoiser; counts its calls (``calls``) and the rows it saw (``rows``)."""

    def __init__(self, denoiser: Callable[..., torch.Tensor]) -> None:
        self.denoiser, self.calls, self.rows = denoiser, 0, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        return self.denoiser(x, sigma, cond)


def sample(
    denoiser: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    method: str,
    *,
    cond: Cond = None,
    generator: Generator = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> torch.Tensor:
    """Run the sampler ``method`` (a key of ``SAMPLERS``) from ``x`` (scaled for sigmas[0])."""
    fn = _check_method(method)
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
