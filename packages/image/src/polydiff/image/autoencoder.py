"""A small KL autoencoder for latent diffusion (Rombach et al. 2022, sec. 3 and app. G).

``encode(x) -> (mean, logvar)`` of a diagonal Gaussian posterior over a ``z_channels x S/f x S/f``
latent (``f = 2 ** (len(channel_mult) - 1)``), ``decode(z) -> x``. Trained with reconstruction
(L1 + L2) plus ``kl_weight * KL(q(z|x) || N(0, I))``; no adversarial or perceptual term at this
scale. The latent scale factor ``1 / std(z)`` is measured on the training data (LDM's
``scale_factor``), so diffusion sees unit-variance latents, and the same networks, objectives and
samplers as pixel space apply unchanged; :meth:`KLAutoencoder.to_latent` /
:meth:`KLAutoencoder.to_image` do the scaling.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

__all__ = [
    "AutoencoderConfig",
    "KLAutoencoder",
    "LatentDataset",
    "load_or_train_autoencoder",
    "train_autoencoder",
]


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


def train_autoencoder(
    images: torch.Tensor,
    config: AutoencoderConfig | None = None,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 2e-3,
    kl_weight: float = 1e-4,
    seed: int = 0,
    log: list[dict[str, float]] | None = None,
) -> KLAutoencoder:
    """Train a :class:`KLAutoencoder` on ``images`` (N, C, H, W) in [-1, 1], then measure its
    latent scale factor on them. Appends ``{"step", "loss", "recon", "kl"}`` to ``log``."""
    cfg = config or AutoencoderConfig(in_channels=images.shape[1])
    if cfg.in_channels != images.shape[1]:
        raise ValueError(f"config.in_channels={cfg.in_channels} but images have {images.shape[1]}")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    ae = KLAutoencoder(cfg)
    opt = torch.optim.AdamW(ae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps))
    )
    ae.train()
    for step in range(steps):
        x = images[torch.randint(0, len(images), (batch_size,), generator=g)]
        recon, mean, logvar = ae(x, generator=g)
        loss, parts = vae_loss(recon, x, mean, logvar, kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        opt.step()
        sched.step()
        if log is not None and (step % 100 == 0 or step == steps - 1):
            log.append({"step": step, "loss": float(loss.detach()), **parts})
    ae.eval().requires_grad_(False)
    ae.measure_scale_factor(images)
    return ae


def save_autoencoder(ae: KLAutoencoder, path: str | os.PathLike) -> Path:
    """Safetensors with the config in the metadata; atomic write."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in ae.state_dict().items()}
    save_file(state, str(tmp), {"config": json.dumps(asdict(ae.config))})
    os.replace(tmp, path)
    return path


def load_autoencoder(path: str | os.PathLike) -> KLAutoencoder:
    """Inverse of :func:`save_autoencoder`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"autoencoder weights {path} not found")
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path}: not a polydiff KLAutoencoder file (no config metadata)")
    cfg = json.loads(meta["config"])
    cfg["channel_mult"] = tuple(cfg["channel_mult"])
    ae = KLAutoencoder(AutoencoderConfig(**cfg))
    ae.load_state_dict(load_file(str(path)))
    return ae.eval().requires_grad_(False)


def load_or_train_autoencoder(
    images: torch.Tensor,
    cache_dir: str | os.PathLike | None = None,
    config: AutoencoderConfig | None = None,
    **train_kwargs: Any,
) -> KLAutoencoder:
    """The autoencoder trained on ``images`` with these settings, from the cache if present
    (keyed by a hash of the images, the config and the training arguments)."""
    from .metrics import cache_root, find_cached

    cfg = config or AutoencoderConfig(in_channels=images.shape[1])
    h = hashlib.sha256(images.float().numpy().tobytes())
    h.update(json.dumps({"config": asdict(cfg), **train_kwargs}, sort_keys=True).encode())
    name = f"kl-ae-{h.hexdigest()[:16]}.safetensors"
    found = find_cached(name, cache_dir)
    if found is not None:
        return load_autoencoder(found)
    path = cache_root(cache_dir) / name
    ae = train_autoencoder(images, cfg, **train_kwargs)
    save_autoencoder(ae, path)
    return ae


class LatentDataset(Dataset):
    """A dataset encoded once into scaled latents: items ``{"x": (z, h, w), <cond keys>}``.

    ``keys`` selects which condition keys of the base items are kept (all but ``"x"`` if None).
    """

    def __init__(
        self, base: Dataset, autoencoder: KLAutoencoder, keys: Sequence[str] | None = None
    ) -> None:
        self.base, self.keys = base, keys
        images = torch.stack([base[i]["x"] for i in range(len(base))])  # type: ignore[arg-type]
        self.latents = torch.cat(
            [autoencoder.to_latent(images[i : i + 256]) for i in range(0, len(images), 256)]
        )

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.base[i])
        item["x"] = self.latents[i]
        if self.keys is not None:
            item = {k: v for k, v in item.items() if k == "x" or k in self.keys}
        return item


def reconstruction_error(ae: KLAutoencoder, images: torch.Tensor) -> float:
    """Mean squared error of ``decode(encode(x))`` (posterior mean) over ``images``."""
    with torch.no_grad():
        err = [
            F.mse_loss(
                ae.to_image(ae.to_latent(images[i : i + 256])), images[i : i + 256], reduction="sum"
            )
            for i in range(0, len(images), 256)
        ]
    return float(sum(err) / images.numel())
