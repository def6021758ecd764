"""Files: stick-figure GIF / MP4, motion files, OBJ sequences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from polydiff.motion.features import joints_to_features
from polydiff.motion.io import save_gif, save_motion_files, save_mp4, save_obj_sequence
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
