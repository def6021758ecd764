"""Drill: hypothesis fuzzing of the new modalities' file loaders (video MP4 / GIF / frame
folders / captions, audio WAV / FLAC / OGG / captions, shapes OBJ / PLY / OFF / STL / NPZ, motion
HumanML3D / AMASS / BVH). A valid file is damaged (bytes overwritten, cut short, text tokens
replaced by ``nan`` / ``inf`` / junk); every result either loads finite data of the documented
shape, or raises the loader's documented error type in one line naming the file: never another
exception, never a silent wrong result. Fast versions run a few examples; the ``slow`` ones 60.
"""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from polydiff.audio.data import AudioFileError, load_audio_file, load_audio_folder
from polydiff.motion.bvh import bvh_to_joints22, read_bvh, write_bvh
from polydiff.motion.data import load_amass_npz, load_humanml3d
from polydiff.motion.smpl import BodyModel
from polydiff.shapes.data import ShapeFileError, load_mesh, load_points
from polydiff.video.data import VideoFileError, read_captions, read_frame_folder, read_video

FAST = settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
FULL = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
COUNTS: dict[str, list[int]] = {}  # drill -> [trials, held] (printed by conftest.py)

mutations = st.tuples(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    st.none() | st.integers(0, 4000),
)
JUNK = [
    "nan",
    "inf",
    "-inf",
    "-1",
    "0",
    "1e309",
    "",
    "#",
    "{",
    "}",
    "x",
    "\u00ff",
    "3 3",
    "-7",
    "null",
]
token_edits = st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(JUNK)), max_size=4)


def _mutate(data: bytes, ops: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for pos, val in ops:
        out[pos % len(out)] = val
    return bytes(out[:cut] if cut is not None else out)


def _edit_tokens(text: str, edits: list[tuple[int, str]]) -> str:
    tokens = text.split(" ")
    for pos, junk in edits:
        tokens[pos % len(tokens)] = junk
    return " ".join(tokens)


def _drill(name: str, fn, errors, named: str | tuple[str, ...], check) -> None:
    """Run one trial: ``fn()`` loads (then ``check(out)``) or raises ``errors`` naming
    ``named`` (or one of them) in one line."""
    COUNTS.setdefault(name, [0, 0])[0] += 1
    names = (named,) if isinstance(named, str) else named
    try:
        out = fn()
    except errors as err:
        msg = str(err).strip()
        assert any(n in msg for n in names), f"{name}: the error does not name {names}: {msg}"
        assert "\n" not in msg, f"{name}: not one line: {msg!r}"
    else:
        check(out)
    COUNTS[name][1] += 1


def _finite(*arrays) -> None:
    for a in arrays:
        a = np.asarray(a, dtype=np.float64)
        assert a.size and np.isfinite(a).all(), "a silent non-finite result"


# ------------------------------------------------------------------------------ video
def _video_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    frames = [np.full((16, 16, 3), 40 * k, np.uint8) for k in range(4)]
    if fmt == "gif":
        imgs = [Image.fromarray(f) for f in frames]
        imgs[0].save(buf, "GIF", save_all=True, append_images=imgs[1:], duration=100)
        return buf.getvalue()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


VIDEO = {}


def _video_case(tmp_path, fmt: str, mut) -> None:
    if fmt not in VIDEO:
        VIDEO[fmt] = _video_bytes(fmt)
    path = tmp_path / f"clip.{fmt}"
    path.write_bytes(_mutate(VIDEO[fmt], *mut))

    def check(out):
        frames, times = out
        assert frames.ndim == 4 and frames.shape[-1] == 3 and len(times) == len(frames)
        _finite(times)
        assert np.all(np.diff(times) >= 0), "frame times out of order"

    _drill(f"video {fmt}", lambda: read_video(path), VideoFileError, path.name, check)


def _frames_case(tmp_path, mut) -> None:
    folder = tmp_path / "frames"
    folder.mkdir(exist_ok=True)
    for k in range(3):
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), 60 * k, np.uint8)).save(buf, "PNG")
        data = buf.getvalue() if k else _mutate(buf.getvalue(), *mut)
        (folder / f"{k:03d}.png").write_bytes(data)

    def check(out):
        frames, times = out
        assert frames.shape == (3, 8, 8, 3) and len(times) == 3

    _drill(
        "video frame folder", lambda: read_frame_folder(folder, 8.0), VideoFileError, "000", check
    )


