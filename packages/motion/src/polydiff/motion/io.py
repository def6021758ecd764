"""Files people open: stick-figure GIF / MP4, BVH, NPZ of joints and features, OBJ meshes.

- :func:`stick_figure_frames` / :func:`save_gif`: three views per frame (front, side, top)
  drawn with PIL, the floor and the root path; :func:`save_mp4` writes the same frames through
  imageio-ffmpeg when installed.
- :func:`save_motion_files`: what ``polydiff sample`` writes for motion runs.
- :func:`save_obj_sequence`: one OBJ per frame of a mesh sequence; :func:`export_obj` writes
  a motion's: the SMPL mesh when a body model is given (:meth:`BodyModel.pose_from_joints`,
  then linear blend skinning), else :func:`skeleton_mesh`, a documented stick body: one
  octahedral bone per joint-parent pair (6 vertices: the parent joint, a square of 4 at 20% of
  the bone, the child joint; 8 triangles), 21 bones, 126 vertices and 168 faces per frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from polydiff.core.fileio import atomic_path, atomic_write_text

from .bvh import write_bvh
from .features import FPS, features_to_joints
from .skeleton import KINEMATIC_CHAINS, PARENTS, RAW_OFFSETS
from .smpl import BodyModel

__all__ = [
    "export_obj",
    "save_gif",
    "save_motion_files",
    "save_mp4",
    "save_obj_sequence",
    "skeleton_mesh",
    "stick_figure_frames",
]

_COLORS = ((200, 40, 40), (40, 90, 200), (30, 30, 30), (220, 120, 30), (40, 160, 90))
_VIEWS = (("front", 0, 1, -1.0), ("side", 2, 1, 1.0), ("top", 0, 2, -1.0))


def stick_figure_frames(joints: np.ndarray, size: int = 160, title: str = "") -> list[Image.Image]:
    """RGB frames (3 views side by side) of joints (T, 22, 3), y up, fixed framing."""
    joints = np.asarray(joints, dtype=np.float64)
    centre = joints[:, 0].mean(0)
    extent = max(np.abs(joints - centre).max(), 1.0) * 1.1
    frames = []
    for t in range(len(joints)):
        img = Image.new("RGB", (size * 3, size + 14), "white")
        draw = ImageDraw.Draw(img)
        for v, (name, a, b, flip) in enumerate(_VIEWS):
            ox = v * size

            def px(p, a=a, b=b, flip=flip, ox=ox):
                u = (flip * (p[a] - centre[a]) / extent + 1) / 2 * size
                w = (1 - ((p[b] - (centre[b] if b != 1 else 0.9)) / extent + 1) / 2) * size
                return (ox + u, 14 + w)

            if b == 1:  # floor line
                y0 = px(np.array([0.0, 0.0, 0.0]))[1]
                draw.line([(ox, y0), (ox + size, y0)], fill=(180, 180, 180))
            path = [px(p) for p in joints[: t + 1, 0]]
            if len(path) > 1:
                draw.line(path, fill=(200, 200, 240))
            for chain, colour in zip(KINEMATIC_CHAINS, _COLORS):
                draw.line([px(joints[t, j]) for j in chain], fill=colour, width=3)
            draw.text((ox + 3, 1), name, fill=(90, 90, 90))
        if title:
            draw.text((3 * size - 6 * min(len(title), 60) - 3, 1), title[:60], fill=(0, 0, 0))
        frames.append(img)
    return frames


def save_gif(joints: np.ndarray, path: str | Path, fps: int = FPS, title: str = "") -> Path:
    """An animated GIF of joints (T, 22, 3)."""
    frames = stick_figure_frames(joints, title=title)
    with atomic_path(path) as tmp:
        frames[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=frames[1:],
            duration=int(1000 / fps),
            loop=0,
        )
    return Path(path)


def save_mp4(joints: np.ndarray, path: str | Path, fps: int = FPS, title: str = "") -> Path:
    """An H.264 MP4 of joints (T, 22, 3) (needs the ``imageio-ffmpeg`` package)."""
    import imageio_ffmpeg

    frames = stick_figure_frames(joints, title=title)
    w, h = frames[0].size
    w2, h2 = w + w % 2, h + h % 2
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(str(tmp), (w2, h2), fps=fps, macro_block_size=1)
        writer.send(None)
        for f in frames:
            canvas = Image.new("RGB", (w2, h2), "white")
            canvas.paste(f)
            writer.send(np.asarray(canvas).tobytes())
        writer.close()
    return Path(path)


def save_motion_files(
    samples: torch.Tensor,
    lengths: Sequence[int],
    out_dir: Path,
    prompts: Sequence[str] | None = None,
    files: int = 4,
) -> list[Path]:
    """``joints.npz`` (all samples: joints, features, lengths, prompts) plus a GIF and a BVH for
    the first ``files`` samples, each cropped to its length."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    joints = features_to_joints(samples.float()).numpy()  # (N, T, 22, 3)
    paths = []
    arrays = {"joints": joints, "features": samples.numpy(), "lengths": np.asarray(lengths)}
    if prompts is not None:
        arrays["prompts"] = np.asarray(list(prompts))
    with atomic_path(out_dir / "joints.npz") as tmp:
        np.savez(tmp, **arrays)
    paths.append(out_dir / "joints.npz")
    for i in range(min(files, len(samples))):
        j = joints[i, : max(int(lengths[i]), 2)]
        title = prompts[i] if prompts is not None else ""
        paths.append(save_gif(j, out_dir / f"motion_{i:02d}.gif", title=title))
        paths.append(write_bvh(j, out_dir / f"motion_{i:02d}.bvh"))
    if prompts is not None:
        paths.append(atomic_write_text(out_dir / "prompts.txt", "\n".join(prompts) + "\n"))
    return paths


