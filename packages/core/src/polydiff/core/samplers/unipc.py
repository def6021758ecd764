"""UniPC (Zhao et al. 2023, arXiv:2302.04867): unified predictor-corrector, data prediction.

In sigma space with ``lambda = -log(sigma)``, ``h = lambda_next - lambda`` the UniP-p predictor is
``x_next = (sigma_next / sigma) x - expm1(-h) D_0 - B(h) sum_k rho_k D1_k`` with divided
differences ``D1_k = (D_{-k} - D_0) / r_k`` of past denoiser outputs (Alg. 2 / eq. 8); UniC
corrects the state just reached with the denoiser output there (reused by the next predictor,
so the corrector costs no evaluation). ``B(h) = expm1(-h)`` (bh2) or ``-h`` (bh1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from polydiff.core.samplers._base import Callback, Generator, Model, as_grid, bind
from polydiff.core.samplers.karras import _report
from polydiff.core.utils import Cond

__all__ = ["unipc"]


def _coefficients(
    h: float, rks: list[float], variant: str
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """``(h phi_1(h), B(h), R, b)`` of the UniPC order conditions ``R rho = b`` (paper eq. 8)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    h_phi_k, factorial, rows, b = h_phi_1 / hh - 1.0, 1, [], []
    for k in range(1, len(rks) + 1):
        rows.append([rk ** (k - 1) for rk in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return h_phi_1, b_h, np.array(rows), np.array(b)


def _update(
    x: torch.Tensor,
    history: list[torch.Tensor],
    lam: list[float],
    i: int,
    order: int,
    variant: str,
    corrector_target: torch.Tensor | None = None,
) -> torch.Tensor:
    """UniP-``order`` step ``lam[i] -> lam[i+1]`` from ``x`` (D_0 = history[-1] at lam[i]);
    with ``corrector_target`` (D at lam[i+1]) the UniC-``order`` corrected state instead."""
    h = lam[i + 1] - lam[i]
    m0 = history[-1]
    rks = [(lam[i - k] - lam[i]) / h for k in range(1, order)] + [1.0]
    d1s = [(history[-(k + 1)] - m0) / rks[k - 1] for k in range(1, order)]
    h_phi_1, b_h, r_mat, b = _coefficients(h, rks, variant)
    x_next = x * math.exp(-h) - m0 * h_phi_1
    if corrector_target is None:
        if not d1s:
            return x_next
        rhos = [0.5] if order == 2 else np.linalg.solve(r_mat[:-1, :-1], b[:-1]).tolist()
        return x_next - sum(r * d for r, d in zip(rhos, d1s)) * b_h
    rhos = [0.5] if order == 1 else np.linalg.solve(r_mat, b).tolist()
    res = (corrector_target - m0) * rhos[-1]
    for r, d in zip(rhos[:-1], d1s):
        res = res + d * r
    return x_next - res * b_h


def unipc(
    denoiser: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    generator: Generator = None,
    callback: Callback | None = None,
    order: int = 2,
    variant: str = "bh2",
    lower_order_final: bool = True,
    disable_corrector: Iterable[int] = (),
) -> torch.Tensor:
    """UniPC multistep sampler (Zhao et al. 2023, UniP-p + UniC), order 1-3, bh1/bh2.

    Warm-up and ``lower_order_final`` use order ``min(order, i + 1, N - i)`` at step i as
    diffusers does; the final step to sigma 0 is a clean denoise.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"unipc order must be 1, 2 or 3, got {order}")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"unipc variant must be 'bh1' or 'bh2', got {variant!r}")
    skip = set(disable_corrector)
    grid, model = as_grid(sigmas), bind(denoiser, x, cond)
    n = len(grid) - 1
    lam = [-math.log(s) if s > 0 else math.inf for s in grid]
    history: list[torch.Tensor] = []  # denoiser outputs, newest last
    x_last, last_order = None, 0
    for i in range(n):
        denoised = model(x, grid[i], i)
        _report(callback, x, i, grid[i], grid[i], denoised)
        if x_last is not None and (i - 1) not in skip:  # UniC on the state just reached
            x = _update(x_last, history, lam, i - 1, last_order, variant, denoised)
        history = [*history[-(order - 1) :], denoised] if order > 1 else [denoised]
        this_order = min(order, i + 1, n - i if lower_order_final else order)
        x_last, last_order = x, this_order
        x = denoised if grid[i + 1] == 0 else _update(x, history, lam, i, this_order, variant)
    return x
