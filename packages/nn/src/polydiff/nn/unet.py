"""One N-d U-Net (1-D trajectories/waveforms, 2-D images/spectrograms, 3-D voxels).

The ADM architecture of Dhariwal & Nichol 2021 ("Diffusion Models Beat GANs", improved-diffusion
``unet.py``) written once for ``dims = 1 | 2 | 3``:

- residual blocks: GroupNorm -> SiLU -> conv, then the embedding as scale-shift norm
  ``GN(h) * (1 + s) + b`` (ADM sec. 3), SiLU -> dropout -> zero-initialised conv, plus a skip;
- self-attention at chosen levels through ``F.scaled_dot_product_attention``, optionally followed
  by cross-attention to text tokens (Rombach et al. 2022);
- strided-conv downsampling, nearest + conv upsampling, skip connections by concatenation;
- conditions: ``cond["class"]`` (learned null class), ``cond["vector"]`` (global vector as FiLM
  through the embedding, Diffusion Policy), ``cond["text"]``/``"text_mask"``/``"text_pooled"``,
  ``cond["concat"]`` (channel-concatenated: low-res image, mask, context), all honouring
  ``cond["null_mask"]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from .attention import Attention, text_context
from .embeddings import ConditionEmbedding, as_batch_t, get_null_mask, zero_module

__all__ = [
    "UNET_SIZES",
    "AttentionBlock",
    "ResBlock",
    "UNet",
    "concat_condition",
    "conv_nd",
    "group_norm",
    "unet",
]


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


def conv_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """``nn.Conv{dims}d``."""
    if dims not in (1, 2, 3):
        raise ValueError(f"dims must be 1, 2 or 3, got {dims}")
    return (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1](*args, **kwargs)


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with ``gcd(channels, groups)`` groups, so any channel count works."""
    return nn.GroupNorm(math.gcd(channels, groups), channels, eps=1e-5)