def _captions_case(tmp_path, kind: str, edits) -> None:
    text = (
        '{"file": "a.mp4", "caption": "a red ball"}\n{"file": "b.mp4", "caption": "two"}\n'
        if kind == "jsonl"
        else "file,caption\na.mp4,a red ball\nb.mp4,two\n"
    )
    path = tmp_path / f"captions.{kind}"
    path.write_text(_edit_tokens(text, edits))

    def check(out):
        assert isinstance(out, dict) and all(isinstance(v, str) for v in out.values())

    _drill(f"video captions {kind}", lambda: read_captions(path), VideoFileError, path.name, check)


@FAST
@given(fmt=st.sampled_from(["mp4", "gif"]), mut=mutations)
def test_fuzz_video_files(tmp_path_factory, fmt, mut):
    _video_case(tmp_path_factory.mktemp("v"), fmt, mut)


@FAST
@given(mut=mutations, kind=st.sampled_from(["jsonl", "csv"]), edits=token_edits)
def test_fuzz_video_frames_and_captions(tmp_path_factory, mut, kind, edits):
    _frames_case(tmp_path_factory.mktemp("f"), mut)
    _captions_case(tmp_path_factory.mktemp("c"), kind, edits)


@pytest.mark.slow
@FULL
@given(fmt=st.sampled_from(["mp4", "gif"]), mut=mutations, kind=st.sampled_from(["jsonl", "csv"]))
def test_fuzz_video_full(tmp_path_factory, fmt, mut, kind):
    _video_case(tmp_path_factory.mktemp("v"), fmt, mut)
    _frames_case(tmp_path_factory.mktemp("f"), mut)
    _captions_case(tmp_path_factory.mktemp("c"), kind, [(p, "x") for p, _ in mut[0]])


# ------------------------------------------------------------------------------ audio
AUDIO = {}


def _audio_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    t = np.arange(4000) / 8000
    wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    subtype = {"wav": "PCM_16", "flac": "PCM_16", "ogg": "VORBIS"}[fmt]
    soundfile.write(buf, wave, 8000, format=fmt.upper(), subtype=subtype)
    return buf.getvalue()


def _audio_case(tmp_path, fmt: str, mut) -> None:
    if fmt not in AUDIO:
        AUDIO[fmt] = _audio_bytes(fmt)
    path = tmp_path / f"clip.{fmt}"
    path.write_bytes(_mutate(AUDIO[fmt], *mut))

    def check(out):
        assert out.shape == (2000,)
        _finite(out.numpy())

    _drill(
        f"audio {fmt}",
        lambda: load_audio_file(path, sample_rate=8000, num_samples=2000),
        AudioFileError,
        path.name,
        check,
    )


def _audio_captions_case(tmp_path, kind: str, edits) -> None:
    root = tmp_path / "clips"
    root.mkdir()
    for name in ("a.wav", "b.wav"):
        (root / name).write_bytes(AUDIO.get("wav") or _audio_bytes("wav"))
    text = (
        '{"file": "a.wav", "caption": "a tone"}\n{"file": "b.wav", "caption": "b tone"}\n'
        if kind == "jsonl"
        else "file,caption\na.wav,a tone\nb.wav,b tone\n"
    )
    path = root / f"captions.{kind}"
    path.write_text(_edit_tokens(text, edits))

    def check(out):
        assert len(out.wave) == 2 and out.captions is not None
        assert all(isinstance(c, str) and c and c != "None" for c in out.captions), out.captions

    _drill(
        f"audio captions {kind}",
        lambda: load_audio_folder(root, sample_rate=8000, num_samples=2000),
        (AudioFileError, ValueError),
        (path.name, "a.wav", "b.wav"),
        check,
    )


