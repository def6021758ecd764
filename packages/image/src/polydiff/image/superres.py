"""Cascaded super-resolution (Ho et al. 2021, "Cascaded Diffusion Models"; SR3, Saharia et al.).

A base model samples at low resolution (e.g. 16x16); a super-resolution model samples at high
resolution (e.g. 32x32) conditioned on the low-resolution image, upsampled and concatenated to
its input channels (``cond["concat"]``, :class:`polydiff.nn.unet.UNet` ``concat_channels``).

*Conditioning augmentation* (Ho et al. 2021, sec. 4.2): during training the upsampled
conditioning image is corrupted with Gaussian noise of a random level ``s ~ U[0, s_max]``, and the
level is given to the model as a global vector ``cond["lowres_noise"]`` (B, 1) through the UNet's
FiLM vector embedding (``cond_dim=1, vector_key="lowres_noise"``). At sampling time a fixed small
level is used, which makes the cascade robust to the base model's artefacts.

- :func:`downsample` / :func:`upsample`: the degradation (area averaging) and the conditioning
  upsampler (bilinear). ``downsample(upsample(low)) != low`` in general, hence
  :func:`lowres_consistency` measures it.
- :func:`sr_unet`: the SR network factory. :func:`sr_condition`: the SR model's condition dict
  from a low-resolution batch. :class:`SuperResolutionLoss`: the training loss (a callable for
  ``polydiff.train.Trainer``) with conditioning augmentation.
- :func:`super_resolve` and :func:`cascade_sample`: sampling with ``polydiff.core.samplers``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from polydiff.core.samplers import sample
from polydiff.core.utils import Cond, Denoiser
from polydiff.nn.unet import UNET_SIZES, UNet

__all__ = [
    "LOWRES_KEY",
    "NOISE_KEY",
    "SuperResolutionLoss",
    "cascade_sample",
    "downsample",
    "lowres_consistency",
    "sr_condition",
    "sr_unet",
    "super_resolve",
    "upsample",
]

LOWRES_KEY = "lowres"  # dataset / loss input: the low-resolution image (B, C, h, w)
NOISE_KEY = "lowres_noise"  # the conditioning-augmentation level given to the model (B, 1)


def _check(x: torch.Tensor, name: str) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"{name} must be a float (B, C, H, W) tensor, got {tuple(x.shape)}")


def downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """Area-average ``images`` (B, C, H, W) down to ``size x size`` (the SR degradation)."""
    _check(images, "images")
    if images.shape[-1] % size or images.shape[-2] % size:
        raise ValueError(f"downsample: {tuple(images.shape[-2:])} is not a multiple of {size}")
    return F.interpolate(images, size=(size, size), mode="area")


def upsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear upsampling (B, C, h, w) -> (B, C, size, size): the SR model's concat input."""
    _check(images, "images")
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def sr_unet(channels: int, size: str = "tiny", **overrides: Any) -> UNet:
    """A U-Net for super-resolution: ``channels`` in/out, the upsampled low-res image
    concatenated (``concat_channels = channels``), and the augmentation level as a 1-d FiLM
    vector ``cond["lowres_noise"]``. ``size`` names :data:`polydiff.nn.unet.UNET_SIZES`."""
    if size not in UNET_SIZES:
        raise KeyError(f"unknown UNet size {size!r}; available: {sorted(UNET_SIZES)}")
    kwargs = {
        **UNET_SIZES[size],
        "in_channels": channels,
        "concat_channels": channels,
        "cond_dim": 1,
        "vector_key": NOISE_KEY,
        **overrides,
    }
    return UNet(**kwargs)


