"""The SMPL 22-joint body of HumanML3D / T2M: names, parents, kinematic chains, rest offsets,
quaternion helpers and the inverse kinematics HumanML3D's features are defined with.

Conventions follow HumanML3D (Guo et al. 2022, ``paramUtil.py`` and ``common/skeleton.py``):
y is up, a body at rest faces +z with its left side at +x, quaternions are ``(w, x, y, z)``
(Hamilton product), and the 6-D rotation of Zhou et al. 2019 is the first two *columns* of the
rotation matrix. :data:`TARGET_BONE_LENGTHS` are the bone lengths (metres) of HumanML3D's target
skeleton (every processed motion is retargeted to it; measured on a processed clip).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

__all__ = [
    "FACE_JOINTS",
    "FEET_LEFT",
    "FEET_RIGHT",
    "JOINT_NAMES",
    "KINEMATIC_CHAINS",
    "LOWER_BODY_JOINTS",
    "MIRROR_PERMUTATION",
    "NUM_JOINTS",
    "PARENTS",
    "RAW_OFFSETS",
    "TARGET_BONE_LENGTHS",
    "UPPER_BODY_JOINTS",
    "bone_lengths",
    "forward_directions",
    "inverse_kinematics",
    "qbetween",
    "qinv",
    "qmul",
    "qrot",
    "quat_to_cont6d",
    "quat_to_matrix",
    "target_offsets",
]

JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
    "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist",
)  # fmt: skip
NUM_JOINTS = 22
PARENTS: tuple[int, ...] = (
    -1,
    0,
    0,
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    9,
    9,
    12,
    13,
    14,
    16,
    17,
    18,
    19,
)
# HumanML3D t2m_kinematic_chain: right leg, left leg, spine+head, right arm, left arm
KINEMATIC_CHAINS: tuple[tuple[int, ...], ...] = (
    (0, 2, 5, 8, 11),
    (0, 1, 4, 7, 10),
    (0, 3, 6, 9, 12, 15),
    (9, 14, 17, 19, 21),
    (9, 13, 16, 18, 20),
)
# t2m_raw_offsets: the rest direction of each bone (joint minus parent), used by the IK
RAW_OFFSETS = np.array(
    [[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, -1, 0], [0, 1, 0],
     [0, -1, 0], [0, -1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 1, 0], [1, 0, 0],
     [-1, 0, 0], [0, 0, 1], [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0],
     [0, -1, 0]],
    dtype=np.float64,
)  # fmt: skip
TARGET_BONE_LENGTHS = np.array(
    [0.0, 0.10307, 0.10988, 0.13157, 0.39362, 0.39019, 0.14319, 0.43243, 0.42564, 0.05736,
     0.14338, 0.14942, 0.21936, 0.13749, 0.14338, 0.10304, 0.13161, 0.12298, 0.25684, 0.26309,
     0.26601, 0.26988],
    dtype=np.float64,
)  # fmt: skip
# face_joint_indx = [r_hip, l_hip, r_shoulder, l_shoulder]; feet (ankle, toe) per side
FACE_JOINTS = (2, 1, 17, 16)
FEET_LEFT = (7, 10)
FEET_RIGHT = (8, 11)
LEG_JOINTS = (5, 8)  # l_idx1, l_idx2: the leg bones whose length sets the retarget scale
# left <-> right joint swap (mirroring)
MIRROR_PERMUTATION: tuple[int, ...] = tuple(
    JOINT_NAMES.index(n.replace("left", "#").replace("right", "left").replace("#", "right"))
    for n in JOINT_NAMES
)
LOWER_BODY_JOINTS: tuple[int, ...] = (0, 1, 2, 4, 5, 7, 8, 10, 11)
UPPER_BODY_JOINTS: tuple[int, ...] = tuple(
    j for j in range(NUM_JOINTS) if j not in LOWER_BODY_JOINTS
)


def target_offsets() -> np.ndarray:
    """Offsets (22, 3) of the target skeleton: rest direction times bone length."""
    return RAW_OFFSETS * TARGET_BONE_LENGTHS[:, None]


def bone_lengths(joints: np.ndarray) -> np.ndarray:
    """Lengths (..., 21) of the bones (joint - parent) of joints (..., 22, 3)."""
    parents = np.asarray(PARENTS[1:])
    return np.linalg.norm(joints[..., 1:, :] - joints[..., parents, :], axis=-1)


# --------------------------------------------------------------------------- quaternions (w,x,y,z)
def qmul(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Hamilton product ``q r`` of quaternions (..., 4)."""
    w0, x0, y0, z0 = np.moveaxis(q, -1, 0)
    w1, x1, y1, z1 = np.moveaxis(r, -1, 0)
    return np.stack(
        [
            w0 * w1 - x0 * x1 - y0 * y1 - z0 * z1,
            w0 * x1 + x0 * w1 + y0 * z1 - z0 * y1,
            w0 * y1 - x0 * z1 + y0 * w1 + z0 * x1,
            w0 * z1 + x0 * y1 - y0 * x1 + z0 * w1,
        ],
        axis=-1,
    )