@FAST
@given(fmt=st.sampled_from(["wav", "flac", "ogg"]), mut=mutations)
def test_fuzz_audio_files(tmp_path_factory, fmt, mut):
    _audio_case(tmp_path_factory.mktemp("a"), fmt, mut)


@FAST
@given(kind=st.sampled_from(["jsonl", "csv"]), edits=token_edits)
def test_fuzz_audio_captions(tmp_path_factory, kind, edits):
    _audio_captions_case(tmp_path_factory.mktemp("ac"), kind, edits)


@pytest.mark.slow
@FULL
@given(fmt=st.sampled_from(["wav", "flac", "ogg"]), mut=mutations, edits=token_edits)
def test_fuzz_audio_full(tmp_path_factory, fmt, mut, edits):
    _audio_case(tmp_path_factory.mktemp("a"), fmt, mut)
    _audio_captions_case(tmp_path_factory.mktemp("ac"), "jsonl", edits)


# ------------------------------------------------------------------------------ shapes
TETRA_V = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
TETRA_F = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])


def _shape_text(fmt: str) -> bytes:
    import trimesh

    mesh = trimesh.Trimesh(TETRA_V, TETRA_F, process=False)
    if fmt == "npz":
        buf = io.BytesIO()
        np.savez(buf, points=TETRA_V)
        return buf.getvalue()
    data = mesh.export(file_type=fmt)
    return data if isinstance(data, bytes) else data.encode()


def _shape_case(tmp_path, fmt: str, mut, edits) -> None:
    data = _shape_text(fmt)
    if fmt in ("obj", "off") and edits:
        data = _edit_tokens(data.decode(), edits).encode()
    else:
        data = _mutate(data, *mut)
    path = tmp_path / f"shape.{fmt}"
    path.write_bytes(data)

    def check_points(pts):
        assert pts.shape == (64, 3)
        _finite(pts)

    _drill(
        f"shapes points {fmt}",
        lambda: load_points(path, 64),
        ShapeFileError,
        path.name,
        check_points,
    )
    if fmt != "npz":

        def check_mesh(mesh):
            assert len(mesh.faces) and mesh.area > 0
            _finite(mesh.vertices)

        _drill(f"shapes mesh {fmt}", lambda: load_mesh(path), ShapeFileError, path.name, check_mesh)


SHAPE_FORMATS = st.sampled_from(["obj", "ply", "off", "stl", "npz"])


@FAST
@given(fmt=SHAPE_FORMATS, mut=mutations, edits=token_edits)
def test_fuzz_shape_files(tmp_path_factory, fmt, mut, edits):
    _shape_case(tmp_path_factory.mktemp("s"), fmt, mut, edits)


@pytest.mark.slow
@FULL
@given(fmt=SHAPE_FORMATS, mut=mutations, edits=token_edits)
def test_fuzz_shape_files_full(tmp_path_factory, fmt, mut, edits):
    _shape_case(tmp_path_factory.mktemp("s"), fmt, mut, edits)


# ------------------------------------------------------------------------------ motion
def _bvh_case(tmp_path, edits, mut) -> None:
    src = tmp_path / "src.bvh"
    t = np.linspace(0, 1, 5)[:, None, None]
    rng = np.random.default_rng(0)
    from polydiff.motion.skeleton import NUM_JOINTS

    joints = rng.normal(size=(1, NUM_JOINTS, 3)) + t * np.ones((1, 1, 3))
    write_bvh(joints, src)
    text = src.read_text()
    path = tmp_path / "fuzzed.bvh"
    if mut[0]:
        path.write_bytes(_mutate(text.encode(), *mut))
    else:
        path.write_text(_edit_tokens(text, edits))

    def check(out):
        assert out.positions.ndim == 3 and out.positions.shape[1:] == (len(out.names), 3)
        _finite(out.positions, out.offsets, out.frame_time)
        assert out.frame_time > 0, f"frame time {out.frame_time}"
        try:
            _finite(bvh_to_joints22(out))
        except ValueError as err:  # a renamed joint: named
            assert "BVH has no joint" in str(err), err

    _drill("motion bvh", lambda: read_bvh(path), ValueError, path.name, check)


