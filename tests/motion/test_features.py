"""HumanML3D 263-d features: layout, round trips, mirroring, retargeting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polydiff.motion.features import (
    FEATURE_DIM,
    SLICES,
    features_to_joints,
    joints_to_features,
    mirror_features,
    mirror_joints,
    uniform_skeleton,
)
from polydiff.motion.skeleton import (
    JOINT_NAMES,
    MIRROR_PERMUTATION,
    PARENTS,
    TARGET_BONE_LENGTHS,
    bone_lengths,
    inverse_kinematics,
)
from polydiff.motion.synthetic import synthesize


@pytest.fixture(scope="module")
def motions():
    joints, specs = synthesize(4, seed=3, min_len=41, max_len=61)
    return joints


def test_layout_is_humanml3d():
    assert FEATURE_DIM == 263
    sizes = {k: s.stop - s.start for k, s in SLICES.items()}
    assert sizes == {
        "root_rot_vel": 1, "root_lin_vel": 2, "root_height": 1, "ric": 63, "rot6d": 126,
        "local_vel": 66, "contacts": 4,
    }  # fmt: skip
    assert sum(sizes.values()) == 263 and SLICES["contacts"].stop == 263
    assert len(JOINT_NAMES) == len(PARENTS) == 22
    assert JOINT_NAMES[MIRROR_PERMUTATION[1]] == "right_hip"


def test_features_of_a_clip(motions):
    j = motions[0]
    f = joints_to_features(j, retarget=False)
    assert f.shape == (len(j) - 1, 263)
    # root height is the pelvis height over the floor, contacts are binary
    assert np.allclose(f[:, 3], j[:-1, 0, 1] - j[:, :, 1].min(), atol=1e-5)
    assert set(np.unique(f[:, 259:])) <= {0.0, 1.0}
    # ric of frame 0 is the root-relative pose (frame 0 faces +z: no rotation)
    ric0 = f[0, 4:67].reshape(21, 3)
    assert np.allclose(np.linalg.norm(ric0[0] - [0, ric0[0, 1], 0]), np.linalg.norm(
        (j[0, 1] - j[0, 0])[[0, 2]]), atol=1e-5)  # fmt: skip


def test_joints_features_joints_round_trip(motions):
    for j in motions:
        f = joints_to_features(j, retarget=False)
        rec = features_to_joints(torch.from_numpy(f).double()).numpy()
        # the recovered clip is the canonicalised input: same bones, same relative motion
        assert np.allclose(bone_lengths(rec), bone_lengths(j[:-1]), atol=1e-5)
        rel_in = j[:-1] - j[:-1, :1]
        rel_out = rec - rec[:, :1]
        # equal up to one rotation about y (the canonical facing) -> compare distances
        d_in = np.linalg.norm(rel_in[:, :, None] - rel_in[:, None], axis=-1)
        d_out = np.linalg.norm(rel_out[:, :, None] - rel_out[:, None], axis=-1)
        assert np.abs(d_in - d_out).max() < 1e-5
        step_in = np.linalg.norm(np.diff(j[:-1, 0], axis=0), axis=-1)
        step_out = np.linalg.norm(np.diff(rec[:, 0], axis=0), axis=-1)
        assert np.abs(step_in - step_out).max() < 1e-5


def test_features_joints_features_round_trip(motions):
    """f(recover(f(J))) == f(J[:-1]): the features of the recovered clip are the clip's own."""
    for j in motions:
        f = joints_to_features(j, retarget=False)
        rec = features_to_joints(torch.from_numpy(f).double()).numpy()
        again = joints_to_features(rec, retarget=False)
        ref = joints_to_features(j[:-1], retarget=False)
        assert np.abs(again - ref).max() < 1e-4


def test_features_to_joints_is_batched_and_differentiable(motions):
    f = torch.from_numpy(joints_to_features(motions[0], retarget=False)).double()
    batch = torch.stack([f, f]).requires_grad_(True)
    out = features_to_joints(batch)
    assert out.shape == (2, len(f), 22, 3)
    out.sum().backward()
    assert batch.grad is not None and torch.isfinite(batch.grad).all()
    with pytest.raises(ValueError, match="263 channels"):
        features_to_joints(torch.zeros(3, 100))


def test_mirroring(motions):
    j = motions[1]
    assert np.array_equal(mirror_joints(mirror_joints(j)), j)
    f = joints_to_features(j, retarget=False)
    m = mirror_features(f)
    assert np.array_equal(mirror_features(m), f)
    assert np.abs(m - f).max() > 1e-2  # not trivially the identity
    # mirroring in feature space == features of the mirrored joints
    assert np.abs(m - joints_to_features(mirror_joints(j), retarget=False)).max() < 1e-4
    t = torch.from_numpy(f)
    assert torch.equal(mirror_features(t), torch.from_numpy(m))


def test_retargeting_to_the_target_skeleton(motions):
    j = motions[2] * 1.2  # a taller person
    out = uniform_skeleton(j)
    assert np.allclose(bone_lengths(out), TARGET_BONE_LENGTHS[1:], atol=1e-6)
    # the features of an already-target skeleton are unchanged by retargeting
    f0 = joints_to_features(motions[2], retarget=False)
    assert np.abs(joints_to_features(motions[2], retarget=True) - f0).max() < 1e-3
    quat = inverse_kinematics(motions[2])
    assert np.allclose(np.linalg.norm(quat, axis=-1), 1.0)


def test_bad_joints_are_named():
    with pytest.raises(ValueError, match=r"shape \(T, 22, 3\)"):
        joints_to_features(np.zeros((10, 24, 3)))
    bad = np.zeros((5, 22, 3))
    bad[2, 3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        joints_to_features(bad)
