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

Warm start (``init_from``, :func:`warm_start`): spatial layers from a trained run, temporal
layers fresh, as video models are built from image models in VDM (Ho et al. 2022), Make-A-Video
(Singer et al. 2022), AnimateDiff (Guo et al. 2023) and Stable Video Diffusion (Blattmann et al.
2023). Fresh temporal attention has a zero output projection, so at step 0 the warm-started
network is the source's per-frame network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from polydiff.nn import SpaceTimeBlock, VideoUNet
from polydiff.train.checkpoint import read_state
from polydiff.train.run import open_run

from .data import probe_video_folder

__all__ = ["VIDEO_UNET_SIZES", "num_parameters", "video_unet", "warm_start"]

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
    temporal_conv: int = 0,
    data_root: str | None = None,
    init_from: str | None = None,
    init_ema: bool | float | str = True,
    **overrides: Any,
) -> VideoUNet:
    """A :class:`polydiff.nn.VideoUNet` of a named size from :data:`VIDEO_UNET_SIZES`.

    ``channels`` / ``num_classes`` set to None are read from the folder ``data_root`` (own data,
    :func:`~polydiff.video.data.probe_video_folder`); given values must match it. ``image_size``
    is checked against the downsampling factor. ``temporal=False``: no temporal layer at all;
    ``temporal_conv``: kernel (frames) of a :class:`~polydiff.nn.spacetime.TemporalConv` before
    each temporal attention (Make-A-Video's pseudo-3-D convolution; 0: none).
    ``init_from``: a trained run whose weights (``init_ema``, as ``sample.ema``) initialise
    every tensor of the same name (:func:`warm_start`); the rest stay fresh.
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
    net = VideoUNet(
        in_channels=channels,
        num_classes=num_classes,
        context_dim=context_dim,
        pooled_dim=pooled_dim,
        concat_channels=concat_channels,
        temporal_conv=temporal_conv,
        **cfg,
    )
    if not temporal:  # every temporal layer removed, its (now empty) block kept: the tensor
        # names stay the video network's, so a per-frame run warm-starts it (model.init_from)
        for module in net.modules():
            if isinstance(module, SpaceTimeBlock):
                module.temporal = module.temporal_conv = None
    if init_from is not None:
        warm_start(net, init_from, init_ema)
    return net


def warm_start(net: nn.Module, run_dir: str | Path, ema: bool | float | str = True) -> nn.Module:
    """Initialise ``net`` from the trained run ``run_dir`` (opened like ControlNet's
    ``model.base_run``: :func:`polydiff.train.run.open_run`, its ``ema`` weights): every source
    tensor is copied into the tensor of the same name, the others stay as initialised.

    The video-from-image recipe of VDM (Ho et al. 2022, sec. 3.1), Make-A-Video (Singer et al.
    2022), AnimateDiff (Guo et al. 2023) and SVD (Blattmann et al. 2023): spatial layers from a
    per-frame model (e.g. ``model.temporal=false`` trained on independent frames,
    ``data.dataset.image_fraction=1``), temporal layers fresh. Refused: a source tensor with no
    tensor of its name here, or of another shape (either means another architecture). Prints
    one line: tensors loaded / left fresh.
    """
    source = open_run(run_dir, ema=ema)
    src, dst = source.model.state_dict(), net.state_dict()
    unused = [k for k in src if k not in dst]
    if unused:
        raise ValueError(
            f"init_from={run_dir}: its tensor {unused[0]!r} has no tensor of that name in this "
            f"network ({len(unused)} such); the run must be this network with or without "
            "temporal layers"
        )
    for key, value in src.items():
        if value.shape != dst[key].shape:
            raise ValueError(
                f"init_from={run_dir}: tensor {key!r} has shape {tuple(value.shape)} there but "
                f"{tuple(dst[key].shape)} here"
            )
    net.load_state_dict(src, strict=False)
    fresh = [k for k in dst if k not in src]
    temporal = sum(".temporal" in k for k in fresh)  # .temporal. and .temporal_conv.
    step = read_state(source.checkpoint).get("step")
    print(
        f"init_from {run_dir} (step {step}, {source.weights}): loaded {len(src)} tensors, "
        f"{len(fresh)} left fresh ({temporal} of them temporal)",
        flush=True,
    )
    return net