def qinv(q: np.ndarray) -> np.ndarray:
    """Conjugate (the inverse of a unit quaternion)."""
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def qrot(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate v (..., 3) by unit quaternions q (..., 4): ``v + 2w (u x v) + 2u x (u x v)``."""
    u, w = q[..., 1:], q[..., :1]
    uv = np.cross(u, v)
    return v + 2 * (w * uv + np.cross(u, uv))


def qbetween(v0: np.ndarray, v1: np.ndarray) -> np.ndarray:
    """The shortest-arc unit quaternion rotating v0 onto v1 (HumanML3D ``qbetween``)."""
    v = np.cross(v0, v1)
    w = np.sqrt((v0**2).sum(-1, keepdims=True) * (v1**2).sum(-1, keepdims=True)) + (v0 * v1).sum(
        -1, keepdims=True
    )
    q = np.concatenate([w, v], axis=-1)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) of quaternions (..., 4) (need not be normalised)."""
    r, i, j, k = np.moveaxis(q, -1, 0)
    two_s = 2.0 / (q * q).sum(-1)
    m = np.stack(
        [
            1 - two_s * (j * j + k * k), two_s * (i * j - k * r), two_s * (i * k + j * r),
            two_s * (i * j + k * r), 1 - two_s * (i * i + k * k), two_s * (j * k - i * r),
            two_s * (i * k - j * r), two_s * (j * k + i * r), 1 - two_s * (i * i + j * j),
        ],
        axis=-1,
    )  # fmt: skip
    return m.reshape(q.shape[:-1] + (3, 3))


def quat_to_cont6d(q: np.ndarray) -> np.ndarray:
    """6-D rotation (Zhou et al. 2019): the first two columns of the matrix, ``[c0, c1]``."""
    m = quat_to_matrix(q)
    return np.concatenate([m[..., 0], m[..., 1]], axis=-1)


# --------------------------------------------------------------------------- inverse kinematics
def forward_directions(joints: np.ndarray, smooth: bool = False) -> np.ndarray:
    """Unit facing directions (T, 3) of joints (T, 22, 3), as HumanML3D's ``Skeleton`` computes
    them: ``across = (j[1] - j[2]) + (j[17] - j[16])`` (its ``l_hip, r_hip`` unpacking of
    ``face_joint_indx`` included), ``forward = y x across``, optionally Gaussian-smoothed over
    time (sigma 20 frames, 'nearest' borders)."""
    r_hip, l_hip, sdr_r, sdr_l = FACE_JOINTS
    # Skeleton.inverse_kinematics_np unpacks (l_hip, r_hip, sdr_r, sdr_l) = face_joint_idx
    across = (joints[:, l_hip] - joints[:, r_hip]) + (joints[:, sdr_r] - joints[:, sdr_l])
    across = across / np.linalg.norm(across, axis=-1, keepdims=True)
    forward = np.cross(np.array([[0.0, 1.0, 0.0]]), across)
    if smooth:
        forward = gaussian_filter1d(forward, 20, axis=0, mode="nearest")
    return forward / np.linalg.norm(forward, axis=-1, keepdims=True)


def inverse_kinematics(joints: np.ndarray, smooth_forward: bool = False) -> np.ndarray:
    """Local joint quaternions (T, 22, 4) of joint positions (T, 22, 3) (HumanML3D
    ``Skeleton.inverse_kinematics_np``): the root turns the facing direction onto +z (identity at
    frame 0), each bone's local rotation takes its rest direction onto its observed direction."""
    forward = forward_directions(joints, smooth_forward)
    target = np.broadcast_to(np.array([0.0, 0.0, 1.0]), forward.shape)
    root_quat = qbetween(forward, target)
    root_quat[0] = np.array([1.0, 0.0, 0.0, 0.0])
    quat = np.zeros(joints.shape[:-1] + (4,))
    quat[:, 0] = root_quat
    for chain in KINEMATIC_CHAINS:
        rot = root_quat
        for a, b in zip(chain[:-1], chain[1:]):
            u = np.broadcast_to(RAW_OFFSETS[b], (len(joints), 3))
            v = joints[:, b] - joints[:, a]
            v = v / np.linalg.norm(v, axis=-1, keepdims=True)
            local = qmul(qinv(rot), qbetween(u, v))
            quat[:, b] = local
            rot = qmul(rot, local)
    return quat


def forward_kinematics(quat: np.ndarray, root_pos: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Joint positions (T, 22, 3) from local quaternions (T, 22, 4), root positions (T, 3) and
    offsets (22, 3) (HumanML3D ``Skeleton.forward_kinematics_np``)."""
    joints = np.zeros(quat.shape[:-1] + (3,))
    joints[:, 0] = root_pos
    for chain in KINEMATIC_CHAINS:
        rot = quat[:, 0]
        for a, b in zip(chain[:-1], chain[1:]):
            rot = qmul(rot, quat[:, b])
            joints[:, b] = qrot(rot, np.broadcast_to(offsets[b], (len(quat), 3))) + joints[:, a]
    return joints
