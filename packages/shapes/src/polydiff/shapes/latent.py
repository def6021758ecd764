"""Latent shape diffusion: a voxel SDF autoencoder and its scaled latent grids.

As SDFusion (Cheng et al. 2023) and LION (Zeng et al. 2022) do, a first-stage autoencoder
compresses shapes and the diffusion prior runs in its latent space. Ours is a deterministic
convolutional autoencoder on truncated SDF grids: ``(1, R, R, R) -> (z, R/4, R/4, R/4)`` by two
stride-2 3-D convolutions (and back by two transposed ones), trained with a weighted L1
reconstruction loss plus a small L2 penalty on the latents (SDFusion uses a VQ-VAE; the penalty
plays the role of its codebook in keeping the latent scale bounded). The weights matter: at 16^3
only ~1.4% of the built-in shapes' voxels are inside (thin legs and tops), and a plain L1 loss is
minimised by decoding every latent to an all-outside grid, which has no surface at all
(measured: 0 inside voxels after 300 steps). Inside voxels therefore carry half of the total
weight (``(1 - f) / f`` each for the inside fraction ``f`` of the training grids) and voxels
in the truncation band ``|sdf| < 1`` an extra ``band_weight``, so the zero level set is what the
autoencoder spends its capacity on. Latents are divided by their training
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

from polydiff.core.fileio import atomic_path

__all__ = ["VoxelAutoencoder", "cache_root", "reconstruction_weights", "train_voxel_autoencoder"]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$POLYDIFF_CACHE/shapes``, else ``~/.cache/polydiff/shapes``."""
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("POLYDIFF_CACHE")
    return Path(base) / "shapes" if base else Path.home() / ".cache" / "polydiff" / "shapes"


class VoxelAutoencoder(nn.Module):
    """SDF grid ``(B, 1, R, R, R)`` in [-1, 1] <-> latent ``(B, z, R/d, R/d, R/d)`` (scaled), for
    the spatial downsampling ``d`` = 2 or 4 (one or two stride-2 convolutions)."""

    def __init__(self, z_channels: int = 4, base: int = 16, downsample: int = 4) -> None:
        super().__init__()
        if downsample not in (2, 4):
            raise ValueError(f"VoxelAutoencoder downsample must be 2 or 4, got {downsample}")
        self.z_channels, self.base, self.downsample = z_channels, base, downsample
        levels = downsample.bit_length() - 1
        enc: list[nn.Module] = [nn.Conv3d(1, base, 3, padding=1), nn.SiLU()]
        dec: list[nn.Module] = [nn.Conv3d(z_channels, 2 * base, 3, padding=1), nn.SiLU()]
        for i in range(levels):  # each halves (encoder) / doubles (decoder) the resolution
            enc += [nn.Conv3d(base if i == 0 else 2 * base, 2 * base, 4, stride=2, padding=1)]
            dec += [nn.ConvTranspose3d(2 * base, base if i == levels - 1 else 2 * base, 4,
                                       stride=2, padding=1)]  # fmt: skip
            enc.append(nn.SiLU())
            dec.append(nn.SiLU())
        self.encoder = nn.Sequential(*enc, nn.Conv3d(2 * base, z_channels, 3, padding=1))
        self.decoder = nn.Sequential(*dec, nn.Conv3d(base, 1, 3, padding=1))
        self.register_buffer("scale", torch.ones(()))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Grids -> scaled latents (unit std over the training set)."""
        d = self.downsample
        if x.ndim != 5 or x.shape[1] != 1 or any(s % d for s in x.shape[2:]):
            raise ValueError(
                f"VoxelAutoencoder expects (B, 1, R, R, R), R % {d} == 0; got {tuple(x.shape)}"
            )
        return self.encoder(x) / self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> grids in [-1, 1]."""
        return torch.tanh(self.decoder(z * self.scale))


def reconstruction_weights(
    x: torch.Tensor, inside_fraction: float, band_weight: float
) -> torch.Tensor:
    """Per-voxel weights of the autoencoder's L1 loss: inside voxels (``x < 0``) weigh
    ``(1 - f) / f`` for the inside fraction ``f`` (so the inside and the outside carry equal
    total weight), outside voxels 1, and the truncation band ``|x| < 1`` an extra
    ``band_weight``."""
    f = min(max(inside_fraction, 1e-4), 1 - 1e-4)
    w_in = (1 - f) / f
    return torch.where(x < 0, w_in, 1.0) + band_weight * (x.abs() < 1).to(x.dtype)


def _train(
    ae: VoxelAutoencoder,
    grids: torch.Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    band_weight: float,
) -> VoxelAutoencoder:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(ae.parameters(), lr=lr)
    inside = float((grids < 0).float().mean())
    ae.train()
    for _ in range(steps):
        idx = torch.randint(0, len(grids), (min(batch_size, len(grids)),), generator=gen)
        x = grids[idx]
        z = ae.encoder(x)
        w = reconstruction_weights(x, inside, band_weight)
        l1 = (w * (torch.tanh(ae.decoder(z)) - x).abs()).sum() / w.sum()
        loss = l1 + 1e-4 * z.square().mean()
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
    band_weight: float = 4.0,
    downsample: int = 4,
) -> VoxelAutoencoder:
    """The autoencoder of ``grids`` (N, R, R, R), trained once (seeded), then from the cache."""
    if not (grids < 0).any():
        raise ValueError("train_voxel_autoencoder: no grid has an inside voxel (sdf < 0); "
                         "expected truncated SDFs with a surface")  # fmt: skip
    settings = dict(steps=steps, batch_size=batch_size, z_channels=z_channels, base=base, lr=lr,
                    seed=seed, band_weight=band_weight, loss="weighted-l1",
                    downsample=downsample)  # fmt: skip
    h = hashlib.sha256(np.ascontiguousarray(grids, np.float32).tobytes())
    h.update(json.dumps(settings, sort_keys=True).encode())
    path = cache_root(cache_dir) / f"voxel-ae-{h.hexdigest()[:16]}.safetensors"
    torch.manual_seed(seed)
    ae = VoxelAutoencoder(z_channels, base, downsample)
    if path.is_file():
        ae.load_state_dict(load_file(str(path)))
        return ae.eval()
    with torch.enable_grad():
        _train(ae, torch.from_numpy(np.asarray(grids, np.float32))[:, None], steps, batch_size, lr,
               seed, band_weight)  # fmt: skip
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in ae.state_dict().items()}, str(tmp))
    return ae
