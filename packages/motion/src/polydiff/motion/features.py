"""HumanML3D's 263-d motion representation, its inverse, and mirroring.

Per frame (Guo et al. 2022, "Generating Diverse and Natural 3D Human Motions from Text",
sec. 3 and ``motion_representation.ipynb:process_file``), for 22 joints at 20 fps::

    [0]        root angular velocity about y (arcsin of the y part of the frame-to-frame quaternion)
    [1:3]      root linear velocity on xz, in the root's facing frame
    [3]        root height
    [4:67]     21 root-relative joint positions, facing +z (rotation-invariant "ric")
    [67:193]   21 local joint rotations as 6-D (Zhou et al. 2019)
    [193:259]  22 joint velocities in the root's facing frame
    [259:263]  foot contacts (left ankle, left toe, right ankle, right toe)

A clip of T frames gives T-1 feature frames. :func:`joints_to_features` is ``process_file``
(retarget to the target skeleton, floor at 0, start at the xz origin facing +z, contacts by
squared displacement < 0.002, root rotation from the Gaussian-smoothed facing direction);
:func:`features_to_joints` is ``recover_from_ric`` (differentiable, torch).
"""

from __future__ import annotations

import numpy as np
import torch

from .skeleton import (
    FACE_JOINTS,
    FEET_LEFT,
    FEET_RIGHT,
    LEG_JOINTS,
    MIRROR_PERMUTATION,
    NUM_JOINTS,
    PARENTS,
    RAW_OFFSETS,
    forward_kinematics,
    inverse_kinematics,
    qbetween,
    qinv,
    qmul,
    qrot,
    quat_to_cont6d,
    target_offsets,
)

__all__ = [
    "FEATURE_DIM",
    "FPS",
    "SLICES",
    "feature_dim",
    "features_to_joints",
    "joints_to_features",
    "mirror_features",
    "mirror_joints",
    "uniform_skeleton",
]

FPS = 20
FEET_THRESHOLD = 0.002


def feature_dim(joints: int = NUM_JOINTS) -> int:
    """``4 + 3 (J-1) + 6 (J-1) + 3 J + 4``: 263 for 22 joints."""
    return 4 + 9 * (joints - 1) + 3 * joints + 4


FEATURE_DIM = feature_dim()
_J = NUM_JOINTS
SLICES: dict[str, slice] = {
    "root_rot_vel": slice(0, 1),
    "root_lin_vel": slice(1, 3),
    "root_height": slice(3, 4),
    "ric": slice(4, 4 + 3 * (_J - 1)),
    "rot6d": slice(4 + 3 * (_J - 1), 4 + 9 * (_J - 1)),
    "local_vel": slice(4 + 9 * (_J - 1), 4 + 9 * (_J - 1) + 3 * _J),
    "contacts": slice(FEATURE_DIM - 4, FEATURE_DIM),
}


def _check_joints(joints: np.ndarray, what: str = "joints") -> np.ndarray:
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 3 or joints.shape[1:] != (NUM_JOINTS, 3):
        raise ValueError(f"{what} must have shape (T, {NUM_JOINTS}, 3), got {joints.shape}")
    if len(joints) < 2:
        raise ValueError(f"{what} needs at least 2 frames, got {len(joints)}")
    if not np.isfinite(joints).all():
        raise ValueError(f"{what} contains NaN or inf")
    return joints