def _humanml_case(tmp_path, edits, mut) -> None:
    root = tmp_path / "hml"
    (root / "new_joint_vecs").mkdir(parents=True)
    (root / "texts").mkdir()
    (root / "train.txt").write_text("000001\n000002\n")
    for mid in ("000001", "000002"):
        np.save(root / "new_joint_vecs" / f"{mid}.npy", np.ones((60, 263), np.float32))
        (root / "texts" / f"{mid}.txt").write_text(
            "a person walks#a/DET person/NOUN#0.0#0.0\na person turns#x#0.5#2.5\n"
        )
    fuzzed = root / "texts" / "000002.txt"
    fuzzed.write_text(
        _edit_tokens(fuzzed.read_text().replace("#", " # "), edits).replace(" # ", "#")
    )
    vec = root / "new_joint_vecs" / "000002.npy"
    if mut[0]:
        vec.write_bytes(_mutate(vec.read_bytes(), *mut))
    np.save(root / "Mean.npy", np.zeros(263, np.float32))
    np.save(root / "Std.npy", np.ones(263, np.float32))

    def check(out):
        assert len(out) >= 1
        for f in out.features:
            assert f.ndim == 2 and f.shape[1] == 263 and 40 <= len(f) < 200
            _finite(f)

    _drill(
        "motion humanml3d",
        lambda: load_humanml3d(root),
        (ValueError, FileNotFoundError),
        "000002",
        check,
    )


SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]


def _body_model(tmp_path) -> BodyModel:
    """A small SMPL-like body model (24 joints on its first vertices)."""
    rng, j, v = np.random.default_rng(0), len(SMPL_PARENTS), 30
    reg, weights = np.zeros((j, v)), np.zeros((v, j))
    reg[np.arange(j), np.arange(j)] = 1.0
    weights[np.arange(v), np.arange(v) % j] = 1.0
    np.savez(
        tmp_path / "model.npz",
        v_template=rng.normal(size=(v, 3)),
        shapedirs=rng.normal(scale=0.01, size=(v, 3, 10)),
        posedirs=np.zeros((v, 3, (j - 1) * 9)),
        J_regressor=reg,
        weights=weights,
        kintree_table=np.stack([np.asarray(SMPL_PARENTS) % (2**32), np.arange(j)]),
        f=np.array([[0, 1, 2], [2, 3, 4]]),
    )
    return BodyModel(tmp_path / "model.npz")


def _amass_case(tmp_path, mut) -> None:
    body = _body_model(tmp_path)
    body = BodyModel(tmp_path / "model.npz")
    buf = io.BytesIO()
    np.savez(
        buf,
        poses=np.zeros((12, 72)),
        trans=np.zeros((12, 3)),
        betas=np.zeros(10),
        mocap_framerate=np.array(60.0),
    )
    path = tmp_path / "seq.npz"
    path.write_bytes(_mutate(buf.getvalue(), *mut))

    def check(out):
        assert out.ndim == 3 and out.shape[1:] == (22, 3) and len(out)
        _finite(out)

    _drill("motion amass", lambda: load_amass_npz(path, body), ValueError, path.name, check)


@FAST
@given(edits=token_edits, mut=mutations)
def test_fuzz_motion_files(tmp_path_factory, edits, mut):
    _bvh_case(tmp_path_factory.mktemp("b"), edits, mut)
    _humanml_case(tmp_path_factory.mktemp("h"), edits, mut)
    _amass_case(tmp_path_factory.mktemp("am"), mut)


@pytest.mark.slow
@FULL
@given(edits=token_edits, mut=mutations)
def test_fuzz_motion_files_full(tmp_path_factory, edits, mut):
    _bvh_case(tmp_path_factory.mktemp("b"), edits, mut)
    _humanml_case(tmp_path_factory.mktemp("h"), edits, mut)
    _amass_case(tmp_path_factory.mktemp("am"), mut)
