"""What the shapes configs build: data sources, training datasets and the hooks of ``polydiff``.

- :class:`ShapeSource`: where shapes come from, the built-in procedural classes or a folder
  (``root``), with its train / test split; the dataset and the hooks are both given the same
  source node, so the hooks denormalise with the training set's statistics and evaluate
  against its test split.
- :func:`points_data`: point clouds ``{"x": (P, 3)}`` (+ ``"class"``), PointFlow-normalised,
  a fresh random subset of ``num_points`` of each shape's surface samples per batch.
- :func:`grid_data`: truncated SDF grids ``{"x": (1, R, R, R)}`` or, with ``wavelet``, one-level
  3-D wavelet coefficients ``(8, R/2, R/2, R/2)`` (:class:`WaveletCodec`).
- :class:`ShapesHooks` (``polydiff.train.hooks``): class labels to sample (the test split's
  labels, so #samples = #test shapes per class as the PVD protocol), model -> data space, PLY /
  OBJ / GLB / NPZ files and renders, and the PVD metrics / watertight ratio.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pywt
import torch
import trimesh

from . import io as shape_io
from .data import (
    CLASSES,
    ShapeSet,
    ShapeTensors,
    folder_data,
    normalize_points,
    procedural_shapes,
    resolve_num_classes,
    scan_folder,
)
from .latent import VoxelAutoencoder, train_voxel_autoencoder
from .metrics import compute_all_metrics, watertight_ratio

__all__ = [
    "PointSubsets",
    "text_encoder",
    "ShapeSource",
    "ShapesHooks",
    "WaveletCodec",
    "grid_data",
    "latent_data",
    "points_data",
    "shapes_autoencoder",
]


_ENCODERS: dict[tuple, Any] = {}


def text_encoder(name: str = "minilm", pad_to: int = 16) -> Any:
    """The text encoder of the captions, built once per process: ``"minilm"`` (the offline
    ``polydiff.nn.text.MiniLMTextEncoder``, 384-d tokens and pooled vector), every batch padded
    to ``pad_to`` tokens so encoded datasets stack."""
    if name != "minilm":
        raise ValueError(f"unknown text encoder {name!r}; expected 'minilm'")
    key = (name, pad_to)
    if key not in _ENCODERS:
        from polydiff.nn.text import MiniLMTextEncoder  # heavy optional dependency

        _ENCODERS[key] = MiniLMTextEncoder(pad_to=pad_to)
    return _ENCODERS[key]


def _encode(encoder: Any, captions: Sequence[str]) -> dict[str, torch.Tensor]:
    if not captions:
        raise ValueError("text conditioning needs captions, and this source has none")
    out: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(captions), 256):
        for k, v in encoder.encode(list(captions[i : i + 256])).items():
            out.setdefault(k, []).append(v.detach().cpu().float() if v.is_floating_point() else v)
    return {k: torch.cat(v) for k, v in out.items()}


class ShapeSource:
    """The shapes of an experiment: built-in classes (``root=None``) or a folder.

    Built-in: ``classes`` (names from :data:`polydiff.shapes.data.CLASSES`), ``per_class`` train
    and ``test_per_class`` test shapes per class. Folder: ``root`` in any layout of
    :func:`polydiff.shapes.data.scan_folder`; with ``train_split`` / ``test_split`` folders
    (ModelNet) they are used, otherwise the whole folder is the training set and evaluation
    compares to it. ``num_classes``: ``"auto"`` reads it from the data; an explicit value that
    disagrees is an error naming both.
    """

    def __init__(
        self,
        classes: Sequence[str] | None = ("chair", "table"),
        per_class: int = 400,
        test_per_class: int | None = None,
        root: str | None = None,
        train_split: str | None = "train",
        test_split: str | None = "test",
        num_points: int = 2048,
        resolution: int = 32,
        truncation: float = 0.1,
        with_sdf: bool = False,
        num_classes: int | str | None = "auto",
        on_error: str = "raise",
        seed: int = 0,
    ) -> None:
        self.classes = tuple(classes) if classes else CLASSES
        self.per_class, self.test_per_class = per_class, test_per_class or max(per_class // 4, 1)
        self.root = root
        self.num_points, self.resolution, self.truncation = num_points, resolution, truncation
        self.with_sdf, self.on_error, self.seed = with_sdf, on_error, seed
        self.train_split = self.test_split = None
        if root is not None:
            has_split = bool(train_split) and _has_split(root, train_split)
            self.train_split = train_split if has_split else None
            self.test_split = test_split if has_split else None
            self.num_classes = resolve_num_classes(root, num_classes, self.train_split)
        else:
            found = len(self.classes) if len(self.classes) > 1 else None
            if num_classes not in (None, "auto") and int(num_classes) != (found or 1):
                raise ValueError(
                    f"data.num_classes={num_classes} but data.classes has {len(self.classes)} "
                    f"classes {list(self.classes)}; drop the override or change the classes"
                )
            self.num_classes = found

    def _built_in(self, split: str) -> ShapeSet:
        per = self.per_class if split == "train" else self.test_per_class * 4
        return procedural_shapes(
            self.classes, per, self.num_points, self.resolution, split, self.seed,
            self.with_sdf, self.truncation,
        )  # fmt: skip

    def _folder(self, split: str | None) -> ShapeSet:
        key = (self.root, split, self.num_points, self.with_sdf, self.resolution, self.on_error)
        if key not in _FOLDER_CACHE:
            _FOLDER_CACHE[key] = folder_data(
                self.root, self.num_points, split, self.with_sdf, self.resolution,
                self.truncation, self.on_error, self.seed,
            )  # fmt: skip
        return _FOLDER_CACHE[key]

    def train(self) -> ShapeSet:
        """The training shapes (data space)."""
        return self._built_in("train") if self.root is None else self._folder(self.train_split)

    def test(self) -> ShapeSet:
        """The reference shapes of evaluation (the training set for a folder without splits)."""
        if self.root is None:
            return self._built_in("test")
        return self._folder(self.test_split)

    def describe(self) -> dict[str, Any]:
        """What was read from the data (recorded next to the run's outputs)."""
        tr = self.train()
        return {
            "root": self.root,
            "classes": list(tr.classes),
            "num_classes": self.num_classes,
            "train_shapes": len(tr),
            "skipped": len(tr.skipped),
            "splits": [self.train_split, self.test_split],
        }


_FOLDER_CACHE: dict[tuple, ShapeSet] = {}


def _has_split(root: str, split: str) -> bool:
    try:
        scan_folder(root, split)
    except FileNotFoundError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


class PointSubsets(ShapeTensors):
    """Point clouds whose batches take a random subset of ``num_points`` of each shape's points,
    drawn from a generator seeded by the batch's indices (so a resumed run sees the same data)."""

    def __init__(self, points: torch.Tensor, num_points: int, **extra: Any) -> None:
        info = extra.pop("info", None)
        super().__init__(info=info, x=points, **extra)
        if num_points > points.shape[1]:
            raise ValueError(
                f"data.num_points={num_points} exceeds the {points.shape[1]} points per shape"
            )
        self.num_points = num_points

    def _subset(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        idx = torch.rand(x.shape[0], x.shape[1], generator=gen).argsort(1)[:, : self.num_points]
        return torch.gather(x, 1, idx[..., None].expand(-1, -1, 3))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(i)
        item["x"] = self._subset(item["x"][None], i)[0]
        return item

    def get_batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = super().get_batch(indices)
        seed = zlib.crc32(np.asarray(indices, dtype=np.int64).tobytes())
        batch["x"] = self._subset(batch["x"], seed)
        return batch


def _point_stats(source: ShapeSource, normalize: str) -> tuple[np.ndarray, float]:
    _, stats = normalize_points(source.train().points, normalize)
    return stats


def points_data(
    source: ShapeSource,
    num_points: int = 512,
    normalize: str = "global",
    conditional: bool = True,
    text_encoder: Any = None,
) -> PointSubsets:
    """Training point clouds of ``source`` (see :class:`PointSubsets`), normalised as PointFlow
    (:func:`polydiff.shapes.data.normalize_points`); ``"class"`` when conditional and the
    source has more than one class; with ``text_encoder`` the captions' ``"text"``,
    ``"text_mask"``, ``"text_pooled"`` instead."""
    tr = source.train()
    pts, _ = normalize_points(tr.points, normalize)
    extra: dict[str, Any] = {"info": source.describe()}
    if conditional and text_encoder is not None:
        extra.update(_encode(text_encoder, tr.captions))
    elif conditional and source.num_classes:
        extra["class"] = torch.from_numpy(tr.labels)
    return PointSubsets(torch.from_numpy(pts), num_points, **extra)


class WaveletCodec:
    """One-level 3-D discrete wavelet transform of grids (PyWavelets ``dwtn``): the coarse
    ``aaa`` and seven detail subbands as 8 channels of half resolution, each standardised by the
    training set's per-channel std (Hui et al. 2022 diffuse coarse + detail coefficients)."""

    KEYS = ("aaa", "aad", "ada", "add", "daa", "dad", "dda", "ddd")

    def __init__(self, wavelet: str = "haar", scale: Sequence[float] | None = None) -> None:
        if pywt.Wavelet(wavelet).dec_len != 2:
            raise ValueError(
                f"wavelet {wavelet!r}: only length-2 filters (haar / db1) keep exact "
                "half-size grids"
            )
        self.wavelet = wavelet
        self.scale = None if scale is None else np.asarray(scale, np.float32)

    def fit(self, grids: np.ndarray) -> WaveletCodec:
        coeffs = self._forward(grids)
        self.scale = np.maximum(coeffs.std(axis=(0, 2, 3, 4)), 1e-3).astype(np.float32)
        return self

    def _forward(self, grids: np.ndarray) -> np.ndarray:
        c = pywt.dwtn(np.asarray(grids, np.float32), self.wavelet, axes=(1, 2, 3))
        return np.stack([c[k] for k in self.KEYS], 1).astype(np.float32)  # (N, 8, R/2, R/2, R/2)

    def encode(self, grids: np.ndarray) -> np.ndarray:
        """``(N, R, R, R)`` -> ``(N, 8, R/2, R/2, R/2)`` standardised coefficients."""
        if self.scale is None:
            raise RuntimeError("WaveletCodec.encode before fit()")
        return self._forward(grids) / self.scale[None, :, None, None, None]

    def decode(self, coeffs: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`encode`."""
        c = np.asarray(coeffs, np.float32) * self.scale[None, :, None, None, None]
        bands = {k: c[:, i] for i, k in enumerate(self.KEYS)}
        out = pywt.idwtn(bands, self.wavelet, axes=(1, 2, 3))
        return out.astype(np.float32)


_CODECS: dict[tuple, WaveletCodec] = {}


def _codec(source: ShapeSource, wavelet: str) -> WaveletCodec:
    key = (id(source.train()), wavelet)
    if key not in _CODECS:
        _CODECS[key] = WaveletCodec(wavelet).fit(source.train().sdf)
    return _CODECS[key]


def grid_data(
    source: ShapeSource, wavelet: str | None = None, conditional: bool = True
) -> ShapeTensors:
    """Truncated SDF grids of ``source`` as ``(1, R, R, R)`` in [-1, 1], or with ``wavelet``
    (``"haar"``) the :class:`WaveletCodec` coefficients ``(8, R/2, R/2, R/2)``."""
    tr = source.train()
    if tr.sdf is None:
        raise ValueError("grid_data needs a source with with_sdf=true (data.source.with_sdf)")
    x = _codec(source, wavelet).encode(tr.sdf) if wavelet else tr.sdf[:, None]
    extra: dict[str, Any] = {}
    if conditional and source.num_classes:
        extra["class"] = torch.from_numpy(tr.labels)
    x = torch.from_numpy(np.ascontiguousarray(x))
    return ShapeTensors(info=source.describe(), x=x, **extra)


def shapes_autoencoder(
    source: ShapeSource,
    steps: int = 1000,
    batch_size: int = 32,
    z_channels: int = 4,
    base: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    cache_dir: str | None = None,
    band_weight: float = 4.0,
    downsample: int = 4,
) -> VoxelAutoencoder:
    """The voxel SDF autoencoder of ``source``'s training grids (trained once, then cached;
    :mod:`polydiff.shapes.latent`, whose weighted L1 loss ``band_weight`` tunes; latents at
    ``1 / downsample`` of the grid resolution)."""
    tr = source.train()
    if tr.sdf is None:
        raise ValueError("shapes_autoencoder needs a source with with_sdf=true")
    return train_voxel_autoencoder(
        tr.sdf, steps, batch_size, z_channels, base, lr, seed, cache_dir, band_weight, downsample
    )


def latent_data(
    source: ShapeSource, autoencoder: VoxelAutoencoder, conditional: bool = True
) -> ShapeTensors:
    """``source``'s SDF grids encoded into scaled latents ``(z, R/4, R/4, R/4)``."""
    grids = torch.from_numpy(source.train().sdf)[:, None]
    with torch.no_grad():
        z = torch.cat([autoencoder.encode(grids[i : i + 64]) for i in range(0, len(grids), 64)])
    extra: dict[str, Any] = {}
    if conditional and source.num_classes:
        extra["class"] = torch.from_numpy(source.train().labels)
    return ShapeTensors(info=source.describe(), x=z.contiguous(), **extra)


# --------------------------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------------------------


def _subsample(points: np.ndarray, n: int, seed: int) -> np.ndarray:
    if points.shape[1] == n:
        return points
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.permutation(points.shape[1])[:n] for _ in range(len(points))])
    return np.take_along_axis(points, idx[..., None], 1)


