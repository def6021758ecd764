"""Your own images in one line: ``polydiff train data=image_folder data.root=<dir>``.

The data configs ``configs/data/image_folder.yaml``, ``image_captions.yaml`` and ``npz.yaml`` call
a ``describe_*`` function here before anything is built: it reads the channels, size, number of
classes, caption presence and normalisation from the data and returns them as the data node's
values (the model config follows through ``${data.channels}`` etc.). An explicit override that
disagrees with the data is an error naming both values, raised before a run directory exists.

:class:`OwnImageHooks` evaluates against the user's data: reference images from the training
folder (or ``evaluate.reference=<dir or .npz>``), features from a :class:`FeatureNet` trained
on the reference's classes (cached by a content hash of the images) or, without classes, a
fixed randomly initialised one; the output names both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from polydiff.train.data import TensorDictDataset

from .data import (
    IMAGE_EXTENSIONS,
    ImageFileError,
    images_to_tensor,
    load_image_file,
    read_captions,
)
from .experiments import ImageHooks, text_encoder
from .io import save_images
from .metrics import FeatureNet, ImageEvaluator, cache_root, fit_feature_net

__all__ = [
    "OwnImageHooks",
    "TensorImages",
    "caption_folder_data",
    "describe_caption_folder",
    "describe_image_folder",
    "describe_npz",
    "image_folder_data",
    "npz_data",
]

AUTO = "auto"
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
UINT8 = "uint8 [0, 255] -> [-1, 1] (x / 127.5 - 1)"


class TensorImages(TensorDictDataset):
    """Images (and labels / text tensors) held in memory; ``get_batch`` skips collation."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        self.tensors = tensors


# --------------------------------------------------------------------------- checking
def _resolve(key: str, declared: Any, found: Any, *, where: str, what: str) -> Any:
    """``found`` when ``declared`` is ``auto``; ``declared`` when equal; else an error."""
    if declared in (AUTO, found):
        return found
    raise ValueError(
        f"data.{key}={declared} but {where} {what} {found}; drop the override "
        f"(data.{key} is read from the data) or change the data"
    )


def _size(declared: Any, native: int) -> int:
    if declared == AUTO:
        return native
    if isinstance(declared, bool) or not isinstance(declared, int) or declared < 1:
        raise ValueError(f"data.image_size={declared!r}: expected a positive integer or auto")
    return declared  # resizing to a chosen size is allowed (native size recorded)


def _files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _scan(root: Path) -> tuple[list[str], list[Path], list[int]]:
    """Class names (sub-folders holding images; none for a flat folder), files, labels."""
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={root} is not a directory")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and _files(d))
    files, labels = [], []
    if classes:
        for k, name in enumerate(classes):
            for f in _files(root / name):
                files.append(f)
                labels.append(k)
        loose = _files(root)
        if loose:
            raise ValueError(
                f"data.root={root} mixes class sub-folders {classes} with loose images "
                f"({loose[0].name}, ...): put every image in a class folder, or none"
            )
    else:
        files = _files(root)
        labels = [0] * len(files)
    if not files:
        raise FileNotFoundError(
            f"data.root={root} holds no images ({', '.join(IMAGE_EXTENSIONS)}) directly or in "
            "class sub-folders"
        )
    return classes, files, labels


def _headers(files: Sequence[Path]) -> tuple[int, int, list[str]]:
    """(channels, smallest side, modes) from the image headers; unreadable files are named."""
    modes, sides = set(), []
    for f in files:
        try:
            with Image.open(f) as im:
                modes.add(im.mode)
                sides.append(min(im.size))
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise ImageFileError(f"cannot read image file {f}: {e}") from e
    channels = 1 if modes <= set(GREY_MODES) else 3
    return channels, min(sides), sorted(modes)


