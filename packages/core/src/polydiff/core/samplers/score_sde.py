"""Score-based samplers: annealed Langevin dynamics (NCSN) and predictor-corrector (score SDE).

Both use the score ``grad log p(x; sigma) = (D(x, sigma) - x) / sigma^2`` (Tweedie).
"""

from __future__ import annotations

import math

import torch

from polydiff.core.samplers._base import (
    Callback,
    Generator,
    Model,
    add_noise,
    as_grid,
    bind,
    noise_like,
)
from polydiff.core.samplers.karras import _report
from polydiff.core.utils import Cond, append_dims

__all__ = ["langevin", "pc"]


def langevin(
    denoiser: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    generator: Generator = None,
    callback: Callback | None = None,
    n_steps_each: int = 2,
    step_size: float = 1.0,
) -> torch.Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1) over the positive grid levels.

    At each level ``alpha = step_size * sigma^2`` (NCSN's ``eps * sigma_i^2 / sigma_L^2`` with
    ``step_size = eps / sigma_L^2``, scale free), ``n_steps_each`` updates
    ``x += alpha / 2 * score + sqrt(alpha) * z``. A grid ending in 0 ends with the denoising
    jump ``x = D(x, sigma_L)`` (Jolicoeur-Martineau et al. 2021). Repeated levels are kept.
    """
    if n_steps_each < 1 or step_size <= 0:
        raise ValueError("langevin needs n_steps_each >= 1 and step_size > 0")
    grid, model = as_grid(sigmas, keep_repeats=True), bind(denoiser, x, cond)
    levels = [s for s in grid if s > 0]
    step = 0
    denoised = None
    for s in levels:
        alpha = step_size * s**2
        for _ in range(n_steps_each):
            denoised = model(x, s, step)
            _report(callback, x, step, s, s, denoised)
            x = add_noise(x + (denoised - x) * (alpha / (2 * s**2)), math.sqrt(alpha), generator)
            step += 1
    if grid[-1] == 0 and levels:
        x = model(x, levels[-1], step)
    return x


def pc(
    denoiser: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    generator: Generator = None,
    callback: Callback | None = None,
    snr: float = 0.16,
    n_corrector: int = 1,
    step_norm: str = "batch",
) -> torch.Tensor:
    """Predictor-corrector sampling of the VE SDE (Song et al. 2021, Alg. 2-4).

    Per step: ``n_corrector`` Langevin corrector updates at sigma with step
    ``eps = 2 (snr * |z| / |score|)^2`` (``step_norm="batch"``: norms averaged over the batch as
    in the reference code, since per-sample ratios are heavy-tailed in low dimension, but then a
    row depends on the rest of the batch; ``"sample"``: per-row norms, batch independent), then
    the reverse-diffusion predictor
    ``x += (sigma^2 - sigma_next^2) score + sqrt(sigma^2 - sigma_next^2) z`` (noise-free into
    sigma 0: a clean denoise).
    """
    if n_corrector < 0 or snr < 0:
        raise ValueError("pc needs n_corrector >= 0 and snr >= 0")
    if step_norm not in ("batch", "sample"):
        raise ValueError(f"pc step_norm must be 'batch' or 'sample', got {step_norm!r}")
    grid, model = as_grid(sigmas), bind(denoiser, x, cond)
    step = 0
    for i in range(len(grid) - 1):
        s, s_next = grid[i], grid[i + 1]
        for _ in range(n_corrector if snr > 0 else 0):
            score = (model(x, s, step) - x) / s**2
            z = noise_like(x, generator)
            norm_z, norm_g = z.flatten(1).norm(dim=1), score.flatten(1).norm(dim=1)
            if step_norm == "batch":
                norm_z, norm_g = norm_z.mean().expand_as(norm_z), norm_g.mean().expand_as(norm_g)
            eps = append_dims(2 * (snr * norm_z / norm_g.clamp_min(1e-30)) ** 2, x.ndim)
            x = x + score * eps + z * torch.sqrt(2 * eps)
            step += 1
        denoised = model(x, s, step)
        _report(callback, x, i, s, s, denoised)
        var = s**2 - s_next**2
        x = add_noise(
            x + (denoised - x) * (var / s**2), math.sqrt(var) if s_next > 0 else 0.0, generator
        )
        step += 1
    return x
