"""SMPL / SMPL-H / SMPL-X body models read without pickle, forward kinematics through smplx.

A model file is an ``.npz`` loaded with ``allow_pickle=False`` (arrays ``v_template``,
``shapedirs``, ``posedirs``, ``J_regressor``, ``weights``, ``kintree_table``, ``f``) and wrapped
as smplx's ``data_struct``; :class:`BodyModel` runs ``smplx.lbs.lbs`` (Loper et al. 2015:
shape blend, joint regression, pose blend, linear blend skinning). The official files are
pickles: :func:`convert_pkl_to_npz` (``python -m polydiff.motion.smpl convert IN.pkl OUT.npz
--trust``) converts one once, after a warning, since unpickling can run code.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from smplx.lbs import batch_rigid_transform, batch_rodrigues, lbs, vertices2joints
from smplx.utils import Struct

from polydiff.core.fileio import atomic_path

__all__ = ["MODEL_KEYS", "BodyModel", "convert_pkl_to_npz", "load_model_struct"]

MODEL_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")


def load_model_struct(path: str | Path) -> Struct:
    """The arrays of a body-model ``.npz`` as a smplx ``Struct`` (no pickle). A ``.pkl`` is
    refused with the conversion command."""
    path = Path(path)
    if path.suffix == ".pkl":
        raise ValueError(
            f"{path}: pickled model files are not loaded (unpickling can run code); convert it "
            f"once with `python -m polydiff.motion.smpl convert {path} {path.with_suffix('.npz')} "
            "--trust` and pass the .npz"
        )
    if not path.is_file():
        raise FileNotFoundError(f"body model file {path} not found")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:
        raise ValueError(
            f"{path}: cannot read body model npz ({type(err).__name__}: {err})"
        ) from err
    missing = [k for k in MODEL_KEYS if k not in data.files]
    if missing:
        raise ValueError(f"{path}: body model lacks {missing} (has {sorted(data.files)})")
    return Struct(**{k: data[k] for k in data.files})


class BodyModel:
    """A body model from an ``.npz``: ``joints(poses, trans, betas)`` and ``vertices(...)``.

    ``poses`` (T, 3 J') axis-angle with J' >= the model's joints... only the model's first
    ``num_joints`` rotations are used (AMASS SMPL-H poses are 52 joints)."""

    def __init__(self, path: str | Path, num_betas: int = 10) -> None:
        s = load_model_struct(path)
        self.path = Path(path)
        dt = torch.float64
        self.v_template = torch.as_tensor(np.asarray(s.v_template), dtype=dt)
        shapedirs = np.asarray(s.shapedirs)
        self.num_betas = min(num_betas, shapedirs.shape[-1])
        self.shapedirs = torch.as_tensor(shapedirs[..., : self.num_betas], dtype=dt)
        posedirs = np.asarray(s.posedirs)
        self.posedirs = torch.as_tensor(posedirs.reshape(-1, posedirs.shape[-1]).T, dtype=dt)
        self.J_regressor = torch.as_tensor(np.asarray(s.J_regressor), dtype=dt)
        self.weights = torch.as_tensor(np.asarray(s.weights), dtype=dt)
        parents = np.asarray(s.kintree_table)[0].astype(np.int64)
        parents[0] = -1
        self.parents = torch.as_tensor(parents)
        self.faces = np.asarray(s.f, dtype=np.int64)
        self.num_joints = len(parents)
        v = len(self.v_template)
        if self.posedirs.shape != ((self.num_joints - 1) * 9, v * 3):
            raise ValueError(
                f"{path}: posedirs of shape {posedirs.shape} do not fit {v} vertices and "
                f"{self.num_joints} joints"
            )

    def _inputs(self, poses, trans, betas):
        poses = torch.as_tensor(np.asarray(poses), dtype=torch.float64)
        if poses.ndim != 2 or poses.shape[1] < 3 * self.num_joints:
            raise ValueError(
                f"poses must be (T, >= {3 * self.num_joints}) axis-angle for {self.path.name}, "
                f"got {tuple(poses.shape)}"
            )
        poses = poses[:, : 3 * self.num_joints]
        t = len(poses)
        trans = (
            torch.zeros(t, 3, dtype=torch.float64)
            if trans is None
            else torch.as_tensor(np.asarray(trans), dtype=torch.float64)
        )
        b = torch.zeros(t, self.num_betas, dtype=torch.float64)
        if betas is not None:
            betas = np.asarray(betas, dtype=np.float64).reshape(-1)[: self.num_betas]
            b[:, : len(betas)] = torch.as_tensor(betas)
        return poses, trans, b

    def joints(self, poses, trans=None, betas=None) -> np.ndarray:
        """Posed joint positions (T, J, 3) (skeleton only: no skinning)."""
        poses, trans, betas = self._inputs(poses, trans, betas)
        v_shaped = self.v_template + torch.einsum("bl,mkl->bmk", betas, self.shapedirs)
        rest = vertices2joints(self.J_regressor, v_shaped)  # (T, J, 3)
        rot = batch_rodrigues(poses.reshape(-1, 3)).reshape(len(poses), -1, 3, 3)
        posed, _ = batch_rigid_transform(rot, rest, self.parents, dtype=torch.float64)
        return (posed + trans[:, None]).numpy()

    def vertices(self, poses, trans=None, betas=None) -> np.ndarray:
        """Skinned mesh vertices (T, V, 3) through ``smplx.lbs.lbs``."""
        poses, trans, betas = self._inputs(poses, trans, betas)
        verts, _ = lbs(
            betas, poses, self.v_template, self.shapedirs, self.posedirs,
            self.J_regressor, self.parents, self.weights,
        )  # fmt: skip
        return (verts + trans[:, None]).numpy()

    def rest_joints(self, betas=None) -> np.ndarray:
        """Joint positions (J, 3) of the shaped rest pose."""
        b = torch.zeros(self.num_betas, dtype=torch.float64)
        if betas is not None:
            values = np.asarray(betas, dtype=np.float64).reshape(-1)[: self.num_betas]
            b[: len(values)] = torch.as_tensor(values)
        v_shaped = self.v_template + torch.einsum("l,mkl->mk", b, self.shapedirs)
        return vertices2joints(self.J_regressor, v_shaped[None])[0].numpy()

    def pose_from_joints(self, joints, betas=None) -> tuple[np.ndarray, np.ndarray]:
        """Axis-angle poses (T, 3 J) and translations (T, 3) that put the model's first 22
        joints on the directions of ``joints`` (T, 22, 3) (analytic inverse kinematics: each
        joint's global rotation turns its rest bones onto the observed ones, by Kabsch (SVD) for
        joints with several children (pelvis, spine3) and the smallest rotation for one child;
        the twist about a single bone is not observable from positions and stays zero; bone
        lengths are the model's). The pelvis lands exactly on ``joints[:, 0]``."""
        j = np.asarray(joints, dtype=np.float64)
        if j.ndim != 3 or j.shape[1:] != (22, 3) or not np.isfinite(j).all():
            raise ValueError(f"joints must be finite (T, 22, 3), got shape {j.shape}")
        rest = self.rest_joints(betas)
        parents = self.parents.numpy()
        t, n = len(j), min(22, self.num_joints)
        eye = np.broadcast_to(np.eye(3), (t, 3, 3))
        glob = np.tile(np.eye(3), (t, self.num_joints, 1, 1))
        local = glob.copy()
        for a in range(n):  # parents precede their children in SMPL order
            up = glob[:, parents[a]] if parents[a] >= 0 else eye
            kids = [c for c in range(n) if parents[c] == a]
            if not kids:
                glob[:, a] = up
                continue
            u, v = rest[kids] - rest[a], j[:, kids] - j[:, [a]]  # (K, 3), (T, K, 3)
            if len(kids) == 1:
                glob[:, a] = _rotation_between(np.einsum("tij,j->ti", up, u[0]), v[:, 0]) @ up
            else:  # Kabsch: the rotation R minimising sum_k |R u_k - v_k|^2
                h = np.einsum("kc,tkd->tcd", u, v)  # sum_k u_k v_k^T
                uu, _, vt = np.linalg.svd(h)
                d = np.sign(np.linalg.det(np.swapaxes(vt, 1, 2) @ np.swapaxes(uu, 1, 2)))
                fix = np.tile(np.eye(3), (t, 1, 1))
                fix[:, 2, 2] = d
                glob[:, a] = np.swapaxes(vt, 1, 2) @ fix @ np.swapaxes(uu, 1, 2)
            local[:, a] = np.swapaxes(up, 1, 2) @ glob[:, a]
        poses = Rotation.from_matrix(local.reshape(-1, 3, 3)).as_rotvec().reshape(t, -1)
        return poses, j[:, 0] - rest[0]


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation matrices (T, 3, 3) of the smallest rotations taking directions a onto b (T, 3)."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True).clip(1e-12)
    v, c = np.cross(a, b), np.einsum("ti,ti->t", a, b)
    k = np.zeros(a.shape[:-1] + (3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -v[:, 2], v[:, 1], -v[:, 0]
    k = k - np.swapaxes(k, 1, 2)  # [v]_x
    r = np.eye(3) + k + k @ k / (1.0 + c).clip(1e-9)[:, None, None]
    flip = c < -1.0 + 1e-9  # opposite directions: half a turn about any perpendicular axis
    if flip.any():
        axis = np.cross(a[flip], np.array([1.0, 0.0, 0.0]))
        weak = np.linalg.norm(axis, axis=-1) < 1e-6
        axis[weak] = np.cross(a[flip][weak], np.array([0.0, 1.0, 0.0]))
        axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
        r[flip] = 2 * np.einsum("ti,tj->tij", axis, axis) - np.eye(3)
    return r


def convert_pkl_to_npz(src: str | Path, dst: str | Path, *, trust: bool = False) -> Path:
    """One-time conversion of an official pickled model file to ``.npz``.

    Unpickling can execute code: this refuses unless ``trust=True`` and warns even then.
    Chumpy arrays and scipy sparse matrices are turned into plain arrays (chumpy must be
    importable for the official files)."""
    src, dst = Path(src), Path(dst)
    if not trust:
        raise PermissionError(
            f"refusing to unpickle {src}: pickles can run code. If you trust this file "
            "(e.g. downloaded from the official SMPL site), pass trust=True / --trust"
        )
    warnings.warn(
        f"unpickling {src} (trusted by the caller); this runs code from the file", stacklevel=2
    )
    import pickle

    with open(src, "rb") as fh:
        raw = pickle.load(fh, encoding="latin1")
    arrays = {}
    for key, value in raw.items():
        if hasattr(value, "toarray"):
            value = value.toarray()
        try:
            arr = np.asarray(value)
        except Exception:
            continue
        if arr.dtype.kind in "fiub":
            arrays[key] = arr
    missing = [k for k in MODEL_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{src}: the pickle lacks {missing} (has {sorted(arrays)})")
    with atomic_path(dst) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m polydiff.motion.smpl")
    sub = parser.add_subparsers(dest="cmd", required=True)
    conv = sub.add_parser("convert", help="convert a pickled SMPL/SMPL-H/SMPL-X model to .npz")
    conv.add_argument("src")
    conv.add_argument("dst")
    conv.add_argument("--trust", action="store_true", help="I trust this pickle; unpickle it")
    args = parser.parse_args(argv)
    try:
        out = convert_pkl_to_npz(args.src, args.dst, trust=args.trust)
    except (PermissionError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
