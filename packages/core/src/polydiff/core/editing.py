"""Editing samplers: inpainting / outpainting by replacement and RePaint, and SDEdit.

All work for tensors of any rank (image regions, video frames, trajectory start / goal states,
motion joints) with a mask of x's shape (or broadcastable to it): True / 1 = known, observed
values taken from ``known``; outpainting is the same call with the mask of the kept region.

- :func:`ddim_step` (the samplers' one copy, re-exported): one DDIM step in VE form (Song et al.
  2021, eq. 12), ``eta=1`` being the DDPM ancestral step (the exact Gaussian posterior
  ``q(x_s' | x_s, x0 = D)``).
- :func:`inpaint`: the known part is re-noised to the current sigma at every step and replaces
  that part of x (Song et al. 2021 sec. 5 "imputation"; Lugmayr et al. 2022 eq. 8), with optional
  RePaint resampling: after every ``jump_length`` steps, go back up ``jump_length`` noise levels
  by forward noising and denoise again, ``resample - 1`` times (Lugmayr et al. 2022, Alg. 1 and
  sec. 4.2). :func:`repaint` and :func:`repaint_schedule` are the named entry points.
- :func:`sdedit`: start from the input noised to a chosen sigma and denoise (Meng et al. 2022).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from polydiff.core.samplers import sample
from polydiff.core.samplers._base import Generator, as_grid, ddim_step, noise_like, randn
from polydiff.core.utils import Cond, Denoiser, batch_sigma

__all__ = ["ddim_step", "inpaint", "repaint", "repaint_schedule", "sdedit", "sdedit_sigmas"]

Callback = Callable[[dict], None]


# ------------------------------------------------------------------------------- inpainting


def repaint_schedule(num_steps: int, jump_length: int = 10, resample: int = 10) -> list[int]:
    """Indices into a sigma grid of ``num_steps + 1`` values visited by RePaint.

    Starts at 0 and ends at ``num_steps``; moving +1 is a denoising step, -1 a forward noising
    step. At every index ``i`` that is a positive multiple of ``jump_length`` (before the last),
    the walk goes back ``jump_length`` levels ``resample - 1`` times (Lugmayr et al. 2022).
    """
    if num_steps < 1 or jump_length < 1 or resample < 1:
        raise ValueError(
            f"need num_steps, jump_length, resample >= 1, got {num_steps}, {jump_length}, "
            f"{resample}"
        )
    path = [0]
    for i in range(1, num_steps + 1):
        path.append(i)
        if i % jump_length == 0 and i < num_steps:
            for _ in range(resample - 1):
                path.extend(range(i - 1, i - jump_length - 1, -1))  # noise back up
                path.extend(range(i - jump_length + 1, i + 1))  # and denoise again
    return path


def _as_mask(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    mask = torch.as_tensor(mask, device=x.device)
    try:
        torch.broadcast_shapes(mask.shape, x.shape)
    except RuntimeError as err:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to x of shape {tuple(x.shape)}"
        ) from err
    if mask.dtype == torch.bool:
        return mask.to(x.dtype)
    if mask.min() < 0 or mask.max() > 1:
        raise ValueError("a float mask must lie in [0, 1] (1 = known)")
    return mask.to(x.dtype)


def inpaint(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    known: torch.Tensor,
    mask: torch.Tensor,
    *,
    cond: Cond = None,
    generator: Generator = None,
    resample: int = 1,
    jump_length: int = 1,
    eta: float = 1.0,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Inpaint: sample x with ``x[mask] = known[mask]`` by replacement, optionally RePaint.

    ``x`` enters as ``noise * sigmas[0]``; after each step to sigma_next the known part is replaced
    by ``known + sigma_next * z`` (fresh z), so the unknown part is denoised in context. Steps are
    DDIM steps with ``eta`` (1 = DDPM ancestral, as RePaint). ``resample > 1`` adds RePaint's
    jumps back (:func:`repaint_schedule`). The result holds ``known`` exactly where mask is 1.
    Number of denoiser calls: ``len(repaint_schedule(...))``-ish, about ``resample * steps``.
    """
    sig = as_grid(sigmas, strict=True)
    m = _as_mask(mask, x)
    known = torch.as_tensor(known, dtype=x.dtype, device=x.device)
    if known.ndim == 0 or torch.broadcast_shapes(known.shape, x.shape) != x.shape:
        raise ValueError(f"known of shape {tuple(known.shape)} does not broadcast to {x.shape}")

    def replace(z: torch.Tensor, level: float) -> torch.Tensor:
        noisy_known = known + level * noise_like(x, generator) if level > 0 else known.expand_as(z)
        return m * noisy_known + (1 - m) * z

    path = repaint_schedule(len(sig) - 1, jump_length, resample)
    x = replace(x, sig[0])
    for step, (i, j) in enumerate(zip(path[:-1], path[1:])):
        if j == i + 1:  # denoise sigma_i -> sigma_j, then replace the known part
            denoised = denoiser(x, batch_sigma(sig[i], x), cond)
            z = noise_like(x, generator) if eta else None
            x = ddim_step(x, denoised, sig[i], sig[j], eta=eta, noise=z)
            x = replace(x, sig[j])
            if callback is not None:
                callback({"x": x, "i": i, "step": step, "sigma": sig[i], "denoised": denoised})
        else:  # forward noising sigma_i -> sigma_j (> sigma_i)
            x = x + max(sig[j] ** 2 - sig[i] ** 2, 0.0) ** 0.5 * noise_like(x, generator)
    return x


def repaint(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    known: torch.Tensor,
    mask: torch.Tensor,
    *,
    cond: Cond = None,
    generator: Generator = None,
    resample: int = 10,
    jump_length: int = 10,
    callback: Callback | None = None,
) -> torch.Tensor:
    """RePaint (Lugmayr et al. 2022): :func:`inpaint` with DDPM steps and resampling jumps."""
    return inpaint(
        denoiser,
        x,
        sigmas,
        known,
        mask,
        cond=cond,
        generator=generator,
        resample=resample,
        jump_length=jump_length,
        eta=1.0,
        callback=callback,
    )


# ------------------------------------------------------------------------------- SDEdit


def sdedit_sigmas(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """The tail of a sampling grid that SDEdit runs at ``strength`` in (0, 1].

    Keeps the last ``round(strength * n)`` steps of the n-step grid (strength 1 = the full grid),
    as img2img pipelines do.
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    n = sigmas.numel() - 1
    keep = max(1, round(strength * n))
    return sigmas[n - keep :]


def sdedit(
    denoiser: Denoiser,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    strength: float | None = None,
    cond: Cond = None,
    generator: Generator = None,
    eta: float = 1.0,
    sampler: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """SDEdit (Meng et al. 2022): noise the input to ``sigmas[0]`` and denoise it back.

    With ``strength``, the grid is first cut to its last ``strength`` fraction
    (:func:`sdedit_sigmas`). The loop is the registered ``ddim`` sampler with ``eta`` (1 = DDPM,
    the SDE of the paper), or
    ``sampler(denoiser, x, sigmas, cond=cond, generator=generator)`` if given (e.g. a
    ``functools.partial`` of ``polydiff.core.samplers.sample``).
    """
    if strength is not None:
        sigmas = sdedit_sigmas(sigmas, strength)
    x = x0 + float(sigmas[0]) * randn(x0.shape, generator, dtype=x0.dtype, device=x0.device)
    if sampler is not None:
        return sampler(denoiser, x, sigmas, cond=cond, generator=generator)
    return sample(denoiser, x, sigmas, "ddim", cond=cond, generator=generator, eta=eta)
