"""Image denoiser networks: named U-Net and DiT configurations over :mod:`polydiff.nn`.

Conditioning, all handled inside ``polydiff.nn`` and honouring ``cond["null_mask"]`` (the core
objective's condition dropout sets it; classifier-free guidance uses it):

- class: ``num_classes`` -> ``cond["class"]`` through an embedding with a learned null class;
- text: ``context_dim`` -> cross-attention to ``cond["text"]`` tokens (masked by
  ``cond["text_mask"]``), ``pooled_dim`` -> ``cond["text_pooled"]`` added to the time embedding.

Sizes are registries (:data:`IMAGE_UNET_SIZES`: the 2-D layouts of ``polydiff.nn.UNET_SIZES``,
:data:`IMAGE_DIT_SIZES`): ``"tiny-c16"`` for tests and 16x16 CPU recipes, ``"small-c32"`` for the
CPU demo and benchmarks, then the paper layouts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from polydiff.nn import DIT_SIZES, UNET_SIZES, UNet, dit

__all__ = [
    "IMAGE_DIT_SIZES",
    "IMAGE_UNET_SIZES",
    "HashedWordEncoder",
    "image_dit",
    "image_unet",
    "num_parameters",
]

# the 2-D layouts of polydiff.nn's one U-Net size table (a name means the same network
# everywhere): "tiny-c16" for 16x16 digits recipes and tests, "small-c32" for the CPU demo and
# benchmarks, "tiny" / "small" (the nn test and smoke sizes), then the paper layouts.
IMAGE_UNET_SIZES: dict[str, dict[str, Any]] = {
    name: layout for name, layout in UNET_SIZES.items() if layout.get("dims", 2) == 2
}

IMAGE_DIT_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(depth=2, hidden=64, heads=2, patch_size=2),
    "small": dict(depth=4, hidden=128, heads=4, patch_size=2),
    **DIT_SIZES,  # "DiT-S/2", "DiT-B/4", ... as in Peebles & Xie 2023
}


def _lookup(table: dict[str, dict[str, Any]], size: str, what: str) -> dict[str, Any]:
    if size not in table:
        raise KeyError(f"unknown {what} size {size!r}; available: {sorted(table)}")
    return dict(table[size])


def image_unet(
    size: str = "small-c32",
    channels: int = 3,
    image_size: int | None = None,
    num_classes: int | None = None,
    context_dim: int | None = None,
    pooled_dim: int | None = None,
    **overrides: Any,
) -> UNet:
    """A 2-D :class:`polydiff.nn.UNet` of a named size for ``channels``-channel images.

    ``image_size`` (optional) is checked against the U-Net's downsampling factor.
    """
    cfg = _lookup(IMAGE_UNET_SIZES, size, "image U-Net")
    cfg.update(overrides)
    levels = len(cfg.get("channel_mult", (1, 2, 2)))
    if image_size is not None and image_size % (2 ** (levels - 1)):
        raise ValueError(
            f"image_size {image_size} must be divisible by 2**{levels - 1} for U-Net size {size!r}"
        )
    cfg.pop("dims", None)
    return UNet(
        dims=2,
        in_channels=channels,
        num_classes=num_classes,
        context_dim=context_dim,
        pooled_dim=pooled_dim,
        **cfg,
    )


def image_dit(
    size: str = "small",
    channels: int = 4,
    image_size: int = 8,
    num_classes: int | None = None,
    context_dim: int | None = None,
    pooled_dim: int | None = None,
    **overrides: Any,
) -> nn.Module:
    """A 2-D :class:`polydiff.nn.DiT` (Peebles & Xie 2023) of a named size (pixels or latents)."""
    cfg = _lookup(IMAGE_DIT_SIZES, size, "image DiT")
    cfg.update(overrides)
    if image_size % cfg["patch_size"]:
        raise ValueError(f"image_size {image_size} must be divisible by patch {cfg['patch_size']}")
    name = next(iter(DIT_SIZES))  # build through the nn factory with explicit fields
    return dit(
        name,
        **cfg,
        input_size=image_size,
        in_channels=channels,
        num_classes=num_classes,
        context_dim=context_dim,
        pooled_dim=pooled_dim,
    )


def num_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class HashedWordEncoder(nn.Module):
    """A fixed, dependency-free text encoder for small vocabularies (tests, quick demos).

    Each lower-cased word gets a deterministic random vector (seeded by a hash of the word) plus a
    sinusoidal position code; ``text_pooled`` is the masked mean. It implements the
    ``polydiff.nn.text.TextEncoder`` interface: ``encode(prompts) -> {"text", "text_mask",
    "text_pooled"}``. Use ``polydiff.nn.text.MiniLMTextEncoder`` for real prompts.
    """

    def __init__(self, dim: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.dim = self.pooled_dim = dim
        self.seed = seed

    def _word(self, word: str) -> torch.Tensor:
        h = int.from_bytes(hashlib.sha256(f"{self.seed}:{word}".encode()).digest()[:8], "little")
        g = torch.Generator().manual_seed(h % (2**63))
        return torch.randn(self.dim, generator=g)

    def encode(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        words = [p.lower().split() or [""] for p in prompts]
        length = max(len(w) for w in words)
        text = torch.zeros(len(prompts), length, self.dim)
        mask = torch.zeros(len(prompts), length, dtype=torch.bool)
        pos = torch.arange(length)[:, None] / 10_000 ** (torch.arange(self.dim) / self.dim)
        pos = torch.where(torch.arange(self.dim) % 2 == 0, pos.sin(), pos.cos())  # (L, D)
        for i, ws in enumerate(words):
            for j, w in enumerate(ws):
                text[i, j] = self._word(w) + 0.5 * pos[j]
            mask[i, : len(ws)] = True
        m = mask[..., None].float()
        pooled = (text * m).sum(1) / m.sum(1).clamp_min(1)
        return {"text": text, "text_mask": mask, "text_pooled": pooled}

    def forward(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.encode(prompts)
