"""Few-step multistep solvers of ``dx/dsigma = (x - D(x, sigma)) / sigma``: iPNDM and DEIS tAB.

Both keep the last ``order`` derivatives ``d_j = (x_j - D_j) / sigma_j`` (one denoiser call per
step) and warm up with lower orders; the final step into sigma 0 is a clean denoise.

- :func:`ipndm`: improved PNDM (Zhang & Chen 2023, DEIS paper sec. 5 / app. "iPNDM"): the
  fixed Adams-Bashforth weights of order 1-4 applied to the actual (variable) sigma steps. On a
  non-uniform grid the fixed weights are exact only for order <= 2, so its asymptotic order is
  ``min(order, 2)``; at 5-10 steps on Karras grids the higher orders are nonetheless the most
  accurate (the extrapolation error there is dominated by the leading terms).
- :func:`deis`: DEIS "tAB" (Zhang & Chen 2023, eq. 15): ``d`` is extrapolated by its Lagrange
  polynomial in the VP time ``t`` of the linear-beta schedule (not in sigma: that is LMS, DEIS
  "rhoAB"), and ``x_next = x + sum_j C_j d_j`` with ``C_j = int_sigma^sigma_next l_j(t(s)) ds``
  (Gauss-Legendre, exact to float64 for these smooth integrands). Order ``order`` on smooth
  grids (after the warm-up).
- :func:`fitted`: a linear multistep method with per-step weights (S4S, Frankel et al. 2025;
  LD3, Tong et al. 2024): the iPNDM update with its own weights on each step's derivative
  history, and a final step that combines the last denoiser outputs. The weights come from
  :func:`polydiff.core.schedules.optimize_solver` (fitted jointly with the grid); without them
  it is iPNDM exactly. Optional per-step ``sigma_scales`` decouple the noise level the denoiser
  is called at from the grid's (AMED-Solver, Zhou et al. 2024; time-shift sampler, Li et al.
  2024).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from polydiff.core.samplers._base import Callback, Generator, Model, as_grid, bind
from polydiff.core.samplers.karras import _report
from polydiff.core.schedules import LinearVPSchedule
from polydiff.core.utils import Cond

__all__ = [
    "IPNDM_COEFFICIENTS",
    "check_coefficients",
    "check_sigma_scales",
    "deis",
    "deis_coefficients",
    "fitted",
    "fitted_solve",
    "ipndm",
    "ipndm_coefficients",
]

# Adams-Bashforth weights on equal steps, newest derivative first (Hairer et al., III.1)
IPNDM_COEFFICIENTS: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}

_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(24)


def _check_order(name: str, order: int) -> None:
    if order not in (1, 2, 3, 4):
        raise ValueError(f"{name} order must be 1, 2, 3 or 4, got {order}")


def _adams(
    denoiser: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor | list[float],
    cond: Cond,
    callback: Callback | None,
    order: int,
    step: Callable[[list[torch.Tensor], int, float, float], torch.Tensor],
) -> torch.Tensor:
    """The loop iPNDM and DEIS share: one call per step, derivatives ``d = (x - D) / sigma``
    kept newest first (at most ``order``, so the warm-up uses lower orders), ``x += step(ds, i,
    sigma, sigma_next)``; a step into sigma 0 is a clean denoise."""
    grid, model = as_grid(sigmas), bind(denoiser, x, cond)
    ds: list[torch.Tensor] = []  # newest first
    for i in range(len(grid) - 1):
        s, s_next = grid[i], grid[i + 1]
        denoised = model(x, s, i)
        _report(callback, x, i, s, s, denoised)
        if s_next == 0:
            x = denoised
            continue
        ds = [(x - denoised) / s, *ds[: order - 1]]
        x = x + step(ds, i, s, s_next)
    return x


def ipndm(
    denoiser: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    generator: Generator = None,
    callback: Callback | None = None,
    order: int = 4,
) -> torch.Tensor:
    """iPNDM (Zhang & Chen 2023): fixed Adams-Bashforth weights of order <= 4, lower-order warm-up.

    ``x_next = x + (sigma_next - sigma) sum_j a_j d_{i-j}`` with ``a`` from
    ``IPNDM_COEFFICIENTS[min(order, i + 1)]``; a step into sigma 0 is a clean denoise.
    """
    _check_order("ipndm", order)

    def step(ds: list[torch.Tensor], i: int, s: float, s_next: float) -> torch.Tensor:
        weights = IPNDM_COEFFICIENTS[len(ds)]
        return sum(w * d for w, d in zip(weights, ds)) * (s_next - s)

    return _adams(denoiser, x, sigmas, cond, callback, order, step)


def deis_coefficients(
    sigma_nodes: list[float], s_from: float, s_to: float, time: LinearVPSchedule
) -> list[float]:
    """DEIS tAB weights ``C_j = int_{s_from}^{s_to} l_j(t(s)) ds`` for the derivatives at nodes.

    ``l_j`` is the Lagrange basis in the VP time ``t = time.sigma_to_t(sigma)`` on the nodes;
    integrated by 24-point Gauss-Legendre in sigma (the integrand is smooth for sigma > 0).
    """
    half = (s_to - s_from) / 2
    s_quad = torch.tensor(s_from + half * (_GAUSS_NODES + 1), dtype=torch.float64)
    t_quad = time.sigma_to_t(s_quad).numpy()
    t_nodes = time.sigma_to_t(torch.tensor(sigma_nodes, dtype=torch.float64)).tolist()
    weights = []
    for j, tj in enumerate(t_nodes):
        basis = np.ones_like(t_quad)
        for k, tk in enumerate(t_nodes):
            if k != j:
                basis = basis * (t_quad - tk) / (tj - tk)
        weights.append(float(half * np.dot(_GAUSS_WEIGHTS, basis)))
    return weights


def deis(
    denoiser: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    generator: Generator = None,
    callback: Callback | None = None,
    order: int = 3,
    beta_min: float = 0.1,
    beta_max: float = 20.0,
) -> torch.Tensor:
    """DEIS tAB (Zhang & Chen 2023, eq. 15): Adams-Bashforth in the linear-VP time, order <= 4.

    ``beta_min, beta_max`` define the time variable ``t(sigma)`` of the extrapolation (DEIS's
    defaults 0.1, 20); warm-up with lower orders; a step into sigma 0 is a clean denoise.
    """
    _check_order("deis", order)
    time = LinearVPSchedule(beta_min, beta_max, t_min=0.0)

    def step(ds: list[torch.Tensor], i: int, s: float, s_next: float) -> torch.Tensor:
        nodes = grid[i - len(ds) + 1 : i + 1][::-1]  # newest first
        return sum(c * d for c, d in zip(deis_coefficients(nodes, s, s_next, time), ds))

    grid = as_grid(sigmas)
    return _adams(denoiser, x, sigmas, cond, callback, order, step)


def ipndm_coefficients(steps: int, order: int = 3) -> list[list[float]]:
    """The per-step weights with which :func:`fitted` is iPNDM of ``order`` on a ``steps``-step
    grid ending in 0: warm-up rows ``IPNDM_COEFFICIENTS[min(order, i + 1)]``, and ``[1.0]`` for
    the final step (its clean denoise)."""
    _check_order("ipndm", order)
    rows = [list(IPNDM_COEFFICIENTS[min(order, i + 1)]) for i in range(steps - 1)]
    return [*rows, [1.0]]


def check_coefficients(coefficients: Sequence[Sequence[float]], steps: int) -> list[list[float]]:
    """``coefficients`` as lists of floats, checked against a ``steps``-step grid: one row per
    step, row ``i`` with 1 to ``i + 1`` finite weights. Raises ValueError naming the row."""
    rows = [list(row) for row in coefficients]
    if len(rows) != steps:
        raise ValueError(
            f"fitted: {len(rows)} coefficient rows for a grid of {steps} steps; fit a solver "
            f"for this step count (optimize_solver / polydiff schedule sampler=fitted)"
        )
    for i, row in enumerate(rows):
        if not 1 <= len(row) <= i + 1:
            raise ValueError(f"fitted: coefficients[{i}] must hold 1 to {i + 1} weights, got "
                             f"{len(row)}")  # fmt: skip
        if not all(isinstance(c, (int, float)) and math.isfinite(c) for c in row):
            raise ValueError(f"fitted: coefficients[{i}] must be finite numbers, got {row}")
    return [[float(c) for c in row] for row in rows]


def check_sigma_scales(sigma_scales: Sequence[float] | None, steps: int) -> list[float] | None:
    """``sigma_scales`` as a list of ``steps`` positive finite floats (or None). Raises
    ValueError."""
    if sigma_scales is None:
        return None
    scales = list(sigma_scales)
    if len(scales) != steps:
        raise ValueError(f"fitted: {len(scales)} sigma_scales for a grid of {steps} steps")
    if not all(isinstance(c, (int, float)) and math.isfinite(c) and c > 0 for c in scales):
        raise ValueError(f"fitted: sigma_scales must be positive finite numbers, got {scales}")
    return [float(c) for c in scales]


def fitted_solve(
    model: Callable[[torch.Tensor, Any, int], torch.Tensor],
    x: torch.Tensor,
    grid: Sequence[Any],
    coefficients: Sequence[Sequence[Any]],
    callback: Callback | None = None,
    sigma_scales: Sequence[Any] | None = None,
) -> torch.Tensor:
    """The linear multistep update of :func:`fitted`, on float sigmas or on 0-d tensors that
    carry gradients (the fit differentiates through it).

    A step into ``sigma_next > 0``: ``x += (sigma_next - sigma) sum_j c_ij d_{i-j}`` with
    ``d = (x - D) / sigma`` newest first (iPNDM's form); a step into 0: ``x = sum_j c_ij
    D_{i-j}``, a combination of the newest denoiser outputs (the clean denoise is ``[1]``).
    ``sigma_scales[i]`` (default 1): step ``i`` calls the denoiser at ``sigma_i *
    sigma_scales[i]`` (``d`` still divides by the grid's ``sigma_i``).
    """
    ds: list[torch.Tensor] = []  # derivatives, newest first
    dens: list[torch.Tensor] = []  # denoiser outputs, newest first
    for i, row in enumerate(coefficients):
        s, s_next = grid[i], grid[i + 1]
        s_eval = s if sigma_scales is None else s * sigma_scales[i]
        denoised = model(x, s_eval, i)
        _report(callback, x, i, s, s_eval, denoised)
        if bool(s_next == 0):
            dens = [denoised, *dens[: len(row) - 1]]
            x = sum(c * d for c, d in zip(row, dens))
            continue
        dens = [denoised, *dens[: len(coefficients) - 1]]
        ds = [(x - denoised) / s, *ds[: len(coefficients) - 1]]
        x = x + sum(c * d for c, d in zip(row, ds)) * (s_next - s)
    return x


def fitted(
    denoiser: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    generator: Generator = None,
    callback: Callback | None = None,
    coefficients: Sequence[Sequence[float]] | None = None,
    order: int = 3,
    sigma_scales: Sequence[float] | None = None,
) -> torch.Tensor:
    """Fitted linear multistep solver (S4S, Frankel et al. 2025; LD3, Tong et al. 2024).

    ``coefficients[i]`` weighs step ``i``'s derivative history (newest first) as iPNDM does,
    or, for a step into sigma 0, the newest denoiser outputs. ``None`` gives iPNDM of ``order``
    (:func:`ipndm_coefficients`): the same result as ``ipndm(..., order=order)``.
    ``sigma_scales`` (optional, one positive number per step): step ``i`` calls the denoiser at
    ``sigmas[i] * sigma_scales[i]`` instead of ``sigmas[i]`` (a learned evaluation noise level,
    as AMED-Solver / time-shift samplers). Fit them with the grid by
    :func:`polydiff.core.schedules.optimize_solver`.
    """
    grid, model = as_grid(sigmas), bind(denoiser, x, cond)
    steps = len(grid) - 1
    if coefficients is None:
        rows = ipndm_coefficients(steps, order)
        if grid[-1] > 0:  # no final denoise: the last row is a plain iPNDM step
            rows[-1] = list(IPNDM_COEFFICIENTS[min(order, steps)])
    else:
        rows = check_coefficients(coefficients, steps)
    scales = check_sigma_scales(sigma_scales, steps)
    return fitted_solve(model, x, grid, rows, callback, scales)
