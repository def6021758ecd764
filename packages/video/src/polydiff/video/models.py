"""Video denoiser networks: named :class:`polydiff.nn.VideoUNet` configurations.

Conditioning is handled inside ``polydiff.nn`` and honours ``cond["null_mask"]`` (condition
dropout in the core objective, classifier-free guidance at sampling):

- class: ``num_classes`` -> ``cond["class"]`` (learned null class);
- text: ``context_dim`` -> cross-attention to ``cond["text"]`` tokens (``cond["text_mask"]``),
  ``pooled_dim`` -> ``cond["text_pooled"]`` added to the time embedding (MiniLM: 384-d);
- frames: ``concat_channels`` -> ``cond["concat"]`` (B, C_c, F, H, W) concatenated to the input
  (first frame repeated over time for image-to-video as in Stable Video Diffusion, Blattmann et al.
  2023; known frames and their mask for MCVD-style prediction / interpolation, Voleti et al. 2022);
- joint image-video training: ``cond["frames_independent"]`` (B,) masks temporal attention to
  the identity for rows that are stacks of independent images (Ho et al. 2022, sec. 3.1).

``temporal=False`` removes every temporal attention layer (the ablation of the benchmark: the
network then sees each frame alone, exactly the per-frame image network).
"""

from __future__ import annotations

from typing import Any

from polydiff.nn import VideoUNet

from .data import probe_video_folder

__all__ = ["VIDEO_UNET_SIZES", "num_parameters", "video_unet"]

VIDEO_UNET_SIZES: dict[str, dict[str, Any]] = {
    # seconds-long tests
    "tiny": dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
                 num_heads=2, norm_groups=8),
    # CPU demo / benchmark on 32x32 digits and shapes, 8-16 frames (~1 M parameters)
    "small": dict(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                  attention_levels=(2,), temporal_levels=(1, 2), num_heads=4),
    "base": dict(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
                 attention_levels=(1, 2), num_heads=4),
    # Ho et al. 2022's 64x64 video U-Net layout (their 16x64x64 models), head_dim 64
    "vdm-64": dict(model_channels=128, channel_mult=(1, 2, 3, 4), num_res_blocks=2,
                   attention_levels=(1, 2, 3), head_dim=64),
}  # fmt: skip


def num_parameters(net: Any) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def video_unet(
    size: str = "small",
    channels: int | None = 1,
    image_size: int | None = None,
    num_classes: int | None = None,
    context_dim: int | None = None,
    pooled_dim: int | None = None,
    concat_channels: int = 0,
    temporal: bool = True,
    data_root: str | None = None,
    **overrides: Any,
) -> VideoUNet:
    """A :class:`polydiff.nn.VideoUNet` of a named size from :data:`VIDEO_UNET_SIZES`.

    ``channels`` / ``num_classes`` set to None are read from the folder ``data_root`` (own data,
    :func:`~polydiff.video.data.probe_video_folder`); given values must match it. ``image_size``
    is checked against the downsampling factor. ``temporal=False``: no temporal attention.
    """
    if size not in VIDEO_UNET_SIZES:
        raise KeyError(f"unknown video U-Net size {size!r}; available: {sorted(VIDEO_UNET_SIZES)}")
    cfg = {**VIDEO_UNET_SIZES[size], **overrides}
    if data_root is not None:
        info = probe_video_folder(data_root)
        for what, given, found in (
            ("channels", channels, info.channels),
            ("num_classes", num_classes, info.num_classes),
        ):
            if given is not None and found is not None and given != found:
                raise ValueError(
                    f"model.{what}={given} but the data in {data_root} has {what}={found}"
                )
        channels = channels or info.channels
        num_classes = num_classes if num_classes is not None else info.num_classes
    if channels is None:
        raise ValueError("video_unet needs channels (or data_root to read them from)")
    levels = len(cfg.get("channel_mult", (1, 2, 2)))
    if image_size is not None and image_size % (2 ** (levels - 1)):
        raise ValueError(
            f"image_size {image_size} must be divisible by 2**{levels - 1} for video U-Net size "
            f"{size!r}"
        )
    if not temporal:
        cfg["temporal_levels"] = ()
    net = VideoUNet(
        in_channels=channels,
        num_classes=num_classes,
        context_dim=context_dim,
        pooled_dim=pooled_dim,
        concat_channels=concat_channels,
        **cfg,
    )
    if not temporal:  # the middle block's temporal layer too: no frame ever sees another
        for module in net.modules():
            if hasattr(module, "temporal") and module.temporal is not None:
                module.temporal = None
    return net