def save_obj_sequence(vertices: np.ndarray, faces: np.ndarray, out_dir: str | Path) -> list[Path]:
    """One Wavefront OBJ per frame of vertices (T, V, 3) with faces (F, 3) (0-based)."""
    out_dir = Path(out_dir)
    face_lines = "\n".join(f"f {a + 1} {b + 1} {c + 1}" for a, b, c in np.asarray(faces))
    paths = []
    for t, verts in enumerate(np.asarray(vertices)):
        text = "\n".join(f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in verts)
        paths.append(
            atomic_write_text(out_dir / f"frame_{t:04d}.obj", text + "\n" + face_lines + "\n")
        )
    return paths


# the 8 triangles of an octahedral bone: 0 = parent joint, 1-4 = the square, 5 = child joint
_BONE_FACES = np.array(
    [[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1], [5, 2, 1], [5, 3, 2], [5, 4, 3], [5, 1, 4]]
)


def skeleton_mesh(joints: np.ndarray, width: float = 0.12) -> tuple[np.ndarray, np.ndarray]:
    """A stick-body mesh of joints (T, 22, 3): vertices (T, 126, 3) and faces (168, 3)
    (0-based), one octahedral bone per joint and its parent (see the module docstring) whose
    square has a half-diagonal of ``width`` times the bone length (clipped to 1-4 cm)."""
    j = np.asarray(joints, dtype=np.float64)
    if j.ndim != 3 or j.shape[1:] != (22, 3):
        raise ValueError(f"joints must be (T, 22, 3), got shape {j.shape}")
    bones = [(PARENTS[b], b) for b in range(1, 22)]
    verts, faces = [], []
    for k, (p, b) in enumerate(bones):
        head, tail = j[:, p], j[:, b]
        d = tail - head
        length = np.linalg.norm(d, axis=-1, keepdims=True)
        axis = d / length.clip(1e-9)
        # a reference axis off the bone's rest direction (y bones: z; x / z bones: y)
        ref = np.array([0.0, 0.0, 1.0]) if abs(RAW_OFFSETS[b][1]) > 0.5 else np.array([0, 1.0, 0])
        e1 = np.cross(axis, ref)
        weak = np.linalg.norm(e1, axis=-1) < 1e-6
        e1[weak] = np.cross(axis[weak], np.array([1.0, 0.0, 0.0]))
        e1 /= np.linalg.norm(e1, axis=-1, keepdims=True).clip(1e-9)
        e2 = np.cross(axis, e1)
        r = (width * length).clip(0.01, 0.04)
        mid = head + 0.2 * d
        square = [mid + r * e1, mid + r * e2, mid - r * e1, mid - r * e2]
        verts.append(np.stack([head, *square, tail], axis=1))  # (T, 6, 3)
        faces.append(_BONE_FACES + 6 * k)
    return np.concatenate(verts, axis=1), np.concatenate(faces)


def export_obj(
    joints: np.ndarray, out_dir: str | Path, body_model: str | Path | BodyModel | None = None
) -> list[Path]:
    """One OBJ per frame of joints (T, 22, 3) into ``out_dir``: the SMPL mesh of ``body_model``
    (an ``.npz`` model file, read without pickle, or a :class:`BodyModel`) fitted to the joints,
    or without one the :func:`skeleton_mesh`."""
    if body_model is None:
        verts, faces = skeleton_mesh(joints)
    else:
        body = body_model if isinstance(body_model, BodyModel) else BodyModel(body_model)
        poses, trans = body.pose_from_joints(joints)
        verts, faces = body.vertices(poses, trans), body.faces
    return save_obj_sequence(verts, faces, out_dir)
