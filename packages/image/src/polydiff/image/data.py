"""Image datasets: built-in data that needs nothing downloaded, and loaders for real files.

Every dataset yields dicts ``{"x": FloatTensor(C, H, W) in [-1, 1], <condition keys>}``, the item
format of ``polydiff.train``. Built-in data:

- :class:`DigitsDataset`: scikit-learn's 1,797 handwritten digits (8x8, classes 0-9) upsampled.
- :class:`ShapesDataset`: procedural RGB shapes with captions ("a small red circle at the top
  left") and attribute labels (shape, colour, size, position), deterministic from a seed.
- :class:`PhotoPatchesDataset`: random crops of scikit-image's bundled photographs.

Real data: :class:`ImageFolderDataset` (one sub-folder per class), :class:`CaptionFolderDataset`
(a folder of PNG/JPEG plus a JSONL or CSV captions file) and :class:`NpzImageDataset`. Files are
checked eagerly when the dataset is built: an unreadable file raises :class:`ImageFileError`
naming it, or with ``on_error="skip"`` is left out and listed in ``dataset.skipped``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

OnError = Literal["raise", "skip"]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageFileError(ValueError):
    """An image file (or captions / array file) that cannot be read; the message names it."""


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def _split_indices(n: int, split: str, seed: int, test_fraction: float) -> np.ndarray:
    """Deterministic train / test / all split of ``range(n)``."""
    if split == "all":
        return np.arange(n)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(perm[:n_test] if split == "test" else perm[n_test:])


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Resize (C, H, W) or (N, C, H, W) to ``size x size`` (antialiased bilinear)."""
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    batched = x.ndim == 4
    y = F.interpolate(x if batched else x[None], size=(size, size), mode="bilinear", antialias=True)
    return y if batched else y[0]


# --------------------------------------------------------------------------- digits


class DigitsDataset(Dataset):
    """scikit-learn's handwritten digits (UCI optdigits, 8x8, 17 grey levels) as ``(1, S, S)``.

    Items: ``{"x": (1, size, size) in [-1, 1], "class": int}``. ``split`` is a deterministic
    90/10 train/test split (``"all"`` keeps all 1,797 images).
    """

    num_classes = 10
    channels = 1

    def __init__(
        self,
        size: int = 16,
        split: str = "train",
        seed: int = 0,
        test_fraction: float = 0.1,
        classes: Sequence[int] | None = None,
    ) -> None:
        from sklearn.datasets import load_digits

        if size < 8:
            raise ValueError(f"DigitsDataset: size must be >= 8, got {size}")
        bunch = load_digits()
        images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]  # (N,1,8,8)
        labels = torch.from_numpy(bunch.target.astype(np.int64))
        idx = torch.from_numpy(_split_indices(len(labels), split, seed, test_fraction))
        images, labels = images[idx], labels[idx]
        if classes is not None:
            keep = torch.isin(labels, torch.as_tensor(list(classes)))
            images, labels = images[keep], labels[keep]
        up = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)
        self.images = (up.clamp(0, 1) * 2 - 1).contiguous()  # (N, 1, size, size)
        self.labels = labels
        self.size = size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.images[i], "class": int(self.labels[i])}


# --------------------------------------------------------------------------- shapes

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": COLOURS,
    "size": SIZES,
    "position": POSITIONS,
}
_RGB = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.2),
    "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.1),
}
# centre of each position as a fraction of the image side (row, col)
_CENTRES = {
    "top left": (0.28, 0.28),
    "top right": (0.28, 0.72),
    "bottom left": (0.72, 0.28),
    "bottom right": (0.72, 0.72),
    "center": (0.5, 0.5),
}
_RADII = {"small": 0.13, "large": 0.22}  # half-extent as a fraction of the side


@dataclass(frozen=True)
class ShapeSpec:
    """Attributes of one procedural image."""

    shape: str
    colour: str
    size: str
    position: str

    @property
    def caption(self) -> str:
        """``"a small red circle at the top left"`` (``"in the center"`` for the centre)."""
        where = "in the center" if self.position == "center" else f"at the {self.position}"
        return f"a {self.size} {self.colour} {self.shape} {where}"

    def labels(self) -> dict[str, int]:
        """Integer label of each attribute (index into :data:`ATTRIBUTES`)."""
        return {k: ATTRIBUTES[k].index(getattr(self, k)) for k in ATTRIBUTES}


