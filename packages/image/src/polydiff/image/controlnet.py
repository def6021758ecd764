"""ControlNet (Zhang et al. 2023): spatial control of a locked U-Net by a trainable encoder copy.

- :class:`ControlNet` wraps a base :class:`polydiff.nn.unet.UNet` whose weights are frozen. It
  holds a trainable copy of the base's embedding, input convolution, encoder (``down``) and middle
  block, initialised from the base weights (paper sec. 3.1); the control map ``cond["control"]``
  (B, C_hint, H, W) enters through a small convolutional encoder whose last layer is zero-
  initialised and is added after the copy's input convolution (paper sec. 3.2, ``c_f = E(c_i)``).
  Every encoder feature of the copy (one per skip connection) and the middle feature pass through
  a zero-initialised 1x1 convolution and are added to the base's skip / middle features (paper
  eq. 2), so at initialisation the wrapped model equals the base model exactly.
- ``polydiff.nn.unet.UNet`` has no hook to add residuals to its skips, so :meth:`ControlNet.forward`
  re-runs the base's public submodules (``embed``, ``conv_in``, ``down``, ``mid``, ``up``,
  ``norm_out``, ``conv_out``) in :func:`unet_forward_with_residuals`; nothing in ``nn`` is edited.
- Data: :class:`OutlineFillDataset`, a Fill50K-like task (outline of a shape -> the filled,
  coloured shape) built from the image package's procedural shapes; :func:`shape_mask` segments a
  shape from its grey background and :func:`mask_iou` scores how well samples follow their map.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from polydiff.nn.attention import text_context
from polydiff.nn.embeddings import as_batch_t, zero_module
from polydiff.nn.unet import UNet, concat_condition, conv_nd

__all__ = [
    "ControlNet",
    "OutlineFillDataset",
    "mask_iou",
    "outline_map",
    "shape_mask",
    "unet_forward_with_residuals",
]

CONTROL_KEY = "control"


# --------------------------------------------------------------------------------------------
# The base U-Net forward with residuals (the hook polydiff.nn.unet.UNet does not expose)
# --------------------------------------------------------------------------------------------


def _context(net: UNet, cond: Mapping[str, torch.Tensor] | None, b: int, dtype: torch.dtype):
    if net.context_dim is None:
        return None, None
    context, mask = text_context(cond, b, net.context_dim)
    return context.to(dtype), mask


def unet_forward_with_residuals(
    net: UNet,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: Mapping[str, torch.Tensor] | None = None,
    skip_residuals: Sequence[torch.Tensor] | None = None,
    mid_residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``net(x, t, cond)`` with ``skip_residuals[i]`` added to the i-th skip feature and
    ``mid_residual`` to the middle block's output (ControlNet's injection points, which
    :meth:`polydiff.nn.unet.UNet.forward` exposes)."""
    return net(x, t, cond, skip_residuals=skip_residuals, mid_residual=mid_residual)


def _skip_channels(net: UNet) -> list[int]:
    """Channels of every skip feature of ``net`` (conv_in, then each down stage)."""
    chans = [net.conv_in.out_channels]
    for stage in net.down:
        last = stage[-1]
        if hasattr(last, "out_conv"):  # ResBlock
            chans.append(last.out_conv.out_channels)
        elif hasattr(last, "conv"):  # Downsample
            chans.append(last.conv.out_channels)
        else:  # AttentionBlock keeps the channel count of the ResBlock before it
            chans.append(stage[0].out_conv.out_channels)
    return chans


# --------------------------------------------------------------------------------------------
# ControlNet
# --------------------------------------------------------------------------------------------


