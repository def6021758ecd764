"""Export images to the files people open: PNG grids and ``samples.npz``. Writes are atomic."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


def _atomic_target(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


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
    fd, tmp = _atomic_target(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            im.save(fh, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_images(images: torch.Tensor, folder: str | Path, prefix: str = "") -> list[Path]:
    """Save each image of ``(N, C, H, W)`` in [-1, 1] as ``folder/<prefix>00000.png``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, a in enumerate(to_uint8(images)):
        p = folder / f"{prefix}{i:05d}.png"
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(p)
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
    fd, tmp = _atomic_target(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **out)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def run_job_config(run: Any, key: str, cls: type, given: Any, param: str, hint: str) -> Any:
    """The job config of a ``polydiff <key> run=<dir>`` command: ``given`` (the argument
    ``param``: an instance of ``cls`` or a mapping of its fields) or else the run config's
    ``<key>`` node, instantiated. ``hint`` names the experiments that carry such a node."""
    from polydiff.train.run import instantiate

    if given is None:
        node = run.cfg.get(key)
        if node is None:
            raise ValueError(
                f"{run.run_dir}: the run's config has no {key!r} node; train with an "
                f"experiment={hint} config or pass {param}={cls.__name__}(...)"
            )
        given = instantiate(node, key)
    elif isinstance(given, Mapping):
        given = cls(**given)
    if not isinstance(given, cls):
        raise TypeError(f"{param} must be an {cls.__name__}, got {type(given).__name__}")
    return given