class ResBlock(nn.Module):
    """ADM residual block: scale-shift norm from the embedding, zero-initialised output conv.

    ``forward(x, emb_act)`` takes the embedding already passed through SiLU (shared by all blocks).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        dims: int = 2,
        dropout: float = 0.0,
        kernel_size: int = 3,
        norm_groups: int = 32,
        scale_shift: bool = True,
    ) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.scale_shift = scale_shift
        self.in_norm = group_norm(in_channels, norm_groups)
        self.in_conv = conv_nd(dims, in_channels, out_channels, kernel_size, padding=pad)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels if scale_shift else out_channels)
        self.out_norm = group_norm(out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_module(
            conv_nd(dims, out_channels, out_channels, kernel_size, padding=pad)
        )
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else conv_nd(dims, in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb_act: torch.Tensor) -> torch.Tensor:
        h = self.in_conv(F.silu(self.in_norm(x)))  # (B, C_out, *S)
        e = self.emb_proj(emb_act)[(...,) + (None,) * (x.ndim - 2)]  # (B, C_out or 2 C_out, 1..)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = torch.addcmul(shift, self.out_norm(h), 1 + scale)  # GN(h) (1 + s) + b
        else:
            h = self.out_norm(h + e)
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all positions (then optional cross-attention to context tokens).

    Both branches are residual with zero-initialised output projections (identity at init).
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 4,
        head_dim: int | None = None,
        context_dim: int | None = None,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        if head_dim is not None:
            if channels % head_dim:
                raise ValueError(f"channels {channels} not divisible by head_dim {head_dim}")
            num_heads = channels // head_dim
        self.norm = group_norm(channels, norm_groups)
        self.attn = Attention(channels, heads=num_heads, qkv_bias=True, zero_out=True)
        self.cross = None
        if context_dim is not None:
            self.cross_norm = nn.LayerNorm(channels)
            self.cross = Attention(channels, context_dim, heads=num_heads, zero_out=True)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, c, *spatial = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        h = tokens + self.attn(self.norm(x).flatten(2).transpose(1, 2))
        if self.cross is not None:
            h = h + self.cross(self.cross_norm(h), context, key_padding_mask=context_mask)
        return h.transpose(1, 2).reshape(b, c, *spatial)


class Downsample(nn.Module):
    """Strided 3x3 convolution halving every spatial size."""

    def __init__(self, channels: int, dims: int) -> None:
        super().__init__()
        self.conv = conv_nd(dims, channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int, dims: int) -> None:
        super().__init__()
        self.conv = conv_nd(dims, channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def concat_condition(
    x: torch.Tensor,
    cond: Mapping[str, torch.Tensor] | None,
    channels: int,
    null_concat: bool = True,
) -> torch.Tensor:
    """Channel-concatenated conditioning ``cat([x, cond["concat"]], 1)``: (B, C + channels, ...).

    With ``null_concat``, rows with ``cond["null_mask"]`` see zeros instead of the condition, and a
    fully-null batch may omit it. ``channels == 0`` returns ``x`` unchanged.
    """
    if not channels:
        return x
    b = x.shape[0]
    null = get_null_mask(cond, b)
    expected = (b, channels, *x.shape[2:])
    if cond is None or cond.get("concat") is None:
        if null is not None and bool(null.all()) and null_concat:
            return torch.cat([x, x.new_zeros(expected)], dim=1)
        raise KeyError(f"this network concatenates {channels} channels: pass cond['concat']")
    c = cond["concat"]
    if tuple(c.shape) != expected:
        raise ValueError(f"cond['concat'] must have shape {expected}, got {tuple(c.shape)}")
    if null is not None and null_concat:
        c = c * (~null).to(c.dtype)[(...,) + (None,) * (c.ndim - 1)]
    return torch.cat([x, c.to(x.dtype)], dim=1)


class _Stage(nn.ModuleList):
    """A sequence of layers dispatched by type (ResBlock gets emb, AttentionBlock gets context)."""

    def forward(self, h, emb_act, context, context_mask):
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb_act)
            elif isinstance(layer, AttentionBlock):
                h = layer(h, context, context_mask)
            else:
                h = layer(h)
        return h


def adm_stages(
    model_channels: int,
    channel_mult: Sequence[int],
    num_res_blocks: int,
    res: Callable[[int, int], nn.Module],
    mixers: Callable[[int, int | None], list[nn.Module]],
    stage_cls: type[nn.ModuleList],
    dims: int = 2,
) -> tuple[nn.ModuleList, nn.ModuleList, nn.ModuleList, int]:
    """The ADM encoder / middle / decoder layout (Dhariwal & Nichol 2021), shared by the U-Net
    and the video U-Net: ``(down, mid, up, out_channels)``.

    Each stage is ``stage_cls([res(c_in, c_out), *mixers(c_out, level)])`` (``level=None`` in
    the middle, between two residual blocks); a level ends with a stride-2 downsample (encoder)
    or nearest upsample (decoder), and decoder blocks take the matching encoder skip by
    concatenation, hence ``c_in = c + c_skip``.
    """
    levels, ch = len(channel_mult), model_channels
    down, skips = nn.ModuleList(), [ch]
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            stage = stage_cls([res(ch, model_channels * mult)])
            ch = model_channels * mult
            stage.extend(mixers(ch, level))
            down.append(stage)
            skips.append(ch)
        if level != levels - 1:
            down.append(stage_cls([Downsample(ch, dims)]))
            skips.append(ch)
    mid = stage_cls([res(ch, ch), *mixers(ch, None), res(ch, ch)])
    up = nn.ModuleList()
    for level, mult in reversed(list(enumerate(channel_mult))):
        for i in range(num_res_blocks + 1):
            stage = stage_cls([res(ch + skips.pop(), model_channels * mult)])
            ch = model_channels * mult
            stage.extend(mixers(ch, level))
            if level and i == num_res_blocks:
                stage.append(Upsample(ch, dims))
            up.append(stage)
    return down, mid, up, ch


# --------------------------------------------------------------------------------------------
# U-Net
# --------------------------------------------------------------------------------------------


class UNet(nn.Module):
    """N-d ADM U-Net ``forward(x (B, C, *S), t (B,), cond) -> (B, C_out, *S)``.

    Level ``i`` has ``model_channels * channel_mult[i]`` channels and ``num_res_blocks`` residual
    blocks (attention after each when ``i in attention_levels``); each spatial size must be
    divisible by ``2 ** (len(channel_mult) - 1)``. ``num_heads`` is overridden by ``head_dim``.
    ``scale_shift_norm=False`` adds the embedding before the norm instead (DDPM, Ho et al. 2020).

    ``channels_last`` (default: on for ``dims=2``) keeps conv weights and activations in NHWC,
    the layout oneDNN / cuDNN convolve fastest and in which the attention block's token views
    are free; the output is returned contiguous (NCHW), so callers never see the difference.
    """

    def __init__(
        self,
        dims: int = 2,
        in_channels: int = 3,
        out_channels: int | None = None,
        model_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] | None = None,
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
        mid_attention: bool = True,
        kernel_size: int = 3,
        norm_groups: int = 32,
        scale_shift_norm: bool = True,
        time_embedding: str = "sinusoidal",
        time_scale: float = 1.0,
        emb_dim: int | None = None,
        use_checkpoint: bool = False,
        channels_last: bool | None = None,
    ) -> None:
        super().__init__()
        if dims not in (1, 2, 3):
            raise ValueError(f"dims must be 1, 2 or 3, got {dims}")
        levels = len(channel_mult)
        if attention_levels is None:
            attention_levels = tuple(range(1, levels))
        bad = [lvl for lvl in attention_levels if not 0 <= lvl < levels]
        if bad:
            raise ValueError(f"attention_levels {bad} outside [0, {levels}) for {levels} levels")
        self.dims, self.in_channels = dims, in_channels
        self.out_channels = out_channels or in_channels
        self.concat_channels, self.context_dim = concat_channels, context_dim
        self.null_concat, self.use_checkpoint = null_concat, use_checkpoint
        self.levels = levels
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
            return ResBlock(
                cin, cout, emb_dim, dims, dropout, kernel_size, norm_groups, scale_shift_norm
            )

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, num_heads, head_dim, context_dim, norm_groups)

        self.conv_in = conv_nd(
            dims,
            in_channels + concat_channels,
            model_channels,
            kernel_size,
            padding=kernel_size // 2,
        )

        def mixers(ch: int, level: int | None) -> list[nn.Module]:
            wanted = mid_attention if level is None else level in attention_levels
            return [attn(ch)] if wanted else []

        self.down, self.mid, self.up, ch = adm_stages(
            model_channels, channel_mult, num_res_blocks, res, mixers, _Stage, dims
        )
        self.norm_out = group_norm(ch, norm_groups)
        self.conv_out = zero_module(
            conv_nd(dims, ch, self.out_channels, kernel_size, padding=kernel_size // 2)
        )
        self.memory_format = torch.contiguous_format
        if channels_last if channels_last is not None else dims == 2:
            if dims == 1:
                raise ValueError("channels_last needs dims=2 or 3")
            self.memory_format = torch.channels_last if dims == 2 else torch.channels_last_3d
            self.to(memory_format=self.memory_format)

    # ----------------------------------------------------------------------------------------

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming the shape if ``x`` does not fit this U-Net."""
        if x.ndim != self.dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet(dims={self.dims}, in_channels={self.in_channels}) expects x of shape "
                f"(B, {self.in_channels}{', S' * self.dims}), got {tuple(x.shape)}"
            )
        factor = 2 ** (self.levels - 1)
        if any(s % factor for s in x.shape[2:]):
            raise ValueError(
                f"UNet with {self.levels} levels needs every spatial size divisible by {factor}; "
                f"got x of shape {tuple(x.shape)} (pad or crop the input)"
            )

    def _run(self, stage: _Stage, *args: Any) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return grad_checkpoint(stage, *args, use_reentrant=False)
        return stage(*args)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: Mapping[str, torch.Tensor] | None = None,
        *,
        skip_residuals: Sequence[torch.Tensor] | None = None,
        mid_residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoiser network output. ``skip_residuals`` (one per skip feature: conv_in, then each
        down stage) and ``mid_residual`` are added before the decoder uses them: the injection
        points of ControlNet (Zhang et al. 2023)."""
        self.check_input(x)
        b = x.shape[0]
        t = as_batch_t(t, b, x.device)
        emb_act = F.silu(self.embed(t, cond))  # (B, E), SiLU shared by every ResBlock
        context = context_mask = None
        if self.context_dim is not None:
            context, context_mask = text_context(cond, b, self.context_dim)
            context = context.to(x.dtype)
        h = concat_condition(x, cond, self.concat_channels, self.null_concat)
        h = self.conv_in(h.contiguous(memory_format=self.memory_format))  # (B, C0, *S)
        hs = [h]
        for stage in self.down:
            h = self._run(stage, h, emb_act, context, context_mask)
            hs.append(h)
        h = self._run(self.mid, h, emb_act, context, context_mask)
        if mid_residual is not None:
            h = h + mid_residual
        if skip_residuals is not None:
            if len(skip_residuals) != len(hs):
                raise ValueError(f"need {len(hs)} skip residuals, got {len(skip_residuals)}")
            hs = [s + r for s, r in zip(hs, skip_residuals)]
        for stage in self.up:
            h = self._run(stage, torch.cat([h, hs.pop()], dim=1), emb_act, context, context_mask)
        return self.conv_out(F.silu(self.norm_out(h))).contiguous()  # (B, C_out, *S)


# --------------------------------------------------------------------------------------------
# Named sizes
# --------------------------------------------------------------------------------------------

# One table for the whole project: a size name denotes exactly one network (modalities pick
# from it, e.g. polydiff.image.IMAGE_UNET_SIZES, instead of redefining a name). Until config
# version 2 the image package had its own "tiny" / "small" / "base": now "tiny-c16" /
# "small-c32" / "small" (runs trained before are migrated when opened, polydiff.train.run).
UNET_SIZES: dict[str, dict[str, Any]] = {
    # 2-D CPU recipes on 16x16 digits / 32x32 shapes (~0.2 M / ~1-2 M parameters)
    "tiny-c16": dict(
        model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2
    ),
    "small-c32": dict(
        model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_levels=(2,),
        num_heads=4,
    ),
    # tests and CPU smoke runs
    "tiny": dict(
        model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2
    ),
    "small": dict(
        model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention_levels=(1, 2)
    ),
    # DDPM CIFAR-10 layout (Ho et al. 2020); 38.3M here (scale-shift norm, mid attention)
    "ddpm-cifar": dict(
        model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_levels=(1,),
        dropout=0.1,
    ),
    # ADM ImageNet 64x64 (Dhariwal & Nichol 2021)
    "adm-64": dict(
        model_channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
        attention_levels=(1, 2, 3), head_dim=64,
    ),
    # Diffusion Policy ConditionalUnet1D-like (Chi et al. 2023): 1-D, kernel 5, no attention
    "dp-1d": dict(
        dims=1, model_channels=256, channel_mult=(1, 2, 4), num_res_blocks=2, attention_levels=(),
        mid_attention=False, kernel_size=5, norm_groups=8,
    ),
    # Diffuser temporal U-Net-like (Janner et al. 2022): 1-D over horizon, no attention
    "diffuser-1d": dict(
        dims=1, model_channels=32, channel_mult=(1, 2, 4, 8), num_res_blocks=1, attention_levels=(),
        mid_attention=False, kernel_size=5, norm_groups=8,
    ),
}  # fmt: skip


def unet(size: str, **overrides: Any) -> UNet:
    """Build a :class:`UNet` of a named size from :data:`UNET_SIZES`, with keyword overrides."""
    if size not in UNET_SIZES:
        raise KeyError(f"unknown UNet size {size!r}; available: {sorted(UNET_SIZES)}")
    return UNet(**{**UNET_SIZES[size], **overrides})