def _content_hash(files: Sequence[Path], labels: Sequence[int] = ()) -> str:
    h = hashlib.sha256()
    for f, k in zip(files, list(labels) or [0] * len(files), strict=True):
        h.update(f.name.encode())
        h.update(str(k).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- image folders
def describe_image_folder(
    root: str | Path,
    channels: Any = AUTO,
    image_size: Any = AUTO,
    num_classes: Any = AUTO,
) -> dict[str, Any]:
    """Facts of ``root/<class>/<image>`` (or a flat folder: unconditional) for the data node.

    ``channels`` 1 if every image is greyscale, else 3; ``image_size`` the smallest side (an
    explicit size resizes); ``num_classes`` the number of class folders (``None`` trains
    unconditionally). Explicit values that contradict the data raise naming both.
    """
    root = Path(root).expanduser()
    classes, files, _ = _scan(root)
    found_channels, native, modes = _headers(files)
    where = f"the images under {root} (modes {modes})"
    channels = _resolve("channels", channels, found_channels, where=where, what="have channels =")
    found_classes = len(classes) or None
    if num_classes is not None:
        num_classes = _resolve(
            "num_classes", num_classes, found_classes, where=f"{root}", what="has class folders: "
        )
    return {
        "root": str(root.resolve()),
        "channels": channels,
        "image_size": _size(image_size, native),
        "num_classes": num_classes,
        "conditioning": "class" if num_classes else None,
        "captioned": False,
        "normalisation": UINT8,
        "info": {
            "num_images": len(files),
            "classes": classes,
            "native_size": native,
            "modes": modes,
        },
    }


def _load_all(files: Sequence[Path], channels: int, size: int) -> torch.Tensor:
    return torch.stack([load_image_file(f, channels, size) for f in files])


def image_folder_data(
    root: str | Path, channels: int, image_size: int, num_classes: int | None
) -> TensorImages:
    """The images of ``root`` in memory as ``{"x"}`` (+ ``"class"`` when ``num_classes``)."""
    classes, files, labels = _scan(Path(root))
    if num_classes is not None and num_classes != len(classes):
        raise ValueError(
            f"{root} now has {len(classes)} class folders, the config says {num_classes}"
        )
    tensors = {"x": _load_all(files, channels, image_size)}
    if num_classes:
        tensors["class"] = torch.tensor(labels, dtype=torch.long)
    return TensorImages(**tensors)


# --------------------------------------------------------------------------- captions
def describe_caption_folder(
    root: str | Path,
    captions: str | None = None,
    channels: Any = AUTO,
    image_size: Any = AUTO,
    text_dim: Any = AUTO,
    encoder: str = "minilm",
) -> dict[str, Any]:
    """Facts of a folder of images plus a captions file (``captions.jsonl`` / ``.csv``, see
    :func:`~polydiff.image.data.read_captions`): text conditioning of the encoder's width."""
    root = Path(root).expanduser()
    path = _captions_path(root, captions)
    pairs = read_captions(path)
    files = [root / f for f, _ in pairs]
    found_channels, native, modes = _headers(files)
    where = f"the images listed in {path} (modes {modes})"
    dim = text_encoder(encoder, 384 if encoder == "minilm" else _dim(text_dim)).dim
    return {
        "root": str(root.resolve()),
        "captions_file": str(path.resolve()),
        "channels": _resolve(
            "channels", channels, found_channels, where=where, what="have channels ="
        ),
        "image_size": _size(image_size, native),
        "num_classes": None,
        "text_dim": _resolve(
            "text_dim", text_dim, dim, where=f"the {encoder} encoder", what="gives"
        ),
        "conditioning": "text",
        "captioned": True,
        "normalisation": UINT8,
        "info": {
            "num_images": len(files),
            "unique_captions": len({c for _, c in pairs}),
            "native_size": native,
            "modes": modes,
        },  # fmt: skip
    }


def _dim(text_dim: Any) -> int:
    return 64 if text_dim == AUTO else int(text_dim)


def _captions_path(root: Path, captions: str | None) -> Path:
    if captions:
        path = Path(captions).expanduser()
        return path if path.is_absolute() else root / path
    for name in ("captions.jsonl", "metadata.jsonl", "captions.csv", "metadata.csv"):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"data.root={root}: no captions.jsonl / metadata.jsonl / captions.csv / metadata.csv; "
        "pass data.captions=<file>"
    )


def caption_folder_data(
    root: str | Path,
    captions_file: str | Path,
    channels: int,
    image_size: int,
    text_dim: int,
    encoder: str = "minilm",
) -> TensorImages:
    """Images of a captions file with their captions encoded once (``text``, ``text_mask``,
    ``text_pooled``)."""
    pairs = read_captions(captions_file)
    x = _load_all([Path(root) / f for f, _ in pairs], channels, image_size)
    enc = text_encoder(encoder, text_dim).encode([c for _, c in pairs])
    pooled = enc.get("text_pooled")
    mask = enc.get("text_mask")
    return TensorImages(
        x=x,
        text=enc["text"].detach().float(),
        text_mask=(mask if mask is not None else torch.ones(enc["text"].shape[:2])).bool(),
        text_pooled=(pooled if pooled is not None else enc["text"].mean(1)).detach().float(),
    )


