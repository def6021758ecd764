"""A tiny train -> sample -> export -> evaluate run per shapes experiment, through the one
recipe path (``polydiff.train.run``), plus own-data folders read in one line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import trimesh

from polydiff.shapes import io as shape_io
from polydiff.shapes.experiments import ShapesHooks, ShapeSource, WaveletCodec, points_data
from polydiff.train.run import evaluate_run, sample_run, train

TINY = [
    "data.source.per_class=3",
    "data.source.test_per_class=2",
    "trainer.max_steps=2",
    "trainer.batch_size=4",
    "trainer.ckpt_every=2",
    "trainer.log_every=1",
    "trainer.lr_warmup_steps=0",
    "trainer.progress=false",
    "sampler.steps=2",
    "data.hooks.write_n=2",
]


def _run(tmp_path, experiment, extra=()):
    run = train([f"experiment={experiment}", *TINY, *extra], run_dir=tmp_path / "run")
    out = sample_run(run, ["sample.n=3", "sampler.steps=2"], out=tmp_path / "samples")
    res = evaluate_run(run, ["evaluate.n=4", "sampler.steps=2"], out=tmp_path / "eval.json")
    return run, out, res


def test_points_class_end_to_end(tmp_path):
    _, out, res = _run(
        tmp_path, "shapes/points_class", ["data.dataset.num_points=64", "data.hooks.emd=true"]
    )
    npz = np.load(out / "samples.npz", allow_pickle=False)
    assert npz["samples"].shape == (3, 64, 3) and npz["cond_class"].tolist() == [0, 0, 1]
    for name in ("sample_000.ply", "sample_000_mesh.obj", "renders.png"):
        assert (out / name).stat().st_size > 0, name
    assert trimesh.load(out / "sample_000.ply").vertices.shape == (64, 3)
    m = res["metrics"]
    for key in ("1-NNA-CD", "COV-CD", "MMD-CD", "1-NNA-EMD", "COV-EMD", "MMD-EMD", "JSD"):
        assert math.isfinite(m[key]) and f"chair/{key}" in m, key
    assert m["chair/n_samples"] == 2 and m["chair/n_refs"] == 2 and m["points"] == 64


@pytest.mark.parametrize(
    "experiment", ["shapes/sdf_voxel", "shapes/sdf_wavelet", "shapes/latent_sdf"]
)
def test_grid_experiments_end_to_end(tmp_path, experiment, monkeypatch):
    monkeypatch.setenv("POLYDIFF_CACHE", str(tmp_path / "cache"))
    extra = ["data.autoencoder.steps=3"] if "latent" in experiment else []
    _, out, res = _run(tmp_path, experiment, ["data.source.resolution=8", "evaluate.n=2", *extra])
    npz = np.load(out / "samples.npz", allow_pickle=False)
    assert npz["samples"].shape == (3, 8, 8, 8)
    assert np.abs(npz["samples"]).max() <= 1.0
    assert (out / "renders.png").is_file()
    m = res["metrics"]
    assert 0.0 <= m["watertight_ratio"] <= 1.0 and math.isfinite(m["1-NNA-CD"])


def test_wavelet_codec_is_exactly_invertible():
    grids = np.random.default_rng(0).uniform(-1, 1, (3, 8, 8, 8)).astype(np.float32)
    codec = WaveletCodec("haar").fit(grids)
    coeffs = codec.encode(grids)
    assert coeffs.shape == (3, 8, 4, 4, 4)
    np.testing.assert_allclose(coeffs.std(axis=(0, 2, 3, 4)), 1.0, rtol=1e-4)
    np.testing.assert_allclose(codec.decode(coeffs), grids, atol=1e-5)
    with pytest.raises(ValueError, match="length-2"):
        WaveletCodec("db4")


def test_voxel_autoencoder_learns_and_is_cached(tmp_path):
    from polydiff.shapes.latent import train_voxel_autoencoder

    g = np.linalg.norm(
        np.stack(np.meshgrid(*[np.linspace(-1, 1, 8)] * 3, indexing="ij"), -1), axis=-1
    )
    grids = np.stack([np.clip(g - r, -1, 1) for r in (0.3, 0.5, 0.7, 0.9)]).astype(np.float32)
    ae = train_voxel_autoencoder(grids, steps=80, batch_size=4, base=8, cache_dir=str(tmp_path))
    x = torch.from_numpy(grids)[:, None]
    with torch.no_grad():
        z = ae.encode(x)
        err = (ae.decode(z) - x).abs().mean()
    assert z.shape == (4, 4, 2, 2, 2) and abs(float(z.std()) - 1) < 1e-3
    assert err < 0.5 * x.abs().mean()  # reconstructs far better than predicting zeros
    assert len(list(tmp_path.glob("voxel-ae-*.safetensors"))) == 1
    again = train_voxel_autoencoder(grids, steps=80, batch_size=4, base=8, cache_dir=str(tmp_path))
    torch.testing.assert_close(again.encode(x), z)


def test_voxel_autoencoder_keeps_thin_insides(tmp_path):
    """Sparse insides (a few % of the voxels, as the built-in 16^3 SDFs) are reconstructed:
    the weighted L1 loss does not collapse to an all-outside grid (a plain L1 loss did)."""
    from polydiff.shapes.latent import reconstruction_weights, train_voxel_autoencoder

    c = np.stack(np.meshgrid(*[np.linspace(-1, 1, 8)] * 3, indexing="ij"), -1)
    centres = [(-0.4, 0.0, 0.3), (0.3, -0.3, 0.0), (0.0, 0.4, -0.4), (0.4, 0.4, 0.4)]
    grids = np.stack(
        [np.clip((np.linalg.norm(c - np.array(m), axis=-1) - 0.3) / 0.25, -1, 1) for m in centres]
    ).astype(np.float32)
    x, tmp = torch.from_numpy(grids)[:, None], str(tmp_path)
    inside = float((x < 0).float().mean())
    assert 0.005 < inside < 0.05
    w = reconstruction_weights(x, inside, band_weight=0.0)
    torch.testing.assert_close(w[x < 0].sum(), w[x >= 0].sum(), rtol=1e-4, atol=0)
    ae = train_voxel_autoencoder(
        grids, steps=600, batch_size=4, base=8, downsample=2, cache_dir=tmp
    )
    with torch.no_grad():
        rec = ae.decode(ae.encode(x))
    a, b = x < 0, rec < 0
    assert (a & b).sum() / (a | b).sum() > 0.5
    with pytest.raises(ValueError, match="no grid has an inside voxel"):
        train_voxel_autoencoder(np.ones((2, 8, 8, 8), np.float32), steps=1, cache_dir=tmp)
    with pytest.raises(ValueError, match="downsample must be 2 or 4"):
        train_voxel_autoencoder(grids, steps=1, downsample=8, cache_dir=tmp)


def test_points_to_data_undoes_the_normalisation():
    src = ShapeSource(per_class=3, test_per_class=1)
    ds = points_data(src, num_points=2048)
    hooks = ShapesHooks(src, normalize="global")
    back = hooks.to_data(ds.tensors["x"])
    torch.testing.assert_close(back, torch.from_numpy(src.train().points), atol=1e-5, rtol=0)
    batch = ds.get_batch([0, 1])
    assert batch["x"].shape == (2, 2048, 3) and batch["class"].tolist() == [0, 0]
    small = points_data(src, num_points=100)
    torch.testing.assert_close(small.get_batch([4, 2])["x"], small.get_batch([4, 2])["x"])
    assert hooks.sample_cond(5, None)["class"].tolist() == [0, 1, 0, 1, 0]


def _folder(tmp_path, classes=("bowl", "box")):
    root = tmp_path / "myshapes"
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(3):
            mesh = (
                trimesh.creation.icosphere(radius=0.3 + 0.05 * i)
                if cls == "bowl"
                else trimesh.creation.box(extents=(0.5, 0.2 + 0.1 * i, 0.3))
            )
            shape_io.export_mesh(mesh, root / cls / f"{cls}{i}.obj")
    return root


def test_own_folder_in_one_line(tmp_path):
    """`polydiff train experiment=shapes/points_class data=shapes_folder data.root=<dir>`:
    classes read from the folder; an explicit mismatching num_classes names both values."""
    root = _folder(tmp_path)
    args = [
        "experiment=shapes/points_class",
        "data=shapes_folder",
        f"data.root={root}",
        *TINY[2:],
        "data.dataset.num_points=32",
    ]
    run = train(args, run_dir=tmp_path / "run")
    cfg_model = json.loads((run / "overrides.json").read_text())
    assert f"data.root={root}" in cfg_model["overrides"]
    res = evaluate_run(run, ["evaluate.n=6", "sampler.steps=2"], out=tmp_path / "e.json")
    assert res["metrics"]["bowl/n_refs"] == 3 and math.isfinite(res["metrics"]["1-NNA-CD"])
    from polydiff.train.run import open_run

    opened = open_run(run)
    assert opened.model.embed.is_conditional  # two classes -> a class-conditional model
    with pytest.raises(Exception, match=r"num_classes=3.*2 class folders"):
        train([*args, "data.num_classes=3"], run_dir=tmp_path / "run2")
    with pytest.raises(Exception, match=r"model.num_classes=3 but the data has 2 class"):
        train([*args, "model.num_classes=3"], run_dir=tmp_path / "run3")
    # refused while building, before anything is written
    assert not (tmp_path / "run2").exists() and not (tmp_path / "run3").exists()


def test_class_count_override_refused_before_the_run_directory(tmp_path):
    """Built-in classes: a disagreeing data.num_classes or model.num_classes is one error naming
    both counts, raised before the run directory exists; null (unconditional) stays allowed."""
    base = ["experiment=shapes/points_class", *TINY, "data.dataset.num_points=16"]
    for over, msg in (
        ("data.num_classes=3", r"data.num_classes=3 but data.classes has 2"),
        ("model.num_classes=3", r"model.num_classes=3 but the data has 2"),
    ):
        with pytest.raises(Exception, match=msg):
            train([*base, over], run_dir=tmp_path / "bad")
        assert not (tmp_path / "bad").exists()
    src = ShapeSource(per_class=2)
    from polydiff.shapes.models import point_transformer

    assert not point_transformer("points-tiny", num_classes=None, source=src).embed.is_conditional
    assert point_transformer("points-tiny", num_classes=2, source=src).embed.is_conditional


def test_points_text_end_to_end(tmp_path):
    """Captions -> MiniLM tokens -> cross-attention; CFG at sampling; prompts saved."""
    _, out, res = _run(tmp_path, "shapes/points_text", ["data.dataset.num_points=32"])
    npz = np.load(out / "samples.npz", allow_pickle=False)
    assert npz["samples"].shape == (3, 32, 3) and npz["cond_text"].shape == (3, 16, 384)
    assert str(npz["prompts"][0]).startswith("a chair") and "table" in str(npz["prompts"][2])
    assert math.isfinite(res["metrics"]["chair/1-NNA-CD"])
