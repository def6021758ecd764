"""Noise-level and condition embeddings shared by every polydiff network.

- :func:`timestep_embedding` / :class:`SinusoidalEmbedding`: the Transformer positional formula
  (Vaswani et al. 2017, sec. 3.5) applied to the noise-conditioning input ``t``.
- :class:`FourierFeatures`: random Fourier features (Tancik et al. 2020) as used by EDM
  (Karras et al. 2022, ``FourierEmbedding``) for ``c_noise = log(sigma) / 4``.
- :class:`ClassEmbedding`: a label table with one extra learned *null* class for
  classifier-free guidance (Ho & Salimans 2022); rows with ``cond["null_mask"]`` use it.
- :class:`ConditionEmbedding`: time + class + global vector (FiLM) + pooled text, summed into the
  single embedding that modulates residual blocks (ADM scale-shift norm) or adaLN-Zero blocks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

__all__ = [
    "ClassEmbedding",
    "ConditionEmbedding",
    "FourierFeatures",
    "SinusoidalEmbedding",
    "TimestepMLP",
    "as_batch_t",
    "get_null_mask",
    "timestep_embedding",
    "zero_module",
]


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` in place and return it (zero-initialised output paths)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def as_batch_t(t: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    """Return ``t`` as a float tensor of shape (B,); a scalar is broadcast to the batch."""
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
    return t.float()


def get_null_mask(cond: Mapping[str, torch.Tensor] | None, batch: int) -> torch.Tensor | None:
    """``cond["null_mask"]`` as a bool tensor (B,), or None when absent.

    True means "ignore the condition for that row" (classifier-free guidance / condition dropout).
    """
    if cond is None or cond.get("null_mask") is None:
        return None
    mask = cond["null_mask"]
    if mask.shape != (batch,):
        raise ValueError(f"cond['null_mask'] must have shape ({batch},), got {tuple(mask.shape)}")
    return mask.bool()


# --------------------------------------------------------------------------------------------
# Noise-level embeddings
# --------------------------------------------------------------------------------------------


def timestep_embedding(
    t: torch.Tensor, dim: int, max_period: float = 10000.0, flip_sin_to_cos: bool = True
) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim) with frequencies ``max_period ** (-i / (dim/2))``.

    Vaswani et al. 2017, sec. 3.5; ``flip_sin_to_cos=True`` puts cos first, as ADM/DiT do.
    An odd ``dim`` is zero-padded by one column.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]  # (B, half)
    parts = (
        [torch.cos(args), torch.sin(args)]
        if flip_sin_to_cos
        else [torch.sin(args), torch.cos(args)]
    )
    emb = torch.cat(parts, dim=-1)
    if dim % 2:
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], 1)], dim=-1)
    return emb


class SinusoidalEmbedding(nn.Module):
    """Module wrapper of :func:`timestep_embedding`; ``scale`` multiplies t first
    (e.g. 1000 for continuous t in [0, 1], so the frequencies match discrete indices)."""

    def __init__(self, dim: int, max_period: float = 10000.0, scale: float = 1.0) -> None:
        super().__init__()
        self.dim, self.max_period, self.scale = dim, max_period, scale

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(t * self.scale, self.dim, self.max_period)


class FourierFeatures(nn.Module):
    """EDM random Fourier features: ``[cos(2 pi f t), sin(2 pi f t)]``, ``f ~ N(0, scale^2)``.

    Karras et al. 2022 (``FourierEmbedding`` in EDM's networks.py); frequencies are a fixed buffer.
    """

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"FourierFeatures needs an even dim, got {dim}")
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=gen) * scale)
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float()[:, None] * (2 * math.pi * self.freqs[None])  # (B, dim/2)
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepMLP(nn.Module):
    """t (B,) -> (B, emb_dim): sinusoidal or Fourier features, then Linear-SiLU-Linear."""

    def __init__(
        self,
        emb_dim: int,
        freq_dim: int = 256,
        kind: str = "sinusoidal",
        time_scale: float = 1.0,
        fourier_scale: float = 16.0,
    ) -> None:
        super().__init__()
        if kind == "sinusoidal":
            self.features: nn.Module = SinusoidalEmbedding(freq_dim, scale=time_scale)
        elif kind == "fourier":
            self.features = FourierFeatures(freq_dim, scale=fourier_scale)
        else:
            raise ValueError(f"time embedding kind must be 'sinusoidal' or 'fourier', got {kind!r}")
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(t))


# --------------------------------------------------------------------------------------------
# Condition embeddings
# --------------------------------------------------------------------------------------------


class ClassEmbedding(nn.Module):
    """Class labels (B,) -> (B, dim) with a learned null class at index ``num_classes``.

    Rows where ``null_mask`` is True get the null embedding (classifier-free guidance, Ho &
    Salimans 2022). A label equal to ``num_classes`` is accepted and means "null" too.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.table.weight, std=0.02)

    @property
    def null_index(self) -> int:
        return self.num_classes

    def forward(self, labels: torch.Tensor, null_mask: torch.Tensor | None = None) -> torch.Tensor:
        labels = labels.long()
        if labels.ndim != 1:
            raise ValueError(f"class labels must have shape (B,), got {tuple(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() > self.num_classes):
            raise ValueError(
                f"class labels must lie in [0, {self.num_classes}] ({self.num_classes} = null), "
                f"got range [{int(labels.min())}, {int(labels.max())}]"
            )
        if null_mask is not None:
            labels = torch.where(null_mask.to(labels.device), self.null_index, labels)
        return self.table(labels)


def _vector(
    cond: Mapping[str, torch.Tensor] | None, key: str, batch: int, dim: int
) -> torch.Tensor:
    if cond is None or cond.get(key) is None:
        raise KeyError(
            f"this network was built with a {key!r} condition of dim {dim}: pass cond[{key!r}]"
        )
    v = cond[key]
    if v.shape != (batch, dim):
        raise ValueError(f"cond[{key!r}] must have shape ({batch}, {dim}), got {tuple(v.shape)}")
    return v


class ConditionEmbedding(nn.Module):
    """Sum of the embeddings of t, class, a global vector and pooled text: (B,) -> (B, emb_dim).

    - ``t``: :class:`TimestepMLP` (always present).
    - ``cond["class"]``: :class:`ClassEmbedding` with a learned null class.
    - ``cond[vector_key]`` (B, cond_dim): a global feature vector (observations, state) through
      Linear-SiLU-Linear; null rows see a zero vector. Added to the time embedding, it then acts as
      FiLM through each block's scale/shift (Perez et al. 2018; Diffusion Policy, Chi et al. 2023).
    - ``cond["text_pooled"]`` (B, pooled_dim): pooled text embedding, zeroed for null rows.
    A condition the network was built with is required; ``null_mask`` rows ignore it.
    """

    def __init__(
        self,
        emb_dim: int,
        freq_dim: int = 256,
        time_embedding: str = "sinusoidal",
        time_scale: float = 1.0,
        num_classes: int | None = None,
        cond_dim: int | None = None,
        pooled_dim: int | None = None,
        vector_key: str = "vector",
    ) -> None:
        super().__init__()
        self.emb_dim = emb_dim
        self.time = TimestepMLP(emb_dim, freq_dim, kind=time_embedding, time_scale=time_scale)
        self.num_classes, self.cond_dim, self.pooled_dim = num_classes, cond_dim, pooled_dim
        self.vector_key = vector_key
        self.label = ClassEmbedding(num_classes, emb_dim) if num_classes else None
        self.vector = (
            nn.Sequential(nn.Linear(cond_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if cond_dim
            else None
        )
        self.pooled = nn.Linear(pooled_dim, emb_dim) if pooled_dim else None

    @property
    def is_conditional(self) -> bool:
        return any(m is not None for m in (self.label, self.vector, self.pooled))

    def forward(
        self, t: torch.Tensor, cond: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        batch = t.shape[0]
        emb = self.time(t)  # (B, E)
        null = get_null_mask(cond, batch)
        keep = None if null is None else (~null).to(emb.dtype)[:, None]  # (B, 1)
        if self.label is not None:
            if cond is None or cond.get("class") is None:
                if null is None or not bool(null.all()):
                    raise KeyError(
                        f"this network is class-conditional ({self.num_classes} classes): "
                        "pass cond['class']"
                    )
                labels = torch.full((batch,), self.num_classes, device=t.device)
            else:
                labels = cond["class"]
            emb = emb + self.label(labels, null)
        if self.vector is not None:
            v = self._optional(cond, self.vector_key, batch, self.cond_dim, null, emb)
            emb = emb + self.vector(v if keep is None else v * keep)
        if self.pooled is not None:
            p = self._optional(cond, "text_pooled", batch, self.pooled_dim, null, emb)
            emb = emb + self.pooled(p if keep is None else p * keep)
        return emb

    @staticmethod
    def _optional(cond, key, batch, dim, null, like) -> torch.Tensor:
        # A fully-null batch may omit the condition: it is replaced by zeros.
        if (cond is None or cond.get(key) is None) and null is not None and bool(null.all()):
            return like.new_zeros(batch, dim)
        return _vector(cond, key, batch, dim).to(like.dtype)