def parse_caption(caption: str) -> ShapeSpec:
    """Inverse of :attr:`ShapeSpec.caption`; raises ``ValueError`` naming a bad caption."""
    words = caption.strip().lower().split()
    try:
        if words[0] != "a":
            raise ValueError
        size, colour, shape = words[1], words[2], words[3]
        rest = " ".join(words[4:])
        position = "center" if rest == "in the center" else rest.removeprefix("at the ")
        spec = ShapeSpec(shape, colour, size, position)
        spec.labels()  # validates every attribute
    except (IndexError, ValueError):
        raise ValueError(
            f"not a shapes caption: {caption!r} (expected e.g. 'a small red circle at the top "
            f"left'; shapes {SHAPES}, colours {COLOURS}, sizes {SIZES}, positions {POSITIONS})"
        ) from None
    return spec


def all_shape_specs() -> list[ShapeSpec]:
    """Every attribute combination (3 x 4 x 2 x 5 = 120), in a fixed order."""
    return [
        ShapeSpec(s, c, z, p) for s in SHAPES for c in COLOURS for z in SIZES for p in POSITIONS
    ]


def render_shape(
    spec: ShapeSpec, size: int = 32, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Render one image, ``(3, size, size)`` float32 in [0, 1], anti-aliased by 4x supersampling.

    ``rng`` jitters the centre (+-4% of the side), the extent (+-10%) and the background grey.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    ss = 4
    n = size * ss
    cy, cx = _CENTRES[spec.position]
    cy, cx = (cy + rng.uniform(-0.04, 0.04)) * n, (cx + rng.uniform(-0.04, 0.04)) * n
    r = _RADII[spec.size] * rng.uniform(0.9, 1.1) * n
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    dy, dx = yy - cy, xx - cx
    if spec.shape == "circle":
        mask = dy**2 + dx**2 <= r**2
    elif spec.shape == "square":
        h = r * 0.85  # equal area-ish with the circle
        mask = (np.abs(dy) <= h) & (np.abs(dx) <= h)
    elif spec.shape == "triangle":
        # upward isosceles triangle inscribed in the circle of radius r*1.1
        rt = r * 1.15
        top, bottom = -rt, rt * 0.6
        half_width = (dy - top) / (bottom - top) * rt
        mask = (dy >= top) & (dy <= bottom) & (np.abs(dx) <= half_width)
    else:
        raise ValueError(f"unknown shape {spec.shape!r}; expected one of {SHAPES}")
    cover = mask.reshape(size, ss, size, ss).mean(axis=(1, 3)).astype(np.float32)  # (S, S)
    background = np.float32(rng.uniform(0.15, 0.35))
    colour = np.asarray(_RGB[spec.colour], dtype=np.float32)[:, None, None]  # (3, 1, 1)
    return background * (1 - cover)[None] + colour * cover[None]


class ShapesDataset(Dataset):
    """Procedural shapes with captions and attribute labels, deterministic from ``seed``.

    Items: ``{"x": (3, size, size) in [-1, 1], "caption": str, "shape": int, "colour": int,
    "size": int, "position": int}``. Attribute combinations cycle over all 120 so every caption
    appears ``~n/120`` times; image ``i`` depends only on ``(seed, i)``.
    """

    channels = 3

    def __init__(self, n: int = 2400, size: int = 32, seed: int = 0) -> None:
        if n < 1:
            raise ValueError(f"ShapesDataset: n must be >= 1, got {n}")
        specs = all_shape_specs()
        order = np.random.default_rng(seed).permutation(len(specs))
        self.specs = [specs[order[i % len(specs)]] for i in range(n)]
        images = [
            render_shape(s, size, np.random.default_rng([seed, i]))
            for i, s in enumerate(self.specs)
        ]
        self.images = torch.from_numpy(np.stack(images)) * 2 - 1  # (N, 3, size, size)
        self.size = size

    @property
    def captions(self) -> list[str]:
        return [s.caption for s in self.specs]

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        spec = self.specs[i]
        return {"x": self.images[i], "caption": spec.caption, **spec.labels()}


# --------------------------------------------------------------------------- photo patches

PHOTOS = (
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "coins",
    "moon",
    "rocket",
    "immunohistochemistry",
)


class PhotoPatchesDataset(Dataset):
    """Random ``patch x patch`` crops of scikit-image's bundled photographs, RGB in [-1, 1].

    Grey photographs are repeated over 3 channels. Crops are taken at ``scale`` (the photograph is
    first downscaled by that factor) so a 32x32 patch holds more than flat texture.
    Items: ``{"x": (3, size, size), "photo": int}``.
    """

    channels = 3

    def __init__(
        self,
        n: int = 2000,
        size: int = 32,
        seed: int = 0,
        photos: Sequence[str] = PHOTOS,
        scale: float = 0.25,
    ) -> None:
        from skimage import data as skdata

        rng = np.random.default_rng(seed)
        sources = []
        for name in photos:
            if name not in PHOTOS:
                raise ValueError(f"unknown photograph {name!r}; expected one of {PHOTOS}")
            img = np.asarray(getattr(skdata, name)(), dtype=np.float32) / 255.0
            img = np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img[..., :3]
            t = torch.from_numpy(img).permute(2, 0, 1)  # (3, H, W)
            h, w = t.shape[1:]
            new = (max(size, int(h * scale)), max(size, int(w * scale)))
            sources.append(F.interpolate(t[None], size=new, mode="bilinear", antialias=True)[0])
        which = rng.integers(0, len(sources), n)
        patches = []
        for k in which:
            src = sources[k]
            top = rng.integers(0, src.shape[1] - size + 1)
            left = rng.integers(0, src.shape[2] - size + 1)
            patches.append(src[:, top : top + size, left : left + size])
        self.images = torch.stack(patches).clamp(0, 1) * 2 - 1  # (N, 3, size, size)
        self.photo = torch.from_numpy(which.astype(np.int64))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.images[i], "photo": int(self.photo[i])}


