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
- :func:`super_resolve` and :func:`cascade_sample`: sampling with ``polydiff.core.samplers``;
  ``consistency=True`` wraps the denoiser with :func:`lowres_projection` (null-space data
  consistency, DDNM, Wang et al. 2023; ILVR, Choi et al. 2021, in its x0 form): at every step the
  low-frequency component ``A x0_hat`` of the prediction is replaced by the input's, so that the
  output downsamples back to the low-res input exactly (up to the final clamp).
- Training on aligned random crops (``SuperResolutionLoss(crop=...)``; SR3 / Imagen train their
  fully convolutional SR models on crops) makes a step ``(H / crop)^2`` times cheaper.
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
    "consistent_denoiser",
    "downsample",
    "lowres_consistency",
    "lowres_projection",
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


def lowres_projection(x0: torch.Tensor, lowres: torch.Tensor) -> torch.Tensor:
    """Project ``x0`` (B, C, H, W) onto ``{x : downsample(x) = lowres}`` (B, C, h, w).

    With ``A`` = area averaging by ``f = H / h`` its pseudo-inverse is nearest-neighbour
    replication ``A^+`` (``A A^+ = I``), so ``x0 - A^+(A x0 - y) = A^+ y + (I - A^+ A) x0`` keeps
    the null-space (high-frequency) content of ``x0`` and takes the range-space content from
    ``y`` (DDNM, Wang et al. 2023, eq. 7). ``downsample`` of the result equals ``lowres``.
    """
    _check(x0, "x0")
    _check(lowres, "lowres")
    h, w = lowres.shape[-2:]
    if x0.shape[:2] != lowres.shape[:2] or x0.shape[-2] % h or x0.shape[-1] % w:
        raise ValueError(
            f"lowres_projection: lowres {tuple(lowres.shape)} does not match x0 {tuple(x0.shape)}"
            " (same batch and channels, high-res size a multiple of the low-res size)"
        )
    resid = F.interpolate(x0, size=(h, w), mode="area") - lowres.to(x0)
    return x0 - F.interpolate(resid, size=x0.shape[-2:], mode="nearest")


def consistent_denoiser(denoiser: Denoiser, lowres: torch.Tensor) -> Denoiser:
    """``D'(x, sigma, cond) = lowres_projection(D(x, sigma, cond), lowres)``: data consistency
    with the low-res input applied to the prediction at every sampling step (any sampler)."""

    def projected(x: torch.Tensor, sigma: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        return lowres_projection(denoiser(x, sigma, cond), lowres)

    if getattr(denoiser, "accepts_null_mask", False):
        projected.accepts_null_mask = True  # type: ignore[attr-defined]
    return projected


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

    ``crop``: train on random ``crop x crop`` patches of ``x`` (offsets aligned to the
    downsampling factor, the low-res input cropped to match), for a fully convolutional network.
    """

    def __init__(
        self,
        objective: Any,
        lowres_size: int,
        max_aug_sigma: float = 0.5,
        p_clean: float = 0.1,
        crop: int | None = None,
    ) -> None:
        if max_aug_sigma < 0 or not 0 <= p_clean <= 1:
            raise ValueError(
                f"need max_aug_sigma >= 0, p_clean in [0, 1]: {max_aug_sigma, p_clean}"
            )
        if crop is not None and crop < 1:
            raise ValueError(f"crop must be a positive size or None, got {crop}")
        self.crop = crop
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
        if self.crop is not None and self.crop < x.shape[-1]:
            x, low = self._random_crop(x, low, generator, g_dev)
        u = torch.rand(b, generator=generator, device=g_dev).to(x.device)
        clean = torch.rand(b, generator=generator, device=g_dev).to(x.device) < self.p_clean
        s = torch.where(clean, torch.zeros_like(u), u * self.max_aug_sigma).to(x.dtype)
        sr_cond = sr_condition(low, x.shape[-1], s, generator=generator, extra=cond)
        return self.objective.loss(net, x, sr_cond, generator=generator)

    loss = __call__

    def _random_crop(
        self, x: torch.Tensor, low: torch.Tensor, generator: torch.Generator | None, g_dev
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row aligned crops of ``x`` (B, C, H, W) and the matching part of ``low``."""
        big, small = x.shape[-1], low.shape[-1]
        f = big // small
        if big % small or x.shape[-2] != big or self.crop % f:
            raise ValueError(
                f"crop {self.crop} must be a multiple of the factor {big}/{small} on square images"
            )
        c, lc, n_pos = self.crop, self.crop // f, (big - self.crop) // f + 1
        pos = torch.randint(0, n_pos, (2, x.shape[0]), generator=generator, device=g_dev).tolist()
        xs = [xi[:, i * f : i * f + c, j * f : j * f + c] for xi, i, j in zip(x, *pos)]
        ls = [li[:, i : i + lc, j : j + lc] for li, i, j in zip(low, *pos)]
        return torch.stack(xs), torch.stack(ls)


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
    consistency: bool = False,
    **sampler_options: Any,
) -> torch.Tensor:
    """Sample high-res images (B, C, size, size) given ``lowres`` (B, C, h, w).

    The conditioning image is augmented at the fixed level ``aug_sigma`` (Ho et al. 2021 use a
    small non-zero level for generated low-res inputs); ``cond`` adds e.g. a class label.
    ``consistency=True`` projects every prediction onto ``downsample(x) = lowres``
    (:func:`consistent_denoiser`).
    """
    _check(lowres, "lowres")
    if consistency:
        denoiser = consistent_denoiser(denoiser, lowres)
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
    consistency: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-stage cascade: ``n`` base samples of ``base_shape`` (C, h, w), then super-resolution
    to ``size``. Returns ``(highres (n, C, size, size), lowres (n, C, h, w))``; ``cond`` goes to
    both stages; ``consistency`` as in :func:`super_resolve`."""
    g_dev = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn((n, *base_shape), generator=generator, device=g_dev)
    low = sample(base_denoiser, noise * base_sigmas[0], base_sigmas, method, cond=cond,
                 generator=generator)  # fmt: skip
    low = low.clamp(-1, 1)
    high = super_resolve(
        sr_denoiser, low, size, sr_sigmas, method=method, aug_sigma=aug_sigma, cond=cond,
        generator=generator, consistency=consistency,
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
