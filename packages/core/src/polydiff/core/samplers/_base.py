"""Helpers shared by every sampler: grid validation, checked denoiser calls, noise, churn, ancestry.

Sigma bookkeeping is done in Python floats (float64); tensors keep the dtype of ``x``. All
randomness is drawn from the caller's ``generator``: ``None`` (torch's global generator), one
``torch.Generator`` for the whole batch, or a sequence of one generator per sample (EDM's
``StackedRandomGenerator``): row i's noise then comes from ``generator[i]`` alone, so sample i
drawn with seed s is the same whatever the batch size and whatever else is in the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from polydiff.core.utils import Cond, append_dims

Callback = Callable[[dict[str, Any]], None]
Model = Callable[..., torch.Tensor]
Generator = torch.Generator | Sequence[torch.Generator] | None

__all__ = [
    "Callback",
    "Generator",
    "Model",
    "add_noise",
    "ancestral_step",
    "as_grid",
    "bind",
    "brownian_pair",
    "churn",
    "ddim_step",
    "noise_like",
    "per_sample_generators",
    "randn",
]


def as_grid(
    sigmas: torch.Tensor | Sequence[float],
    *,
    keep_repeats: bool = False,
    strict: bool = False,
    name: str = "sigmas",
) -> list[float]:
    """Validate a sigma grid and return it as Python floats (float64): the one grid validator.

    Raises ValueError (naming ``name`` and the offending index) if the grid is not 1-D, has
    fewer than 2 values, is not finite, has a negative value, or increases anywhere; with
    ``strict`` also if two consecutive values are equal. Repeated consecutive values
    (zero-length steps) are dropped unless ``keep_repeats`` (annealed Langevin uses them as extra
    levels).
    """
    # a list of Python floats stays float64 (torch.as_tensor would round it to float32)
    if isinstance(sigmas, torch.Tensor):
        s = sigmas.detach()
    else:
        s = torch.tensor(sigmas, dtype=torch.float64)
    if s.ndim != 1:
        raise ValueError(f"{name} must be a 1-D tensor, got shape {tuple(s.shape)}")
    if s.numel() < 2:
        raise ValueError(f"{name} needs at least 2 values (start and end), got {s.numel()}")
    s = s.to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(s).all():
        raise ValueError(f"{name} must be finite, got {s.tolist()}")
    if (s < 0).any():
        i = int((s < 0).nonzero()[0])
        raise ValueError(f"{name} must be non-negative, got {name}[{i}] = {s[i].item():.6g}")
    up = (s[1:] >= s[:-1]) if strict else (s[1:] > s[:-1])
    if up.any():
        i = int(up.nonzero()[0])
        rule, sign = ("strictly decreasing", "<=") if strict else ("non-increasing", "<")
        raise ValueError(
            f"{name} must be {rule}, got "
            f"{name}[{i}] = {s[i].item():.6g} {sign} {name}[{i + 1}] = {s[i + 1].item():.6g}"
        )
    grid = s.tolist()
    if keep_repeats:
        return grid
    return [grid[0]] + [b for a, b in zip(grid[:-1], grid[1:]) if b != a]


def bind(denoiser: Model, x: torch.Tensor, cond: Cond) -> Callable[..., torch.Tensor]:
    """``model(x, sigma, step)``: the denoiser called with a (B,) sigma, its output checked.

    ``sigma`` is a float (broadcast over the batch) or a (B,) tensor. The sigma tensor handed to
    the denoiser is float32 (float64 for float64 ``x``); a non-finite output raises a
    FloatingPointError naming the step and sigma.
    """
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"x must have a non-empty batch dimension, got shape {tuple(x.shape)}")
    batch, device, dtype = x.shape[0], x.device, x.dtype
    sigma_dtype = torch.promote_types(dtype, torch.float32)

    def model(x: torch.Tensor, sigma: float | torch.Tensor, step: int) -> torch.Tensor:
        if isinstance(sigma, torch.Tensor):
            s = sigma.to(device=device, dtype=sigma_dtype)
        else:
            s = torch.full((batch,), sigma, dtype=sigma_dtype, device=device)
        out = denoiser(x, s, cond)
        if out.shape != x.shape:
            raise ValueError(
                f"denoiser returned shape {tuple(out.shape)} for input {tuple(x.shape)} "
                f"at step {step}"
            )
        if not torch.isfinite(out).all():
            if isinstance(sigma, torch.Tensor):  # per-row sigmas: name their range
                where = f"{sigma.min().item():.6g}..{sigma.max().item():.6g}"
            else:
                where = f"{sigma:.6g}"
            raise FloatingPointError(
                f"denoiser returned non-finite values at step {step} (sigma={where})"
            )
        return out if out.dtype == dtype else out.to(dtype)

    return model


def per_sample_generators(
    seeds: Sequence[int] | torch.Tensor, device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """One ``torch.Generator`` per sample, seeded with ``seeds[i]`` (pass as ``generator=``)."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def randn(
    shape: Sequence[int],
    generator: Generator,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Standard normal ``shape`` from one generator, or row i from ``generator[i]`` for a list.

    Raises ValueError when a list's length differs from ``shape[0]``.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(
            f"got {len(gens)} per-sample generators for a batch of {shape[0]}; pass one per row"
        )
    rows = [torch.randn(tuple(shape[1:]), generator=g, dtype=dtype, device=device) for g in gens]
    return torch.stack(rows)