def sr_condition(
    lowres: torch.Tensor,
    size: int,
    aug_sigma: float | torch.Tensor = 0.0,
    *,
    generator: torch.Generator | None = None,
    extra: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The SR model's condition for a low-res batch: ``{"concat": up(low) + s * eps,
    "lowres_noise": s}`` with ``s = aug_sigma`` (a float or a (B,) tensor), plus ``extra`` keys
    (e.g. a class label)."""
    _check(lowres, "lowres")
    b = lowres.shape[0]
    up = upsample(lowres, size)
    s = torch.as_tensor(aug_sigma, dtype=up.dtype, device=up.device)
    s = s.expand(b) if s.ndim == 0 else s
    if s.shape != (b,) or (s < 0).any():
        raise ValueError(f"aug_sigma must be >= 0, a float or shape ({b},), got {tuple(s.shape)}")
    if bool((s > 0).any()):
        g_dev = generator.device if generator is not None else up.device
        eps = torch.randn(up.shape, generator=generator, device=g_dev, dtype=up.dtype)
        up = up + s[:, None, None, None] * eps.to(up.device)
    return {**(extra or {}), "concat": up, NOISE_KEY: s[:, None]}


class SuperResolutionLoss:
    """Training loss of the SR model with conditioning augmentation (Ho et al. 2021, sec. 4.2).

    ``loss(net, x, cond, generator=)``: ``x`` is the high-res batch; the low-res input is
    ``cond["lowres"]`` if present, else ``downsample(x, lowres_size)``. The augmentation level is
    drawn ``s ~ U[0, max_aug_sigma]`` per row (``s = 0`` with probability ``p_clean``), and the
    inner objective's loss runs on ``sr_condition(...)``. Usable as ``polydiff.train.Trainer``'s
    objective; ``.denoiser(net)`` and ``.schedule`` come from the inner objective.
    """

    def __init__(
        self,
        objective: Any,
        lowres_size: int,
        max_aug_sigma: float = 0.5,
        p_clean: float = 0.1,
    ) -> None:
        if max_aug_sigma < 0 or not 0 <= p_clean <= 1:
            raise ValueError(
                f"need max_aug_sigma >= 0, p_clean in [0, 1]: {max_aug_sigma, p_clean}"
            )
        self.objective, self.lowres_size = objective, lowres_size
        self.max_aug_sigma, self.p_clean = float(max_aug_sigma), float(p_clean)
        self.schedule = getattr(objective, "schedule", None)

    def denoiser(self, net: nn.Module) -> Denoiser:
        return self.objective.denoiser(net)

    def __call__(
        self,
        net: nn.Module,
        x: torch.Tensor,
        cond: Cond = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        _check(x, "x")
        cond = dict(cond or {})
        low = cond.pop(LOWRES_KEY, None)
        if low is None:
            low = downsample(x, self.lowres_size)
        b = x.shape[0]
        g_dev = generator.device if generator is not None else x.device
        u = torch.rand(b, generator=generator, device=g_dev).to(x.device)
        clean = torch.rand(b, generator=generator, device=g_dev).to(x.device) < self.p_clean
        s = torch.where(clean, torch.zeros_like(u), u * self.max_aug_sigma).to(x.dtype)
        sr_cond = sr_condition(low, x.shape[-1], s, generator=generator, extra=cond)
        return self.objective.loss(net, x, sr_cond, generator=generator)

    loss = __call__


@torch.no_grad()
def super_resolve(
    denoiser: Denoiser,
    lowres: torch.Tensor,
    size: int,
    sigmas: torch.Tensor,
    *,
    method: str = "heun",
    aug_sigma: float = 0.0,
    cond: Mapping[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    **sampler_options: Any,
) -> torch.Tensor:
    """Sample high-res images (B, C, size, size) given ``lowres`` (B, C, h, w).

    The conditioning image is augmented at the fixed level ``aug_sigma`` (Ho et al. 2021 use a
    small non-zero level for generated low-res inputs); ``cond`` adds e.g. a class label.
    """
    _check(lowres, "lowres")
    sr_cond = sr_condition(lowres, size, aug_sigma, generator=generator, extra=cond)
    b, c = lowres.shape[:2]
    g_dev = generator.device if generator is not None else lowres.device
    noise = torch.randn((b, c, size, size), generator=generator, device=g_dev).to(lowres)
    sigmas = sigmas.to(lowres.device)
    return sample(
        denoiser, noise * sigmas[0], sigmas, method, cond=sr_cond, generator=generator,
        **sampler_options,
    )  # fmt: skip


@torch.no_grad()
def cascade_sample(
    base_denoiser: Denoiser,
    sr_denoiser: Denoiser,
    n: int,
    base_shape: tuple[int, int, int],
    size: int,
    base_sigmas: torch.Tensor,
    sr_sigmas: torch.Tensor,
    *,
    method: str = "heun",
    aug_sigma: float = 0.1,
    cond: Mapping[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-stage cascade: ``n`` base samples of ``base_shape`` (C, h, w), then super-resolution
    to ``size``. Returns ``(highres (n, C, size, size), lowres (n, C, h, w))``; ``cond`` goes to
    both stages."""
    g_dev = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn((n, *base_shape), generator=generator, device=g_dev)
    low = sample(base_denoiser, noise * base_sigmas[0], base_sigmas, method, cond=cond,
                 generator=generator)  # fmt: skip
    low = low.clamp(-1, 1)
    high = super_resolve(
        sr_denoiser, low, size, sr_sigmas, method=method, aug_sigma=aug_sigma, cond=cond,
        generator=generator,
    )  # fmt: skip
    return high, low


def lowres_consistency(highres: torch.Tensor, lowres: torch.Tensor) -> dict[str, float]:
    """How well ``downsample(highres)`` matches the low-res input: mean and max absolute error
    and PSNR (in [-1, 1] units, peak-to-peak 2)."""
    down = downsample(highres.float(), lowres.shape[-1])
    err = (down - lowres.float()).abs()
    mse = float((err**2).mean())
    psnr = 10 * torch.log10(torch.tensor(4.0 / max(mse, 1e-12))).item()
    return {"mae": float(err.mean()), "max_abs": float(err.max()), "psnr": psnr}
