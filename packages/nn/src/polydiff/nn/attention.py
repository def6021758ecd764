"""Multi-head attention on ``F.scaled_dot_product_attention`` with separate q/k/v/out projections.

Separate ``to_q``, ``to_k``, ``to_v``, ``to_out`` linears keep self- and cross-attention one class
and give LoRA (``polydiff.nn.lora``) stable module names to target. Masks follow one convention:
a bool mask is True where attention is *allowed*; a float mask is added to the logits.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import get_null_mask, zero_module

__all__ = ["Attention", "combine_masks", "text_context"]


def combine_masks(
    batch: int,
    q_len: int,
    k_len: int,
    key_padding_mask: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    causal: bool = False,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """One SDPA mask from a key-padding mask (B, L) (True = real token), an ``attn_mask``
    broadcastable to (B, heads, N, L) (bool: True = allowed, float: additive bias) and ``causal``.

    Returns None, a bool mask or a float mask, broadcastable to (B, heads, N, L).
    A query row whose keys are all masked would give NaN; such rows fall back to attending to
    every key (this only happens for empty sequences, whose tokens should be zero anyway).
    """
    allowed = None
    if key_padding_mask is not None:
        if key_padding_mask.shape != (batch, k_len):
            raise ValueError(
                f"key_padding_mask must have shape ({batch}, {k_len}), "
                f"got {tuple(key_padding_mask.shape)}"
            )
        allowed = key_padding_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
    if causal:
        tri = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
        allowed = tri[None, None] if allowed is None else allowed & tri
    bias = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = attn_mask if allowed is None else allowed & attn_mask
        else:
            bias = attn_mask
    if allowed is not None:
        allowed = allowed | ~allowed.any(dim=-1, keepdim=True)  # no all-masked rows (NaN)
        if bias is None:
            return allowed
        return torch.where(allowed, bias, torch.full((), float("-inf"), dtype=bias.dtype))
    return bias


class Attention(nn.Module):
    """Multi-head (cross-)attention: queries from ``x`` (B, N, C), keys/values from ``context``
    (B, L, C_ctx) or from ``x`` itself (Vaswani et al. 2017), computed with SDPA.

    ``zero_out=True`` zero-initialises the output projection so a residual branch starts at 0.
    """

    def __init__(
        self,
        dim: int,
        context_dim: int | None = None,
        heads: int = 8,
        head_dim: int | None = None,
        qkv_bias: bool = False,
        dropout: float = 0.0,
        zero_out: bool = False,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        if head_dim is None:
            if dim % heads:
                raise ValueError(f"attention dim {dim} is not divisible by heads {heads}")
            head_dim = dim // heads
        inner = heads * head_dim
        self.heads, self.head_dim, self.dropout = heads, head_dim, dropout
        self.is_cross = context_dim is not None
        kv_dim = context_dim or dim
        self.to_q = nn.Linear(dim, inner, bias=qkv_bias)
        self.to_k = nn.Linear(kv_dim, inner, bias=qkv_bias)
        self.to_v = nn.Linear(kv_dim, inner, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.to_out = nn.Linear(inner, dim)
        if zero_out:
            zero_module(self.to_out)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        b, n, _ = x.shape
        ctx = x if context is None else context
        l = ctx.shape[1]
        q = self.q_norm(self.to_q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2))
        k = self.k_norm(self.to_k(ctx).view(b, l, self.heads, self.head_dim).transpose(1, 2))
        v = self.to_v(ctx).view(b, l, self.heads, self.head_dim).transpose(1, 2)  # (B, h, L, d)
        mask = combine_masks(b, n, l, key_padding_mask, attn_mask, causal, x.device)
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, h, N, d)
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


def text_context(
    cond: Mapping[str, torch.Tensor] | None, batch: int, dim: int, key: str = "text"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(cond["text"] (B, L, dim), cond["text_mask"] (B, L) or None)`` with null rows zeroed.

    ``key`` selects another token condition (e.g. ``"obs"`` with ``"obs_mask"``).

    Rows with ``cond["null_mask"]`` get zero tokens (and a mask of ones, so their cross-attention,
    whose k/v projections have no bias, contributes nothing but the output bias). A fully-null
    batch may omit ``"text"``: one zero token is used.
    """
    null = get_null_mask(cond, batch)
    if cond is None or cond.get("text") is None:
        if null is not None and bool(null.all()):
            return torch.zeros(batch, 1, dim, device=null.device), None
        raise KeyError(f"this network cross-attends to text tokens of dim {dim}: pass cond['text']")
    text = cond["text"]
    if text.ndim != 3 or text.shape[0] != batch or text.shape[2] != dim:
        raise ValueError(
            f"cond['text'] must have shape ({batch}, L, {dim}), got {tuple(text.shape)}"
        )
    mask = cond.get("text_mask")
    if mask is not None:
        if mask.shape != text.shape[:2]:
            raise ValueError(
                f"cond['text_mask'] must have shape {tuple(text.shape[:2])}, "
                f"got {tuple(mask.shape)}"
            )
        mask = mask.bool()
    if null is not None:
        text = text * (~null).to(text.dtype)[:, None, None]
        if mask is not None:
            mask = mask | null[:, None]
    return text, mask