def noise_like(x: torch.Tensor, generator: Generator) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, drawn from ``generator`` (see ``randn``)."""
    return randn(x.shape, generator, dtype=x.dtype, device=x.device)


def add_noise(x: torch.Tensor, std: float, generator: Generator) -> torch.Tensor:
    """``x + std * z`` with ``z ~ N(0, I)`` from ``generator``; no draw when ``std == 0``."""
    return x + noise_like(x, generator) * std if std > 0 else x


def churn(
    x: torch.Tensor,
    sigma: float,
    num_steps: int,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
    generator: Generator,
) -> tuple[torch.Tensor, float]:
    """EDM stochastic churn (Karras et al. 2022, Alg. 2 lines 4-6): raise sigma to sigma_hat.

    ``gamma = min(S_churn / N, sqrt(2) - 1)`` inside ``[S_tmin, S_tmax]``;
    ``x_hat = x + sqrt(sigma_hat^2 - sigma^2) * S_noise * z``. Returns ``(x_hat, sigma_hat)``.
    """
    if s_churn <= 0 or not s_tmin <= sigma <= s_tmax:
        return x, sigma
    gamma = min(s_churn / num_steps, math.sqrt(2.0) - 1.0)
    sigma_hat = sigma * (1.0 + gamma)
    return add_noise(x, s_noise * math.sqrt(sigma_hat**2 - sigma**2), generator), sigma_hat


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split the step ``sigma_from -> sigma_to`` into a deterministic part and fresh noise.

    ``sigma_up = min(sigma_to, eta * sigma_to * sqrt(sigma_from^2 - sigma_to^2) / sigma_from)``
    (for eta=1 the std of the DDPM posterior q(x_to | x_from, x0) in VE form, i.e. DDIM's
    sigma_t of Song et al. 2021 eq. 16 divided by sqrt(alpha_bar)), and
    ``sigma_down = sqrt(sigma_to^2 - sigma_up^2)``. Returns ``(sigma_down, sigma_up)``.
    """
    if eta <= 0 or sigma_to <= 0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * sigma_to * math.sqrt(sigma_from**2 - sigma_to**2) / sigma_from)
    return math.sqrt(max(sigma_to**2 - sigma_up**2, 0.0)), sigma_up


def ddim_step(
    x: torch.Tensor,
    denoised: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    *,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM step ``sigma -> sigma_next`` in VE form (Song et al. 2021, eq. 12): the one copy.

    ``x' = D + (sigma_down / sigma) (x - D) + sigma_up z`` with ``(sigma_down, sigma_up) =
    ancestral_step(sigma, sigma_next, eta)``: eta 0 is the deterministic DDIM / Euler step of the
    probability-flow ODE, eta 1 the DDPM ancestral step. ``noise`` (``z``) is required when
    ``sigma_up > 0``. ``sigma``, ``sigma_next`` may be (B,) tensors (per-row steps, eta 0 only).
    A step into sigma 0 returns ``D``.
    """
    if isinstance(sigma, torch.Tensor) or isinstance(sigma_next, torch.Tensor):
        if eta != 0:
            raise ValueError("ddim_step with per-row (tensor) sigmas supports eta=0 only")
        ratio = torch.as_tensor(sigma_next, dtype=torch.float64) / torch.as_tensor(
            sigma, dtype=torch.float64
        )
        return torch.lerp(denoised, x, append_dims(ratio.to(x.device, x.dtype), x.ndim))
    sigma, sigma_next = float(sigma), float(sigma_next)
    if sigma <= 0:
        raise ValueError(f"ddim_step needs sigma > 0, got {sigma}")
    if sigma_next <= 0:
        return denoised
    sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
    out = torch.lerp(denoised, x, sigma_down / sigma)
    if sigma_up > 0:
        if noise is None:
            raise ValueError(f"ddim_step with eta={eta} > 0 needs noise")
        out = out + noise * sigma_up
    return out


def brownian_pair(
    x: torch.Tensor,
    t0: float,
    t_mid: float,
    t1: float,
    generator: Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised Brownian increments over ``[t0, t_mid]`` and ``[t0, t1]`` of one path.

    Draws ``W(t_mid) - W(t0)`` then ``W(t1) - W(t_mid)`` independently from ``generator`` and
    returns both increments from ``t0`` divided by the square root of their interval, so each
    is N(0, I) and their correlation is ``sqrt(|t_mid - t0| / |t1 - t0|)``, exactly as the
    BrownianTree that k-diffusion queries (it differs only in that the path is not shared
    between different grids for the same seed).
    """
    z1 = noise_like(x, generator)
    z2 = noise_like(x, generator)
    a, b = abs(t_mid - t0), abs(t1 - t_mid)
    return z1, (z1 * math.sqrt(a) + z2 * math.sqrt(b)) / math.sqrt(a + b)