# --------------------------------------------------------------------------- real files


def load_image_file(path: str | Path, channels: int = 3, size: int | None = None) -> torch.Tensor:
    """Read an image file as ``(channels, size, size)`` in [-1, 1] (centre crop then resize).

    Raises :class:`ImageFileError` naming ``path`` if it is missing or not a readable image.
    """
    path = Path(path)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("L" if channels == 1 else "RGB")
    except Exception as e:  # PIL raises many types on bad files (DecompressionBombError, ...)
        raise ImageFileError(f"cannot read image file {path}: {type(e).__name__}: {e}") from e
    arr = np.asarray(im, dtype=np.float32) / 255.0
    t = torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())
    if size is not None:
        h, w = t.shape[1:]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        t = _resize(t[:, top : top + s, left : left + s], size)
    return (t.clamp(0, 1) * 2 - 1).contiguous()


def _verify(path: Path) -> str | None:
    """Return ``None`` if ``path`` decodes as an image, else the reason."""
    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # PIL raises many types on bad files (DecompressionBombError, ...)
        return f"{type(e).__name__}: {e}"
    return None


class _FileImageDataset(Dataset):
    """Shared eager checking and loading of a list of image files."""

    def _check_files(self, files: list[Path], on_error: OnError) -> list[int]:
        _check_on_error(on_error)
        self.skipped: list[tuple[Path, str]] = []
        keep = []
        for i, f in enumerate(files):
            reason = _verify(f)
            if reason is None:
                keep.append(i)
            elif on_error == "skip":
                self.skipped.append((f, reason))
            else:
                raise ImageFileError(
                    f"cannot read image file {f} ({reason}); pass on_error='skip' to leave "
                    "unreadable files out"
                )
        return keep

    def _load(self, path: Path) -> torch.Tensor:
        return load_image_file(path, self.channels, self.size)


class ImageFolderDataset(_FileImageDataset):
    """``root/<class name>/<image>``: one sub-folder per class (sorted names -> class indices).

    Items: ``{"x": (channels, size, size) in [-1, 1], "class": int}``. ``classes`` holds the
    folder names; ``skipped`` lists ``(file, reason)`` of files left out with ``on_error="skip"``.
    """

    def __init__(
        self,
        root: str | Path,
        size: int | None = 32,
        channels: int = 3,
        on_error: OnError = "raise",
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"ImageFolderDataset: {root} is not a directory")
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not self.classes:
            raise ValueError(f"ImageFolderDataset: {root} has no class sub-folders")
        self.num_classes = len(self.classes)
        exts = tuple(e.lower() for e in extensions)
        files, labels = [], []
        for k, name in enumerate(self.classes):
            for f in sorted((root / name).iterdir()):
                if f.is_file() and f.suffix.lower() in exts:
                    files.append(f)
                    labels.append(k)
        keep = self._check_files(files, on_error)
        self.files = [files[i] for i in keep]
        self.labels = [labels[i] for i in keep]
        if not self.files:
            raise ValueError(f"ImageFolderDataset: no readable images under {root}")
        self.size, self.channels = size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self._load(self.files[i]), "class": self.labels[i]}


