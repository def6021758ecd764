"""A small convolutional KL autoencoder for latent diffusion (Rombach et al. 2022, sec. 3, app. G).

``encode(x) -> (mean, logvar)`` of a diagonal Gaussian posterior over a ``z_channels x H/f x W/f``
latent (``f = 2 ** (len(channel_mult) - 1)``), ``decode(z) -> x``; :func:`vae_loss` is its
training loss (L1 + L2 reconstruction plus ``kl_weight * KL(q(z|x) || N(0, I))``, no adversarial
or perceptual term at this scale). The latent scale factor ``1 / std(z)`` is measured on the
training data (LDM's ``scale_factor``) so diffusion sees unit-variance latents:
:meth:`KLAutoencoder.to_latent` and :meth:`KLAutoencoder.to_image` do the scaling. Any 2-D
signal: images (``polydiff.image``), log-mel spectrograms (``polydiff.audio``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["AutoencoderConfig", "KLAutoencoder", "vae_loss"]


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture of :class:`KLAutoencoder`."""

    in_channels: int = 3
    z_channels: int = 4
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)  # two downsamplings: f = 4


class _Res(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(8, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, 1, 1),
            nn.GroupNorm(8, cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, 1, 1),
        )  # fmt: skip
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.block(x)


class KLAutoencoder(nn.Module):
    """Convolutional VAE with a diagonal-Gaussian latent and a measured ``scale_factor``."""

    def __init__(self, config: AutoencoderConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = config or AutoencoderConfig(**kwargs)
        self.config = cfg
        chans = [cfg.base_channels * m for m in cfg.channel_mult]
        enc: list[nn.Module] = [nn.Conv2d(cfg.in_channels, chans[0], 3, 1, 1)]
        for i, ch in enumerate(chans):
            enc.append(_Res(chans[max(i - 1, 0)], ch))
            if i < len(chans) - 1:
                enc.append(nn.Conv2d(ch, ch, 3, 2, 1))  # downsample x2
        enc += [
            nn.GroupNorm(8, chans[-1]),
            nn.SiLU(),
            nn.Conv2d(chans[-1], 2 * cfg.z_channels, 3, 1, 1),
        ]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(cfg.z_channels, chans[-1], 3, 1, 1)]
        rev = chans[::-1]
        for i, ch in enumerate(rev):
            dec.append(_Res(rev[max(i - 1, 0)], ch))
            if i < len(rev) - 1:
                dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, 1, 1)]
        dec += [nn.GroupNorm(8, chans[0]), nn.SiLU(), nn.Conv2d(chans[0], cfg.in_channels, 3, 1, 1)]
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("scale_factor", torch.tensor(1.0))

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.config.channel_mult) - 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) in [-1, 1] -> posterior mean and log-variance, each (B, z, H/f, W/f)."""
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"KLAutoencoder expects (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if x.shape[-1] % self.downsample or x.shape[-2] % self.downsample:
            raise ValueError(f"image size {tuple(x.shape[-2:])} not divisible by {self.downsample}")
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, z, h, w) unscaled latent -> (B, C, h*f, w*f) image."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        mean, logvar = self.encode(x)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + (0.5 * logvar).exp() * eps
        return self.decode(z), mean, logvar

    @torch.no_grad()
    def to_latent(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Images -> scaled latents for diffusion (posterior mean unless ``sample``)."""
        mean, logvar = self.encode(x)
        z = mean + (0.5 * logvar).exp() * torch.randn_like(mean) if sample else mean
        return z * self.scale_factor

    @torch.no_grad()
    def to_image(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1] (clamped)."""
        return self.decode(z / self.scale_factor).clamp(-1, 1)

    @torch.no_grad()
    def measure_scale_factor(self, images: torch.Tensor, batch_size: int = 256) -> float:
        """Set ``scale_factor = 1 / std`` of posterior-mean latents of ``images``; return it."""
        zs = [self.encode(images[i : i + batch_size])[0] for i in range(0, len(images), batch_size)]
        std = float(torch.cat(zs).std())
        self.scale_factor.fill_(1.0 / max(std, 1e-6))
        return float(self.scale_factor)


def vae_loss(
    recon: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, kl_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 + L2 reconstruction (per pixel) + ``kl_weight`` * KL to N(0, I) (per latent element)."""
    rec = (recon - x).abs().mean() + ((recon - x) ** 2).mean()
    kl = 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar).mean()
    return rec + kl_weight * kl, {"recon": float(rec.detach()), "kl": float(kl.detach())}