def uniform_skeleton(joints: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """Retarget joints (T, 22, 3) onto the skeleton with ``offsets`` (default the HumanML3D
    target): IK (unsmoothed) then FK with the new offsets; the root path scales by the ratio of
    leg lengths (max |coordinate| of the shin and ankle offsets at frame 0, as HumanML3D)."""
    joints = _check_joints(joints)
    tgt = target_offsets() if offsets is None else np.asarray(offsets, dtype=np.float64)
    parents_src = np.linalg.norm(joints[0, 1:] - joints[0, _parents()[1:]], axis=-1)
    src = np.zeros_like(RAW_OFFSETS)
    src[1:] = RAW_OFFSETS[1:] * parents_src[:, None]
    a, b = LEG_JOINTS
    scale = (np.abs(tgt[a]).max() + np.abs(tgt[b]).max()) / (
        np.abs(src[a]).max() + np.abs(src[b]).max()
    )
    quat = inverse_kinematics(joints, smooth_forward=False)
    return forward_kinematics(quat, joints[:, 0] * scale, tgt)


def _parents() -> np.ndarray:
    return np.asarray([max(p, 0) for p in PARENTS])


def _initial_forward(pose: np.ndarray) -> np.ndarray:
    """process_file's facing at frame 0: ``across = (j[2] - j[1]) + (j[17] - j[16])``."""
    r_hip, l_hip, sdr_r, sdr_l = FACE_JOINTS
    across = (pose[r_hip] - pose[l_hip]) + (pose[sdr_r] - pose[sdr_l])
    across = across / np.linalg.norm(across)
    forward = np.cross(np.array([0.0, 1.0, 0.0]), across)
    return forward / np.linalg.norm(forward)


def joints_to_features(
    joints: np.ndarray, *, retarget: bool = True, feet_threshold: float = FEET_THRESHOLD
) -> np.ndarray:
    """HumanML3D features (T-1, 263) of joint positions (T, 22, 3) in metres, y up.

    ``retarget=False`` skips :func:`uniform_skeleton` (the joints already have the target
    skeleton's bone lengths, e.g. HumanML3D's ``new_joints`` or this package's generator).
    """
    positions = _check_joints(joints).copy()
    if retarget:
        positions = uniform_skeleton(positions)
    positions[:, :, 1] -= positions.min(axis=0).min(axis=0)[1]  # floor at y = 0
    root_init = positions[0].copy()
    positions = positions - root_init[0] * np.array([1.0, 0.0, 1.0])  # xz origin
    q_init = qbetween(_initial_forward(root_init), np.array([0.0, 0.0, 1.0]))
    positions = qrot(np.broadcast_to(q_init, positions.shape[:-1] + (4,)), positions)  # face +z
    global_positions = positions.copy()

    # foot contacts: squared frame-to-frame displacement below the threshold
    def contact(ids: tuple[int, ...]) -> np.ndarray:
        d = ((positions[1:, list(ids)] - positions[:-1, list(ids)]) ** 2).sum(-1)
        return (d < feet_threshold).astype(np.float64)

    feet_l, feet_r = contact(FEET_LEFT), contact(FEET_RIGHT)

    quat = inverse_kinematics(positions, smooth_forward=True)
    cont6d = quat_to_cont6d(quat)  # (T, 22, 6)
    r_rot = quat[:, 0].copy()  # (T, 4)
    velocity = qrot(r_rot[1:], positions[1:, 0] - positions[:-1, 0])  # (T-1, 3)
    r_velocity = qmul(r_rot[1:], qinv(r_rot[:-1]))  # (T-1, 4)

    local = positions.copy()  # root-relative on xz, then facing +z
    local[..., 0] -= local[:, 0:1, 0]
    local[..., 2] -= local[:, 0:1, 2]
    local = qrot(np.repeat(r_rot[:, None], NUM_JOINTS, axis=1), local)

    root_y = local[:, 0, 1:2]
    root_data = np.concatenate(
        [np.arcsin(np.clip(r_velocity[:, 2:3], -1, 1)), velocity[:, [0, 2]], root_y[:-1]], -1
    )
    rot_data = cont6d[:, 1:].reshape(len(cont6d), -1)
    ric_data = local[:, 1:].reshape(len(local), -1)
    local_vel = qrot(
        np.repeat(r_rot[:-1, None], NUM_JOINTS, axis=1),
        global_positions[1:] - global_positions[:-1],
    ).reshape(len(positions) - 1, -1)
    return np.concatenate(
        [root_data, ric_data[:-1], rot_data[:-1], local_vel, feet_l, feet_r], axis=-1
    ).astype(np.float32)


# ------------------------------------------------------------------------------- inverse (torch)
def _qrot_t(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    u, w = q[..., 1:], q[..., :1]
    uv = torch.cross(u, v, dim=-1)
    return v + 2 * (w * uv + torch.cross(u, uv, dim=-1))


def _root_rotation_position(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``recover_root_rot_pos``: integrate the root's yaw velocity and xz velocity."""
    rot_vel = data[..., 0]
    ang = torch.cumsum(torch.cat([torch.zeros_like(rot_vel[..., :1]), rot_vel[..., :-1]], -1), -1)
    zeros = torch.zeros_like(ang)
    quat = torch.stack([torch.cos(ang), zeros, torch.sin(ang), zeros], -1)  # (..., T, 4)
    step = torch.zeros(data.shape[:-1] + (3,), dtype=data.dtype, device=data.device)
    step[..., 1:, 0] = data[..., :-1, 1]
    step[..., 1:, 2] = data[..., :-1, 2]
    inv = quat * quat.new_tensor([1.0, -1.0, -1.0, -1.0])
    pos = torch.cumsum(_qrot_t(inv, step), dim=-2)
    pos = torch.cat([pos[..., :1], data[..., 3:4], pos[..., 2:]], -1)
    return quat, pos


def features_to_joints(data: torch.Tensor | np.ndarray, joints: int = NUM_JOINTS) -> torch.Tensor:
    """Joint positions (..., T, J, 3) from features (..., T, 263) (HumanML3D
    ``recover_from_ric``): root from the integrated velocities, the others from the ric part
    rotated back by the root's yaw. Differentiable."""
    data = torch.as_tensor(data)
    if data.shape[-1] != feature_dim(joints):
        raise ValueError(
            f"features must have {feature_dim(joints)} channels for {joints} joints, "
            f"got shape {tuple(data.shape)}"
        )
    quat, root = _root_rotation_position(data)
    ric = data[..., 4 : 4 + 3 * (joints - 1)].reshape(data.shape[:-1] + (joints - 1, 3))
    inv = (quat * quat.new_tensor([1.0, -1.0, -1.0, -1.0]))[..., None, :].expand(
        ric.shape[:-1] + (4,)
    )
    pos = _qrot_t(inv, ric)
    pos = (
        pos
        + torch.stack([root[..., 0], torch.zeros_like(root[..., 0]), root[..., 2]], -1)[
            ..., None, :
        ]
    )
    return torch.cat([root[..., None, :], pos], dim=-2)


# ------------------------------------------------------------------------------- mirroring
_PERM = np.asarray(MIRROR_PERMUTATION)


def mirror_joints(joints: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Left/right mirror of joints (..., 22, 3): negate x and swap left and right joints
    (HumanML3D's ``swap_left_right``). An involution."""
    if isinstance(joints, torch.Tensor):
        return joints[..., _PERM, :] * joints.new_tensor([-1.0, 1.0, 1.0])
    return np.asarray(joints)[..., _PERM, :] * np.array([-1.0, 1.0, 1.0])


def mirror_features(data: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """The features of the mirrored motion, computed in feature space: yaw velocity and x
    components negate, left/right joints swap, a rotation ``M`` becomes ``S M S``
    (``S = diag(-1, 1, 1)``, so 6-D ``[c0, c1] -> [-S c0, S c1]``), contacts swap sides.
    Equals ``joints_to_features(mirror_joints(j))`` for ``data = joints_to_features(j)``."""
    is_t = isinstance(data, torch.Tensor)
    lead = data.shape[:-1]
    sign3 = [-1.0, 1.0, 1.0]
    sign6 = [1.0, -1.0, -1.0, -1.0, 1.0, 1.0]
    new = data.new_tensor if is_t else np.array
    root = data[..., 0:4] * new([-1.0, -1.0, 1.0, 1.0])
    ric = data[..., SLICES["ric"]].reshape(lead + (_J - 1, 3))
    ric = ric[..., _PERM[1:] - 1, :] * new(sign3)
    rot = data[..., SLICES["rot6d"]].reshape(lead + (_J - 1, 6))
    rot = rot[..., _PERM[1:] - 1, :] * new(sign6)
    vel = data[..., SLICES["local_vel"]].reshape(lead + (_J, 3))
    vel = vel[..., _PERM, :] * new(sign3)
    feet = data[..., SLICES["contacts"]][..., [2, 3, 0, 1]]
    parts = [
        root,
        ric.reshape(lead + (-1,)),
        rot.reshape(lead + (-1,)),
        vel.reshape(lead + (-1,)),
        feet,
    ]
    return torch.cat(parts, -1) if is_t else np.concatenate(parts, -1)