class ControlNet(nn.Module):
    """A locked base U-Net plus a trainable, zero-connected encoder copy (Zhang et al. 2023).

    ``forward(x, t, cond)`` reads the spatial map ``cond["control"]`` of shape
    (B, hint_channels, H, W) (same H, W as x). ``control_scale`` multiplies every residual
    (0 = the base model). Only the copy, the hint encoder and the zero convolutions are trainable;
    ``trainable_state_dict()`` is what a ControlNet checkpoint holds.
    """

    def __init__(
        self,
        base: UNet,
        hint_channels: int = 1,
        hint_hidden: Sequence[int] = (16, 32),
        control_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(base, UNet):
            raise TypeError(f"ControlNet needs a polydiff.nn.unet.UNet base, got {type(base)}")
        if base.dims != 2:
            raise ValueError(f"ControlNet here is for 2-D images; the base has dims={base.dims}")
        self.base = base.requires_grad_(False).eval()
        self.hint_channels, self.control_scale = hint_channels, control_scale
        # trainable copy of the encoder half, initialised from the base (paper sec. 3.1)
        self.embed = copy.deepcopy(base.embed).requires_grad_(True)
        self.conv_in = copy.deepcopy(base.conv_in).requires_grad_(True)
        self.down = copy.deepcopy(base.down).requires_grad_(True)
        self.mid = copy.deepcopy(base.mid).requires_grad_(True)
        # hint encoder E(c_i): conv-SiLU stack at full resolution, zero-initialised output
        layers: list[nn.Module] = []
        ch = hint_channels
        for width in hint_hidden:
            layers += [conv_nd(2, ch, width, 3, padding=1), nn.SiLU()]
            ch = width
        layers.append(zero_module(conv_nd(2, ch, base.conv_in.out_channels, 3, padding=1)))
        self.hint_encoder = nn.Sequential(*layers)
        # one zero-initialised 1x1 convolution per skip feature and one for the middle block
        self.zero_convs = nn.ModuleList(
            zero_module(conv_nd(2, c, c, 1)) for c in _skip_channels(base)
        )
        mid_ch = _skip_channels(base)[-1]
        self.zero_mid = zero_module(conv_nd(2, mid_ch, mid_ch, 1))

    # the copy carries the base's configuration; these mirror what samplers / CFG look for
    @property
    def accepts_null_mask(self) -> bool:
        return bool(self.base.accepts_null_mask)

    def train(self, mode: bool = True) -> ControlNet:
        super().train(mode)
        self.base.eval()  # the locked model never leaves eval mode (dropout, norms)
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor except the locked base's (the ControlNet checkpoint)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("base.")}

    def _hint(self, cond: Mapping[str, torch.Tensor] | None, x: torch.Tensor) -> torch.Tensor:
        if cond is None or cond.get(CONTROL_KEY) is None:
            raise KeyError(f"ControlNet needs the spatial map cond[{CONTROL_KEY!r}]")
        hint = cond[CONTROL_KEY]
        expected = (x.shape[0], self.hint_channels, *x.shape[2:])
        if tuple(hint.shape) != expected:
            raise ValueError(
                f"cond[{CONTROL_KEY!r}] must have shape {expected} (the control map at the "
                f"sample's resolution), got {tuple(hint.shape)}"
            )
        return hint.to(x.dtype)

    def control_residuals(
        self, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, torch.Tensor] | None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The residuals the trainable copy adds to the base's skips and middle block."""
        base = self.base
        b = x.shape[0]
        t = as_batch_t(t, b, x.device)
        emb_act = F.silu(self.embed(t, cond))  # (B, E)
        context, context_mask = _context(base, cond, b, x.dtype)
        h = self.conv_in(concat_condition(x, cond, base.concat_channels, base.null_concat))
        h = h + self.hint_encoder(self._hint(cond, x))  # (B, C0, H, W): z = F(x + Z(c))
        feats = [h]
        for stage in self.down:
            h = stage(h, emb_act, context, context_mask)
            feats.append(h)
        h = self.mid(h, emb_act, context, context_mask)
        skips = [zc(f) * self.control_scale for zc, f in zip(self.zero_convs, feats)]
        return skips, self.zero_mid(h) * self.control_scale

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        self.base.check_input(x)
        skips, mid = self.control_residuals(x, t, cond)
        return unet_forward_with_residuals(
            self.base, x, t, cond, skip_residuals=skips, mid_residual=mid
        )


# --------------------------------------------------------------------------------------------
# Outline -> filled shape data (Fill50K-like) and its metric
# --------------------------------------------------------------------------------------------


def shape_mask(images: torch.Tensor, threshold: float = 0.3) -> torch.Tensor:
    """Segment the coloured shape from the grey background of shapes images.

    ``images`` (B, 3, H, W) in [-1, 1] -> bool (B, H, W): saturation (max - min over RGB, in
    [0, 1] units) above ``threshold``. Every shapes colour is saturated, every background grey.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"shape_mask needs RGB images (B, 3, H, W), got {tuple(images.shape)}")
    rgb = (images.float() + 1) / 2
    return (rgb.amax(1) - rgb.amin(1)) > threshold


def outline_map(mask: torch.Tensor, width: int = 1) -> torch.Tensor:
    """The outline of a bool mask (B, H, W): pixels of the mask with a neighbour outside it
    (morphological gradient, 3x3 erosion repeated ``width`` times). Returns float (B, 1, H, W)
    in {0, 1}."""
    m = mask.float()[:, None]
    eroded = m
    for _ in range(width):
        eroded = -F.max_pool2d(-eroded, 3, stride=1, padding=1)
    return (m - eroded).clamp(0, 1)


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Intersection over union of bool masks (B, H, W) per sample, shape (B,)."""
    inter = (pred & target).flatten(1).sum(1).float()
    union = (pred | target).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


class OutlineFillDataset(Dataset):
    """Fill50K-like pairs from the procedural shapes: the outline of a shape -> the filled shape.

    Items: ``{"x": (3, S, S) in [-1, 1], "control": (1, S, S) in {-1, 1}}`` (1 on the outline)
    plus ``"class"`` = the colour index when ``colour_class`` (so a class-conditional base can
    pick the fill colour as Fill50K's prompts do). ``fill_mask`` holds the ground-truth regions.
    """

    def __init__(
        self, n: int = 1000, size: int = 16, seed: int = 0, colour_class: bool = False
    ) -> None:
        from polydiff.image.data import COLOURS, ShapesDataset

        shapes = ShapesDataset(n=n, size=size, seed=seed)
        self.images = shapes.images.float()  # (N, 3, S, S)
        self.fill_mask = shape_mask(self.images)  # (N, S, S)
        self.control = outline_map(self.fill_mask) * 2 - 1  # (N, 1, S, S)
        self.colour = torch.tensor([COLOURS.index(s.colour) for s in shapes.specs])
        self.colour_class = colour_class
        self.num_classes = len(COLOURS)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"x": self.images[i], "control": self.control[i]}
        if self.colour_class:
            item["class"] = self.colour[i]
        return item

    def get_batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        batch = {"x": self.images[idx], "control": self.control[idx]}
        if self.colour_class:
            batch["class"] = self.colour[idx]
        return batch
