"""Residual MLP denoiser for low-dimensional data (B, D): toy 2-D sets, states, latents.

Each block is ``h + Linear(Drop(SiLU(Linear(SiLU(modulate(LN(h), emb))))))`` where ``modulate``
is the scale-shift of ADM (Dhariwal & Nichol 2021) driven by the time/condition embedding, and
the last linear of every block is zero-initialised so blocks start as the identity.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .embeddings import ConditionEmbedding, as_batch_t, zero_module

__all__ = ["ResidualMLP"]


class _ResidualMLPBlock(nn.Module):
    def __init__(self, hidden: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * hidden))
        self.fc1 = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = zero_module(nn.Linear(hidden, hidden))

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.modulation(emb).chunk(2, dim=-1)  # (B, H) each
        y = self.norm(h) * (1 + scale) + shift
        y = self.fc2(self.drop(torch.nn.functional.silu(self.fc1(torch.nn.functional.silu(y)))))
        return h + y


class ResidualMLP(nn.Module):
    """Residual MLP denoiser ``forward(x (B, D), t (B,), cond) -> (B, D)``.

    Conditions: ``cond["class"]`` (``num_classes``), ``cond[vector_key]`` of dim ``cond_dim``
    (a global vector, FiLM through the embedding), honouring ``cond["null_mask"]``.
    The output layer is zero-initialised (``zero_init_output``), so the net outputs 0 at init.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 4,
        num_classes: int | None = None,
        cond_dim: int | None = None,
        emb_dim: int | None = None,
        dropout: float = 0.0,
        time_embedding: str = "sinusoidal",
        time_scale: float = 1.0,
        vector_key: str = "vector",
        zero_init_output: bool = True,
    ) -> None:
        super().__init__()
        self.dim = dim
        emb_dim = emb_dim or hidden
        self.embed = ConditionEmbedding(
            emb_dim,
            freq_dim=min(256, max(2 * (hidden // 2), 32)),
            time_embedding=time_embedding,
            time_scale=time_scale,
            num_classes=num_classes,
            cond_dim=cond_dim,
            vector_key=vector_key,
        )
        self.accepts_null_mask = self.embed.is_conditional
        self.proj_in = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            _ResidualMLPBlock(hidden, emb_dim, dropout) for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(hidden)
        self.proj_out = nn.Linear(hidden, dim)
        if zero_init_output:
            zero_module(self.proj_out)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"ResidualMLP expects x of shape (B, {self.dim}), got {tuple(x.shape)}"
            )
        t = as_batch_t(t, x.shape[0], x.device)
        emb = self.embed(t, cond)  # (B, E)
        h = self.proj_in(x)  # (B, H)
        for block in self.blocks:
            h = block(h, emb)
        return self.proj_out(torch.nn.functional.silu(self.norm_out(h)))  # (B, D)