_FILE_KEYS = ("file_name", "file", "image", "path", "filename")
_CAPTION_KEYS = ("caption", "text", "prompt")


def _pick(row: dict[str, Any], keys: Sequence[str], what: str, where: str) -> str:
    for k in keys:
        if k in row and row[k] not in (None, ""):
            return str(row[k])
    raise ImageFileError(f"{where}: no {what} field (expected one of {list(keys)}), got {row}")


def read_captions(path: str | Path) -> list[tuple[str, str]]:
    """Read ``(file, caption)`` pairs from a ``.jsonl`` or ``.csv`` file (errors name the line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"captions file {path} does not exist")
    pairs = []
    if path.suffix.lower() == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ImageFileError(f"{path}, line {n}: invalid JSON ({e})") from e
            if not isinstance(row, dict):
                raise ImageFileError(f"{path}, line {n}: expected a JSON object, got {row!r}")
            where = f"{path}, line {n}"
            pairs.append(
                (_pick(row, _FILE_KEYS, "file", where), _pick(row, _CAPTION_KEYS, "caption", where))
            )
    elif path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            for n, row in enumerate(csv.DictReader(fh), 2):
                where = f"{path}, line {n}"
                pairs.append(
                    (
                        _pick(row, _FILE_KEYS, "file", where),
                        _pick(row, _CAPTION_KEYS, "caption", where),
                    )
                )
    else:
        raise ValueError(f"captions file {path}: expected a .jsonl or .csv file")
    if not pairs:
        raise ImageFileError(f"captions file {path} has no entries")
    return pairs


class CaptionFolderDataset(_FileImageDataset):
    """A folder of images plus a captions file (``.jsonl`` lines ``{"file_name", "caption"}``
    or a ``.csv`` with ``file_name,caption`` columns; paths relative to the folder).

    Items: ``{"x": (channels, size, size) in [-1, 1], "caption": str}``.
    """

    def __init__(
        self,
        root: str | Path,
        captions: str | Path | None = None,
        size: int | None = 32,
        channels: int = 3,
        on_error: OnError = "raise",
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"CaptionFolderDataset: {root} is not a directory")
        if captions is None:
            found = [
                root / n
                for n in ("captions.jsonl", "metadata.jsonl", "captions.csv", "metadata.csv")
            ]
            found = [p for p in found if p.is_file()]
            if not found:
                raise FileNotFoundError(
                    "CaptionFolderDataset: no captions.jsonl / metadata.jsonl / captions.csv "
                    f"in {root}"
                )
            captions = found[0]
        captions = Path(captions)
        if not captions.is_absolute() and not captions.is_file():
            captions = root / captions
        pairs = read_captions(captions)
        files = [root / f for f, _ in pairs]
        keep = self._check_files(files, on_error)
        self.files = [files[i] for i in keep]
        self.captions = [pairs[i][1] for i in keep]
        if not self.files:
            raise ValueError(f"CaptionFolderDataset: no readable images listed in {captions}")
        self.size, self.channels = size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self._load(self.files[i]), "caption": self.captions[i]}


def images_to_tensor(arr: np.ndarray, name: str = "images") -> torch.Tensor:
    """``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` uint8 [0, 255] or float [0, 1] / [-1, 1]
    -> float ``(N, C, H, W)`` in [-1, 1]. Errors name the shape/dtype/range problem."""
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise ValueError(f"{name}: expected (N,H,W), (N,H,W,C) or (N,C,H,W), got shape {arr.shape}")
    if arr.shape[1] not in (1, 3, 4) and arr.shape[-1] in (1, 3, 4):
        arr = arr.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if arr.shape[1] not in (1, 3, 4):
        raise ValueError(
            f"{name}: cannot find a channel axis of size 1, 3 or 4 in shape {arr.shape}"
        )
    arr = arr[:, :3]
    if arr.dtype == np.uint8:
        t = torch.from_numpy(arr.astype(np.float32) / 127.5 - 1.0)
    elif np.issubdtype(arr.dtype, np.floating):
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        lo, hi = float(t.min()), float(t.max())
        if not np.isfinite([lo, hi]).all():
            raise ValueError(f"{name}: contains NaN or inf")
        if lo >= -1e-6 and hi <= 1 + 1e-6 and lo >= 0:
            t = t * 2 - 1
        elif lo < -1 - 1e-3 or hi > 1 + 1e-3:
            raise ValueError(
                f"{name}: float values must lie in [0, 1] or [-1, 1], got [{lo:.3g}, {hi:.3g}]"
            )
    else:
        raise ValueError(f"{name}: dtype must be uint8 or floating, got {arr.dtype}")
    return t.clamp(-1, 1).contiguous()


class NpzImageDataset(Dataset):
    """Images from a NumPy ``.npz`` (key ``images``/``x``/``arr_0``; labels ``labels``/``y``).

    Items: ``{"x": (C, H, W) in [-1, 1]}`` plus ``"class": int`` when labels are present.
    """

    def __init__(
        self,
        path: str | Path,
        key: str | None = None,
        labels_key: str | None = None,
        size: int | None = None,
    ) -> None:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                key = key or next(
                    (k for k in ("images", "x", "samples", "arr_0") if k in keys), None
                )
                if key is None or key not in keys:
                    raise ImageFileError(
                        f"{path}: no image array (looked for "
                        f"{key or 'images/x/samples/arr_0'}; has {keys})"
                    )
                images = z[key]
                lk = labels_key or next((k for k in ("labels", "y", "classes") if k in keys), None)
                labels = z[lk] if lk in keys else None
                if labels_key is not None and labels_key not in keys:
                    raise ImageFileError(f"{path}: no labels array {labels_key!r} (has {keys})")
        except Exception as e:  # zipfile/zlib/numpy raise many types on damaged archives
            if isinstance(e, ImageFileError):
                raise
            raise ImageFileError(f"cannot read .npz file {path}: {type(e).__name__}: {e}") from e
        self.images = _resize(images_to_tensor(images, f"{path}[{key}]"), size)
        self.labels = None
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            if len(labels) != len(self.images):
                raise ValueError(f"{path}: {len(labels)} labels for {len(self.images)} images")
            self.labels = torch.from_numpy(labels.astype(np.int64))
            self.num_classes = int(self.labels.max()) + 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"x": self.images[i]}
        if self.labels is not None:
            item["class"] = int(self.labels[i])
        return item


# --------------------------------------------------------------------------- text conditioning


class CaptionEncodedDataset(Dataset):
    """Wrap a captioned dataset, replacing ``"caption"`` by text-encoder tensors.

    ``encode(list[str]) -> dict`` with ``"text"`` (B, L, D), ``"text_mask"`` (B, L) and
    ``"text_pooled"`` (B, D) (the ``polydiff.nn`` text-encoder interface). Each distinct caption
    is encoded once, up front, so workers never run the encoder.
    Items: ``{"x", "text", "text_mask", "text_pooled", <other keys>}``.
    """

    def __init__(
        self, base: Dataset, encode: Callable[[list[str]], dict[str, torch.Tensor]]
    ) -> None:
        self.base = base
        captions = getattr(base, "captions", None)
        if captions is None:
            captions = [base[i]["caption"] for i in range(len(base))]  # type: ignore[arg-type]
        unique = sorted(set(captions))
        enc = encode(unique)
        self.index = {c: i for i, c in enumerate(unique)}
        self.text = enc["text"].detach().float()
        self.text_mask = enc.get("text_mask")
        if self.text_mask is None:
            self.text_mask = torch.ones(self.text.shape[:2], dtype=torch.bool)
        self.text_mask = self.text_mask.bool()
        pooled = enc.get("text_pooled")
        self.text_pooled = (pooled if pooled is not None else self.text.mean(1)).detach().float()

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.base[i])
        k = self.index[item.pop("caption")]
        item.update(text=self.text[k], text_mask=self.text_mask[k], text_pooled=self.text_pooled[k])
        return item
