"""Latent shape diffusion: a voxel SDF autoencoder and its scaled latent grids.

As SDFusion (Cheng et al. 2023) and LION (Zeng et al. 2022) do, a first-stage autoencoder
compresses shapes and the diffusion prior runs in its latent space. Ours is a deterministic
convolutional autoencoder on truncated SDF grids: ``(1, R, R, R) -> (z, R/4, R/4, R/4)`` by two
stride-2 3-D convolutions (and back by two transposed ones), trained with an L1 reconstruction
loss plus a small L2 penalty on the latents (SDFusion uses a VQ-VAE; the penalty plays the role
of its codebook in keeping the latent scale bounded). Latents are divided by their training
std (the "scale factor" of latent diffusion, Rombach et al. 2022), so the prior sees unit
variance. The trained autoencoder is cached as safetensors, keyed by a hash of the training
grids and settings (``$POLYDIFF_CACHE/shapes`` or ``~/.cache/polydiff/shapes``), so the dataset,
the hooks and later ``polydiff evaluate`` calls share one copy without retraining.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from polydiff.core.fileio import atomic_path

__all__ = ["VoxelAutoencoder", "cache_root", "train_voxel_autoencoder"]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$POLYDIFF_CACHE/shapes``, else ``~/.cache/polydiff/shapes``."""
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("POLYDIFF_CACHE")
    return Path(base) / "shapes" if base else Path.home() / ".cache" / "polydiff" / "shapes"


class VoxelAutoencoder(nn.Module):
    """SDF grid ``(B, 1, R, R, R)`` in [-1, 1] <-> latent ``(B, z, R/4, R/4, R/4)`` (scaled)."""

    def __init__(self, z_channels: int = 4, base: int = 16) -> None:
        super().__init__()
        self.z_channels, self.base = z_channels, base
        self.encoder = nn.Sequential(
            nn.Conv3d(1, base, 3, padding=1), nn.SiLU(),
            nn.Conv3d(base, 2 * base, 4, stride=2, padding=1), nn.SiLU(),  # R/2
            nn.Conv3d(2 * base, 2 * base, 4, stride=2, padding=1), nn.SiLU(),  # R/4
            nn.Conv3d(2 * base, z_channels, 3, padding=1),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Conv3d(z_channels, 2 * base, 3, padding=1), nn.SiLU(),
            nn.ConvTranspose3d(2 * base, 2 * base, 4, stride=2, padding=1), nn.SiLU(),  # R/2
            nn.ConvTranspose3d(2 * base, base, 4, stride=2, padding=1), nn.SiLU(),  # R
            nn.Conv3d(base, 1, 3, padding=1),
        )  # fmt: skip
        self.register_buffer("scale", torch.ones(()))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Grids -> scaled latents (unit std over the training set)."""
        if x.ndim != 5 or x.shape[1] != 1 or any(s % 4 for s in x.shape[2:]):
            raise ValueError(f"VoxelAutoencoder expects (B, 1, R, R, R), R % 4 == 0; got {x.shape}")
        return self.encoder(x) / self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> grids in [-1, 1]."""
        return torch.tanh(self.decoder(z * self.scale))


def _train(
    ae: VoxelAutoencoder, grids: torch.Tensor, steps: int, batch_size: int, lr: float, seed: int
) -> VoxelAutoencoder:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(ae.parameters(), lr=lr)
    ae.train()
    for _ in range(steps):
        idx = torch.randint(0, len(grids), (min(batch_size, len(grids)),), generator=gen)
        x = grids[idx]
        z = ae.encoder(x)
        loss = F.l1_loss(torch.tanh(ae.decoder(z)), x) + 1e-4 * z.square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    ae.eval()
    with torch.no_grad():
        z = torch.cat([ae.encoder(grids[i : i + 64]) for i in range(0, len(grids), 64)])
        ae.scale.fill_(float(z.std()))
    return ae


def train_voxel_autoencoder(
    grids: np.ndarray,
    steps: int = 1000,
    batch_size: int = 32,
    z_channels: int = 4,
    base: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    cache_dir: str | None = None,
) -> VoxelAutoencoder:
    """The autoencoder of ``grids`` (N, R, R, R), trained once (seeded), then from the cache."""
    settings = dict(steps=steps, batch_size=batch_size, z_channels=z_channels, base=base, lr=lr,
                    seed=seed)  # fmt: skip
    h = hashlib.sha256(np.ascontiguousarray(grids, np.float32).tobytes())
    h.update(json.dumps(settings, sort_keys=True).encode())
    path = cache_root(cache_dir) / f"voxel-ae-{h.hexdigest()[:16]}.safetensors"
    torch.manual_seed(seed)
    ae = VoxelAutoencoder(z_channels, base)
    if path.is_file():
        ae.load_state_dict(load_file(str(path)))
        return ae.eval()
    with torch.enable_grad():
        _train(ae, torch.from_numpy(np.asarray(grids, np.float32))[:, None], steps, batch_size, lr,
               seed)  # fmt: skip
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in ae.state_dict().items()}, str(tmp))
    return ae
