"""Image prompts for a frozen U-Net: an IP-Adapter (Ye et al. 2023, "IP-Adapter: Text Compatible
Image Prompt Adapter for Text-to-Image Diffusion Models").

A reference image is encoded by a *frozen* image encoder (default: the image itself,
area-downsampled to ``feature_size`` and flattened; any callable ``(B, C, H, W) -> (B, F)`` or
``(B, N, F)`` works, e.g. a pretrained feature network), mapped by a trainable *image projection
model* (Linear + LayerNorm) to ``num_tokens`` image tokens, and read by new, trainable
cross-attention layers added to chosen U-Net stages (the middle block and the decoder stages at
the lowest resolutions). Every base weight stays frozen. The attention is *decoupled*: its
query comes from the stage's features and its keys / values only from the image tokens, and its
output is added to the stage's output (``h + scale * CrossAttn(h, image tokens)``, paper eq. 5,
with a zero-initialised output projection so training starts from the base model). The base
model's own conditions (class, text) keep their own path, so image and class prompts combine.

Condition key: ``cond["image"]`` (B, C, H, W) reference images in [-1, 1]; rows with
``null_mask`` True (classifier-free guidance's unconditional pass, or condition dropout in
training) get no image prompt. :func:`train_ip_adapter` trains the adapter with
``polydiff.train.Trainer``; :func:`save_ip_adapter` / :func:`load_ip_adapter` write and read the
adapter's weights alone (safetensors).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from polydiff.train import fit_parameters

__all__ = [
    "IMAGE_KEY",
    "DecoupledCrossAttention",
    "IPAdapter",
    "ReferencePairs",
    "load_ip_adapter",
    "save_ip_adapter",
    "train_ip_adapter",
]

IMAGE_KEY = "image"


class DecoupledCrossAttention(nn.Module):
    """Cross-attention from feature maps (B, C, *S) to image tokens (B, K, D), zero-initialised
    output: the image branch of IP-Adapter's decoupled cross-attention."""

    def __init__(self, channels: int, token_dim: int, heads: int = 2, norm_groups: int = 8) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels {channels} must be divisible by heads {heads}")
        self.heads = heads
        self.norm = nn.GroupNorm(min(norm_groups, channels), channels)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(token_dim, channels, bias=False)
        self.to_v = nn.Linear(token_dim, channels, bias=False)
        self.to_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        b, c = h.shape[:2]
        q = self.norm(h).reshape(b, c, -1).transpose(1, 2)  # (B, L, C)
        q = self.to_q(q).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, h, L, C/h)
        k = self.to_k(tokens).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, h, K, C/h)
        v = self.to_v(tokens).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, L, C/h)
        out = self.to_out(out.transpose(1, 2).reshape(b, -1, c))  # (B, L, C)
        return out.transpose(1, 2).reshape(h.shape)


