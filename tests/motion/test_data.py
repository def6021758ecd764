"""Built-in motions, HumanML3D folder / AMASS / SMPL / BVH loaders."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from polydiff.motion.bvh import bvh_to_joints22, read_bvh, write_bvh
from polydiff.motion.data import (
    Normalizer,
    builtin_motions,
    load_amass_npz,
    load_humanml3d,
    swap_left_right_words,
)
from polydiff.motion.features import FPS, joints_to_features
from polydiff.motion.smpl import BodyModel, convert_pkl_to_npz, load_model_struct
from polydiff.motion.synthetic import ACTIONS, MotionSpec, Segment, generate_motion, synthesize


# ------------------------------------------------------------------------------ built-in
def test_builtin_is_seeded_and_captioned():
    a = builtin_motions(6, seed=1, min_len=40, max_len=50)
    b = builtin_motions(6, seed=1, min_len=40, max_len=50)
    assert all(np.array_equal(x, y) for x, y in zip(a.features, b.features))
    assert a.captions == b.captions and len(a.captions[0]) == 3
    assert all(40 <= len(f) <= 50 and f.shape[1] == 263 for f in a.features)
    assert all(0 <= y < len(ACTIONS) for y in a.labels)
    m = builtin_motions(6, seed=1, min_len=40, max_len=50, mirror=True)
    assert len(m) == 12 and m.captions[6] == [swap_left_right_words(c) for c in a.captions[0]]
    assert swap_left_right_words("turns left then right") == "turns right then left"


def test_generator_contacts_are_physical():
    """A stance foot does not slide: contact frames have (near) zero foot speed."""
    j = generate_motion(MotionSpec((Segment("walk", 1.0, "forward"),), 80))
    f = joints_to_features(j, retarget=False)
    assert 0.2 < f[:, 259:].mean() < 0.9  # both feet alternate
    assert 0.8 < f[:, 2].mean() * FPS < 1.6  # walking pace, m/s
    assert j[:, :, 1].min() > -1e-9  # nothing below the floor
    back = joints_to_features(
        generate_motion(MotionSpec((Segment("walk", 1.0, "backward"),), 80)), retarget=False
    )
    assert back[:, 2].mean() < 0
    left = joints_to_features(
        generate_motion(MotionSpec((Segment("side_step", 1.0, "left"),), 80)), retarget=False
    )
    assert left[:, 1].mean() > 0.005  # moves towards +x (the body's left)
    jump = generate_motion(MotionSpec((Segment("jump"),), 60))
    assert jump[:, 0, 1].max() - jump[0, 0, 1] > 0.1


def test_normalizer_round_trip():
    feats = builtin_motions(4, seed=0, min_len=40, max_len=45).features
    norm = Normalizer.fit(feats)
    x = feats[0]
    assert np.allclose(norm.denormalize(norm.normalize(x)), x, atol=1e-5)
    with pytest.raises(ValueError, match="positive"):
        Normalizer(np.zeros(3, np.float32), np.zeros(3, np.float32))


# ------------------------------------------------------------------------------ HumanML3D
def _humanml3d_folder(root, n=4, corrupt=False):
    (root / "new_joint_vecs").mkdir(parents=True)
    (root / "texts").mkdir()
    ms = builtin_motions(n, seed=2, min_len=40, max_len=60)
    ids = [f"{i:06d}" for i in range(n)]
    for mid, f, caps in zip(ids, ms.features, ms.captions):
        np.save(root / "new_joint_vecs" / f"{mid}.npy", f)
        lines = [f"{c}#a/DET person/NOUN#0.0#0.0" for c in caps]
        lines.append(f"{caps[0]} part#x#0.0#2.5")  # a timed sub-motion (50 frames)
        (root / "texts" / f"{mid}.txt").write_text("\n".join(lines) + "\n")
    np.save(root / "Mean.npy", np.zeros(263, np.float32))
    np.save(root / "Std.npy", np.ones(263, np.float32))
    (root / "train.txt").write_text("\n".join(ids) + "\n")
    if corrupt:
        (root / "new_joint_vecs" / "000001.npy").write_bytes(b"not a numpy file")
    return ms, ids


def test_humanml3d_folder_round_trip(tmp_path):
    ms, ids = _humanml3d_folder(tmp_path)
    got = load_humanml3d(tmp_path, "train", min_len=40)
    whole = [i for i, nm in enumerate(got.names) if "#" not in nm]
    assert [got.names[i] for i in whole] == ids
    for i, k in enumerate(whole):
        assert np.array_equal(got.features[k], ms.features[i])
        assert got.captions[k] == ms.captions[i]
    subs = [k for k, nm in enumerate(got.names) if "#" in nm]
    for k in subs:
        assert len(got.features[k]) == min(50, len(ms.features[ids.index(got.names[k][:6])]))
    assert got.mean.shape == (263,) and got.dim == 263


def test_humanml3d_corrupt_file_is_named_or_skipped(tmp_path):
    _humanml3d_folder(tmp_path, corrupt=True)
    with pytest.raises(ValueError, match=r"000001\.npy"):
        load_humanml3d(tmp_path)
    got = load_humanml3d(tmp_path, on_error="skip")
    assert len(got.skipped) == 1 and got.skipped[0].startswith("000001")
    assert "000001" not in got.names
    with pytest.raises(FileNotFoundError, match="val.txt"):
        load_humanml3d(tmp_path, "val")


def test_humanml3d_wrong_dim_and_bad_text(tmp_path):
    _humanml3d_folder(tmp_path)
    np.save(tmp_path / "new_joint_vecs" / "000002.npy", np.zeros((60, 251), np.float32))
    with pytest.raises(ValueError, match=r"000002\.npy: 251 channels, expected 263"):
        load_humanml3d(tmp_path)
    (tmp_path / "texts" / "000003.txt").write_text("no separators here\n")
    got = load_humanml3d(tmp_path, on_error="skip")
    assert {s[:6] for s in got.skipped} == {"000002", "000003"}


# ------------------------------------------------------------------------------ SMPL / AMASS
def test_smpl_forward_kinematics_on_a_synthetic_model(tmp_path, smpl_like_arrays):
    arrays = smpl_like_arrays()
    np.savez(tmp_path / "model.npz", **arrays)
    model = BodyModel(tmp_path / "model.npz")
    t = 3
    poses = np.zeros((t, 72))
    trans = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    poses[2, 3:6] = [np.pi / 2, 0.0, 0.0]  # left hip: 90 degrees about x
    joints = model.joints(poses, trans)
    rest = arrays["v_template"][:24]
    assert np.allclose(joints[0], rest) and np.allclose(joints[1], rest + trans[1])
    rx = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float)
    for k in (4, 7, 10):  # descendants of the left hip rotate about it
        assert np.allclose(joints[2, k], rest[1] + rx @ (rest[k] - rest[1]), atol=1e-9)
    assert np.allclose(joints[2, 2], rest[2])  # the right leg does not move
    verts = model.vertices(poses, trans)
    assert verts.shape == (3, 40, 3) and np.allclose(verts[0], arrays["v_template"])


def test_pickled_model_is_refused_unless_converted(tmp_path, smpl_like_arrays):
    arrays = smpl_like_arrays()
    with open(tmp_path / "model.pkl", "wb") as fh:
        pickle.dump(arrays, fh)
    with pytest.raises(ValueError, match="convert"):
        load_model_struct(tmp_path / "model.pkl")
    with pytest.raises(PermissionError, match="refusing to unpickle"):
        convert_pkl_to_npz(tmp_path / "model.pkl", tmp_path / "model.npz")
    with pytest.warns(UserWarning, match="unpickling"):
        out = convert_pkl_to_npz(tmp_path / "model.pkl", tmp_path / "model.npz", trust=True)
    assert np.allclose(BodyModel(out).joints(np.zeros((1, 72)))[0], arrays["v_template"][:24])
    np.savez(tmp_path / "bad.npz", v_template=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="lacks"):
        load_model_struct(tmp_path / "bad.npz")


def test_amass_npz_through_the_body_model(tmp_path, smpl_like_arrays):
    np.savez(tmp_path / "model.npz", **smpl_like_arrays())
    model = BodyModel(tmp_path / "model.npz")
    t = 12
    poses = np.zeros((t, 156))
    poses[:, 3] = np.linspace(0, 1, t)
    trans = np.stack([np.zeros(t), np.linspace(0, 1, t), np.zeros(t)], -1)  # moves along y
    np.savez(tmp_path / "clip.npz", poses=poses, trans=trans, betas=np.zeros(16),
             mocap_framerate=np.array(60.0))  # fmt: skip
    joints = load_amass_npz(tmp_path / "clip.npz", model)
    assert joints.shape == (4, 22, 3)  # 60 fps -> 20 fps
    # AMASS is z-up: its y axis becomes z
    assert np.allclose(joints[:, 0, 2] - joints[0, 0, 2], trans[::3, 1])
    np.savez(tmp_path / "bad.npz", poses=poses)
    with pytest.raises(ValueError, match=r"bad\.npz.*trans"):
        load_amass_npz(tmp_path / "bad.npz", model)


# ------------------------------------------------------------------------------ BVH
def test_bvh_write_read_round_trip(tmp_path):
    joints, _ = synthesize(2, seed=4, min_len=30, max_len=40)
    for k, j in enumerate(joints):
        path = write_bvh(j, tmp_path / f"m{k}.bvh")
        bvh = read_bvh(path)
        assert abs(bvh.frame_time - 1 / FPS) < 1e-6
        assert np.abs(bvh_to_joints22(bvh) - j).max() < 1e-4
    (tmp_path / "bad.bvh").write_text("HIERARCHY\nROOT a\n{\nOFFSET 0 0 0\n")
    with pytest.raises(ValueError, match=r"bad\.bvh"):
        read_bvh(tmp_path / "bad.bvh")
