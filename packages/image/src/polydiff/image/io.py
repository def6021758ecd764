"""Export images to the files people open: PNG grids and ``samples.npz``. Writes are atomic."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from polydiff.core.fileio import atomic_path


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(N, C, H, W)`` in [-1, 1] -> uint8 ``(N, H, W, C)`` (values clamped)."""
    if images.ndim != 4:
        raise ValueError(f"to_uint8: expected (N, C, H, W), got shape {tuple(images.shape)}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile ``(N, C, H, W)`` images in [-1, 1] into one uint8 ``(H', W', C)`` array.

    ``nrow`` is the number of images per row (default ``ceil(sqrt(N))``); padding is white.
    """
    arr = to_uint8(images)  # (N, H, W, C)
    n, h, w, c = arr.shape
    if n == 0:
        raise ValueError("make_grid: no images")
    ncol = nrow or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncol)
    grid = np.full(
        (nrows * (h + padding) + padding, ncol * (w + padding) + padding, c), 255, np.uint8
    )
    for i in range(n):
        r, q = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[top : top + h, left : left + w] = arr[i]
    return grid


def save_image_grid(
    images: torch.Tensor,
    path: str | Path,
    nrow: int | None = None,
    padding: int = 2,
    scale: int = 1,
) -> Path:
    """Save ``(N, C, H, W)`` images in [-1, 1] as one PNG grid (nearest-upscaled by ``scale``)."""
    path = Path(path)
    grid = make_grid(images, nrow, padding)
    im = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return path


def save_images(images: torch.Tensor, folder: str | Path, prefix: str = "") -> list[Path]:
    """Save each image of ``(N, C, H, W)`` in [-1, 1] as ``folder/<prefix>00000.png``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, a in enumerate(to_uint8(images)):
        p = folder / f"{prefix}{i:05d}.png"
        with atomic_path(p, fsync=False) as tmp:
            Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(tmp, format="PNG")
        paths.append(p)
    return paths


def save_samples_npz(
    path: str | Path, images: torch.Tensor, **arrays: np.ndarray | torch.Tensor
) -> Path:
    """Write ``samples.npz`` with ``images`` uint8 (N, H, W, C) plus extra arrays (labels...)."""
    path = Path(path)
    out = {"images": to_uint8(images)}
    for k, v in arrays.items():
        out[k] = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **out)
    return path
