"""Built-in image data and real-file loaders (including corrupt files)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from polydiff.image.data import (
    ATTRIBUTES,
    CaptionEncodedDataset,
    CaptionFolderDataset,
    DigitsDataset,
    ImageFileError,
    ImageFolderDataset,
    NpzImageDataset,
    PhotoPatchesDataset,
    ShapesDataset,
    all_shape_specs,
    images_to_tensor,
    parse_caption,
)
from polydiff.image.io import make_grid, save_image_grid, save_samples_npz, to_uint8


def test_digits_shapes_range_and_split():
    train, test = DigitsDataset(16, "train"), DigitsDataset(16, "test")
    assert len(train) + len(test) == 1797
    assert len(test) == 180
    item = train[0]
    assert item["x"].shape == (1, 16, 16)
    assert item["x"].min() >= -1 and item["x"].max() <= 1
    assert isinstance(item["class"], int) and 0 <= item["class"] <= 9
    assert set(train.labels.tolist()) == set(range(10))
    # disjoint split: no test image equals a train image
    d = torch.cdist(test.images.flatten(1), train.images.flatten(1))
    assert (d.min(1).values > 0).all()
    assert DigitsDataset(32, "test").images.shape[-1] == 32
    only = DigitsDataset(16, "all", classes=[3])
    assert set(only.labels.tolist()) == {3}


def test_shapes_deterministic_captions_and_pixels():
    a, b = ShapesDataset(240, seed=1), ShapesDataset(240, seed=1)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, ShapesDataset(240, seed=2).images)
    assert len(set(a.captions)) == 120  # every combination present
    for i in range(0, 240, 17):
        item = a[i]
        spec = parse_caption(item["caption"])
        assert spec.labels() == {k: item[k] for k in ATTRIBUTES}
        x = (item["x"] + 1) / 2  # (3, 32, 32) in [0, 1]
        # the shape's colour dominates the pixels that differ from the background
        bg = x[:, 0, 0]
        diff = (x - bg[:, None, None]).abs().sum(0)
        fg = x[:, diff > 0.5].mean(1)
        expected = {"red": 0, "green": 1, "blue": 2, "yellow": 0}[spec.colour]
        assert fg.argmax() == expected
        # the shape sits in its named quadrant
        ys, xs = torch.nonzero(diff > 0.5, as_tuple=True)
        cy, cx = ys.float().mean() / 32, xs.float().mean() / 32
        if "top" in spec.position:
            assert cy < 0.5
        if "bottom" in spec.position:
            assert cy > 0.5
        if "left" in spec.position:
            assert cx < 0.5
        if "right" in spec.position:
            assert cx > 0.5
    assert a[0]["caption"].startswith("a ")
    assert len(all_shape_specs()) == 120


def test_parse_caption_round_trip_and_errors():
    for spec in all_shape_specs():
        assert parse_caption(spec.caption) == spec
    assert parse_caption("a small red circle at the top left").colour == "red"
    with pytest.raises(ValueError, match="not a shapes caption"):
        parse_caption("a purple hexagon")


def test_photo_patches():
    ds = PhotoPatchesDataset(n=16, size=32, seed=3)
    assert ds[0]["x"].shape == (3, 32, 32)
    assert torch.equal(ds.images, PhotoPatchesDataset(n=16, size=32, seed=3).images)
    assert ds.images.std() > 0.1  # real content, not flat


def _write_png(path, colour, size=(20, 12)):
    Image.new("RGB", size, colour).save(path)


@pytest.fixture
def image_folder(tmp_path):
    for k, (name, colour) in enumerate([("cat", (255, 0, 0)), ("dog", (0, 0, 255))]):
        (tmp_path / name).mkdir()
        for i in range(3):
            _write_png(tmp_path / name / f"{i}.png", colour)
        if k == 1:
            Image.new("L", (16, 16), 128).save(tmp_path / name / "gray.jpg")
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    return tmp_path


def test_image_folder_corrupt_raises_naming_file(image_folder):
    with pytest.raises(ImageFileError, match=r"broken\.png"):
        ImageFolderDataset(image_folder, size=8)


def test_image_folder_skip_counts(image_folder):
    ds = ImageFolderDataset(image_folder, size=8, on_error="skip")
    assert ds.classes == ["cat", "dog"]
    assert len(ds) == 7
    assert len(ds.skipped) == 1 and ds.skipped[0][0].name == "broken.png"
    item = ds[0]
    assert item["x"].shape == (3, 8, 8) and item["class"] == 0
    assert torch.allclose(item["x"][0], torch.ones(8, 8)) and torch.allclose(
        item["x"][2], -torch.ones(8, 8)
    )
    assert ds[3]["class"] == 1
    grey = ImageFolderDataset(image_folder, size=8, channels=1, on_error="skip")
    assert grey[0]["x"].shape == (1, 8, 8)
    with pytest.raises(ValueError, match="on_error"):
        ImageFolderDataset(image_folder, on_error="ignore")


def test_caption_folder_jsonl_and_csv(tmp_path):
    for i in range(3):
        _write_png(tmp_path / f"{i}.png", (0, 255, 0))
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    rows = [{"file_name": f"{i}.png", "caption": f"green {i}"} for i in range(3)]
    rows.append({"file_name": "bad.jpg", "caption": "broken"})
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ImageFileError, match=r"bad\.jpg"):
        CaptionFolderDataset(tmp_path, size=4)
    ds = CaptionFolderDataset(tmp_path, size=4, on_error="skip")
    assert len(ds) == 3 and len(ds.skipped) == 1
    assert ds[2]["caption"] == "green 2" and ds[2]["x"].shape == (3, 4, 4)

    (tmp_path / "caps.csv").write_text("file,text\n0.png,first\n1.png,second\n")
    ds = CaptionFolderDataset(tmp_path, captions="caps.csv", size=4)
    assert [ds[i]["caption"] for i in range(2)] == ["first", "second"]

    (tmp_path / "missing.jsonl").write_text(json.dumps({"file_name": "nope.png", "caption": "x"}))
    with pytest.raises(ImageFileError, match=r"nope\.png"):
        CaptionFolderDataset(tmp_path, captions="missing.jsonl")
    (tmp_path / "badline.jsonl").write_text('{"file_name": "0.png", "caption": "ok"}\n{oops\n')
    with pytest.raises(ImageFileError, match="line 2"):
        CaptionFolderDataset(tmp_path, captions="badline.jsonl")


def test_npz_dataset(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=imgs, labels=np.arange(5))
    ds = NpzImageDataset(tmp_path / "a.npz")
    assert len(ds) == 5 and ds[4]["class"] == 4
    assert torch.allclose(
        ds[1]["x"], torch.from_numpy(imgs[1]).permute(2, 0, 1).float() / 127.5 - 1
    )
    np.savez(tmp_path / "f.npz", x=np.zeros((2, 1, 4, 4), np.float32) + 0.5)
    assert torch.allclose(NpzImageDataset(tmp_path / "f.npz")[0]["x"], torch.zeros(1, 4, 4))
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(ImageFileError, match=r"corrupt\.npz"):
        NpzImageDataset(tmp_path / "corrupt.npz")
    np.savez(tmp_path / "nokey.npz", foo=np.zeros(3))
    with pytest.raises(ImageFileError, match="no image array"):
        NpzImageDataset(tmp_path / "nokey.npz")
    with pytest.raises(ValueError, match="must lie in"):
        images_to_tensor(np.full((2, 4, 4, 3), 7.0, np.float32))
    with pytest.raises(ValueError, match="shape"):
        images_to_tensor(np.zeros((4, 4)))


def test_caption_encoded_dataset():
    base = ShapesDataset(130, seed=0)
    calls = []

    def encode(prompts):
        calls.append(len(prompts))
        n = len(prompts)
        text = torch.arange(n, dtype=torch.float32)[:, None, None].expand(n, 3, 4)
        return {
            "text": text,
            "text_mask": torch.ones(n, 3, dtype=torch.bool),
            "text_pooled": text[:, 0],
        }

    ds = CaptionEncodedDataset(base, encode)
    assert calls == [120]
    a, b = ds[0], ds[120]  # same caption (the cycle of 120 repeats)
    assert base[0]["caption"] == base[120]["caption"]
    assert torch.equal(a["text"], b["text"]) and "caption" not in a
    assert a["text"].shape == (3, 4) and a["text_pooled"].shape == (4,)
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    assert batch["text"].shape == (4, 3, 4) and batch["text_mask"].dtype == torch.bool


def test_io_grid_and_npz(tmp_path):
    x = torch.linspace(-1, 1, 5 * 3 * 4 * 4).reshape(5, 3, 4, 4)
    u = to_uint8(x)
    assert u.shape == (5, 4, 4, 3) and u.dtype == np.uint8 and u.min() == 0 and u.max() == 255
    grid = make_grid(x, nrow=3, padding=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    assert np.array_equal(grid[1:5, 1:5], u[0])
    p = save_image_grid(x, tmp_path / "sub" / "grid.png", nrow=3, padding=1, scale=2)
    assert np.asarray(Image.open(p)).shape == (22, 32, 3)
    p = save_samples_npz(tmp_path / "samples.npz", x, labels=torch.arange(5))
    with np.load(p) as z:
        assert np.array_equal(z["images"], u) and z["labels"].tolist() == [0, 1, 2, 3, 4]
    assert list(tmp_path.glob("**/*.tmp")) == []