def _default_encoder(feature_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def encode(images: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C * s * s)
        if images.shape[-1] != feature_size or images.shape[-2] != feature_size:
            images = F.interpolate(images, size=(feature_size, feature_size), mode="area")
        return images.flatten(1)

    return encode


class IPAdapter(nn.Module):
    """A frozen U-Net (:class:`polydiff.nn.unet.UNet`) with an image-prompt adapter.

    ``forward(x, t, cond)`` is the U-Net's with ``cond["image"]`` (B, C, H, W) read by the
    adapter layers; without that key (or for ``null_mask`` rows) the output is the base's
    exactly. ``stages`` names the hooked stages (``"mid"``, ``"up.0"``, ``"up.1"``, ...);
    default: the middle block and the first decoder stage. ``encoder`` is the frozen image
    encoder (see the module docstring) with output width ``feature_dim`` (inferred by a dry run
    when omitted, from ``image_shape``).
    """

    def __init__(
        self,
        net: nn.Module,
        image_shape: Sequence[int],
        *,
        num_tokens: int = 4,
        token_dim: int = 64,
        stages: Sequence[str] = ("mid", "up.0"),
        encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
        feature_size: int = 8,
        heads: int = 2,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.net = net.requires_grad_(False)
        self.encoder = encoder or _default_encoder(feature_size)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_tokens, self.token_dim, self.scale = int(num_tokens), int(token_dim), scale
        with torch.no_grad():
            probe = self.encoder(torch.zeros(1, *self.image_shape))
        feature_dim = probe.shape[-1] * (probe.shape[1] if probe.ndim == 3 else 1)
        self.proj = nn.Sequential(  # IP-Adapter's image projection model
            nn.Linear(feature_dim, num_tokens * token_dim),
            nn.Unflatten(-1, (num_tokens, token_dim)),
            nn.LayerNorm(token_dim),
        )
        modules = dict(net.named_modules())
        missing = [s for s in stages if s not in modules]
        if missing:
            raise ValueError(
                f"IPAdapter: stages {missing} not in the network (e.g. 'mid', 'up.0', 'up.1')"
            )
        channels = self._stage_channels(net, stages)
        self.attn = nn.ModuleDict(
            {s.replace(".", "_"): DecoupledCrossAttention(channels[s], token_dim, heads)
             for s in stages}
        )  # fmt: skip
        self.stages = tuple(stages)
        self._tokens: torch.Tensor | None = None
        self._keep: torch.Tensor | None = None
        self._hooks = [
            modules[s].register_forward_hook(functools.partial(self._inject, s.replace(".", "_")))
            for s in stages
        ]

    @property
    def accepts_null_mask(self) -> bool:
        return True

    @torch.no_grad()
    def _stage_channels(self, net: nn.Module, stages: Sequence[str]) -> dict[str, int]:
        modules, found = dict(net.named_modules()), {}
        hooks = [
            modules[s].register_forward_hook(lambda m, i, o, s=s: found.__setitem__(s, o.shape[1]))
            for s in stages
        ]
        try:
            x = torch.zeros(1, *self.image_shape)
            cond = {"null_mask": torch.ones(1, dtype=torch.bool)}
            net(x, torch.zeros(1), cond)
        finally:
            for h in hooks:
                h.remove()
        return found

    def _inject(self, key: str, module: nn.Module, inputs: tuple, output: torch.Tensor):
        if self._tokens is None:
            return output
        delta = self.attn[key](output, self._tokens.to(output.dtype))
        keep = self._keep.to(output.dtype).reshape(-1, *([1] * (output.ndim - 1)))
        return output + self.scale * keep * delta

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Reference images (B, C, H, W) -> image tokens (B, num_tokens, token_dim)."""
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"cond['image'] must have shape (B, {', '.join(map(str, self.image_shape))}), "
                f"got {tuple(images.shape)}"
            )
        with torch.no_grad():
            feats = self.encoder(images)
        return self.proj(feats.flatten(1).float())

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        base_cond = dict(cond or {})
        images = base_cond.pop(IMAGE_KEY, None)
        if images is None:
            return self.net(x, t, base_cond or None)
        null = base_cond.get("null_mask")
        keep = torch.ones(len(x), dtype=torch.bool, device=x.device)
        if null is not None:
            keep = ~null.to(x.device).bool()
        self._tokens, self._keep = self.image_tokens(images.to(x)), keep
        try:
            return self.net(x, t, base_cond or None)
        finally:
            self._tokens = self._keep = None

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter's weights alone (projection + cross-attention layers)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(("proj.", "attn."))}

    def remove(self) -> nn.Module:
        """Detach the hooks and return the untouched base network."""
        for h in self._hooks:
            h.remove()
        return self.net


class ReferencePairs(torch.utils.data.Dataset):
    """Training pairs for an image-prompt adapter: item ``i`` is image ``i`` (``"x"``), a
    *different* image of the same class as its reference (``"image"``, so that the adapter
    learns the concept rather than a copy), and ``"class"`` = ``null_class`` (the base model
    unconditional on its class: the prompt carries the class). Deterministic for a seed."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, null_class: int, seed: int = 0
    ) -> None:
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"need (N, C, H, W) images and (N,) labels, got {images.shape}")
        self.images, self.labels = images.float(), labels.long()
        self.null_class, self._calls = int(null_class), 0
        self.seed = seed
        self._by_class = {int(c): torch.nonzero(self.labels == c)[:, 0] for c in labels.unique()}

    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(self, indices) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self._calls)
        self._calls += 1
        refs = []
        for i in idx.tolist():
            pool = self._by_class[int(self.labels[i])]
            j = int(pool[torch.randint(len(pool), (1,), generator=g)])
            if j == i and len(pool) > 1:  # another image of the class
                j = int(pool[(int((pool == i).nonzero()[0, 0]) + 1) % len(pool)])
            refs.append(j)
        return {
            "x": self.images[idx],
            "class": torch.full((len(idx),), self.null_class, dtype=torch.long),
            IMAGE_KEY: self.images[torch.as_tensor(refs)],
        }

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.get_batch([i]).items()}


def train_ip_adapter(
    adapter: IPAdapter,
    objective: Any,
    dataset: torch.utils.data.Dataset,
    *,
    steps: int = 500,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    ema: float | None = None,
) -> IPAdapter:
    """Train the adapter's parameters (base frozen) with ``objective`` (its condition dropout
    trains the image-free path for guidance); returns ``adapter`` (EMA weights when ``ema``)."""
    trainer = fit_parameters(
        adapter,
        objective,
        dataset,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        lr_warmup_steps=min(50, steps // 10),
        ema=ema,
    )
    if ema:
        adapter.load_state_dict(trainer.sampling_model().state_dict())
    return adapter.eval()


def save_ip_adapter(adapter: IPAdapter, path: str | os.PathLike) -> Path:
    """Write the adapter's weights alone (safetensors, atomic)."""
    from safetensors.torch import save_file

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in adapter.adapter_state_dict().items()}
    save_file(state, str(tmp), metadata={"stages": ",".join(adapter.stages)})
    os.replace(tmp, target)
    return target


def load_ip_adapter(adapter: IPAdapter, path: str | os.PathLike) -> IPAdapter:
    """Load weights written by :func:`save_ip_adapter` into a freshly built ``adapter``."""
    from safetensors.torch import load_file

    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"IP-Adapter weights not found: {source}")
    state = load_file(str(source))
    own = adapter.adapter_state_dict()
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        raise ValueError(
            f"{source}: adapter keys do not match this IPAdapter (stages {adapter.stages}, "
            f"{adapter.num_tokens} tokens of {adapter.token_dim}) or their shapes differ; "
            f"missing {sorted(set(own) - set(state))[:3]}, unexpected "
            f"{sorted(set(state) - set(own))[:3]}"
        )
    adapter.load_state_dict(state, strict=False)
    return adapter
