"""Generate images: a denoiser + sampler + sigma grid + classifier-free guidance + decoding.

:func:`generate` is the entry point for every image model (pixel or latent, class- or
text-conditional): it builds ``cond`` from class labels or prompts, wraps the denoiser in
:func:`polydiff.core.guidance.classifier_free_guidance` when ``guidance_scale != 1`` and solves
with :func:`polydiff.core.samplers.sample` (through ``polydiff.train.sampling.generate``, which
draws all the initial noise first so results do not depend on the batch size), then decodes
latents with the autoencoder. Nothing here is specific to one network.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from polydiff.core.guidance import classifier_free_guidance
from polydiff.core.samplers import denoiser_evaluations
from polydiff.core.schedules import karras_sigmas
from polydiff.core.utils import Denoiser
from polydiff.train.sampling import SamplerSpec
from polydiff.train.sampling import generate as generate_samples

from .io import save_image_grid

__all__ = ["build_cond", "generate", "generate_grid", "nfe"]


def nfe(method: str, steps: int) -> int:
    """Denoiser evaluations of ``steps`` steps of ``method`` (grid ending at 0), from the
    sampler registry (:func:`polydiff.core.samplers.denoiser_evaluations`)."""
    return denoiser_evaluations(method, steps)


def build_cond(
    n: int,
    classes: int | Sequence[int] | torch.Tensor | None = None,
    prompts: str | Sequence[str] | None = None,
    text_encoder: Any = None,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor] | None:
    """``{"class": (n,)}`` from labels or ``{"text", "text_mask", "text_pooled"}`` from prompts
    (a single class / prompt is repeated ``n`` times). None when neither is given."""
    if classes is not None and prompts is not None:
        raise ValueError("pass classes or prompts, not both")
    if classes is not None:
        y = torch.as_tensor(classes, dtype=torch.long).reshape(-1)
        if len(y) == 1:
            y = y.expand(n)
        if len(y) != n:
            raise ValueError(f"{len(y)} classes for n={n} images")
        return {"class": y.to(device)}
    if prompts is not None:
        if text_encoder is None:
            raise ValueError(
                "prompts need a text_encoder (e.g. polydiff.nn.text.MiniLMTextEncoder)"
            )
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if len(prompts) == 1:
            prompts = prompts * n
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for n={n} images")
        enc = text_encoder.encode(prompts)
        return {k: v.to(device) for k, v in enc.items()}
    return None


@torch.no_grad()
def generate(
    denoiser: Denoiser,
    n: int,
    shape: Sequence[int],
    *,
    sampler: str = "dpmpp_2m",
    steps: int = 20,
    guidance_scale: float = 1.0,
    guidance_rescale: float = 0.0,
    seed: int = 0,
    classes: int | Sequence[int] | torch.Tensor | None = None,
    prompts: str | Sequence[str] | None = None,
    text_encoder: Any = None,
    autoencoder: Any = None,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    sigmas: torch.Tensor | None = None,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    options: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Sample ``n`` images; returns ``(n, C, H, W)`` in [-1, 1] (decoded if ``autoencoder``).

    ``shape`` is the per-item shape the denoiser works in (latent shape for latent models).
    The sigma grid is Karras et al.'s (``steps`` values + 0) unless ``sigmas`` is given.
    ``guidance_scale`` 1 is the plain conditional model; > 1 is classifier-free guidance.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    cond = build_cond(n, classes, prompts=prompts, text_encoder=text_encoder, device=device)
    den = denoiser
    if cond is not None and (guidance_scale != 1.0 or guidance_rescale != 0.0):
        den = classifier_free_guidance(denoiser, guidance_scale, rescale=guidance_rescale)
    if sigmas is not None:
        grid = sigmas.detach().clone()

        def schedule(_n: int) -> torch.Tensor:
            return grid

    else:
        schedule = functools.partial(
            karras_sigmas, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho
        )
    spec = SamplerSpec(method=sampler, steps=steps, schedule=schedule, options=dict(options or {}))
    gen = torch.Generator().manual_seed(seed)
    x = generate_samples(
        den, tuple(shape), n, spec, cond=cond, generator=gen, batch_size=batch_size, device=device
    )
    if autoencoder is not None:
        x = torch.cat([autoencoder.to_image(x[i : i + 256]) for i in range(0, len(x), 256)])
    return x.clamp(-1, 1)


def generate_grid(
    path: str | Path,
    denoiser: Denoiser,
    shape: Sequence[int],
    *,
    classes: Sequence[int] | None = None,
    prompts: Sequence[str] | None = None,
    per_row: int = 8,
    scale: int = 4,
    **kwargs: Any,
) -> tuple[Path, torch.Tensor]:
    """One grid PNG: a row per class / prompt (``per_row`` samples each), or ``per_row**2``
    unconditional samples. Returns the path and the images."""
    if classes is not None:
        rows = len(classes)
        kwargs["classes"] = [c for c in classes for _ in range(per_row)]
    elif prompts is not None:
        rows = len(prompts)
        kwargs["prompts"] = [p for p in prompts for _ in range(per_row)]
    else:
        rows = per_row
    images = generate(denoiser, rows * per_row, shape, **kwargs)
    return save_image_grid(images, path, nrow=per_row, scale=scale), images
