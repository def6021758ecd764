"""Transformer denoisers with adaLN-Zero blocks (Peebles & Xie 2023, "Scalable Diffusion Models
with Transformers").

One block, three front ends:

- :class:`TransformerDenoiser` over token sequences (B, T, D): motion frames, trajectories,
  action chunks (sinusoidal or learned positions, optional causal mask and ``cond["seq_mask"]``
  key padding), or a set transformer for points (B, N, 3) with ``pos_embedding="none"``, which is
  permutation-equivariant (Lee et al. 2019);
- :class:`DiT` over non-overlapping patches of 2-D or 3-D grids (fixed sin-cos positions),
  with a registry of named sizes :data:`DIT_SIZES` and the factory :func:`dit`.

Every block can cross-attend to condition tokens (``cond["text"]``), and its feed-forward can
be a top-k mixture of experts (:class:`MoEFeedForward`, Shazeer et al. 2017 / Switch
Transformer, Fedus et al. 2022) whose load-balancing loss is exposed as ``model.aux_loss``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention, text_context
from .embeddings import ConditionEmbedding, as_batch_t, timestep_embedding, zero_module
from .unet import conv_nd

__all__ = [
    "DIT_SIZES",
    "DiT",
    "AdaLNZeroBlock",
    "MoEFeedForward",
    "TransformerDenoiser",
    "dit",
    "load_balancing_loss",
    "sincos_pos_embed",
]


def _gelu_tanh() -> nn.Module:
    return nn.GELU(approximate="tanh")


def _mlp(dim: int, hidden: int, drop: float = 0.0) -> nn.Module:
    """timm's ``Mlp`` (fc1 -> GELU(tanh) -> drop -> fc2 -> drop), imported lazily (timm is slow)."""
    from timm.layers import Mlp

    return Mlp(dim, hidden, act_layer=_gelu_tanh, drop=drop)


def _drop_path(p: float) -> nn.Module:
    """timm's stochastic depth ``DropPath`` (Huang et al. 2016), or Identity when ``p == 0``."""
    if p <= 0:
        return nn.Identity()
    from timm.layers import DropPath

    return DropPath(p)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x (1 + scale) + shift`` with (B, D) parameters over (B, T, D) tokens."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


# --------------------------------------------------------------------------------------------
# Mixture of experts
# --------------------------------------------------------------------------------------------


def load_balancing_loss(probs: torch.Tensor, expert_index: torch.Tensor) -> torch.Tensor:
    """Switch-Transformer balancing loss ``E * sum_e f_e P_e`` (Fedus et al. 2022, eq. 4).

    ``probs`` (N, E) router probabilities, ``expert_index`` (N, k) chosen experts; ``f_e`` is the
    fraction of the N*k assignments sent to expert e and ``P_e`` its mean probability. Equals 1
    for uniform routing and grows to E when every token goes to one confident expert.
    """
    num_experts = probs.shape[-1]
    counts = F.one_hot(expert_index, num_experts).sum(dim=(0, 1)).to(probs.dtype)  # (E,)
    f = counts / expert_index.numel()
    p = probs.mean(dim=0)
    return num_experts * (f * p).sum()


