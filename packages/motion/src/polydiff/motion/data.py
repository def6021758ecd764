"""Motion datasets: the built-in procedural set and loaders for the formats users have.

- :func:`builtin_motions`: seeded procedural motions (:mod:`polydiff.motion.synthetic`) as
  HumanML3D features with captions and action labels, optionally mirrored (captions swap
  "left" and "right", as HumanML3D's mirrored ``M*`` clips).
- :func:`load_humanml3d`: a HumanML3D folder (``new_joint_vecs/*.npy``, ``texts/*.txt`` with
  ``caption#tokens#from#to`` lines, ``Mean.npy`` / ``Std.npy``, ``<split>.txt``).
- :func:`load_amass_npz`: an AMASS ``.npz`` (poses, trans, betas, framerate) through SMPL
  forward kinematics (:mod:`polydiff.motion.smpl`), z-up turned y-up, resampled to 20 fps.
- :class:`Normalizer`: per-channel mean / std (HumanML3D's ``Mean.npy`` / ``Std.npy``).

Every loader names the file and what it expected when something is wrong; with
``on_error="skip"`` bad files are skipped and counted in ``MotionSet.skipped`` instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .features import FPS, joints_to_features
from .synthetic import ACTIONS, synthesize

__all__ = [
    "MotionSet",
    "Normalizer",
    "builtin_motions",
    "load_amass_npz",
    "load_humanml3d",
    "swap_left_right_words",
]


@dataclass
class MotionSet:
    """Motions as feature arrays (T_i, D) with captions (a list per motion) and labels."""

    features: list[np.ndarray]
    captions: list[list[str]]
    labels: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    skipped: list[str] = field(default_factory=list)
    label_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.features)

    @property
    def dim(self) -> int:
        return int(self.features[0].shape[-1])


@dataclass(frozen=True)
class Normalizer:
    """``(x - mean) / std`` per channel; ``std`` is floored at ``eps`` (constant channels)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, features: Sequence[np.ndarray], eps: float = 1e-2) -> Normalizer:
        cat = np.concatenate([np.asarray(f, dtype=np.float64) for f in features])
        return cls(cat.mean(0).astype(np.float32), np.maximum(cat.std(0), eps).astype(np.float32))

    def __post_init__(self) -> None:
        if self.mean.shape != self.std.shape or self.mean.ndim != 1:
            raise ValueError(
                f"mean and std must be 1-D of one length, got {self.mean.shape}, {self.std.shape}"
            )
        if not (np.isfinite(self.std).all() and (self.std > 0).all()):
            raise ValueError("std must be finite and positive")

    def normalize(self, x):
        return (x - _like(self.mean, x)) / _like(self.std, x)

    def denormalize(self, x):
        return x * _like(self.std, x) + _like(self.mean, x)


def _like(a: np.ndarray, x):
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return torch.as_tensor(a, dtype=x.dtype, device=x.device)
    except ImportError:  # pragma: no cover
        pass
    return a


_SWAP = re.compile(r"\b(left|right)\b")


def swap_left_right_words(text: str) -> str:
    """ "turns left" <-> "turns right" (captions of mirrored motions)."""
    return _SWAP.sub(lambda m: "right" if m.group(1) == "left" else "left", text)


def builtin_motions(
    n: int = 1000,
    seed: int = 0,
    min_len: int = 40,
    max_len: int = 196,
    combo_prob: float = 0.3,
    actions: Sequence[str] = ACTIONS,
    mirror: bool = False,
) -> MotionSet:
    """``n`` procedural motions as 263-d features (``length - 1`` frames each); ``mirror``
    appends the mirrored copy of each (captions with left/right swapped, same label)."""
    from .features import mirror_features

    joints, specs = synthesize(n, seed, min_len + 1, max_len + 1, combo_prob, tuple(actions))
    feats = [joints_to_features(j, retarget=False) for j in joints]
    caps = [list(s.captions) for s in specs]
    labels = [ACTIONS.index(s.segments[0].action) for s in specs]
    names = [f"builtin_{seed}_{i:05d}" for i in range(n)]
    if mirror:
        feats += [mirror_features(f) for f in feats]
        caps += [[swap_left_right_words(c) for c in cs] for cs in caps]
        labels += labels
        names += [f"M{nm}" for nm in names]
    return MotionSet(feats, caps, labels, names, label_names=ACTIONS)


