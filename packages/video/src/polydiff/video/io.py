"""Video files people open: GIF and MP4 per clip, a grid of clips as one GIF.

Clips are ``(C, F, H, W)`` in [-1, 1] (C = 1 or 3). Files are written atomically
(:func:`polydiff.core.fileio.atomic_path`) and upscaled by nearest neighbour (``scale``) so that
32x32 clips are visible.
"""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from polydiff.core.fileio import atomic_path

__all__ = [
    "clip_grid",
    "save_clip_grid_gif",
    "save_gif",
    "save_mp4",
    "to_uint8_frames",
    "write_video",
]


def to_uint8_frames(clip: torch.Tensor, scale: int = 1) -> np.ndarray:
    """(C, F, H, W) in [-1, 1] -> uint8 (F, H*scale, W*scale, 3)."""
    if clip.ndim != 4 or clip.shape[0] not in (1, 3):
        raise ValueError(
            f"a clip must have shape (C, F, H, W) with C = 1 or 3, got {tuple(clip.shape)}"
        )
    x = ((clip.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x.expand(3, *x.shape[1:]).permute(1, 2, 3, 0).numpy()  # (F, H, W, 3)
    if scale > 1:
        x = x.repeat(scale, axis=1).repeat(scale, axis=2)
    return np.ascontiguousarray(x)


def save_gif(clip: torch.Tensor, path: str | Path, fps: float = 8.0, scale: int = 4) -> Path:
    """One clip as a looping GIF."""
    frames = [Image.fromarray(f) for f in to_uint8_frames(clip, scale)]
    path = Path(path)
    with atomic_path(path) as tmp:
        frames[0].save(
            tmp, format="GIF", save_all=True, append_images=frames[1:], loop=0,
            duration=max(20, round(1000 / fps)), optimize=False,
        )  # fmt: skip
    return path


def write_video(
    frames: np.ndarray, path: str | Path, fps: float = 8.0, codec: str = "libx264"
) -> Path:
    """uint8 frames (F, H, W, 3) as a video file through PyAV (H.264 MP4 by default; H and W
    are padded to even sizes for yuv420p)."""
    path = Path(path)
    f, h, w, _ = frames.shape
    ph, pw = h + h % 2, w + w % 2
    if (ph, pw) != (h, w):
        frames = np.pad(frames, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)))
    fmt = path.suffix.lstrip(".") or None
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=max(1, round(fps)))
        stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def save_mp4(clip: torch.Tensor, path: str | Path, fps: float = 8.0, scale: int = 4) -> Path:
    """One clip as an H.264 MP4."""
    return write_video(to_uint8_frames(clip, scale), path, fps)


def clip_grid(clips: torch.Tensor, nrow: int = 8, pad: int = 1) -> torch.Tensor:
    """(N, C, F, H, W) -> one clip (C, F, rows*(H+pad)+pad, nrow*(W+pad)+pad), padding -1."""
    n, c, f, h, w = clips.shape
    rows = math.ceil(n / nrow)
    grid = clips.new_full((c, f, rows * (h + pad) + pad, nrow * (w + pad) + pad), -1.0)
    for i in range(n):
        r, k = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        grid[:, :, y : y + h, x : x + w] = clips[i]
    return grid


def save_clip_grid_gif(
    clips: torch.Tensor, path: str | Path, nrow: int = 8, fps: float = 8.0, scale: int = 2
) -> Path:
    """A grid of clips (N, C, F, H, W) as one GIF (row-major, ``nrow`` per row)."""
    return save_gif(
        clip_grid(clips.detach().cpu().float(), min(nrow, len(clips))), path, fps, scale
    )
