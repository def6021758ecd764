"""Video datasets: procedural clips that need nothing downloaded, and loaders for real files.

Every clip is a float tensor ``(C, F, H, W)`` in [-1, 1] (batches are ``(B, C, F, H, W)``).

Built-in data (seeded, deterministic):

- :class:`BouncingDigits`: scikit-learn's handwritten digits (8x8, upsampled) moving at constant
  velocity in a square canvas and bouncing elastically off the walls (Moving-MNIST style,
  Srivastava et al. 2015). Digits are placed with bilinear sub-pixel weights, so each digit's
  intensity centroid follows the exact reflected straight line: the ground truth of the physics
  score (:mod:`polydiff.video.metrics`). Labels are the digit classes; the true trajectories are
  kept.
- :class:`MovingShapes`: RGB circles / squares / triangles with captions such as
  ``"a small red circle moves left"`` or ``"a large blue square bounces up and down"``
  (shape, colour, size, motion).

Real data: :func:`read_video` (MP4 / GIF / WebM / AVI / MOV / MKV through PyAV) and
:class:`VideoFolderDataset` over a folder of video files or of frame-image folders, optionally one
sub-folder per class, with captions from a JSONL or CSV file; clips are resampled to a requested
fps, size and length. A corrupt or too-short video raises :class:`VideoFileError` naming it, or
with ``on_error="skip"`` is left out and listed in ``dataset.skipped``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from PIL.Image import DecompressionBombError
from sklearn.datasets import load_digits
from torch.utils.data import Dataset

__all__ = [
    "COLOURS",
    "IMAGE_EXTENSIONS",
    "MOTIONS",
    "SHAPES",
    "SIZES",
    "VIDEO_EXTENSIONS",
    "BouncingDigits",
    "MovingShapes",
    "ShapeClipSpec",
    "VideoFileError",
    "VideoFolderDataset",
    "VideoFolderInfo",
    "bounce",
    "digit_bank",
    "parse_shape_caption",
    "probe_video_folder",
    "read_captions",
    "read_frame_folder",
    "read_video",
    "resample_indices",
]

OnError = Literal["raise", "skip"]
VIDEO_EXTENSIONS = (".mp4", ".gif", ".webm", ".avi", ".mov", ".mkv", ".m4v")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class VideoFileError(ValueError):
    """A video file, frame folder or captions file that cannot be used; the message names it."""


# --------------------------------------------------------------------------- bouncing digits


def bounce(p0: np.ndarray, v: np.ndarray, lo: float, hi: float, t: np.ndarray) -> np.ndarray:
    """Position at times ``t`` of a point starting at ``p0`` with velocity ``v`` reflected
    elastically between ``lo`` and ``hi``: the triangle wave ``lo + L - |((p0 - lo + v t) mod
    2L) - L|`` with ``L = hi - lo``. Broadcasts ``p0``/``v`` (...) against ``t``."""
    length = hi - lo
    u = np.mod(np.asarray(p0) - lo + np.asarray(v) * np.asarray(t), 2 * length)
    return lo + length - np.abs(u - length)


@lru_cache(maxsize=8)
def digit_bank(digit_size: int, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits in [0, 1], resized to ``digit_size`` (antialiased bilinear), and
    their classes; ``split`` is a deterministic 90/10 train/test split (or ``"all"``)."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    d = load_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    if digit_size != 8:
        images = F.interpolate(images, size=(digit_size, digit_size), mode="bilinear",
                               antialias=True, align_corners=False).clamp(0, 1)  # fmt: skip
    labels = d.target.astype(np.int64)
    idx = np.arange(len(labels))
    if split != "all":
        perm = np.random.default_rng(0).permutation(len(labels))
        n_test = round(0.1 * len(labels))
        idx = np.sort(perm[:n_test] if split == "test" else perm[n_test:])
    return images[idx, 0].numpy(), labels[idx]


def _paste_bilinear(canvas: np.ndarray, img: np.ndarray, y: float, x: float) -> None:
    """Max-composite ``img`` into ``canvas`` with its top-left corner at sub-pixel ``(y, x)``.

    The four bilinear weights split each pixel's mass, so the intensity centroid of the pasted
    digit is exactly the centroid of ``img`` plus ``(y, x)``.
    """
    d = img.shape[0]
    iy, ix = int(np.floor(y)), int(np.floor(x))
    fy, fx = y - iy, x - ix
    patch = np.zeros((d + 1, d + 1), dtype=np.float32)
    patch[:d, :d] += (1 - fy) * (1 - fx) * img
    patch[1:, :d] += fy * (1 - fx) * img
    patch[:d, 1:] += (1 - fy) * fx * img
    patch[1:, 1:] += fy * fx * img
    h, w = canvas.shape
    ph, pw = min(d + 1, h - iy), min(d + 1, w - ix)  # the dropped row/column has zero weight
    region = canvas[iy : iy + ph, ix : ix + pw]
    np.maximum(region, patch[:ph, :pw], out=region)


class BouncingDigits(Dataset):
    """Digits bouncing in a ``size`` x ``size`` canvas: items ``{"x": (1, F, S, S), "class"}``.

    Each clip has ``num_digits`` digits (an int, or ``(lo, hi)`` for a per-clip random count)
    of side ``digit_size`` (default ``3 * size // 8``), each starting at a uniform position with
    speed uniform in ``speed`` pixels per frame in a uniform direction. Attributes:
    ``videos`` (N, 1, F, S, S) in [-1, 1], ``labels`` (N, max_digits) with -1 for absent digits,
    ``positions`` (N, max_digits, F, 2) top-left (y, x) of each digit, ``counts`` (N,).
    Items carry ``"class"`` (the class of the first digit) only when ``num_digits == 1``.
    """

    channels = 1
    num_classes = 10

    def __init__(
        self,
        n: int = 2000,
        frames: int = 8,
        size: int = 32,
        digit_size: int | None = None,
        num_digits: int | Sequence[int] = 1,
        speed: Sequence[float] = (1.0, 2.5),
        split: str = "train",
        seed: int = 0,
    ) -> None:
        if frames < 1 or size < 4 or n < 1:
            raise ValueError(f"need n >= 1, frames >= 1 and size >= 4, got {n}, {frames}, {size}")
        digit_size = digit_size or max(4, 3 * size // 8)
        if digit_size >= size:
            raise ValueError(f"digit_size {digit_size} must be smaller than the canvas {size}")
        lo_n, hi_n = (num_digits, num_digits) if isinstance(num_digits, int) else num_digits
        if not 1 <= lo_n <= hi_n:
            raise ValueError(f"num_digits must be >= 1 (or a range lo <= hi), got {num_digits}")
        bank, bank_labels = digit_bank(digit_size, split)
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        self.frames, self.size, self.digit_size, self.max_digits = frames, size, digit_size, hi_n
        self.counts = rng.integers(lo_n, hi_n + 1, size=n)
        which = rng.integers(0, len(bank), size=(n, hi_n))
        start = rng.uniform(0, size - digit_size, size=(n, hi_n, 2))
        spd = rng.uniform(speed[0], speed[1], size=(n, hi_n))
        angle = rng.uniform(0, 2 * np.pi, size=(n, hi_n))
        vel = np.stack([spd * np.sin(angle), spd * np.cos(angle)], -1)  # (N, D, 2) (vy, vx)
        t = np.arange(frames, dtype=np.float64)
        pos = bounce(start[:, :, None], vel[:, :, None], 0.0, size - digit_size, t[:, None])
        present = np.arange(hi_n)[None] < self.counts[:, None]  # (N, D)
        self.positions = np.where(present[..., None, None], pos, np.nan).astype(np.float32)
        self.velocities = np.where(present[..., None], vel, 0.0).astype(np.float32)
        self.labels = np.where(present, bank_labels[which], -1)
        videos = np.zeros((n, frames, size, size), dtype=np.float32)
        for i in range(n):
            for k in range(int(self.counts[i])):
                img = bank[which[i, k]]
                for f in range(frames):
                    _paste_bilinear(videos[i, f], img, *pos[i, k, f])
        self.videos = torch.from_numpy(videos)[:, None].mul_(2).sub_(1)  # (N, 1, F, S, S)
        self.digit_offsets = np.stack([_centroid_offset(bank[w]) for w in which.ravel()]).reshape(
            n, hi_n, 2
        )  # each digit's intensity centroid relative to its top-left corner

    @property
    def centroids(self) -> np.ndarray:
        """True intensity centroids (N, max_digits, F, 2) of each digit (NaN when absent)."""
        return self.positions + self.digit_offsets[:, :, None].astype(np.float32)

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"x": self.videos[i]}
        if self.max_digits == 1:
            item["class"] = int(self.labels[i, 0])
        return item


def _centroid_offset(img: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[: img.shape[0], : img.shape[1]]
    mass = img.sum()
    return np.array([(ys * img).sum() / mass, (xs * img).sum() / mass], dtype=np.float64)


# --------------------------------------------------------------------------- moving shapes

SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, -0.8, -0.8),
    "green": (-0.8, 1.0, -0.8),
    "blue": (-0.8, -0.8, 1.0),
    "yellow": (1.0, 1.0, -0.8),
}
SIZES = ("small", "large")
MOTIONS = (
    "moves left",
    "moves right",
    "moves up",
    "moves down",
    "bounces up and down",
    "bounces left and right",
)


@dataclass(frozen=True)
class ShapeClipSpec:
    """What a moving-shapes clip shows; ``caption`` is its text."""

    shape: str
    colour: str
    size: str
    motion: str

    @property
    def caption(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} {self.motion}"

    @property
    def labels(self) -> dict[str, int]:
        return {
            "shape": SHAPES.index(self.shape),
            "colour": list(COLOURS).index(self.colour),
            "size": SIZES.index(self.size),
            "motion": MOTIONS.index(self.motion),
        }


def parse_shape_caption(caption: str) -> ShapeClipSpec:
    """Inverse of :attr:`ShapeClipSpec.caption`; raises naming the caption if it is not one."""
    words = caption.strip().split()
    if len(words) < 5 or words[0] != "a":
        raise ValueError(f"not a moving-shapes caption: {caption!r}")
    spec = ShapeClipSpec(words[3], words[2], words[1], " ".join(words[4:]))
    if (
        spec.shape not in SHAPES
        or spec.colour not in COLOURS
        or spec.size not in SIZES
        or spec.motion not in MOTIONS
    ):
        raise ValueError(f"not a moving-shapes caption: {caption!r}")
    return spec


def _shape_coverage(
    shape: str, size: int, cy: float, cx: float, r: float, ss: int = 4
) -> np.ndarray:
    """Fraction of each pixel covered by ``shape`` centred at (cy, cx), half-extent ``r``
    (``ss`` x ``ss`` supersampling)."""
    g = (np.arange(size * ss) + 0.5) / ss
    yy, xx = np.meshgrid(g, g, indexing="ij")
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        inside = dy**2 + dx**2 <= r**2
    elif shape == "square":
        inside = (np.abs(dy) <= 0.85 * r) & (np.abs(dx) <= 0.85 * r)
    else:  # triangle, apex up
        inside = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    return inside.reshape(size, ss, size, ss).mean((1, 3))


class MovingShapes(Dataset):
    """Captioned clips of one shape moving over a black background: ``{"x": (3, F, S, S)}``.

    ``moves <dir>``: constant velocity across most of the canvas without reaching a wall;
    ``bounces ...``: fast motion along one axis with elastic bounces. ``specs[i]`` and
    ``captions[i]`` describe clip ``i``; ``labels`` holds the attribute indices (N, 4).
    """

    channels = 3

    def __init__(self, n: int = 2000, frames: int = 8, size: int = 32, seed: int = 0) -> None:
        rng = np.random.default_rng([seed, 7])
        colours = list(COLOURS)
        self.specs: list[ShapeClipSpec] = []
        videos = np.zeros((n, 3, frames, size, size), dtype=np.float32)
        t = np.arange(frames, dtype=np.float64)
        for i in range(n):
            spec = ShapeClipSpec(
                SHAPES[rng.integers(3)],
                colours[rng.integers(len(colours))],
                SIZES[rng.integers(2)],
                MOTIONS[rng.integers(len(MOTIONS))],
            )
            self.specs.append(spec)
            r = size * (0.14 if spec.size == "small" else 0.24)
            lo, hi = r, size - r
            other = rng.uniform(lo, hi)
            if spec.motion.startswith("moves"):
                travel = rng.uniform(0.5, 0.8) * (hi - lo)
                sign = -1.0 if spec.motion in ("moves left", "moves up") else 1.0
                p0 = (
                    hi - rng.uniform(0, hi - lo - travel)
                    if sign < 0
                    else lo + rng.uniform(0, hi - lo - travel)
                )
                path = p0 + sign * travel * t / max(frames - 1, 1)
            else:
                speed = rng.uniform(1.2, 1.8) * 2 * (hi - lo) / max(frames, 1)
                path = bounce(rng.uniform(lo, hi), speed * rng.choice([-1, 1]), lo, hi, t)
            vertical = spec.motion in ("moves up", "moves down", "bounces up and down")
            colour = np.asarray(COLOURS[spec.colour], dtype=np.float32)[:, None, None]
            for f in range(frames):
                cy, cx = (path[f], other) if vertical else (other, path[f])
                alpha = _shape_coverage(spec.shape, size, cy, cx, r).astype(np.float32)
                videos[i, :, f] = -1.0 * (1 - alpha) + colour * alpha
        self.videos = torch.from_numpy(videos)
        self.labels = torch.tensor([list(s.labels.values()) for s in self.specs])

    @property
    def captions(self) -> list[str]:
        return [s.caption for s in self.specs]

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.videos[i], "caption": self.captions[i]}


# --------------------------------------------------------------------------- real files


def read_video(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode every frame of a video file: ``(frames uint8 (T, H, W, 3), times (T,) seconds)``.

    Raises :class:`VideoFileError` naming the file when it cannot be decoded or holds no frame.
    """
    path = Path(path)
    frames, times = [], []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoFileError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            for k, frame in enumerate(container.decode(stream)):
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(float(frame.time) if frame.time is not None else k / rate)
    except VideoFileError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise VideoFileError(f"{path}: cannot decode video ({err})") from err
    if not frames:
        raise VideoFileError(f"{path}: no decodable frame")
    times_arr = np.asarray(times, dtype=np.float64)
    return np.stack(frames), times_arr - times_arr[0]


def read_frame_folder(path: str | Path, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """The frames of a folder of images (sorted by name) at ``fps``: ``(uint8 (T, H, W, 3),
    times)``. Unreadable or differently sized frames raise :class:`VideoFileError`."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise VideoFileError(f"{path}: no frame images ({', '.join(IMAGE_EXTENSIONS)})")
    frames = []
    for f in files:
        try:
            with Image.open(f) as im:
                frames.append(np.asarray(im.convert("RGB")))
        except (
            UnidentifiedImageError,
            OSError,
            SyntaxError,
            ValueError,
            DecompressionBombError,
        ) as err:
            # PIL reports a broken PNG chunk as SyntaxError
            raise VideoFileError(f"{f}: cannot read frame image ({err})") from err
        if frames[-1].shape != frames[0].shape:
            raise VideoFileError(
                f"{f}: frame of size {frames[-1].shape[:2]} differs from {files[0].name} "
                f"({frames[0].shape[:2]})"
            )
    return np.stack(frames), np.arange(len(frames)) / float(fps)


def resample_indices(
    times: np.ndarray, frames: int, fps: float | None, start: float = 0.0
) -> np.ndarray | None:
    """Indices of the source frames shown at ``start + k / fps`` (k < ``frames``), i.e. the last
    frame whose timestamp is not after each target time; ``fps=None`` keeps the native frames
    from the first at or after ``start``. None when the video is too short."""
    if fps is None:
        first = int(np.searchsorted(times, start - 1e-9))
        return np.arange(first, first + frames) if first + frames <= len(times) else None
    duration = times[-1] + (times[-1] - times[-2] if len(times) > 1 else 1.0 / fps)
    targets = start + np.arange(frames) / fps
    if targets[-1] >= duration - 1e-9:
        return None
    return np.clip(np.searchsorted(times, targets + 1e-9, side="right") - 1, 0, len(times) - 1)


def _to_clip(frames: np.ndarray, size: int, channels: int) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> (C, F, size, size) in [-1, 1]: centre square crop + resize."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1  # (F, 3, H, W)
    h, w = x.shape[-2:]
    s = min(h, w)
    x = x[..., (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    if s != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True).clamp(-1, 1)
    if channels == 1:
        x = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).clamp(-1, 1)
    return x.transpose(0, 1).contiguous()  # (C, F, S, S)


def read_captions(path: str | Path) -> dict[str, str]:
    """``{file name or stem: caption}`` from a JSONL (``{"file": ..., "caption": ...}`` per
    line) or CSV (header with ``file``/``video``/``path`` and ``caption``/``text``) file."""
    path = Path(path)
    keys, texts = ("file", "video", "path", "name", "file_name"), ("caption", "text", "prompt")
    rows: list[dict[str, Any]] = []
    try:
        if path.suffix.lower() == ".jsonl":
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise VideoFileError(f"{path}:{n}: not a JSON object ({err})") from err
        elif path.suffix.lower() == ".csv":
            with path.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
        else:
            raise VideoFileError(f"{path}: captions must be a .jsonl or .csv file")
    except OSError as err:
        raise VideoFileError(f"{path}: cannot read captions ({err})") from err
    out = {}
    for n, row in enumerate(rows, 1):
        k = next((row[c] for c in keys if isinstance(row, dict) and row.get(c)), None)
        t = next((row[c] for c in texts if isinstance(row, dict) and row.get(c)), None)
        if k is None or t is None:
            raise VideoFileError(
                f"{path}: row {n} needs a file column ({'/'.join(keys)}) and a caption column "
                f"({'/'.join(texts)}), got {row!r}"
            )
        out[Path(str(k)).name] = str(t)
    return out


@dataclass
class VideoFolderInfo:
    """What :func:`probe_video_folder` reads from a folder (recorded by the dataset)."""

    root: str
    sources: list[tuple[str, str | None]]  # (path, class name or None)
    kinds: list[str]  # "video" | "frames" per source
    class_names: list[str] | None
    captions_file: str | None
    channels: int
    native_size: tuple[int, int]
    num_classes: int | None = field(init=False)

    def __post_init__(self) -> None:
        self.num_classes = len(self.class_names) if self.class_names else None

    @property
    def has_captions(self) -> bool:
        return self.captions_file is not None


def _is_frame_folder(p: Path) -> bool:
    return p.is_dir() and any(c.suffix.lower() in IMAGE_EXTENSIONS for c in p.iterdir())


def _clip_sources(folder: Path) -> list[tuple[Path, str]]:
    out = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS:
            out.append((p, "video"))
        elif _is_frame_folder(p):
            out.append((p, "frames"))
    return out


def probe_video_folder(root: str | Path, captions: str | Path | None = None) -> VideoFolderInfo:
    """Find the clips of ``root`` and read channels / classes / caption presence from them.

    Layouts: clips (video files or folders of frame images) directly in ``root``; or one
    sub-folder per class holding clips. Captions: ``captions`` or ``root/captions.jsonl`` /
    ``captions.csv``. Channels are 1 when every probed frame is grey (R = G = B), else 3.
    """
    root = Path(root)
    if not root.is_dir():
        raise VideoFileError(f"data.root={root}: not a directory")
    direct = _clip_sources(root)
    class_dirs = [p for p in sorted(root.iterdir()) if p.is_dir() and not _is_frame_folder(p)]
    class_dirs = [p for p in class_dirs if _clip_sources(p)]
    if direct and class_dirs:
        raise VideoFileError(
            f"{root}: has both clips ({direct[0][0].name}) and class sub-folders "
            f"({class_dirs[0].name}); use one layout"
        )
    if class_dirs:
        names = [p.name for p in class_dirs]
        sources = [(s, k, d.name) for d in class_dirs for s, k in _clip_sources(d)]
    else:
        names, sources = None, [(s, k, None) for s, k in direct]
    if not sources:
        raise VideoFileError(
            f"{root}: no clips (video files {', '.join(VIDEO_EXTENSIONS)} or folders of frame "
            f"images), directly or in class sub-folders"
        )
    cap = Path(captions) if captions else None
    if cap is None:
        cap = next(
            (root / n for n in ("captions.jsonl", "captions.csv") if (root / n).is_file()), None
        )
    elif not cap.is_file():
        raise VideoFileError(f"data.captions={cap}: file not found")
    channels, native = 1, None
    for s, kind, _ in sources[:4]:  # a few clips decide channels and native size
        try:
            frames = read_video(s)[0] if kind == "video" else read_frame_folder(s, 1.0)[0]
        except VideoFileError:
            continue
        native = native or frames.shape[1:3]
        f = frames.astype(np.int16)
        if np.abs(f[..., 0] - f[..., 1]).max() > 2 or np.abs(f[..., 0] - f[..., 2]).max() > 2:
            channels = 3
    if native is None:
        raise VideoFileError(f"{root}: none of the first clips can be read ({sources[0][0]}...)")
    return VideoFolderInfo(
        root=str(root),
        sources=[(str(s), c) for s, _, c in sources],
        kinds=[k for _, k, _ in sources],
        class_names=names,
        captions_file=str(cap) if cap else None,
        channels=channels,
        native_size=(int(native[0]), int(native[1])),
    )


def _check_same(what: str, given: Any, found: Any, root: Any) -> Any:
    if given is not None and found is not None and given != found:
        raise ValueError(
            f"{what}={given} was given but the data in {root} has {what.split('.')[-1]}={found}; "
            f"drop the override or fix the data"
        )
    return found if given is None else given


class VideoFolderDataset(Dataset):
    """Clips from a folder of videos / frame folders (see :func:`probe_video_folder`).

    Each source gives ``clips_per_video`` consecutive windows of ``frames`` frames at ``fps``
    (``None`` = native frame rate), centre-cropped and resized to ``size`` (default: the
    shorter native side). Items: ``{"x": (C, F, S, S), ["class"], ["caption"]}``. Sources too
    short for one window, or unreadable, raise :class:`VideoFileError` naming them, or with
    ``on_error="skip"`` are listed in ``skipped`` (path, reason). ``channels`` /
    ``num_classes`` / ``size``, when given, must match the data (an error names both values).
    """

    def __init__(
        self,
        root: str | Path,
        frames: int = 8,
        size: int | None = None,
        fps: float | None = None,
        channels: int | None = None,
        num_classes: int | None = None,
        captions: str | Path | None = None,
        frame_folder_fps: float = 8.0,
        clips_per_video: int = 1,
        on_error: OnError = "raise",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if frames < 1 or clips_per_video < 1:
            raise ValueError(
                f"frames and clips_per_video must be >= 1, got {frames}, {clips_per_video}"
            )
        info = probe_video_folder(root, captions)
        self.info = info
        self.channels = _check_same("data.channels", channels, info.channels, root)
        self.num_classes = _check_same("data.num_classes", num_classes, info.num_classes, root)
        self.size = size or min(info.native_size)
        self.frames, self.fps = frames, fps
        caption_map = read_captions(info.captions_file) if info.captions_file else None
        self.class_names = info.class_names
        self.skipped: list[tuple[str, str]] = []
        clips, classes, texts = [], [], []
        for (src, cls), kind in zip(info.sources, info.kinds):
            try:
                if kind == "video":
                    data, times = read_video(src)
                else:
                    data, times = read_frame_folder(src, frame_folder_fps)
                windows = []
                step = frames / fps if fps else None
                for w in range(clips_per_video):
                    start = w * step if step else float(times[min(w * frames, len(times) - 1)])
                    idx = resample_indices(times, frames, fps, start)
                    if idx is None:
                        break
                    windows.append(idx)
                if not windows:
                    need = f"{frames} frames" + (f" at {fps:g} fps" if fps else "")
                    have = f"{len(times)} frames over {times[-1]:.2f} s"
                    raise VideoFileError(f"{src}: too short for one clip of {need} ({have})")
                caption = None
                if caption_map is not None:
                    p = Path(src)
                    caption = caption_map.get(p.name, caption_map.get(p.stem))
                    if caption is None:
                        raise VideoFileError(f"{src}: no caption in {info.captions_file}")
            except VideoFileError as err:
                if on_error == "raise":
                    raise
                self.skipped.append((src, str(err)))
                continue
            for idx in windows:
                clips.append(_to_clip(data[idx], self.size, self.channels))
                classes.append(info.class_names.index(cls) if cls is not None else -1)
                texts.append(caption)
        if not clips:
            raise VideoFileError(f"{root}: no usable clip ({len(self.skipped)} skipped)")
        self.videos = torch.stack(clips)  # (N, C, F, S, S)
        self.labels = torch.tensor(classes) if self.num_classes else None
        self.captions = texts if caption_map is not None else None

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"x": self.videos[i]}
        if self.labels is not None:
            item["class"] = int(self.labels[i])
        if self.captions is not None:
            item["caption"] = self.captions[i]
        return item
