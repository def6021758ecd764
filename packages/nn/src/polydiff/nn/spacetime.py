"""Factorised space-time blocks and a video U-Net (Ho et al. 2022, "Video Diffusion Models").

Video tensors are (B, C, F, H, W). Inside the network frames are folded into the batch,
``(B*F, C, H, W)``, so residual blocks, spatial self-/cross-attention and up/down sampling act per
frame (the paper's space-only 3-D convolutions); :class:`TemporalAttention` then attends over the
F frames at every pixel, with a learned T5 relative position bias (Raffel et al. 2020, sec. 2.1).

Joint image-video training: ``frames_independent`` (bool, or a bool tensor (B,) per sample, also
read from ``cond["frames_independent"]``) restricts temporal attention to the identity, so each
frame is processed exactly as a separate one-frame video (Ho et al. 2022, sec. 3.1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from .attention import Attention, text_context
from .embeddings import ConditionEmbedding, as_batch_t, zero_module
from .unet import (
    AttentionBlock,
    ResBlock,
    adm_stages,
    concat_condition,
    conv_nd,
    group_norm,
)

__all__ = [
    "RelativePositionBias",
    "SpaceTimeBlock",
    "TemporalAttention",
    "TemporalConv",
    "VideoUNet",
    "frames_independent_mask",
    "t5_relative_position_bucket",
]


# --------------------------------------------------------------------------------------------
# Temporal attention with T5 relative position bias
# --------------------------------------------------------------------------------------------


def t5_relative_position_bucket(
    relative_position: torch.Tensor,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> torch.Tensor:
    """T5 bucket of ``relative_position = key_pos - query_pos`` (Raffel et al. 2020).

    Half the buckets (per direction) hold exact small distances, the rest are logarithmically
    spaced up to ``max_distance``; larger distances share the last bucket.
    """
    n = -relative_position
    ret = torch.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        ret = ret + (n < 0).long() * num_buckets
        n = n.abs()
    else:
        n = n.clamp(min=0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    large = (
        max_exact
        + (
            torch.log(n.float().clamp(min=1) / max_exact)
            / math.log(max_distance / max_exact)
            * (num_buckets - max_exact)
        ).long()
    )
    large = large.clamp(max=num_buckets - 1)
    return ret + torch.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """Learned per-head bias ``b[h, bucket(j - i)]`` added to attention logits: (heads, F, F)."""

    def __init__(self, heads: int, num_buckets: int = 32, max_distance: int = 128) -> None:
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.table = nn.Embedding(num_buckets, heads)

    def forward(self, length: int, device: torch.device | None = None) -> torch.Tensor:
        pos = torch.arange(length, device=device)
        buckets = t5_relative_position_bucket(
            pos[None, :] - pos[:, None], True, self.num_buckets, self.max_distance
        )  # (F, F)
        return self.table(buckets).permute(2, 0, 1)  # (heads, F, F)


def frames_independent_mask(
    frames_independent: bool | torch.Tensor | None, batch: int, device: torch.device
) -> torch.Tensor | None:
    """Normalise the switch to a bool tensor (B,) (True = no temporal mixing), or None."""
    if frames_independent is None:
        return None
    flag = torch.as_tensor(frames_independent, device=device).bool()
    if flag.ndim == 0:
        flag = flag.expand(batch)
    if flag.shape != (batch,):
        raise ValueError(
            f"frames_independent must be a bool or have shape ({batch},), got {tuple(flag.shape)}"
        )
    return flag if bool(flag.any()) else None


class TemporalAttention(nn.Module):
    """Residual self-attention over frames at each pixel, with T5 relative position bias.

    ``forward(h (B*F, C, H, W), frames, independent (B,) or None)``; the output projection is
    zero-initialised, so the layer is the identity at init.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 4,
        head_dim: int | None = None,
        num_buckets: int = 32,
        max_distance: int = 128,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        if head_dim is not None:
            num_heads = channels // head_dim
        self.norm = group_norm(channels, norm_groups)
        self.attn = Attention(channels, heads=num_heads, qkv_bias=True, zero_out=True)
        self.rel_pos = RelativePositionBias(num_heads, num_buckets, max_distance)

    def forward(
        self, h: torch.Tensor, frames: int, independent: torch.Tensor | None = None
    ) -> torch.Tensor:
        bf, c, hh, ww = h.shape
        b, n = bf // frames, hh * ww
        tokens = self.norm(h).view(b, frames, c, n).permute(0, 3, 1, 2).reshape(b * n, frames, c)
        bias = self.rel_pos(frames, h.device).to(h.dtype)[None]  # (1, heads, F, F)
        if independent is not None:
            eye = torch.eye(frames, dtype=torch.bool, device=h.device)
            allowed = eye | ~independent[:, None, None]  # (B, F, F)
            allowed = allowed.repeat_interleave(n, dim=0)[:, None]  # (B*H*W, 1, F, F)
            bias = bias.masked_fill(~allowed, float("-inf"))
        out = self.attn(tokens, attn_mask=bias)  # (B*H*W, F, C)
        return h + out.view(b, n, frames, c).permute(0, 2, 3, 1).reshape(bf, c, hh, ww)


