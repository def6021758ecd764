"""A small KL autoencoder for latent diffusion (Rombach et al. 2022, sec. 3 and app. G).

``encode(x) -> (mean, logvar)`` of a diagonal Gaussian posterior over a ``z_channels x S/f x S/f``
latent (``f = 2 ** (len(channel_mult) - 1)``), ``decode(z) -> x``. Trained with reconstruction
(L1 + L2) plus ``kl_weight * KL(q(z|x) || N(0, I))``; no adversarial or perceptual term at this
scale. The latent scale factor ``1 / std(z)`` is measured on the training data (LDM's
``scale_factor``), so diffusion sees unit-variance latents, and the same networks, objectives and
samplers as pixel space apply unchanged; :meth:`KLAutoencoder.to_latent` /
:meth:`KLAutoencoder.to_image` do the scaling. The network and its loss live in
:mod:`polydiff.nn.autoencoder` (shared with audio's latent mels) and are re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from polydiff.nn.autoencoder import AutoencoderConfig, KLAutoencoder, vae_loss

__all__ = [
    "AutoencoderConfig",
    "KLAutoencoder",
    "LatentDataset",
    "load_or_train_autoencoder",
    "train_autoencoder",
]


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