class MoEFeedForward(nn.Module):
    """Top-k mixture of expert MLPs: each token goes to its k most probable experts, whose outputs
    are summed with the renormalised router probabilities (Shazeer et al. 2017).

    After each forward, ``aux_loss`` holds the balancing loss and ``last_expert_index`` (N, k)
    the routing. With one expert it is exactly the plain MLP.
    """

    def __init__(
        self, dim: int, hidden: int, num_experts: int = 4, top_k: int = 2, drop: float = 0.0
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must lie in [1, num_experts={num_experts}], got {top_k}")
        self.num_experts, self.top_k = num_experts, top_k
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.experts = nn.ModuleList(_mlp(dim, hidden, drop) for _ in range(num_experts))
        self.aux_loss = torch.zeros(())
        self.last_expert_index: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, D)
        probs = self.router(flat).float().softmax(dim=-1)  # (N, E)
        gate, index = probs.topk(self.top_k, dim=-1)  # (N, k)
        gate = (gate / gate.sum(dim=-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = (index == e).nonzero(as_tuple=True)
            if token.numel():
                out.index_add_(0, token, expert(flat[token]) * gate[token, slot, None])
        self.aux_loss = load_balancing_loss(probs, index)
        self.last_expert_index = index.detach()
        return out.reshape(shape)


# --------------------------------------------------------------------------------------------
# adaLN-Zero block
# --------------------------------------------------------------------------------------------


class AdaLNZeroBlock(nn.Module):
    """DiT block: ``x += g1 * Attn(modulate(LN(x)))``, optional ``x += CrossAttn(LN(x), ctx)``,
    ``x += g2 * FFN(modulate(LN(x)))``; shift/scale/gate regressed from the embedding by a
    zero-initialised linear, so the block is the identity at init (adaLN-Zero, DiT sec. 3.2).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        emb_dim: int | None = None,
        mlp_ratio: float = 4.0,
        context_dim: int | None = None,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        drop_path: float = 0.0,
        num_experts: int = 0,
        top_k: int = 2,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        emb_dim = emb_dim or dim
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(
            dim, heads=heads, qkv_bias=True, dropout=attn_dropout, qk_norm=qk_norm
        )
        self.cross = None
        if context_dim is not None:
            self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
            self.cross = Attention(dim, context_dim, heads=heads, zero_out=True, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        if num_experts:
            self.mlp: nn.Module = MoEFeedForward(dim, hidden, num_experts, top_k, dropout)
        else:
            self.mlp = _mlp(dim, hidden, dropout)
        self.drop_path = _drop_path(drop_path)
        self.adaLN = nn.Sequential(nn.SiLU(), zero_module(nn.Linear(emb_dim, 6 * dim)))

    def forward(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(emb).chunk(6, dim=-1)  # (B, D)
        h = self.attn(modulate(self.norm1(x), shift1, scale1), None, key_padding_mask, None, causal)
        x = x + self.drop_path(gate1.unsqueeze(1) * h)  # (B, T, D)
        if self.cross is not None:
            x = x + self.drop_path(
                self.cross(self.norm_cross(x), context, key_padding_mask=context_mask)
            )
        h = self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x + self.drop_path(gate2.unsqueeze(1) * h)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a zero-initialised linear to the output features (DiT)."""

    def __init__(self, dim: int, emb_dim: int, out_features: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN = nn.Sequential(nn.SiLU(), zero_module(nn.Linear(emb_dim, 2 * dim)))
        self.linear = zero_module(nn.Linear(dim, out_features))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN(emb).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


# --------------------------------------------------------------------------------------------
# Sequence / set transformer
# --------------------------------------------------------------------------------------------


class TransformerDenoiser(nn.Module):
    """adaLN-Zero transformer ``forward(x (B, T, in_dim), t (B,), cond) -> (B, T, out_dim)``.

    ``pos_embedding``: ``"sinusoidal"`` (frame index, as MDM), ``"learned"`` (needs ``max_len``)
    or ``"none"`` (a set transformer: permutation-equivariant over the T axis).
    ``causal=True`` masks future tokens; ``cond["seq_mask"]`` (B, T) bool marks real tokens
    (padding is neither attended to nor trusted in the output). Conditions as in
    :class:`~polydiff.nn.embeddings.ConditionEmbedding`, plus cross-attention to
    ``cond[context_key]`` tokens when ``context_dim`` is set. After a forward, ``aux_loss`` is
    the summed MoE balancing loss (0 without experts).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int | None = None,
        hidden: int = 384,
        depth: int = 6,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        pos_embedding: str = "sinusoidal",
        max_len: int | None = None,
        causal: bool = False,
        num_classes: int | None = None,
        context_dim: int | None = None,
        context_key: str = "text",
        pooled_dim: int | None = None,
        cond_dim: int | None = None,
        vector_key: str = "vector",
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        drop_path: float = 0.0,
        num_experts: int = 0,
        top_k: int = 2,
        moe_every: int = 1,
        qk_norm: bool = False,
        time_embedding: str = "sinusoidal",
        time_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if pos_embedding not in ("sinusoidal", "learned", "none"):
            raise ValueError(
                f"pos_embedding must be sinusoidal|learned|none, got {pos_embedding!r}"
            )
        if pos_embedding == "learned" and not max_len:
            raise ValueError("pos_embedding='learned' needs max_len")
        self.in_dim, self.out_dim, self.hidden = in_dim, out_dim or in_dim, hidden
        self.pos_embedding, self.max_len, self.causal = pos_embedding, max_len, causal
        self.context_dim, self.context_key = context_dim, context_key
        self.embed = ConditionEmbedding(
            hidden,
            freq_dim=256,
            time_embedding=time_embedding,
            time_scale=time_scale,
            num_classes=num_classes,
            cond_dim=cond_dim,
            pooled_dim=pooled_dim,
            vector_key=vector_key,
        )
        self.accepts_null_mask = self.embed.is_conditional or context_dim is not None
        self.pos = (
            nn.Parameter(torch.randn(max_len, hidden) * 0.02)
            if pos_embedding == "learned"
            else None
        )
        self.blocks = nn.ModuleList(
            AdaLNZeroBlock(
                hidden, heads, hidden, mlp_ratio, context_dim, dropout, attn_dropout,
                drop_path * i / max(depth - 1, 1),
                num_experts if (num_experts and i % moe_every == moe_every - 1) else 0,
                top_k, qk_norm,
            )
            for i in range(depth)
        )  # fmt: skip
        self._init_weights()
        self.proj_in = nn.Linear(in_dim, hidden)
        self.final = FinalLayer(hidden, hidden, self.out_dim)

    def _init_weights(self) -> None:
        # DiT: xavier-uniform linears in the blocks, zero biases; adaLN/out layers stay zero.
        for block in self.blocks:
            for name, m in block.named_modules():
                if (
                    isinstance(m, nn.Linear)
                    and not name.startswith("adaLN")
                    and "to_out" not in name
                ):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear) and name.endswith("attn.to_out"):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)

    @property
    def aux_loss(self) -> torch.Tensor:
        """Sum of the MoE balancing losses of the last forward (0 without experts)."""
        losses = [b.mlp.aux_loss for b in self.blocks if isinstance(b.mlp, MoEFeedForward)]
        return torch.stack(losses).sum() if losses else torch.zeros(())

    def _positions(self, length: int, device: torch.device) -> torch.Tensor | None:
        if self.pos_embedding == "none":
            return None
        if self.pos_embedding == "learned":
            if length > self.max_len:
                raise ValueError(f"sequence length {length} exceeds max_len={self.max_len}")
            return self.pos[:length]
        return timestep_embedding(torch.arange(length, device=device), self.hidden)  # (T, D)

    def _run_blocks(
        self,
        tokens: torch.Tensor,
        t: torch.Tensor,
        cond: Mapping[str, torch.Tensor] | None,
        seq_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = tokens.shape[0]
        emb = self.embed(t, cond)  # (B, D)
        context = context_mask = None
        if self.context_dim is not None:
            context, context_mask = text_context(cond, b, self.context_dim, self.context_key)
            context = context.to(tokens.dtype)
        h = tokens
        for block in self.blocks:
            h = block(h, emb, context, context_mask, seq_mask, self.causal)
        return h, emb

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(
                f"TransformerDenoiser expects x of shape (B, T, {self.in_dim}), "
                f"got {tuple(x.shape)}"
            )
        b, length, _ = x.shape
        t = as_batch_t(t, b, x.device)
        seq_mask = None if cond is None else cond.get("seq_mask")
        if seq_mask is not None and seq_mask.shape != (b, length):
            raise ValueError(
                f"cond['seq_mask'] must have shape ({b}, {length}), got {tuple(seq_mask.shape)}"
            )
        h = self.proj_in(x)  # (B, T, D)
        pos = self._positions(length, x.device)
        if pos is not None:
            h = h + pos.to(h.dtype)
        h, emb = self._run_blocks(h, t, cond, seq_mask)
        return self.final(h, emb)  # (B, T, out_dim)


# --------------------------------------------------------------------------------------------
# DiT over patches
# --------------------------------------------------------------------------------------------


def sincos_pos_embed(
    grid: Sequence[int], dim: int, device: torch.device | None = None
) -> torch.Tensor:
    """Fixed N-d sin-cos positions (N, dim) over a row-major grid: an even share of channels per
    axis, ``[sin, cos]`` each, the *last* axis first (DiT / MAE ``get_2d_sincos_pos_embed``, so
    DiT checkpoints port); channels left over when ``dim`` is not divisible by
    ``2 * len(grid)`` are zero."""
    per_axis = 2 * (dim // (2 * len(grid)))
    coords = torch.meshgrid(
        *[torch.arange(n, dtype=torch.float32, device=device) for n in grid], indexing="ij"
    )
    parts = [
        timestep_embedding(c.reshape(-1), per_axis, flip_sin_to_cos=False) for c in coords[::-1]
    ]
    emb = torch.cat(parts, dim=-1)  # (N, per_axis * n_axes)
    return F.pad(emb, (0, dim - emb.shape[1]))  # (N, dim)


class DiT(TransformerDenoiser):
    """Diffusion Transformer over patches: ``forward(x (B, C, *S), t, cond) -> (B, C_out, *S)``.

    ``input_size`` is an int (square 2-D) or a tuple of 2 or 3 sizes; other sizes divisible by
    ``patch_size`` also work (the sin-cos positions are computed for the actual grid).
    ``out_channels=2*in_channels`` reproduces DiT's learned-sigma output.
    """

    def __init__(
        self,
        input_size: int | Sequence[int] = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden: int = 384,
        depth: int = 12,
        heads: int = 6,
        out_channels: int | None = None,
        num_classes: int | None = None,
        context_dim: int | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        input_size = tuple(input_size)
        dims = len(input_size)
        if dims not in (2, 3):
            raise ValueError(f"DiT input_size must have 2 or 3 sizes, got {input_size}")
        out_channels = out_channels or in_channels
        super().__init__(
            in_dim=in_channels,
            out_dim=out_channels * patch_size**dims,
            hidden=hidden,
            depth=depth,
            heads=heads,
            pos_embedding="none",
            num_classes=num_classes,
            context_dim=context_dim,
            **kwargs,
        )
        del self.proj_in
        self.input_size, self.patch_size, self.dims = input_size, patch_size, dims
        self.in_channels, self.out_channels = in_channels, out_channels
        self.patch_embed = conv_nd(dims, in_channels, hidden, patch_size, stride=patch_size)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        p, dims = self.patch_size, self.dims
        if x.ndim != dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"DiT expects x of shape (B, {self.in_channels}, "
                f"{', '.join(map(str, self.input_size))}), got {tuple(x.shape)}"
            )
        spatial = x.shape[2:]
        if any(s % p for s in spatial):
            raise ValueError(
                f"DiT spatial sizes {tuple(spatial)} must be divisible by patch_size={p}"
            )
        b = x.shape[0]
        t = as_batch_t(t, b, x.device)
        grid = [s // p for s in spatial]
        h = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        h = h + sincos_pos_embed(grid, self.hidden, x.device).to(h.dtype)
        h, emb = self._run_blocks(h, t, cond)
        h = self.final(h, emb)  # (B, N, p^dims * C_out)
        return self._unpatchify(h, grid)

    def _unpatchify(self, h: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        b, p, c, dims = h.shape[0], self.patch_size, self.out_channels, self.dims
        h = h.reshape(b, *grid, *([p] * dims), c)  # (B, g1.., p.., C)
        # -> (B, C, g1, p, g2, p, ...)
        perm = [0, 2 * dims + 1] + [i for a in range(dims) for i in (1 + a, 1 + dims + a)]
        return h.permute(*perm).reshape(b, c, *[g * p for g in grid])


DIT_SIZES: dict[str, dict[str, int]] = {}
for _name, (_depth, _hidden, _heads) in {
    "T": (2, 64, 2),  # tiny, for tests and CPU smoke runs
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}.items():
    for _patch in (2, 4, 8):
        DIT_SIZES[f"DiT-{_name}/{_patch}"] = dict(
            depth=_depth, hidden=_hidden, heads=_heads, patch_size=_patch
        )


def dit(size: str, **overrides: Any) -> DiT:
    """Build a :class:`DiT` of a named size (``"DiT-S/2"``, ... as in the DiT paper)."""
    if size not in DIT_SIZES:
        raise KeyError(f"unknown DiT size {size!r}; available: {sorted(DIT_SIZES)}")
    return DiT(**{**DIT_SIZES[size], **overrides})