# --------------------------------------------------------------------------- .npz arrays
def _npz_arrays(path: Path, key: str | None, labels_key: str | None):
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            key = key or next((k for k in ("images", "x", "arr_0") if k in keys), None)
            if key is None or key not in keys:
                raise ImageFileError(f"{path}: no image array (data.key={key}; has {keys})")
            images = z[key]
            lk = labels_key or next((k for k in ("labels", "y", "classes") if k in keys), None)
            if labels_key is not None and labels_key not in keys:
                raise ImageFileError(f"{path}: no labels array {labels_key!r} (has {keys})")
            labels = z[lk] if lk in keys else None
    except (OSError, ValueError, EOFError) as e:
        if isinstance(e, ImageFileError):
            raise
        raise ImageFileError(f"cannot read .npz file {path}: {e}") from e
    return key, images, labels


def _normalisation(arr: np.ndarray) -> str:
    if arr.dtype == np.uint8:
        return UINT8
    lo = float(arr.min())
    return "float [0, 1] -> [-1, 1] (2x - 1)" if lo >= 0 else "float [-1, 1] (kept)"


def describe_npz(
    path: str | Path,
    key: str | None = None,
    labels_key: str | None = None,
    channels: Any = AUTO,
    image_size: Any = AUTO,
    num_classes: Any = AUTO,
) -> dict[str, Any]:
    """Facts of an ``.npz`` of images (``images`` / ``x`` / ``arr_0``; labels ``labels`` / ``y``):
    layout, dtype and range decide the normalisation; labels must be ``0..K-1``."""
    path = Path(path).expanduser()
    key, images, labels = _npz_arrays(path, key, labels_key)
    x = images_to_tensor(images, f"{path}[{key}]")  # checks shape, dtype and range
    found_classes = None
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(x) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{path}: labels must be {len(x)} integers, got {labels.dtype}")
        found_classes = int(labels.max()) + 1
        missing = sorted(set(range(found_classes)) - set(labels.tolist()))
        if labels.min() < 0 or missing:
            raise ValueError(f"{path}: labels must cover 0..{found_classes - 1}; missing {missing}")
    where = f"{path}[{key}] (shape {images.shape})"
    if num_classes is not None:
        num_classes = _resolve(
            "num_classes", num_classes, found_classes, where=str(path), what="has"
        )
    return {
        "path": str(path.resolve()),
        "channels": _resolve("channels", channels, x.shape[1], where=where, what="has channels ="),
        "image_size": _size(image_size, min(x.shape[-2:])),
        "num_classes": num_classes,
        "conditioning": "class" if num_classes else None,
        "captioned": False,
        "normalisation": _normalisation(images),
        "info": {"num_images": len(x), "key": key, "native_size": min(x.shape[-2:])},
    }


def npz_data(
    path: str | Path,
    channels: int,
    image_size: int,
    num_classes: int | None,
    key: str | None = None,
    labels_key: str | None = None,
) -> TensorImages:
    """The arrays of an ``.npz`` as ``{"x"}`` (+ ``"class"``), resized to ``image_size``."""
    key, images, labels = _npz_arrays(Path(path), key, labels_key)
    x = _square(images_to_tensor(images, f"{path}[{key}]"), image_size)
    if x.shape[1] != channels:
        raise ValueError(f"{path}[{key}] has {x.shape[1]} channels, the config says {channels}")
    tensors = {"x": x}
    if num_classes:
        tensors["class"] = torch.from_numpy(np.asarray(labels).reshape(-1).astype(np.int64))
    return TensorImages(**tensors)


