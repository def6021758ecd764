"""3-D shape data: procedural classes built from primitives, and loaders for real folders.

Built-in data (nothing downloaded): five classes (``chair``, ``table``, ``lamp``, ``mug``,
``airplane``) assembled from boxes, cylinders, spheres and tori with seeded random proportions
(boolean-free compounds: the parts overlap, the shape is their union). Each shape is kept as its
primitives, which give an exact union signed distance (``min`` of the parts' SDFs, exact outside
the shape), a triangle mesh (the parts concatenated, trimesh), 2048 surface points (sampled on the
parts and kept only where no other part covers them), a 32^3 occupancy grid and a truncated SDF.

Coordinates (the "data space"): as ShapeNet is distributed, every shape is centred on its
bounding box and scaled into the ball of radius 0.5 (so the PointFlow / PVD JSD grid on
[-0.5, 0.5]^3 applies). Model-space normalisation of point clouds follows PointFlow
(Yang et al. 2019, ``ShapeNet15kPointClouds``): ``"global"`` subtracts the mean of all points of
the training set and divides by their scalar std (PointFlow's generation setting, PVD's default);
``"per_shape"`` does so per cloud (the auto-encoding setting); ``"none"`` keeps data space.

Real data: :func:`scan_folder` understands ModelNet (``<class>/<train|test>/*.off``), ShapeNet
(``<synset>/<model>/models/model_normalized.obj`` or ``<synset>/<model>.<ext>``), class folders
and flat folders, with meshes (OBJ / PLY / OFF / STL / GLB / GLTF) and point clouds
(PLY without faces / NPY / NPZ). :func:`load_points` / :func:`load_mesh` raise one
:class:`ShapeFileError` line naming the file; :func:`folder_data` raises it or, with
``on_error="skip"``, skips the file and counts it (``dataset.skipped``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh
from scipy import ndimage

from polydiff.train.data import TensorDictDataset

__all__ = [
    "CLASSES",
    "GRID_BOUND",
    "MESH_EXTENSIONS",
    "POINT_EXTENSIONS",
    "Primitive",
    "ShapeFileError",
    "ShapeSet",
    "ShapeSpec",
    "folder_data",
    "grid_coordinates",
    "load_mesh",
    "load_points",
    "make_shape",
    "mesh_to_sdf_grid",
    "normalize_points",
    "procedural_shapes",
    "resolve_num_classes",
    "sample_surface_points",
    "scan_folder",
]

CLASSES = ("chair", "table", "lamp", "mug", "airplane")
GRID_BOUND = (
    0.55  # grids span [-0.55, 0.55]^3: the unit-diameter shape plus a margin of empty cells
)
MESH_EXTENSIONS = (".obj", ".ply", ".off", ".stl", ".glb", ".gltf")
POINT_EXTENSIONS = (".npy", ".npz", ".ply")


class ShapeFileError(ValueError):
    """A shape file that cannot be used (unreadable, empty, degenerate); names the file."""


# --------------------------------------------------------------------------------------------
# Primitives: exact signed distances and meshes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Primitive:
    """One part: ``kind`` in box | cylinder | sphere | torus.

    ``size``: box half-extents (3); cylinder (radius, half-height) along ``axis``; sphere
    (radius,); torus (major radius, minor radius) around ``axis``.
    """

    kind: str
    center: tuple[float, float, float]
    size: tuple[float, ...]
    axis: int = 1  # 0 = x, 1 = y (up), 2 = z

    def sdf(self, p: np.ndarray) -> np.ndarray:
        """Signed distance (negative inside) at points ``p`` (M, 3) (Quilez' exact formulas)."""
        q = p - np.asarray(self.center)
        if self.kind == "box":
            d = np.abs(q) - np.asarray(self.size)
            outside = np.linalg.norm(np.maximum(d, 0.0), axis=-1)
            return outside + np.minimum(d.max(axis=-1), 0.0)
        if self.kind == "sphere":
            return np.linalg.norm(q, axis=-1) - self.size[0]
        others = [i for i in range(3) if i != self.axis]
        radial = np.linalg.norm(q[:, others], axis=-1)
        if self.kind == "cylinder":
            d = np.stack([radial - self.size[0], np.abs(q[:, self.axis]) - self.size[1]], -1)
            return np.linalg.norm(np.maximum(d, 0.0), axis=-1) + np.minimum(d.max(axis=-1), 0.0)
        if self.kind == "torus":
            ring = np.stack([radial - self.size[0], q[:, self.axis]], -1)
            return np.linalg.norm(ring, axis=-1) - self.size[1]
        raise ValueError(f"unknown primitive kind {self.kind!r}")

    def mesh(self) -> trimesh.Trimesh:
        """A closed triangle mesh of the part."""
        if self.kind == "box":
            m = trimesh.creation.box(extents=2 * np.asarray(self.size))
        elif self.kind == "sphere":
            m = trimesh.creation.icosphere(subdivisions=2, radius=self.size[0])
        elif self.kind == "cylinder":
            m = trimesh.creation.cylinder(radius=self.size[0], height=2 * self.size[1], sections=24)
        elif self.kind == "torus":
            m = trimesh.creation.torus(
                self.size[0], self.size[1], major_sections=24, minor_sections=12
            )
        else:
            raise ValueError(f"unknown primitive kind {self.kind!r}")
        if self.kind in ("cylinder", "torus") and self.axis != 2:  # trimesh builds them along z
            to = np.eye(3)[self.axis]
            m.apply_transform(trimesh.geometry.align_vectors([0, 0, 1], to))
        m.apply_translation(self.center)
        return m

    def scaled(self, shift: np.ndarray, scale: float) -> Primitive:
        c = (np.asarray(self.center) - shift) * scale
        return Primitive(
            self.kind, tuple(c.tolist()), tuple(s * scale for s in self.size), self.axis
        )


@dataclass
class ShapeSpec:
    """A procedural shape: its class, parts (already in data space) and a caption naming its
    variant ("a chair with a tall back and arm rests", "a round table on a pedestal")."""

    label: int
    parts: list[Primitive] = field(default_factory=list)
    caption: str = ""

    @property
    def name(self) -> str:
        return CLASSES[self.label]

    def sdf(self, p: np.ndarray) -> np.ndarray:
        """Union signed distance ``min_k sdf_k`` (exact outside the shape, a bound inside)."""
        return np.min(np.stack([part.sdf(p) for part in self.parts]), axis=0)

    def mesh(self) -> trimesh.Trimesh:
        return trimesh.util.concatenate([part.mesh() for part in self.parts])


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _chair(rng: np.random.Generator) -> tuple[list[Primitive], str]:
    w, d, h = _u(rng, 0.4, 0.6), _u(rng, 0.4, 0.6), _u(rng, 0.35, 0.5)  # seat size, leg height
    t, leg = _u(rng, 0.04, 0.08), _u(rng, 0.025, 0.045)
    back_h = _u(rng, 0.4, 0.75)
    parts = [Primitive("box", (0, h + t / 2, 0), (w / 2, t / 2, d / 2))]
    for sx in (-1, 1):
        for sz in (-1, 1):
            c = (sx * (w / 2 - leg), h / 2, sz * (d / 2 - leg))
            parts.append(Primitive("box", c, (leg, h / 2, leg)))
    parts.append(
        Primitive("box", (0, h + t + back_h / 2, -d / 2 + t / 2), (w / 2, back_h / 2, t / 2))
    )
    arms = rng.random() < 0.4
    if arms:  # arm rests
        for sx in (-1, 1):
            c = (sx * (w / 2 - leg), h + t + 0.12, 0)
            parts.append(Primitive("box", c, (leg, leg, d / 2)))
    back = "a tall back" if back_h > 0.6 else "a low back"
    return parts, f"a chair with {back}{' and arm rests' if arms else ''}"


def _table(rng: np.random.Generator) -> tuple[list[Primitive], str]:
    w, d, h = _u(rng, 0.7, 1.1), _u(rng, 0.4, 0.8), _u(rng, 0.45, 0.75)
    t = _u(rng, 0.03, 0.07)
    parts = []
    four_legs = rng.random() < 0.7
    if four_legs:
        parts.append(Primitive("box", (0, h - t / 2, 0), (w / 2, t / 2, d / 2)))
        leg = _u(rng, 0.025, 0.05)
        for sx in (-1, 1):
            for sz in (-1, 1):
                c = (sx * (w / 2 - 1.5 * leg), (h - t) / 2, sz * (d / 2 - 1.5 * leg))
                parts.append(Primitive("box", c, (leg, (h - t) / 2, leg)))
    else:  # round top on a pedestal
        r = w / 2
        parts.append(Primitive("cylinder", (0, h - t / 2, 0), (r, t / 2)))
        parts.append(Primitive("cylinder", (0, (h - t) / 2, 0), (_u(rng, 0.04, 0.08), (h - t) / 2)))
        parts.append(Primitive("cylinder", (0, 0.02, 0), (r * _u(rng, 0.4, 0.6), 0.02)))
    kind = "a rectangular table on four legs" if four_legs else "a round table on a pedestal"
    return parts, kind


def _lamp(rng: np.random.Generator) -> tuple[list[Primitive], str]:
    base_r, base_h = _u(rng, 0.12, 0.22), _u(rng, 0.02, 0.05)
    pole_h, pole_r = _u(rng, 0.5, 0.9), _u(rng, 0.03, 0.05)
    parts = [
        Primitive("cylinder", (0, base_h, 0), (base_r, base_h)),
        Primitive("cylinder", (0, 2 * base_h + pole_h / 2, 0), (pole_r, pole_h / 2)),
    ]
    top = 2 * base_h + pole_h
    drum = rng.random() < 0.6
    if drum:
        shade_r, shade_h = _u(rng, 0.12, 0.25), _u(rng, 0.1, 0.22)
        parts.append(
            Primitive("cylinder", (0, top + shade_h / 2 - 0.02, 0), (shade_r, shade_h / 2))
        )
    else:  # globe
        r = _u(rng, 0.08, 0.16)
        parts.append(Primitive("sphere", (0, top + r - 0.02, 0), (r,)))
    return parts, f"a floor lamp with a {'drum shade' if drum else 'globe'}"


def _mug(rng: np.random.Generator) -> tuple[list[Primitive], str]:
    r, h = _u(rng, 0.2, 0.32), _u(rng, 0.45, 0.8)
    R, rr = _u(rng, 0.1, 0.16) * (h / 0.6), _u(rng, 0.025, 0.045)  # handle: torus in the xy-plane
    parts = [
        Primitive("cylinder", (0, h / 2, 0), (r, h / 2)),
        Primitive("torus", (r, h / 2, 0), (R, rr), axis=2),
    ]
    return parts, f"a {'tall' if h / r > 2.4 else 'wide'} mug with a handle"


def _airplane(rng: np.random.Generator) -> tuple[list[Primitive], str]:
    length, body_r = _u(rng, 0.9, 1.3), _u(rng, 0.05, 0.09)
    span, chord, tw = _u(rng, 0.8, 1.3), _u(rng, 0.12, 0.22), _u(rng, 0.025, 0.04)
    wing_x = _u(rng, -0.1, 0.1) * length
    tail_x = -length / 2 + 0.08
    wings = "long" if span / length > 1.0 else "short"
    return [
        Primitive("cylinder", (0, 0, 0), (body_r, length / 2), axis=0),
        Primitive("sphere", (length / 2, 0, 0), (body_r,)),
        Primitive("box", (wing_x, 0, 0), (chord / 2, tw, span / 2)),
        Primitive("box", (tail_x, 0, 0), (chord / 3, tw, span / 5)),
        Primitive("box", (tail_x, _u(rng, 0.08, 0.15), 0), (chord / 3, _u(rng, 0.08, 0.15), tw)),
    ], f"an airplane with {wings} wings"


_BUILDERS = {"chair": _chair, "table": _table, "lamp": _lamp, "mug": _mug, "airplane": _airplane}


def _normalised(parts: list[Primitive], label: int, caption: str) -> ShapeSpec:
    """Centre the union on its bounding box and scale it into the ball of radius 0.5."""
    verts = trimesh.util.concatenate([p.mesh() for p in parts]).vertices
    lo, hi = verts.min(0), verts.max(0)
    centre = (lo + hi) / 2
    radius = np.linalg.norm(verts - centre, axis=1).max()
    return ShapeSpec(label, [p.scaled(centre, 0.5 / radius) for p in parts], caption)


def make_shape(name: str, seed: int) -> ShapeSpec:
    """The procedural shape of class ``name`` drawn with ``seed`` (data space)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown shape class {name!r}; valid choices: {list(CLASSES)}")
    rng = np.random.default_rng(seed)
    parts, caption = _BUILDERS[name](rng)
    return _normalised(parts, CLASSES.index(name), caption)


def sample_surface_points(spec: ShapeSpec, n: int, seed: int) -> np.ndarray:
    """``n`` points uniformly on the union's surface (area-weighted on the parts; points lying
    inside another part are rejected)."""
    mesh = spec.mesh()
    out: list[np.ndarray] = []
    count, rng = 0, np.random.default_rng(seed)
    while count < n:
        pts, _ = trimesh.sample.sample_surface(mesh, 2 * n, seed=rng)
        pts = pts[spec.sdf(pts) > -1e-4]
        out.append(pts)
        count += len(pts)
    return np.concatenate(out)[:n].astype(np.float32)


def grid_coordinates(resolution: int, bound: float = GRID_BOUND) -> np.ndarray:
    """Vertex coordinates ``(R, R, R, 3)`` of the grid on ``[-bound, bound]^3`` (ij indexing)."""
    ax = np.linspace(-bound, bound, resolution)
    return np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1)


def _truncate(sdf: np.ndarray, truncation: float) -> np.ndarray:
    return (np.clip(sdf, -truncation, truncation) / truncation).astype(np.float32)


# --------------------------------------------------------------------------------------------
# The built-in set
# --------------------------------------------------------------------------------------------


@dataclass
class ShapeSet:
    """Shapes as arrays: ``points`` (N, P, 3) in data space, ``labels`` (N,), ``sdf`` (N, R, R, R)
    truncated SDF in [-1, 1] (``* truncation`` = distance) or None, the ``classes``' names and
    one caption per shape (folders: "a <class>")."""

    points: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    sdf: np.ndarray | None = None
    truncation: float = 0.1
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.points)

    def subset(self, idx: np.ndarray) -> ShapeSet:
        return ShapeSet(
            self.points[idx],
            self.labels[idx],
            self.classes,
            None if self.sdf is None else self.sdf[idx],
            self.truncation,
            [self.files[i] for i in idx] if self.files else [],
            list(self.skipped),
            [self.captions[i] for i in idx] if self.captions else [],
        )


_SET_CACHE: dict[tuple, ShapeSet] = {}


def procedural_shapes(
    classes: Sequence[str] = CLASSES,
    per_class: int = 400,
    num_points: int = 2048,
    resolution: int = 32,
    split: str = "train",
    seed: int = 0,
    with_sdf: bool = True,
    truncation: float = 0.1,
) -> ShapeSet:
    """The built-in set: ``per_class`` shapes of each class for ``split`` in train | test | all
    (test = an independent draw of ``max(per_class // 4, 1)`` shapes per class), seeded.
    Cached per process."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    bad = [c for c in classes if c not in CLASSES]
    if bad:
        raise ValueError(f"unknown shape classes {bad}; valid choices: {list(CLASSES)}")
    key = (tuple(classes), per_class, num_points, resolution, split, seed, with_sdf, truncation)
    if key in _SET_CACHE:
        return _SET_CACHE[key]
    if split == "all":
        parts = [
            procedural_shapes(
                classes, per_class, num_points, resolution, s, seed, with_sdf, truncation
            )
            for s in ("train", "test")
        ]
        out = ShapeSet(
            np.concatenate([p.points for p in parts]),
            np.concatenate([p.labels for p in parts]),
            tuple(classes),
            None if not with_sdf else np.concatenate([p.sdf for p in parts]),
            truncation,
            captions=[c for p in parts for c in p.captions],
        )
        _SET_CACHE[key] = out
        return out
    n = per_class if split == "train" else max(per_class // 4, 1)
    offset = 0 if split == "train" else 1_000_000
    grid = grid_coordinates(resolution).reshape(-1, 3) if with_sdf else None
    points, labels, sdfs, captions = [], [], [], []
    for ci, name in enumerate(classes):
        for i in range(n):
            s = seed * 10_000_000 + offset + CLASSES.index(name) * 100_000 + i
            spec = make_shape(name, s)
            points.append(sample_surface_points(spec, num_points, s))
            labels.append(ci)
            captions.append(spec.caption)
            if grid is not None:
                sdf = spec.sdf(grid).reshape(resolution, resolution, resolution)
                sdfs.append(_truncate(sdf, truncation))
    out = ShapeSet(
        np.stack(points),
        np.asarray(labels, dtype=np.int64),
        tuple(classes),
        np.stack(sdfs) if grid is not None else None,
        truncation,
        captions=captions,
    )
    _SET_CACHE[key] = out
    return out


def normalize_points(
    points: np.ndarray, mode: str = "global", stats: tuple[np.ndarray, float] | None = None
) -> tuple[np.ndarray, tuple[np.ndarray, float]]:
    """PointFlow normalisation of ``points`` (N, P, 3): returns ``(normalised, (mean, std))``.

    ``global``: one mean (3,) and one scalar std over every point of the set (or the given
    ``stats``, e.g. the training set's); ``per_shape``: per-cloud mean (N, 1, 3) and scalar std
    (N, 1, 1); ``none``: identity (mean 0, std 1).
    """
    if mode == "none":
        return points, (np.zeros(3, np.float32), 1.0)
    if mode == "global":
        if stats is None:
            mean = points.reshape(-1, 3).mean(0)
            std = float(points.reshape(-1).std())
            stats = (mean.astype(np.float32), std)
        return ((points - stats[0]) / stats[1]).astype(np.float32), stats
    if mode == "per_shape":
        mean = points.mean(axis=1, keepdims=True)
        std = points.reshape(len(points), -1).std(axis=1).reshape(-1, 1, 1)
        return ((points - mean) / std).astype(np.float32), (mean, std)  # type: ignore[return-value]
    raise ValueError(f"normalize must be 'global', 'per_shape' or 'none', got {mode!r}")


# --------------------------------------------------------------------------------------------
# Real data: folders of meshes and point clouds
# --------------------------------------------------------------------------------------------


def scan_folder(
    root: str | Path, split: str | None = None, extensions: Sequence[str] | None = None
) -> tuple[list[Path], list[str]]:
    """Shape files under ``root`` and their class names (sorted, deterministic).

    The class of a file is the first folder under ``root`` (ModelNet ``<class>/<split>/``,
    ShapeNet ``<synset>/<model>/...``, plain class folders); files directly in ``root`` make an
    unconditional set (class ``""``). With ``split`` only files under a ``<split>`` folder are kept
    (ModelNet); a folder with no such files is an error naming it.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"shape folder {root} does not exist (data.root)")
    exts = tuple(e.lower() for e in (extensions or (*MESH_EXTENSIONS, *POINT_EXTENSIONS)))
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)
    if split is not None:
        files = [p for p in files if split in p.relative_to(root).parts[:-1]]
    if not files:
        where = f" in a '{split}' folder" if split else ""
        raise FileNotFoundError(f"no shape files ({', '.join(exts)}){where} under {root}")
    names = [
        p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "" for p in files
    ]
    return files, names


def resolve_num_classes(
    root: str | Path, num_classes: int | str | None, split: str | None = None
) -> int | None:
    """The number of classes of folder ``root`` (None when it has one class or none).

    ``num_classes="auto"`` (or None) reads it from the folder; an explicit value must agree with
    the folder, else the error names both."""
    _, names = scan_folder(root, split)
    found = len(set(names)) if len(set(names)) > 1 else None
    if num_classes in (None, "auto"):
        return found
    if int(num_classes) != (found or 0) and not (found is None and int(num_classes) in (0, 1)):
        raise ValueError(
            f"data.num_classes={num_classes} but {root} has {found or 0} class folders "
            f"({sorted(set(names))}); drop the override or fix the folder"
        )
    return found


def load_mesh(path: str | Path) -> trimesh.Trimesh:
    """A triangle mesh from OBJ / PLY / OFF / STL / GLB / GLTF (scenes are merged); raises
    :class:`ShapeFileError` naming the file when it is unreadable or has no faces."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = trimesh.load(path, force="mesh", process=True)
    except Exception as err:
        raise ShapeFileError(f"{path}: cannot read mesh ({type(err).__name__}: {err})") from err
    if not isinstance(obj, trimesh.Trimesh) or len(obj.faces) == 0:
        raise ShapeFileError(f"{path}: no triangle faces (expected a mesh)")
    if not np.isfinite(obj.vertices).all():
        raise ShapeFileError(f"{path}: non-finite vertex coordinates")
    if obj.area <= 0:
        raise ShapeFileError(f"{path}: degenerate mesh (zero surface area)")
    return obj


def load_points(path: str | Path, num_points: int, seed: int = 0) -> np.ndarray:
    """``num_points`` points (P, 3) from a mesh (area-uniform surface samples) or a point cloud
    (PLY without faces, NPY (P, 3), NPZ with one (P, 3) array or a ``points`` key), subsampled
    or resampled with replacement; never unpickles. Errors name the file."""
    path = Path(path)
    ext = path.suffix.lower()
    rng = np.random.default_rng(seed)
    pts: np.ndarray
    if ext in (".npy", ".npz"):
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as err:
            raise ShapeFileError(f"{path}: cannot read ({type(err).__name__}: {err})") from err
        if ext == ".npz":
            keys = list(arr.keys())
            key = "points" if "points" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise ShapeFileError(
                    f"{path}: NPZ needs a 'points' array or exactly one array, has {keys}"
                )
            try:  # members are read lazily: a damaged one fails here
                arr = arr[key]
            except Exception as err:
                msg = " ".join(str(err).split())
                raise ShapeFileError(
                    f"{path}: cannot read {key!r} ({type(err).__name__}: {msg})"
                ) from err
        try:
            pts = np.asarray(arr, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ShapeFileError(f"{path}: points are not numbers ({err})") from err
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = trimesh.load(path, process=False)
        except Exception as err:
            raise ShapeFileError(f"{path}: cannot read ({type(err).__name__}: {err})") from err
        if isinstance(obj, trimesh.Scene):
            obj = obj.to_geometry() if hasattr(obj, "to_geometry") else obj.dump(concatenate=True)
        if isinstance(obj, trimesh.Trimesh) and len(obj.faces):
            mesh = load_mesh(path)
            pts, _ = trimesh.sample.sample_surface(mesh, num_points, seed=rng)
        elif isinstance(obj, (trimesh.PointCloud, trimesh.Trimesh)):
            pts = np.asarray(obj.vertices, dtype=np.float64)
        else:
            raise ShapeFileError(f"{path}: neither a mesh nor a point cloud ({type(obj).__name__})")
    if pts.ndim != 2 or pts.shape[-1] != 3 or len(pts) == 0:
        raise ShapeFileError(f"{path}: expected points of shape (P, 3), got {tuple(pts.shape)}")
    if not np.isfinite(pts).all():
        raise ShapeFileError(f"{path}: non-finite coordinates")
    if len(pts) != num_points:
        idx = rng.choice(len(pts), num_points, replace=len(pts) < num_points)
        pts = pts[idx]
    return pts.astype(np.float32)


def _unit_ball(points: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    lo, hi = points.min(0), points.max(0)
    centre = (lo + hi) / 2
    scale = 0.5 / max(float(np.linalg.norm(points - centre, axis=1).max()), 1e-12)
    return centre, scale, (points - centre) * scale


def mesh_to_sdf_grid(
    mesh: trimesh.Trimesh, resolution: int = 32, truncation: float = 0.1, path: str = "<mesh>"
) -> np.ndarray:
    """Truncated SDF (R, R, R) in [-1, 1] of a mesh already in data space: occupancy by
    voxelising at the grid pitch and filling the interior (trimesh), then the signed Euclidean
    distance transform of the occupancy (scipy), in grid units times the pitch. A mesh whose
    interior cannot be filled (not watertight) is a :class:`ShapeFileError`."""
    pitch = 2 * GRID_BOUND / (resolution - 1)
    if not mesh.is_watertight:
        raise ShapeFileError(f"{path}: mesh is not watertight (needed for an SDF / occupancy grid)")
    vox = mesh.voxelized(pitch=pitch).fill()
    occ = np.zeros((resolution,) * 3, bool)
    idx = np.round((vox.points + GRID_BOUND) / pitch).astype(int)
    ok = ((idx >= 0) & (idx < resolution)).all(1)
    occ[tuple(idx[ok].T)] = True
    if not occ.any():
        raise ShapeFileError(f"{path}: empty occupancy grid")
    inside = ndimage.distance_transform_edt(occ) * pitch
    outside = ndimage.distance_transform_edt(~occ) * pitch
    return _truncate(outside - inside + np.where(occ, pitch / 2, -pitch / 2), truncation)


def folder_data(
    root: str | Path,
    num_points: int = 2048,
    split: str | None = None,
    with_sdf: bool = False,
    resolution: int = 32,
    truncation: float = 0.1,
    on_error: str = "raise",
    seed: int = 0,
) -> ShapeSet:
    """A :class:`ShapeSet` from a folder of meshes / point clouds (see :func:`scan_folder`),
    each shape centred and scaled into the ball of radius 0.5 (ShapeNet convention).

    ``with_sdf`` also builds truncated SDF grids (meshes only, watertight). ``on_error``:
    ``"raise"`` (the first bad file is named) or ``"skip"`` (bad files listed in ``skipped``)."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    exts = MESH_EXTENSIONS if with_sdf else None
    files, names = scan_folder(root, split, exts)
    classes = tuple(sorted(set(names)))
    points, labels, sdfs, kept, skipped = [], [], [], [], []
    for i, (path, name) in enumerate(zip(files, names)):
        try:
            pts = load_points(path, num_points, seed + i)
            centre, scale, pts = _unit_ball(pts)
            if with_sdf:
                mesh = load_mesh(path)
                mesh.apply_translation(-centre)
                mesh.apply_scale(scale)
                sdfs.append(mesh_to_sdf_grid(mesh, resolution, truncation, str(path)))
        except ShapeFileError as err:
            if on_error == "raise":
                raise
            skipped.append(str(err))
            continue
        points.append(pts)
        labels.append(classes.index(name))
        kept.append(str(path))
    if not points:
        raise ShapeFileError(
            f"no usable shape under {root}: {len(skipped)} files skipped ({skipped[:3]})"
        )
    return ShapeSet(
        np.stack(points).astype(np.float32),
        np.asarray(labels, dtype=np.int64),
        classes,
        np.stack(sdfs) if with_sdf else None,
        truncation,
        kept,
        skipped,
        [f"a {classes[y] or 'shape'}" for y in labels],
    )


class ShapeTensors(TensorDictDataset):
    """Aligned tensors with ``get_batch`` (the trainer skips per-item collation); ``info`` keeps
    what was read from the data (classes, normalisation statistics, skipped files)."""

    def __init__(self, info: dict[str, Any] | None = None, **tensors: torch.Tensor) -> None:
        if "x" not in tensors or len({len(v) for v in tensors.values()}) != 1:
            raise ValueError(
                "need 'x' and tensors of one length, got "
                f"{ {k: tuple(v.shape) for k, v in tensors.items()} }"
            )
        self.tensors, self.info = tensors, dict(info or {})
