"""BVH (Biovision hierarchy) export of 22-joint motions and a reader for BVH files.

:func:`write_bvh` stores joint positions exactly (up to the printed precision) for a skeleton
of constant bone lengths: every bone gets a BVH joint whose rotation takes the bone's rest
direction onto its direction in that frame (shortest arc, so no twist is invented); where a
joint has several children (pelvis, spine3) a zero-offset joint per child carries that bone's
rotation. Rotations are intrinsic ``Z Y X`` Euler angles in degrees, positions in metres.
:func:`read_bvh` parses any BVH (channels in any order) and runs forward kinematics;
:func:`bvh_to_joints22` picks the SMPL-22 joints by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from polydiff.core.fileio import atomic_write_text

from .features import FPS
from .skeleton import JOINT_NAMES, NUM_JOINTS, PARENTS, RAW_OFFSETS, qbetween

__all__ = ["BVH", "bvh_to_joints22", "read_bvh", "write_bvh"]


@dataclass
class BVH:
    """A parsed BVH: joint names, parents, offsets (N, 3), frame time and positions (T, N, 3)."""

    names: list[str]
    parents: list[int]
    offsets: np.ndarray
    frame_time: float
    positions: np.ndarray


def _children(parents) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {j: [] for j in range(len(parents))}
    for j, p in enumerate(parents):
        if p >= 0:
            out[p].append(j)
    return out


def write_bvh(joints: np.ndarray, path: str | Path, fps: float = FPS) -> Path:
    """Write joints (T, 22, 3) as a BVH file; returns its path."""
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 3 or joints.shape[1:] != (NUM_JOINTS, 3):
        raise ValueError(f"write_bvh: joints must be (T, {NUM_JOINTS}, 3), got {joints.shape}")
    kids = _children(PARENTS)
    t = len(joints)
    # BVH joints: (name, smpl joint it sits at, smpl child whose bone it rotates or None, parent)
    nodes: list[tuple[str, int, int | None, int]] = []

    def add(j: int, parent_node: int) -> None:
        ch = kids[j]
        if len(ch) == 1:
            nodes.append((JOINT_NAMES[j], j, ch[0], parent_node))
            add(ch[0], len(nodes) - 1)
            return
        nodes.append((JOINT_NAMES[j], j, None, parent_node))
        me = len(nodes) - 1
        for c in ch:
            nodes.append((f"{JOINT_NAMES[j]}_to_{JOINT_NAMES[c]}", j, c, me))
            add(c, len(nodes) - 1)

    add(0, -1)
    lengths = np.linalg.norm(joints[0, 1:] - joints[0, [max(p, 0) for p in PARENTS[1:]]], axis=-1)
    lengths = np.concatenate([[0.0], lengths])
    # global rotation of every node per frame
    glob = np.zeros((len(nodes), t, 3, 3))
    local = np.zeros((len(nodes), t, 3, 3))
    for k, (_, j, c, p) in enumerate(nodes):
        parent_g = glob[p] if p >= 0 else np.broadcast_to(np.eye(3), (t, 3, 3))
        if c is None:
            g = parent_g if p >= 0 else np.broadcast_to(np.eye(3), (t, 3, 3))
        else:
            v = joints[:, c] - joints[:, j]
            q = qbetween(np.broadcast_to(RAW_OFFSETS[c], (t, 3)), v)  # (w, x, y, z)
            g = Rotation.from_quat(np.concatenate([q[:, 1:], q[:, :1]], -1)).as_matrix()
        glob[k] = g
        local[k] = np.swapaxes(parent_g, -1, -2) @ g
    lines = ["HIERARCHY"]

    def offset_of(k: int) -> np.ndarray:
        name, j, c, p = nodes[k]
        if p < 0:
            return np.zeros(3)
        pj = nodes[p][1]
        if pj == j:  # a per-child rotation joint at its parent's position
            return np.zeros(3)
        return RAW_OFFSETS[j] * lengths[j]

    node_kids = _children([n[3] for n in nodes])

    def emit(k: int, depth: int) -> None:
        pad = "  " * depth
        head = "ROOT" if nodes[k][3] < 0 else "JOINT"
        lines.append(f"{pad}{head} {nodes[k][0]}")
        lines.append(f"{pad}{{")
        off = offset_of(k)
        lines.append(f"{pad}  OFFSET {off[0]:.6f} {off[1]:.6f} {off[2]:.6f}")
        if nodes[k][3] < 0:
            lines.append(
                f"{pad}  CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation"
            )
        else:
            lines.append(f"{pad}  CHANNELS 3 Zrotation Yrotation Xrotation")
        if node_kids[k]:
            for c in node_kids[k]:
                emit(c, depth + 1)
        else:
            lines.append(f"{pad}  End Site")
            lines.append(f"{pad}  {{")
            lines.append(f"{pad}    OFFSET 0.000000 0.000000 0.000000")
            lines.append(f"{pad}  }}")
        lines.append(f"{pad}}}")

    emit(0, 0)
    order = []

    def walk(k: int) -> None:
        order.append(k)
        for c in node_kids[k]:
            walk(c)

    walk(0)
    euler = {k: Rotation.from_matrix(local[k]).as_euler("ZYX", degrees=True) for k in order}
    lines += ["MOTION", f"Frames: {t}", f"Frame Time: {1.0 / fps:.8f}"]
    for i in range(t):
        vals = list(joints[i, 0])
        for k in order:
            vals += list(euler[k][i])
        lines.append(" ".join(f"{v:.6f}" for v in vals))
    return atomic_write_text(Path(path), "\n".join(lines) + "\n")


def read_bvh(path: str | Path) -> BVH:
    """Parse a BVH file and compute joint positions (forward kinematics)."""
    path = Path(path)
    names: list[str] = []
    parents: list[int] = []
    offsets: list[list[float]] = []
    channels: list[list[str]] = []
    stack: list[int] = []
    i = 0
    try:
        tokens = path.read_text().split()  # a UnicodeDecodeError is a ValueError: named below
        if tokens[i] != "HIERARCHY":
            raise ValueError("file does not start with HIERARCHY")
        i += 1
        pending_end = False
        while tokens[i] != "MOTION":
            tok = tokens[i]
            if tok in ("ROOT", "JOINT"):
                names.append(tokens[i + 1])
                parents.append(stack[-1] if stack else -1)
                i += 2
            elif tok == "End":
                pending_end = True
                i += 2
            elif tok == "{":
                if pending_end:
                    stack.append(-2)
                else:
                    stack.append(len(names) - 1)
                pending_end = False
                i += 1
            elif tok == "}":
                stack.pop()
                i += 1
            elif tok == "OFFSET":
                vals = [float(v) for v in tokens[i + 1 : i + 4]]
                if stack and stack[-1] != -2:
                    offsets.append(vals)
                i += 4
            elif tok == "CHANNELS":
                n = int(tokens[i + 1])
                channels.append(tokens[i + 2 : i + 2 + n])
                i += 2 + n
            else:
                raise ValueError(f"unexpected token {tok!r}")
        frames = int(tokens[i + 2])
        frame_time = float(tokens[i + 5])
        values = np.asarray([float(v) for v in tokens[i + 6 :]], dtype=np.float64)
    except (IndexError, ValueError) as err:
        raise ValueError(f"{path}: not a valid BVH file ({err})") from err
    per_frame = sum(len(c) for c in channels)
    if frames < 1 or len(values) != frames * per_frame:
        raise ValueError(
            f"{path}: {len(values)} motion values, expected {frames} frames x {per_frame} channels"
        )
    try:  # a damaged hierarchy (unknown channels, missing offsets) fails here: named
        values = values.reshape(frames, per_frame)
        offs = np.asarray(offsets)
        pos = np.zeros((frames, len(names), 3))
        glob = np.zeros((frames, len(names), 3, 3))
        col = 0
        for j, chans in enumerate(channels):
            block = values[:, col : col + len(chans)]
            col += len(chans)
            rot_names = [c[0].upper() for c in chans if c.endswith("rotation")]
            rot_vals = (
                np.stack([block[:, k] for k, c in enumerate(chans) if c.endswith("rotation")], -1)
                if rot_names
                else None
            )
            local = (
                Rotation.from_euler("".join(rot_names), rot_vals, degrees=True).as_matrix()
                if rot_names
                else np.broadcast_to(np.eye(3), (frames, 3, 3))
            )
            trans = np.zeros((frames, 3))
            for k, c in enumerate(chans):
                if c.endswith("position"):
                    trans[:, "XYZ".index(c[0].upper())] = block[:, k]
            p = parents[j]
            if p < 0:
                pos[:, j] = offs[j] + trans
                glob[:, j] = local
            else:
                pos[:, j] = pos[:, p] + np.einsum("tij,j->ti", glob[:, p], offs[j]) + trans
                glob[:, j] = glob[:, p] @ local
    except (IndexError, KeyError, ValueError) as err:
        raise ValueError(f"{path}: not a valid BVH file ({err})") from err
    if not (np.isfinite(pos).all() and math.isfinite(frame_time) and frame_time > 0):
        raise ValueError(
            f"{path}: not a valid BVH file (non-finite values or frame time {frame_time})"
        )
    return BVH(names, parents, offs, frame_time, pos)


def bvh_to_joints22(bvh: BVH, joint_map: dict[str, str] | None = None) -> np.ndarray:
    """The SMPL-22 joints (T, 22, 3) of a parsed BVH, by name (``joint_map``: SMPL name ->
    BVH name for files with other names)."""
    joint_map = joint_map or {}
    idx = []
    for name in JOINT_NAMES:
        src = joint_map.get(name, name)
        if src not in bvh.names:
            raise ValueError(
                f"BVH has no joint {src!r} for SMPL joint {name!r}; joints: {bvh.names}"
            )
        idx.append(bvh.names.index(src))
    return bvh.positions[:, idx]
