"""Files: stick-figure GIF / MP4, motion files, OBJ sequences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from polydiff.motion.features import joints_to_features
from polydiff.motion.io import (
    export_obj,
    save_gif,
    save_motion_files,
    save_mp4,
    save_obj_sequence,
    skeleton_mesh,
)
from polydiff.motion.skeleton import PARENTS
from polydiff.motion.smpl import BodyModel
from polydiff.motion.synthetic import MotionSpec, Segment, generate_motion


def _walk(n=12):
    return generate_motion(MotionSpec((Segment("walk"),), n))


def test_gif_has_one_frame_per_pose_and_draws_the_body(tmp_path):
    path = save_gif(_walk(), tmp_path / "walk.gif", title="a person walks")
    with Image.open(path) as im:
        assert im.n_frames == 12
        im.seek(5)
        rgb = np.asarray(im.convert("RGB"))
    assert rgb.shape == (174, 480, 3)
    assert (rgb.sum(-1) < 600).mean() > 0.005  # coloured limbs on white


def test_mp4(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    path = save_mp4(_walk(), tmp_path / "walk.mp4")
    assert path.stat().st_size > 1000


def test_motion_files_and_obj(tmp_path):
    feats = torch.as_tensor(np.stack([joints_to_features(_walk(13), retarget=False)] * 2))
    paths = save_motion_files(feats, [12, 8], tmp_path, ["a", "b"], files=1)
    names = sorted(p.name for p in paths)
    assert names == ["joints.npz", "motion_00.bvh", "motion_00.gif", "prompts.txt"]
    z = np.load(tmp_path / "joints.npz", allow_pickle=False)
    assert z["joints"].shape == (2, 12, 22, 3) and list(z["lengths"]) == [12, 8]
    verts = np.random.default_rng(0).normal(size=(2, 4, 3))
    objs = save_obj_sequence(verts, np.array([[0, 1, 2], [1, 2, 3]]), tmp_path / "obj")
    lines = objs[1].read_text().splitlines()
    assert sum(line.startswith("v ") for line in lines) == 4 and lines[-1] == "f 2 3 4"
    assert np.allclose([float(v) for v in lines[0].split()[1:]], verts[1, 0], atol=1e-6)


def test_skeleton_mesh_bones_join_the_joints():
    joints = _walk(5)
    verts, faces = skeleton_mesh(joints)
    assert verts.shape == (5, 126, 3) and faces.shape == (168, 3) and faces.max() == 125
    for k, b in enumerate(range(1, 22)):  # each bone runs from its parent joint to its joint
        assert np.allclose(verts[:, 6 * k], joints[:, PARENTS[b]])
        assert np.allclose(verts[:, 6 * k + 5], joints[:, b])
        head, tail = joints[:, PARENTS[b]], joints[:, b]
        mid = verts[:, 6 * k + 1 : 6 * k + 5].mean(1)  # the square is centred on the bone
        assert np.allclose(mid, head + 0.2 * (tail - head))
    with pytest.raises(ValueError, match=r"\(T, 22, 3\)"):
        skeleton_mesh(joints[:, :21])


def test_smpl_fit_reproduces_the_joints_and_exports_a_mesh_sequence(tmp_path, smpl_like_arrays):
    np.savez(tmp_path / "model.npz", **smpl_like_arrays())
    body = BodyModel(tmp_path / "model.npz")
    rng = np.random.default_rng(0)
    poses, trans = rng.normal(scale=0.6, size=(4, 72)), rng.normal(size=(4, 3))
    joints = body.joints(poses, trans)[:, :22]
    fit_poses, fit_trans = body.pose_from_joints(joints)
    assert np.abs(body.joints(fit_poses, fit_trans)[:, :22] - joints).max() < 1e-6
    files = export_obj(joints, tmp_path / "smpl", tmp_path / "model.npz")
    lines = files[2].read_text().splitlines()
    verts = np.array([[float(v) for v in ln.split()[1:]] for ln in lines if ln.startswith("v ")])
    assert len(files) == 4 and np.allclose(verts, body.vertices(fit_poses, fit_trans)[2], atol=1e-5)
    assert sum(ln.startswith("f ") for ln in lines) == len(body.faces)


def test_motion_obj_command(tmp_path):
    from polydiff.motion.pipeline import obj_run
    from polydiff.train.config import ConfigError

    feats = torch.as_tensor(joints_to_features(_walk(9), retarget=False))[None]
    save_motion_files(feats, [6], tmp_path / "run" / "samples" / "s0", None, files=0)
    summary = obj_run(tmp_path / "run")
    assert summary["frames"] == 6 and summary["mesh"].startswith("skeleton")
    assert (tmp_path / "run" / "samples" / "s0" / "obj_00" / "frame_0005.obj").is_file()
    with pytest.raises(ConfigError, match=r"obj.index=3 but .* holds 1 motions"):
        obj_run(tmp_path / "run", ["obj.index=3"])
    with pytest.raises(ConfigError, match="unknown motion-obj settings"):
        obj_run(tmp_path / "run", ["obj.colour=red"])
