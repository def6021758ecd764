"""Adaptive embedded solvers of the probability-flow ODE in ``lambda = -log(sigma)``.

Default: the exponential-integrator pair DPM-Solver++ 3(2) (Lu et al. 2022; the data-prediction
version of k-diffusion's ``dpm_adaptive`` with r1 = 1/3, r2 = 2/3): ``x_next = (sigma_next /
sigma) x + sigma_next int e^lambda D dlambda`` treats the linear part exactly, the embedded
DPM-Solver++(2S) estimate gives the error. Alternatives: classic embedded Runge-Kutta on
``dx/dlambda = D - x`` (Bogacki-Shampine 3(2), Dormand-Prince 5(4), FSAL), which is non-stiff
(the Jacobian ``dD/dx - I`` has eigenvalues in [-1, 0]).

Each sample of the batch has its own step size (the denoiser sees a per-row sigma), so results do
not depend on what else is in the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from polydiff.core.samplers._base import Callback, Generator, Model, as_grid, bind
from polydiff.core.utils import Cond, append_dims

__all__ = ["TABLEAUS", "adaptive"]

# name -> (c, a, b (propagated), b_low (embedded), order of the embedded estimate)
TABLEAUS: dict[str, tuple[list[float], list[list[float]], list[float], list[float], int]] = {
    # Bogacki & Shampine (1989), 3(2), FSAL
    "bosh3": (
        [0.0, 1 / 2, 3 / 4, 1.0],
        [[], [1 / 2], [0.0, 3 / 4], [2 / 9, 1 / 3, 4 / 9]],
        [2 / 9, 1 / 3, 4 / 9, 0.0],
        [7 / 24, 1 / 4, 1 / 3, 1 / 8],
        2,
    ),
    # Dormand & Prince (1980), 5(4), FSAL
    "dopri5": (
        [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0],
        [
            [],
            [1 / 5],
            [3 / 40, 9 / 40],
            [44 / 45, -56 / 15, 32 / 9],
            [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
            [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
            [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
        ],
        [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0],
        [5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40],
        4,
    ),
}
SOLVERS = ("dpmpp32", *TABLEAUS)

Eval = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, lambda (B,)) -> D


def _phi2(h: torch.Tensor) -> torch.Tensor:
    """``expm1(-h) / h + 1`` (~ h / 2), per row."""
    return torch.expm1(-h) / h + 1


def _dpmpp32_step(
    evaluate: Eval, x: torch.Tensor, d0: torch.Tensor, lam: torch.Tensor, h: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, None]:
    """DPM-Solver++(3S) (r1 = 1/3, r2 = 2/3) and the embedded (2S) error; h > 0 per row."""
    r1, r2 = 1 / 3, 2 / 3
    hx = h.clamp_min(1e-12)  # done rows have h = 0: keep the coefficients finite

    def coef(t: torch.Tensor) -> torch.Tensor:
        return append_dims(t, x.ndim).to(x.dtype)

    u1 = coef(torch.exp(-r1 * hx)) * x - coef(torch.expm1(-r1 * hx)) * d0
    d1 = evaluate(u1, lam + r1 * h)
    u2 = (
        coef(torch.exp(-r2 * hx)) * x
        - coef(torch.expm1(-r2 * hx)) * d0
        + coef(r2 / r1 * _phi2(r2 * hx)) * (d1 - d0)
    )
    d2 = evaluate(u2, lam + r2 * h)
    base = coef(torch.exp(-hx)) * x - coef(torch.expm1(-hx)) * d0
    high = base + coef(_phi2(hx) / r2) * (d2 - d0)
    low = base - coef(torch.expm1(-hx) / (2 * r1)) * (d1 - d0)
    return high, high - low, None


def _rk_step(
    tableau: str,
) -> Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    c, a, b, b_low, _ = TABLEAUS[tableau]

    def step(
        evaluate: Eval, x: torch.Tensor, d0: torch.Tensor, lam: torch.Tensor, h: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hx = append_dims(h, x.ndim).to(x.dtype)
        ks = [d0 - x]  # dx/dlambda = D - x
        last_d = d0
        for j in range(1, len(c)):
            xj = x + hx * sum(aj * kj for aj, kj in zip(a[j], ks) if aj != 0)
            last_d = evaluate(xj, lam + c[j] * h)
            ks.append(last_d - xj)
        high = x + hx * sum(bj * kj for bj, kj in zip(b, ks) if bj != 0)
        err = hx * sum((bj - lj) * kj for bj, lj, kj in zip(b, b_low, ks) if bj != lj)
        return high, err, last_d  # FSAL: the last stage is evaluated at (high, lam + h)

    return step


def adaptive(
    denoiser: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    generator: Generator = None,
    callback: Callback | None = None,
    solver: str = "dpmpp32",
    rtol: float = 0.01,
    atol: float = 0.01,
    h_init: float = 0.1,
    safety: float = 0.9,
    max_steps: int = 10_000,
    per_sample: bool = True,
    info: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Adaptive embedded solver (DPM-Solver++ 3(2), Bogacki-Shampine 3(2) or Dormand-Prince 5(4)).

    Integrates from ``sigmas[0]`` to the last positive sigma (interior grid points are ignored),
    then denoises cleanly if the grid ends in 0. Per row the error ``RMS(err / (atol + rtol *
    max|x|))`` must be <= 1; steps (in log-sigma) adapt by ``safety * err^(-1/(q+1))``. With
    ``per_sample=False`` the RMS runs over the whole batch and all rows share one step size (as
    k-diffusion's ``dpm_adaptive``): fewer denoiser calls for large batches, but a row's result
    then depends on the rest of the batch. The NFE
    (denoiser calls) and the mean accepted / rejected steps per sample are written into ``info``
    if given and passed to ``callback`` as ``"nfe"``.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown adaptive solver {solver!r}; valid: {list(SOLVERS)}")
    if rtol <= 0 and atol <= 0:
        raise ValueError("adaptive needs rtol > 0 or atol > 0")
    step_fn = _dpmpp32_step if solver == "dpmpp32" else _rk_step(solver)
    q = 2 if solver == "dpmpp32" else TABLEAUS[solver][4]
    grid, model = as_grid(sigmas), bind(denoiser, x, cond)
    positive = [s for s in grid if s > 0]
    batch, device = x.shape[0], x.device
    stats: dict[str, Any] = {"nfe": 0, "accepted": 0.0, "rejected": 0.0}
    calls = 0

    def evaluate(xs: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return model(xs, torch.exp(-lam), calls - 1)

    if len(positive) >= 2:
        lam_end = -math.log(positive[-1])
        lam = torch.full((batch,), -math.log(positive[0]), dtype=torch.float64, device=device)
        h = torch.full_like(lam, abs(h_init))
        accepted, rejected = torch.zeros_like(lam), torch.zeros_like(lam)
        d0 = evaluate(x, lam)  # D at the current x of every row
        for it in range(max_steps):
            active = lam < lam_end
            if not active.any():
                break
            last = active & (h >= lam_end - lam)  # this step reaches the end
            h = torch.where(last, lam_end - lam, torch.where(active, h, torch.zeros_like(h)))
            x_new, err, d_fsal = step_fn(evaluate, x, d0, lam, h)
            scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
            err_norm = (err / scale).double().pow(2).flatten(1).mean(1).sqrt()  # (B,)
            if not per_sample:  # one error (RMS over the batch) and one step for all rows
                err_norm = err_norm.pow(2).mean().sqrt().expand(batch)
            accept = active & (err_norm <= 1)
            keep = append_dims(accept, x.ndim)
            x = torch.where(keep, x_new, x)
            lam = torch.where(
                accept & last, torch.full_like(lam, lam_end), torch.where(accept, lam + h, lam)
            )
            accepted += accept.double()
            rejected += (active & ~accept).double()
            h = h * (safety * err_norm.clamp_min(1e-10) ** (-1.0 / (q + 1))).clamp(0.2, 5.0)
            if accept.any():  # D at the new states: free with FSAL, else one batched call
                d0 = torch.where(keep, d_fsal if d_fsal is not None else evaluate(x, lam), d0)
            if callback is not None:
                sigma = torch.exp(-lam)
                callback({"x": x, "i": it, "sigma": sigma, "sigma_hat": sigma, "denoised": d0,
                          "nfe": calls})  # fmt: skip
        else:
            raise RuntimeError(f"adaptive: no convergence within max_steps={max_steps}")
        stats.update(accepted=accepted.mean().item(), rejected=rejected.mean().item())
        if grid[-1] == 0:
            x = d0  # clean denoise at the last positive sigma (already evaluated)
    elif len(positive) == 1 and grid[-1] == 0:
        x = evaluate(x, torch.full((batch,), -math.log(positive[0]), dtype=torch.float64))
    stats["nfe"] = calls
    if info is not None:
        info.update(stats)
    return x
