"""Inversion: map data back to noise so that sampling reproduces (and edits) it.

- :func:`ode_invert` / :func:`ode_reconstruct`: deterministic DDIM (Song et al. 2021, sec. 4.3;
  = Euler on the probability-flow ODE in sigma) or Heun (Karras et al. 2022, Alg. 1) sampling and
  its inversion. The inverse of each step starts from the explicit backward step (the classic
  "DDIM inversion", which evaluates D at the known point) and can be refined by fixed-point
  iterations that solve ``step(x_i) = x_{i+1}`` exactly (as in EDICT / ReNoise-style exact
  inversion; each iteration costs one step's evaluations).
- :func:`ddpm_invert` / :func:`ddpm_reconstruct`: edit-friendly DDPM inversion
  (Huberman-Spiegelglas et al. 2023, eq. 6-7): independent noisy copies
  ``x_i = x0 + sigma_i * eps_i`` and per-step noise maps ``z_i = (x_{i+1} - mu_i(x_i)) / c_i`` so
  that the stochastic sampler driven by the maps reconstructs x0 exactly; run with another
  condition or denoiser, the same maps carry the structure of x0 into the edit.
"""

from __future__ import annotations

import torch

from polydiff.core.samplers import sample
from polydiff.core.samplers._base import Generator, ancestral_step, as_grid, ddim_step, noise_like
from polydiff.core.utils import Cond, Denoiser, batch_sigma

__all__ = [
    "ddpm_invert",
    "ddpm_reconstruct",
    "ode_invert",
    "ode_reconstruct",
    "ode_step",
]

_METHODS = ("ddim", "heun")


def _check(sigmas: torch.Tensor, method: str) -> list[float]:
    if method not in _METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {_METHODS}")
    return as_grid(sigmas, strict=True)


def ode_step(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigma: float,
    sigma_next: float,
    *,
    cond: Cond = None,
    method: str = "ddim",
) -> torch.Tensor:
    """One deterministic step of the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma``.

    ``"ddim"``: DDIM = Euler in sigma, ``x' = D + sigma'/sigma (x - D)``. ``"heun"``: Karras et al.
    2022 Alg. 1 (Euler predictor, trapezoidal corrector; plain Euler for a step to sigma 0).
    """
    grid = torch.tensor([float(sigma), float(sigma_next)], dtype=torch.float64)
    _check(grid, method)
    return sample(denoiser, x, grid, method, cond=cond)


def ode_reconstruct(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    method: str = "ddim",
) -> torch.Tensor:
    """Deterministic DDIM / Heun sampling from ``x`` at ``sigmas[0]`` down the grid (the
    registered samplers of the same names)."""
    _check(sigmas, method)
    return sample(denoiser, x, sigmas, method, cond=cond)


def _explicit_inverse(
    denoiser: Denoiser,
    x_next: torch.Tensor,
    sigma: float,
    sigma_next: float,
    cond: Cond,
    method: str,
) -> torch.Tensor:
    """Backward ODE step from ``sigma_next`` up to ``sigma`` with D evaluated at the known point."""
    if sigma_next <= 0:  # no derivative at sigma 0: start from x0 itself
        return x_next
    denoised = denoiser(x_next, batch_sigma(sigma_next, x_next), cond)
    d1 = (x_next - denoised) / sigma_next
    x = x_next + (sigma - sigma_next) * d1  # = D + sigma / sigma_next (x_next - D)
    if method == "heun":
        d2 = (x - denoiser(x, batch_sigma(sigma, x), cond)) / sigma
        x = x_next + (sigma - sigma_next) * (d1 + d2) / 2
    return x


def ode_invert(
    denoiser: Denoiser,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    method: str = "ddim",
    fixed_point_iterations: int = 0,
) -> torch.Tensor:
    """Invert :func:`ode_reconstruct`: the noise at ``sigmas[0]`` that samples to ``x0``.

    ``sigmas`` is the sampling grid (decreasing, usually ending in 0); the inversion walks it
    backwards. Each step starts from the explicit backward step (classic DDIM inversion: D is
    evaluated at the known point, first-order accurate) and, with ``fixed_point_iterations > 0``,
    solves ``step(x_i) = x_{i+1}`` by Barzilai-Borwein fixed-point iterations (the step is the
    gradient of a strictly convex function, so the solution is unique). Measured on an 8-D
    mixture, 50 Karras steps: batch relative reconstruction error 0.15 without iterations,
    4e-10 with 10 (DDIM); Heun 1.6e-3 / 1e-4 / 5e-11 with 0 / 3 / 10.
    """
    sig = _check(sigmas, method)
    if fixed_point_iterations < 0:
        raise ValueError(f"fixed_point_iterations must be >= 0, got {fixed_point_iterations}")
    x = x0
    for i in range(len(sig) - 2, -1, -1):  # from (sig[i+1] -> sig[i]) back up the grid
        target = x
        x = _explicit_inverse(denoiser, target, sig[i], sig[i + 1], cond, method)
        if fixed_point_iterations:
            x = _solve_step(
                denoiser, x, target, sig[i], sig[i + 1], cond, method, fixed_point_iterations
            )
    return x


