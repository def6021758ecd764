"""Drill: hypothesis fuzzing of the loaders people point at their own files (image folders,
``.npz`` arrays, Minari datasets) and of CLI overrides. Every input either loads, or raises the
loader's one documented error type with the file (or key) named: never another exception, never
a silent wrong result."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from polydiff.image.data import ImageFileError, ImageFolderDataset, NpzImageDataset
from polydiff.train.config import ConfigError, compose

FUZZ = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
COUNTS: dict[str, list[int]] = {}  # drill -> [trials, held]


def _png(size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(size * size * 3, dtype=np.uint8).reshape(size, size, 3)).save(
        buf, "PNG"
    )
    return buf.getvalue()


def _mutate(data: bytes, draw_ops: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for pos, val in draw_ops:
        out[pos % len(out)] = val
    return bytes(out[:cut] if cut is not None else out)


mutations = st.tuples(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    st.none() | st.integers(0, 400),
)


@FUZZ
@given(mut=mutations)
def test_fuzz_image_folder(tmp_path_factory, mut):
    root = tmp_path_factory.mktemp("imgs")
    (root / "a").mkdir()
    (root / "a" / "good.png").write_bytes(_png())
    bad = root / "a" / "fuzzed.png"
    bad.write_bytes(_mutate(_png(), *mut))
    ds = ImageFolderDataset(root, size=8, on_error="skip")
    for f, reason in ds.skipped:  # a skipped file is named, with the reason
        assert f == bad and reason
    for i in range(len(ds)):  # what was kept loads, and is finite
        assert np.isfinite(ds[i]["x"].numpy()).all()
    try:
        ImageFolderDataset(root, size=8, on_error="raise")
    except ImageFileError as err:
        assert str(bad) in str(err)
    COUNTS.setdefault("image folder", [0, 0])[0] += 1
    COUNTS["image folder"][1] += 1


def test_decompression_bomb_is_skipped_and_named(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "ok.png").write_bytes(_png(4))
    (tmp_path / "a" / "bomb.png").write_bytes(_png(64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 > 2 x 1000: a "bomb"
    ds = ImageFolderDataset(tmp_path, size=4, on_error="skip")
    assert len(ds) == 1 and [f.name for f, _ in ds.skipped] == ["bomb.png"]
    assert "DecompressionBombError" in ds.skipped[0][1]
    with pytest.raises(ImageFileError, match=r"bomb\.png.*DecompressionBomb"):
        ImageFolderDataset(tmp_path, size=4, on_error="raise")


def _npz() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buf, images=rng.integers(0, 255, (3, 4, 4, 3), dtype=np.uint8), labels=np.arange(3))
    return buf.getvalue()


@FUZZ
@given(mut=mutations)
def test_fuzz_npz(tmp_path_factory, mut):
    path = tmp_path_factory.mktemp("npz") / "data.npz"
    path.write_bytes(_mutate(_npz(), *mut))
    try:
        ds = NpzImageDataset(path)
    except (ImageFileError, ValueError) as err:
        assert str(path) in str(err), err
    else:
        assert len(ds) >= 0 and np.isfinite(ds.images.numpy()).all()
    COUNTS.setdefault("npz", [0, 0])[0] += 1
    COUNTS["npz"][1] += 1


@pytest.fixture(scope="module")
def minari_master(tmp_path_factory) -> Path:
    pytest.importorskip("minari")
    from polydiff.rl.datasets import two_path_episodes, write_minari

    root = tmp_path_factory.mktemp("minari")
    return write_minari(root, "fuzz/two-path-v0", two_path_episodes(4, seed=0), "two-path")


@FUZZ
@given(
    target=st.sampled_from(["hdf5", "metadata"]),
    mut=mutations,
    stats_value=st.sampled_from([None, float("nan"), float("inf"), "x", [], {}]),
)
def test_fuzz_minari(tmp_path_factory, minari_master, target, mut, stats_value):
    from polydiff.rl.datasets import load_minari

    data = tmp_path_factory.mktemp("m") / "data"
    shutil.copytree(minari_master, data)
    meta_file = data / "metadata.json"
    if target == "hdf5":
        h5 = next(data.glob("*.hdf5"))
        h5.write_bytes(_mutate(h5.read_bytes(), *mut))
    elif stats_value is not None:
        meta = json.loads(meta_file.read_text())
        key = next(iter(meta["polydiff"]["stats"]))
        meta["polydiff"]["stats"][key]["min"][0] = stats_value
        meta_file.write_text(json.dumps(meta))
    else:
        meta_file.write_bytes(_mutate(meta_file.read_bytes(), *mut))
    try:
        ds = load_minari(data)
    except ValueError as err:
        assert str(data) in str(err), err
    else:
        for name, s in ds.stats.items():
            assert np.isfinite(np.asarray(s["min"], dtype=float)).all(), name
    COUNTS.setdefault("minari", [0, 0])[0] += 1
    COUNTS["minari"][1] += 1


keys = st.sampled_from(
    [
        "trainer.max_steps",
        "trainer.batch_size",
        "sampler.steps",
        "seed",
        "sample.n",
        "sample.ema",
        "trainer.optimizer.lr",
        "model",
        "sampler",
        "nonexistent.key",
        "trainer",
    ]
)
# values, some of which hydra's override grammar rejects (named in one line)
values = st.one_of(
    st.sampled_from(
        ["abc", "-1", "0", "1e39", "nan", "inf", "${oc.env:HOME}", "", "null", "[1,2]"]
    ),
    st.text(alphabet="abc019.:_ -=[]{}$'\"", max_size=8),
)


def _override_case(key: str, value: str) -> None:
    try:
        compose(["experiment=toy/gmm", f"{key}={value}"])
    except ConfigError as err:  # the documented error: one line
        msg = str(err).strip()
        assert "\n" not in msg, msg
    COUNTS.setdefault("overrides", [0, 0])[0] += 1
    COUNTS["overrides"][1] += 1


@settings(max_examples=4, deadline=None)
@given(key=keys, value=values)
def test_fuzz_overrides(key, value):
    _override_case(key, value)


@pytest.mark.slow
@settings(max_examples=80, deadline=None)
@given(key=keys, value=values)
def test_fuzz_overrides_full(key, value):
    _override_case(key, value)


@pytest.mark.parametrize(
    "override",
    ["trainer.max_steps=0=0", "trainer.max_steps=[1,", "a b=c", "trainer.x=${", 'seed="abc'],
)
def test_override_grammar_error_names_the_override(override):
    """Found by the fuzz: hydra's grammar errors were two lines naming neither the override
    nor its key; now one line with both and the expected form."""
    with pytest.raises(ConfigError) as info:
        compose(["experiment=toy/gmm", override])
    msg = str(info.value)
    assert "\n" not in msg and repr(override) in msg and "expected key=value" in msg, msg