# ------------------------------------------------------------------------------- HumanML3D
def _read_split(root: Path, split: str) -> list[str]:
    path = root / f"{split}.txt"
    if not path.is_file():
        have = sorted(p.name for p in root.glob("*.txt"))
        raise FileNotFoundError(f"HumanML3D split file {path} not found (split files here: {have})")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _read_texts(path: Path) -> list[tuple[str, float, float]]:
    """``caption#tokens#from#to`` lines -> (caption, from seconds, to seconds)."""
    out = []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        parts = line.strip().split("#")
        if len(parts) != 4:
            raise ValueError(
                f"{path}:{k + 1}: expected 'caption#tokens#from#to', got {line.strip()[:80]!r}"
            )
        try:
            f_tag, to_tag = float(parts[2] or 0), float(parts[3] or 0)
        except ValueError as err:
            raise ValueError(f"{path}:{k + 1}: from/to times must be numbers: {err}") from err
        if not all(np.isnan(v) or 0 <= v < np.inf for v in (f_tag, to_tag)):  # NaN: whole
            raise ValueError(
                f"{path}:{k + 1}: from/to times must be finite and >= 0, got {f_tag}, {to_tag}"
            )
        out.append(
            (
                parts[0].strip(),
                0.0 if np.isnan(f_tag) else f_tag,
                0.0 if np.isnan(to_tag) else to_tag,
            )
        )
    if not out:
        raise ValueError(f"{path}: no caption lines")
    return out


def _load_array(path: Path, what: str) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as err:
        raise ValueError(f"{path}: cannot read {what} ({type(err).__name__}: {err})") from err
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{path}: expected one array (.npy), got an archive")
    return arr