class TemporalConv(nn.Module):
    """Residual 1-D convolution over frames at each pixel: GroupNorm, SiLU, ``Conv(k, 1, 1)``
    (zero padding in time), zero-initialised so the layer is the identity at init.

    The pseudo-3-D convolution of Make-A-Video (Singer et al. 2022, sec. 3.2) and the temporal
    convolution blocks of ModelScope / VideoLDM (Blattmann et al. 2023): a fixed local stencil over
    neighbouring frames (e.g. a finite difference, i.e. a velocity), which softmax attention (a
    convex combination of frames per head) expresses only through several heads.
    ``forward(h (B*F, C, H, W), frames, independent (B,) or None)``: rows with ``independent``
    True get the centre tap only, as each frame alone would (joint image-video training).
    """

    def __init__(self, channels: int, kernel_size: int = 3, norm_groups: int = 32) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f"temporal_conv (a kernel over frames) must be odd and >= 1, got {kernel_size}"
            )
        self.norm = group_norm(channels, norm_groups)
        self.conv = zero_module(
            nn.Conv3d(channels, channels, (kernel_size, 1, 1), padding=(kernel_size // 2, 0, 0))
        )

    def forward(
        self, h: torch.Tensor, frames: int, independent: torch.Tensor | None = None
    ) -> torch.Tensor:
        bf, c, hh, ww = h.shape
        z = F.silu(self.norm(h)).view(bf // frames, frames, c, hh, ww).transpose(1, 2)
        out = self.conv(z)  # (B, C, F, H, W)
        if independent is not None:  # a one-frame video sees only the centre tap
            k = self.conv.kernel_size[0] // 2
            centre = F.conv3d(z, self.conv.weight[:, :, k : k + 1], self.conv.bias)
            out = torch.where(independent[:, None, None, None, None], centre, out)
        return h + out.transpose(1, 2).reshape(bf, c, hh, ww)


class SpaceTimeBlock(nn.Module):
    """Factorised attention: spatial self-(+cross-)attention per frame, then (optionally) a
    :class:`TemporalConv` and temporal attention per pixel.
    ``forward(h (B*F, C, H, W), frames, context, context_mask, independent)``."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 4,
        head_dim: int | None = None,
        context_dim: int | None = None,
        spatial: bool = True,
        temporal: bool = True,
        num_buckets: int = 32,
        max_distance: int = 128,
        norm_groups: int = 32,
        temporal_conv: int = 0,
    ) -> None:
        super().__init__()
        self.spatial = (
            AttentionBlock(channels, num_heads, head_dim, context_dim, norm_groups)
            if spatial
            else None
        )
        self.temporal = (
            TemporalAttention(channels, num_heads, head_dim, num_buckets, max_distance, norm_groups)
            if temporal
            else None
        )
        self.temporal_conv = (
            TemporalConv(channels, temporal_conv, norm_groups)
            if temporal and temporal_conv
            else None
        )

    def forward(
        self,
        h: torch.Tensor,
        frames: int,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        independent: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.spatial is not None:
            h = self.spatial(h, context, context_mask)
        if self.temporal_conv is not None:
            h = self.temporal_conv(h, frames, independent)
        if self.temporal is not None:
            h = self.temporal(h, frames, independent)
        return h


class _VideoStage(nn.ModuleList):
    def forward(self, h, emb_act, frames, context, context_mask, independent):
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb_act)
            elif isinstance(layer, SpaceTimeBlock):
                h = layer(h, frames, context, context_mask, independent)
            else:
                h = layer(h)
        return h


# --------------------------------------------------------------------------------------------
# Video U-Net
# --------------------------------------------------------------------------------------------


class VideoUNet(nn.Module):
    """3-D video U-Net ``forward(x (B, C, F, H, W), t (B,), cond, frames_independent=None)``.

    The ADM layout of :class:`~polydiff.nn.unet.UNet` with per-frame residual blocks and
    :class:`SpaceTimeBlock` s: spatial attention at ``attention_levels``, temporal attention at
    ``temporal_levels`` (default: every level) and in the middle, each preceded by a
    :class:`TemporalConv` of kernel ``temporal_conv`` frames (0: none). H and W must be divisible by
    ``2 ** (len(channel_mult) - 1)``; any number of frames works. Conditions as for ``UNet``
    (``cond["concat"]`` has shape (B, C_c, F, H, W)).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        model_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] | None = None,
        temporal_levels: Sequence[int] | None = None,
        temporal_conv: int = 0,
        num_heads: int = 4,
        head_dim: int | None = None,
        dropout: float = 0.0,
        num_classes: int | None = None,
        context_dim: int | None = None,
        pooled_dim: int | None = None,
        concat_channels: int = 0,
        cond_dim: int | None = None,
        vector_key: str = "vector",
        null_concat: bool = True,
        num_buckets: int = 32,
        max_distance: int = 128,
        norm_groups: int = 32,
        time_embedding: str = "sinusoidal",
        time_scale: float = 1.0,
        emb_dim: int | None = None,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        levels = len(channel_mult)
        if attention_levels is None:
            attention_levels = tuple(range(1, levels))
        if temporal_levels is None:
            temporal_levels = tuple(range(levels))
        self.in_channels, self.out_channels = in_channels, out_channels or in_channels
        self.levels, self.context_dim = levels, context_dim
        self.concat_channels, self.null_concat = concat_channels, null_concat
        self.use_checkpoint = use_checkpoint
        emb_dim = emb_dim or 4 * model_channels
        self.embed = ConditionEmbedding(
            emb_dim,
            freq_dim=model_channels,
            time_embedding=time_embedding,
            time_scale=time_scale,
            num_classes=num_classes,
            cond_dim=cond_dim,
            pooled_dim=pooled_dim,
            vector_key=vector_key,
        )
        self.accepts_null_mask = self.embed.is_conditional or bool(context_dim or concat_channels)

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, 2, dropout, 3, norm_groups)

        def st(ch: int, level: int | None) -> list[nn.Module]:
            spatial = level is None or level in attention_levels
            temporal = level is None or level in temporal_levels
            if not (spatial or temporal):
                return []
            return [
                SpaceTimeBlock(
                    ch, num_heads, head_dim, context_dim if spatial else None, spatial, temporal,
                    num_buckets, max_distance, norm_groups, temporal_conv,
                )
            ]  # fmt: skip

        self.conv_in = conv_nd(2, in_channels + concat_channels, model_channels, 3, padding=1)
        self.down, self.mid, self.up, ch = adm_stages(
            model_channels, channel_mult, num_res_blocks, res, st, _VideoStage
        )
        self.norm_out = group_norm(ch, norm_groups)
        self.conv_out = zero_module(conv_nd(2, ch, self.out_channels, 3, padding=1))

    def _run(self, stage: _VideoStage, *args: Any) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return grad_checkpoint(stage, *args, use_reentrant=False)
        return stage(*args)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: Mapping[str, torch.Tensor] | None = None,
        frames_independent: bool | torch.Tensor | None = None,
    ) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"VideoUNet expects x of shape (B, {self.in_channels}, F, H, W), "
                f"got {tuple(x.shape)}"
            )
        factor = 2 ** (self.levels - 1)
        if x.shape[3] % factor or x.shape[4] % factor:
            raise ValueError(
                f"VideoUNet with {self.levels} levels needs H and W divisible by {factor}; "
                f"got x of shape {tuple(x.shape)}"
            )
        b, _, frames, hh, ww = x.shape
        if frames_independent is None and cond is not None:
            frames_independent = cond.get("frames_independent")
        independent = frames_independent_mask(frames_independent, b, x.device)
        t = as_batch_t(t, b, x.device)
        emb_act = F.silu(self.embed(t, cond)).repeat_interleave(frames, dim=0)  # (B*F, E)
        context = context_mask = None
        if self.context_dim is not None:
            context, context_mask = text_context(cond, b, self.context_dim)
            context = context.to(x.dtype).repeat_interleave(frames, dim=0)  # (B*F, L, D)
            if context_mask is not None:
                context_mask = context_mask.repeat_interleave(frames, dim=0)
        h = concat_condition(x, cond, self.concat_channels, self.null_concat)
        h = h.transpose(1, 2).reshape(b * frames, h.shape[1], hh, ww)  # (B*F, C, H, W)
        h = self.conv_in(h)
        hs = [h]
        args = (emb_act, frames, context, context_mask, independent)
        for stage in self.down:
            h = self._run(stage, h, *args)
            hs.append(h)
        h = self._run(self.mid, h, *args)
        for stage in self.up:
            h = self._run(stage, torch.cat([h, hs.pop()], dim=1), *args)
        h = self.conv_out(F.silu(self.norm_out(h)))  # (B*F, C_out, H, W)
        return h.view(b, frames, self.out_channels, hh, ww).transpose(1, 2)  # (B, C_out, F, H, W)