def _solve_step(
    denoiser: Denoiser,
    x: torch.Tensor,
    target: torch.Tensor,
    sigma: float,
    sigma_next: float,
    cond: Cond,
    method: str,
    iterations: int,
) -> torch.Tensor:
    """Solve ``step(x) = target`` per sample by fixed-point iterations with Barzilai-Borwein steps.

    ``x <- x - alpha (step(x) - target)`` with ``alpha = <dx, dr> / <dr, dr>`` from the last two
    iterates (Barzilai & Borwein 1988), starting at alpha = 1; near a boundary between modes the
    step expands space strongly and plain iteration would stall or diverge. The iterate with the
    smallest residual is returned. Costs ``iterations`` step evaluations.
    """
    b = x.shape[0]
    view = (b,) + (1,) * (x.ndim - 1)

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, -1)

    residual = ode_step(denoiser, x, sigma, sigma_next, cond=cond, method=method) - target
    best, best_norm = x, flat(residual).norm(dim=1)
    alpha = torch.ones(b, dtype=x.dtype, device=x.device)
    for _ in range(iterations - 1):
        x_new = x - alpha.reshape(view) * residual
        r_new = ode_step(denoiser, x_new, sigma, sigma_next, cond=cond, method=method) - target
        dx, dr = flat(x_new - x), flat(r_new - residual)
        denom = (dr * dr).sum(1)
        bb = (dx * dr).sum(1) / denom.clamp_min(torch.finfo(x.dtype).tiny)
        alpha = torch.where((denom > 0) & (bb > 0), bb, torch.ones_like(bb))
        x, residual = x_new, r_new
        n = flat(residual).norm(dim=1)
        better = n < best_norm
        best = torch.where(better.reshape(view), x, best)
        best_norm = torch.where(better, n, best_norm)
    return best


# ------------------------------------------------------------------------- edit-friendly DDPM


def _posterior_std(sigma: float, sigma_next: float, eta: float) -> float:
    return ancestral_step(sigma, sigma_next, eta)[1]


def ddpm_invert(
    denoiser: Denoiser,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    generator: Generator = None,
    eta: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2023, Alg. 1).

    Draws independent ``x_i = x0 + sigma_i * eps_i`` (``x_N = x0`` when the grid ends in 0) and
    returns ``(x_T, noise_maps)`` with ``x_T = x_0`` (at ``sigmas[0]``) and ``noise_maps`` of shape
    (N, *x0.shape): ``z_i = (x_{i+1} - mu_i) / c_i`` where ``mu_i, c_i`` are the mean and std of the
    DDIM-``eta`` step from ``x_i`` (the DDPM posterior for eta 1). A step with ``c_i = 0`` (the
    last one, to sigma 0) stores its residual unscaled. :func:`ddpm_reconstruct` inverts exactly.
    """
    sig = _check(sigmas, "ddim")
    levels = [x0 + s * noise_like(x0, generator) if s > 0 else x0 for s in sig]
    maps = []
    for i in range(len(sig) - 1):
        x = levels[i]
        denoised = denoiser(x, batch_sigma(sig[i], x), cond)
        mean = ddim_step(x, denoised, sig[i], sig[i + 1], eta=eta, noise=torch.zeros_like(x))
        c = _posterior_std(sig[i], sig[i + 1], eta)
        maps.append((levels[i + 1] - mean) / (c if c > 0 else 1.0))
    return levels[0], torch.stack(maps)


def ddpm_reconstruct(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    noise_maps: torch.Tensor,
    *,
    cond: Cond = None,
    eta: float = 1.0,
) -> torch.Tensor:
    """The DDPM (DDIM-``eta``) sampler driven by the noise maps of :func:`ddpm_invert`.

    With the inversion's denoiser and condition this returns x0 to float precision; with another
    condition (a new prompt / class) or denoiser it produces the edit.
    """
    sig = _check(sigmas, "ddim")
    if noise_maps.shape != (len(sig) - 1, *x.shape):
        raise ValueError(
            f"noise_maps must have shape ({len(sig) - 1}, *{tuple(x.shape)}), "
            f"got {tuple(noise_maps.shape)}"
        )
    for i in range(len(sig) - 1):
        denoised = denoiser(x, batch_sigma(sig[i], x), cond)
        mean = ddim_step(x, denoised, sig[i], sig[i + 1], eta=eta, noise=torch.zeros_like(x))
        c = _posterior_std(sig[i], sig[i + 1], eta)
        x = mean + (c if c > 0 else 1.0) * noise_maps[i]
    return x