class ShapesHooks:
    """``polydiff.train.hooks`` of the shapes experiments.

    ``representation``: ``"points"`` (``(B, P, 3)``), ``"sdf"`` (``(B, 1, R, R, R)``),
    ``"wavelet"`` (``(B, 8, R/2, R/2, R/2)``) or ``"latent"`` (``autoencoder`` latents).
    ``normalize`` / ``wavelet``: as the dataset's, to undo them. ``conditioning``: None,
    ``"class"`` or ``"text"`` (captions through ``text_encoder``). ``metrics``: compute the PVD
    table (``emd``: also the EMD metrics, exact and costly); for grids, samples are meshed by
    marching cubes (watertight ratio) and ``metric_points`` surface points of each mesh are
    compared with the test shapes. ``write_n`` samples are exported (PLY / OBJ / GLB) and rendered.
    """

    def __init__(
        self,
        source: ShapeSource,
        representation: str = "points",
        normalize: str = "global",
        wavelet: str | None = None,
        conditioning: str | None = "class",
        text_encoder: Any = None,
        metrics: bool = True,
        emd: bool = True,
        metric_points: int = 512,
        write_n: int = 8,
        autoencoder: VoxelAutoencoder | None = None,
    ) -> None:
        if representation not in ("points", "sdf", "wavelet", "latent"):
            raise ValueError(
                "representation must be 'points', 'sdf', 'wavelet' or 'latent', "
                f"got {representation!r}"
            )
        if representation == "latent" and autoencoder is None:
            raise ValueError("representation='latent' needs the autoencoder")
        self.autoencoder = autoencoder
        if conditioning not in (None, "class", "text"):
            raise ValueError(f"conditioning must be None, 'class' or 'text', got {conditioning!r}")
        if conditioning == "text" and text_encoder is None:
            raise ValueError("conditioning='text' needs a text_encoder")
        if representation == "wavelet" and not wavelet:
            raise ValueError("representation='wavelet' needs wavelet='haar'")
        self.source, self.representation = source, representation
        self.normalize, self.wavelet = normalize, wavelet
        self.conditioning = conditioning if (source.num_classes or conditioning == "text") else None
        self.text_encoder = text_encoder
        self._labels: torch.Tensor | None = None
        self._prompts: list[str] | None = None
        self.metrics, self.emd = metrics, emd
        self.metric_points, self.write_n = metric_points, write_n

    # ---------------------------------------------------------------- conditioning, data space
    def sample_cond(self, n: int, generator: torch.Generator | None) -> dict | None:
        """The test split's labels (or captions), tiled: #samples = #test shapes per class."""
        if self.conditioning is None:
            return None
        test = self.source.test()
        idx = torch.arange(n) % len(test)
        self._labels = torch.from_numpy(test.labels)[idx]
        if self.conditioning == "class":
            return {"class": self._labels}
        self._prompts = [test.captions[i] for i in idx.tolist()]
        return _encode(self.text_encoder, self._prompts)

    def to_data(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().cpu().float()
        if self.representation == "points":
            if self.normalize == "global":
                mean, std = _point_stats(self.source, "global")
                return x * std + torch.from_numpy(np.asarray(mean, np.float32))
            if self.normalize == "per_shape":  # no inverse: centre and fit the ball of radius 0.5
                x = x - (x.amax(1, keepdim=True) + x.amin(1, keepdim=True)) / 2
                return 0.5 * x / x.norm(dim=-1).amax(1).clamp_min(1e-8)[:, None, None]
            return x
        if self.representation == "wavelet":
            grids = _codec(self.source, self.wavelet).decode(x.numpy())
            return torch.from_numpy(grids).clamp(-1, 1)
        if self.representation == "latent":
            with torch.no_grad():
                return torch.cat(
                    [self.autoencoder.decode(x[i : i + 64])[:, 0] for i in range(0, len(x), 64)]
                )
        return x[:, 0].clamp(-1, 1)

    # ---------------------------------------------------------------- files
    def _meshes(self, grids: torch.Tensor) -> list:
        return [shape_io.sdf_to_mesh(g.numpy()) for g in grids]

    def write(self, samples: torch.Tensor, cond: Mapping | None, out_dir: Path) -> list[Path]:
        out_dir = Path(out_dir)
        n = min(self.write_n, len(samples))
        names = self.source.train().classes
        labels = self._cond_labels(cond, len(samples))
        labels = [None] * n if labels is None else labels.tolist()
        titles = [f"{i}: {'sample' if y is None else names[y]}" for i, y in enumerate(labels[:n])]
        if self._prompts is not None and len(self._prompts) == len(samples):
            titles = [f"{i}: {p}" for i, p in enumerate(self._prompts[:n])]
        files: list[Path] = []
        if self.representation == "points":
            shown: list = []
            for i in range(n):
                pts = samples[i].numpy()
                files.append(shape_io.export_points(pts, out_dir / f"sample_{i:03d}.ply"))
                mesh = shape_io.points_to_mesh(pts)
                files.append(shape_io.export_mesh(mesh, out_dir / f"sample_{i:03d}_mesh.obj"))
                shown.append(pts)
        else:
            shown = self._meshes(samples[:n])
            for i, mesh in enumerate(shown):
                if len(mesh.faces):
                    files.append(shape_io.export_mesh(mesh, out_dir / f"sample_{i:03d}.obj"))
                    files.append(shape_io.export_mesh(mesh, out_dir / f"sample_{i:03d}.glb"))
        if n:
            files.append(shape_io.render_views(shown, out_dir / "renders.png", titles))
        return files

    # ---------------------------------------------------------------- metrics
    def _sample_points(self, samples: torch.Tensor) -> tuple[np.ndarray, dict[str, float]]:
        if self.representation == "points":
            return samples.numpy(), {}
        meshes = self._meshes(samples)
        extra = {"watertight_ratio": watertight_ratio(meshes)}
        pts = []
        for i, m in enumerate(meshes):
            if len(m.faces):
                p, _ = trimesh.sample.sample_surface(m, self.metric_points, seed=i)
            else:  # an empty sample: all points at the origin (it then matches nothing)
                p = np.zeros((self.metric_points, 3))
            pts.append(p.astype(np.float32))
        return np.stack(pts), extra

    def evaluate(self, samples: torch.Tensor, cond: Mapping | None) -> dict[str, float]:
        if not self.metrics:
            return {}
        pts, out = self._sample_points(samples.detach().cpu().float())
        test = self.source.test()
        refs = _subsample(test.points, pts.shape[1], seed=0)
        groups: list[tuple[str, np.ndarray, np.ndarray]]
        labels_t = self._cond_labels(cond, len(pts))
        if labels_t is not None:
            labels = labels_t.numpy()
            groups = [
                (name, pts[labels == c], refs[test.labels == c])
                for c, name in enumerate(test.classes)
                if (labels == c).any() and (test.labels == c).any()
            ]
        else:
            groups = [("all", pts, refs)]
        per_group = []
        for name, s, r in groups:
            m = compute_all_metrics(torch.from_numpy(s), torch.from_numpy(r), emd=self.emd)
            per_group.append(m)
            out.update({f"{name}/{k}": v for k, v in m.items()})
            out[f"{name}/n_samples"], out[f"{name}/n_refs"] = float(len(s)), float(len(r))
        for k in per_group[0]:
            out[k] = float(np.mean([m[k] for m in per_group]))
        out["points"] = float(pts.shape[1])
        return out

    def _cond_labels(self, cond: Mapping | None, n: int) -> torch.Tensor | None:
        if cond is not None and "class" in cond:
            return cond["class"].cpu()
        if self.conditioning == "text" and self._labels is not None and len(self._labels) == n:
            return self._labels  # the classes of the prompts drawn by sample_cond
        return None

    def extra_npz(self, cond: Mapping | None) -> dict[str, np.ndarray]:
        out = {"classes": np.asarray(self.source.train().classes)}
        if self.conditioning == "text" and self._prompts is not None:
            out["prompts"] = np.asarray(self._prompts)
        return out
