"""Adaptive embedded Runge-Kutta on the probability-flow ODE in ``u = log(sigma)``.

``dx/du = x - D(x, e^u)`` has a Jacobian ``I - dD/dx`` with eigenvalues in [0, 1] (``dD/dx`` is
the posterior covariance over sigma^2), so it is non-stiff and smooth down to sigma -> 0: a good
variable for error-controlled steps. Each sample of the batch has its own step size (the
denoiser sees a per-row sigma), so results do not depend on what else is in the batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from polydiff.core.samplers._base import Callback, Model, as_grid, bind
from polydiff.core.utils import Cond, append_dims

__all__ = ["TABLEAUS", "adaptive"]

# name -> (c, a, b (higher order, propagated), b_low (embedded), order of the error estimate)
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


def adaptive(
    denoiser: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    tableau: str = "bosh3",
    rtol: float = 1e-3,
    atol: float = 1e-3,
    h_init: float = 0.25,
    safety: float = 0.9,
    max_steps: int = 10_000,
    info: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Embedded Runge-Kutta (Bogacki-Shampine 3(2) or Dormand-Prince 5(4)) with error control.

    Integrates from ``sigmas[0]`` to the last positive sigma (interior grid points are ignored),
    then denoises cleanly if the grid ends in 0. Per row the error ``RMS(err / (atol + rtol *
    max|x|))`` must be <= 1; step sizes (in log-sigma) adapt with the usual ``safety *
    err^(-1/(q+1))`` rule. The NFE (denoiser calls) and mean accepted / rejected steps per sample
    are written into ``info`` if given and passed to ``callback`` as ``"nfe"``.
    """
    if tableau not in TABLEAUS:
        raise ValueError(f"unknown adaptive tableau {tableau!r}; valid: {sorted(TABLEAUS)}")
    if rtol <= 0 and atol <= 0:
        raise ValueError("adaptive needs rtol > 0 or atol > 0")
    c, a, b, b_low, q = TABLEAUS[tableau]
    grid, model = as_grid(sigmas), bind(denoiser, x, cond)
    positive = [s for s in grid if s > 0]
    batch, nfe = x.shape[0], 0
    stats = {"nfe": 0, "accepted": 0.0, "rejected": 0.0}
    if len(positive) >= 2:
        u_end = math.log(positive[-1])
        u = torch.full((batch,), math.log(positive[0]), dtype=torch.float64, device=x.device)
        h = torch.full_like(u, -abs(h_init))
        accepted = torch.zeros_like(u)
        rejected = torch.zeros_like(u)

        def f(x: torch.Tensor, u: torch.Tensor, step: int) -> torch.Tensor:
            return x - model(x, u.exp(), step)

        k_first = f(x, u, 0)
        nfe = 1
        for step in range(max_steps):
            active = u > u_end
            if not active.any():
                break
            last = active & (h <= u_end - u)  # this step would reach (or pass) the end
            h = torch.where(last, u_end - u, torch.where(active, h, torch.zeros_like(h)))
            hx = append_dims(h, x.ndim).to(x.dtype)
            ks = [k_first]
            for j in range(1, len(c)):
                xj = x + hx * sum(aj * kj for aj, kj in zip(a[j], ks) if aj != 0)
                ks.append(f(xj, u + c[j] * h, step))
                nfe += 1
            x_new = x + hx * sum(bj * kj for bj, kj in zip(b, ks) if bj != 0)
            err = hx * sum((bj - lj) * kj for bj, lj, kj in zip(b, b_low, ks) if bj != lj)
            scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
            err_norm = (err / scale).double().pow(2).flatten(1).mean(1).sqrt()  # (B,)
            accept = active & (err_norm <= 1)
            keep = append_dims(accept, x.ndim)
            x = torch.where(keep, x_new, x)
            k_first = torch.where(keep, ks[-1], k_first)  # FSAL: last stage is f(x_new)
            reached = accept & last
            u = torch.where(reached, torch.full_like(u, u_end), torch.where(accept, u + h, u))
            accepted += accept.double()
            rejected += (active & ~accept).double()
            factor = safety * err_norm.clamp_min(1e-10) ** (-1.0 / (q + 1))
            h = h * factor.clamp(0.2, 5.0)
            if callback is not None:
                callback(
                    {
                        "x": x,
                        "i": step,
                        "sigma": u.exp(),
                        "sigma_hat": u.exp(),
                        "denoised": x - k_first,
                        "nfe": nfe,
                    }
                )
        else:
            raise RuntimeError(f"adaptive: no convergence within max_steps={max_steps}")
        stats.update(accepted=accepted.mean().item(), rejected=rejected.mean().item())
        if grid[-1] == 0:
            x = x - k_first  # clean denoise at the last positive sigma (already evaluated)
    elif len(positive) == 1 and grid[-1] == 0:
        x = model(x, positive[0], 0)
        nfe = 1
    stats["nfe"] = nfe
    if info is not None:
        info.update(stats)
    return x