def load_humanml3d(
    root: str | Path,
    split: str = "train",
    *,
    min_len: int = 40,
    max_len: int = 200,
    dim: int | None = None,
    on_error: str = "raise",
    limit: int | None = None,
) -> MotionSet:
    """A HumanML3D-format folder: each motion of ``<split>.txt`` with its captions.

    As HumanML3D's loader: motions shorter than ``min_len`` frames are dropped (counted in
    ``skipped``), captions with ``from``/``to`` times are cropped sub-motions, ``Mean.npy`` /
    ``Std.npy`` are read when present. ``dim`` (default: from the first file) is checked on
    every file. ``on_error="skip"`` skips unreadable or malformed files and records them.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    root = Path(root)
    vec_dir, text_dir = root / "new_joint_vecs", root / "texts"
    for d in (vec_dir, text_dir):
        if not d.is_dir():
            raise FileNotFoundError(
                f"{d} not found: a HumanML3D folder holds new_joint_vecs/ and texts/"
            )
    ids = _read_split(root, split)
    if limit is not None:
        ids = ids[:limit]
    out = MotionSet([], [], [], [])
    for mid in ids:
        try:
            arr = _load_array(vec_dir / f"{mid}.npy", "motion features")
            if arr.ndim != 2 or not np.isfinite(arr).all():
                raise ValueError(
                    f"{vec_dir / f'{mid}.npy'}: expected finite features of shape (T, D), "
                    f"got shape {arr.shape}{'' if np.isfinite(arr).all() else ' with NaN/inf'}"
                )
            want = dim if dim is not None else (out.dim if len(out) else arr.shape[1])
            if arr.shape[1] != want:
                raise ValueError(
                    f"{vec_dir / f'{mid}.npy'}: {arr.shape[1]} channels, expected {want} "
                    "(data.dim or the first file)"
                )
            texts = _read_texts(text_dir / f"{mid}.txt")
        except (ValueError, FileNotFoundError) as err:
            if on_error == "raise":
                raise
            out.skipped.append(f"{mid}: {err}")
            continue
        whole = [c for c, f, t in texts if f == 0.0 and t == 0.0]
        if whole and min_len <= len(arr) < max_len:
            out.features.append(arr.astype(np.float32))
            out.captions.append(whole)
            out.names.append(mid)
        elif whole:
            out.skipped.append(f"{mid}: {len(arr)} frames outside [{min_len}, {max_len})")
        for k, (cap, f, t) in enumerate(
            (c, f, t) for c, f, t in texts if not (f == 0.0 and t == 0.0)
        ):
            sub = arr[int(f * FPS) : int(t * FPS)]
            if min_len <= len(sub) < max_len:
                out.features.append(sub.astype(np.float32))
                out.captions.append([cap])
                out.names.append(f"{mid}#{k}")
    if not out.features:
        raise ValueError(
            f"{root}: no usable motion in split {split!r} ({len(out.skipped)} skipped)"
        )
    mean_p, std_p = root / "Mean.npy", root / "Std.npy"
    if mean_p.is_file() and std_p.is_file():
        out.mean, out.std = _load_array(mean_p, "mean"), _load_array(std_p, "std")
        if out.mean.shape != (out.dim,) or out.std.shape != (out.dim,):
            raise ValueError(
                f"{mean_p} / {std_p}: shapes {out.mean.shape} / {out.std.shape}, "
                f"expected ({out.dim},)"
            )
    return out


# ------------------------------------------------------------------------------- AMASS
AMASS_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


def load_amass_npz(path: str | Path, body_model, fps: int = FPS) -> np.ndarray:
    """Joints (T, 22, 3), y up at ``fps``, of an AMASS ``.npz`` through ``body_model``
    (:class:`polydiff.motion.smpl.BodyModel`): ``poses`` (T, 3 * J) axis-angle, ``trans``
    (T, 3), ``betas``, ``mocap_framerate``. Downsampled by the integer ratio of frame rates
    (HumanML3D), then z-up -> y-up as HumanML3D's ``raw_pose_processing``."""
    path = Path(path)
    try:  # every member is read here: a damaged one fails now, with the file named
        with np.load(path, allow_pickle=False) as npz:
            data = {k: np.asarray(npz[k]) for k in npz.files}
    except Exception as err:
        msg = " ".join(str(err).split())
        raise ValueError(f"{path}: cannot read AMASS npz ({type(err).__name__}: {msg})") from err
    need = ("poses", "trans")
    missing = [k for k in need if k not in data]
    if missing:
        raise ValueError(f"{path}: AMASS npz lacks {missing} (has {sorted(data)})")
    rate_key = next((k for k in ("mocap_framerate", "mocap_frame_rate") if k in data), None)
    if rate_key is None:
        raise ValueError(f"{path}: AMASS npz has no mocap_framerate / mocap_frame_rate")
    try:
        rate = float(data[rate_key])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {rate_key} is not a number ({err})") from err
    if not (np.isfinite(rate) and rate >= fps):
        raise ValueError(f"{path}: frame rate {rate} is not a finite rate >= the target {fps} fps")
    step = max(int(round(rate / fps)), 1)
    try:
        poses = np.asarray(data["poses"], dtype=np.float64)[::step]
        trans = np.asarray(data["trans"], dtype=np.float64)[::step]
        betas = np.asarray(data["betas"], dtype=np.float64) if "betas" in data else None
    except (TypeError, ValueError, IndexError) as err:
        raise ValueError(f"{path}: poses / trans / betas are not numeric arrays ({err})") from err
    if poses.ndim != 2 or poses.shape[1] % 3 or trans.shape != (len(poses), 3) or not len(poses):
        raise ValueError(
            f"{path}: poses must be (T, 3J) and trans (T, 3), got {poses.shape}, {trans.shape}"
        )
    if not all(np.isfinite(a).all() for a in (poses, trans, betas) if a is not None):
        raise ValueError(f"{path}: non-finite values in poses / trans / betas")
    joints = body_model.joints(poses, trans, betas)[:, :22]
    return joints @ AMASS_TO_Y_UP.T