def _square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre crop to a square and resize to ``size`` (as image files are loaded)."""
    h, w = x.shape[-2:]
    s = min(h, w)
    x = x[..., (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    if s != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x.contiguous()


# --------------------------------------------------------------------------- hooks
class OwnImageHooks(ImageHooks):
    """Hooks of runs trained on the user's own images: class / caption conditioning drawn
    from the training data, and metrics against that data (or ``evaluate.reference``).

    ``source`` is the training folder (or ``.npz``); ``feature_steps`` the training steps of
    the domain feature net (used when the reference has classes).
    """

    def __init__(
        self,
        source: str,
        channels: int,
        image_size: int,
        conditioning: str | None = None,
        num_classes: int | None = None,
        captions_file: str | None = None,
        encoder: str | None = None,
        text_dim: int | None = None,
        feature_steps: int = 400,
        cache_dir: str | None = None,
        grid_rows: int = 8,
    ) -> None:
        enc = text_encoder(encoder, text_dim) if conditioning == "text" else None
        super().__init__(
            conditioning=conditioning, num_classes=num_classes or 10, text_encoder=enc,
            metrics=None, cache_dir=cache_dir, feature_steps=feature_steps, grid_rows=grid_rows,
        )  # fmt: skip
        self.source, self.channels, self.image_size = source, channels, image_size
        self.captions_file = captions_file

    def sample_cond(self, n: int, generator: torch.Generator | None) -> dict | None:
        if self.conditioning != "text":
            return super().sample_cond(n, generator)
        captions = [c for _, c in read_captions(self.captions_file)]
        idx = torch.randint(0, len(captions), (n,), generator=generator)
        self._prompts = [captions[i] for i in idx.tolist()]
        return dict(self.text_encoder.encode(self._prompts))

    def _reference(self, where: str) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        path = Path(where).expanduser()
        if path.suffix == ".npz":
            d = describe_npz(path, image_size=self.image_size)
            ds = npz_data(path, d["channels"], self.image_size, d["num_classes"])
            x, y = ds.tensors["x"], ds.tensors.get("class")
        else:
            classes, files, labels = _scan(path)
            x = _load_all(files, self.channels, self.image_size)
            y = torch.tensor(labels) if classes else None
        if x.shape[1] != self.channels:  # grey reference for an RGB run, or the reverse
            x = x.mean(1, keepdim=True) if self.channels == 1 else x.expand(-1, 3, -1, -1)
        digest = hashlib.sha256(x.numpy().tobytes())
        if y is not None:
            digest.update(y.numpy().tobytes())
        return x, y, digest.hexdigest()

    def _feature_net(self, x: torch.Tensor, y: torch.Tensor | None, digest: str):
        from safetensors.torch import load_file, save_file

        from polydiff.core.fileio import atomic_path

        if y is None or int(y.max()) < 1:
            torch.manual_seed(0)
            net = FeatureNet(self.channels, {}, input_size=self.image_size).eval()
            return net, "FeatureNet, random initialisation (seed 0; the reference has no classes)"
        heads = {"class": int(y.max()) + 1}
        path = cache_root(self.cache_dir) / f"featnet-own-{digest[:16]}-{self.feature_steps}.st"
        net = FeatureNet(self.channels, heads, input_size=self.image_size)
        if path.is_file():
            net.load_state_dict(load_file(str(path)))
            net.eval().requires_grad_(False)
        else:
            net = fit_feature_net(x, {"class": y}, heads, steps=self.feature_steps)
            with atomic_path(path) as tmp:
                save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
        name = (
            f"FeatureNet trained on the reference's {heads['class']} classes "
            f"({len(x)} images, {self.feature_steps} steps; cached {path.name})"
        )
        return net, name

    def evaluate(
        self, samples: torch.Tensor, cond: Mapping | None, options: Mapping | None = None
    ) -> dict[str, Any]:
        options = dict(options or {})
        where = options.get("reference") or self.source
        x, y, digest = self._reference(str(where))
        net, features = self._feature_net(x, y, digest)
        ev = ImageEvaluator("own", self.cache_dir, net=net, reference=x)
        out: dict[str, Any] = {"fid": ev.fid(samples.cpu()), **ev.precision_recall(samples.cpu())}
        labels = cond.get("class") if cond is not None else None
        if labels is not None and "class" in net.head_sizes:
            out["class_accuracy"] = ev.class_accuracy(samples.cpu(), labels.cpu())
        out["reference"] = {"path": str(where), "n": len(x), "sha256": digest,
                            "classes": int(y.max()) + 1 if y is not None else None}  # fmt: skip
        out["features"] = features
        if options.get("save_images"):
            folder = Path(options["out_dir"]) / "images"
            out["images"] = str(folder)
            save_images(samples.cpu(), folder)
        return out
