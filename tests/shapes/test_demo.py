"""The shapes demo runs the recipes as they stand (quick mode only shrinks them)."""

from __future__ import annotations

import json

import pytest

from polydiff.shapes.demo import DEMO, QUICK
from polydiff.train.config import compose


@pytest.mark.parametrize("name", ["points_class", "sdf_wavelet"])
def test_demo_runs_the_recipes_unchanged(name):
    base = compose([f"experiment=shapes/{name}"])
    demo = compose([f"experiment=shapes/{name}", *DEMO])
    quick = compose([f"experiment=shapes/{name}", *QUICK])
    for key in ("model", "objective", "sampler", "guidance", "data"):
        assert demo[key] == base[key], key
    for key in ("objective", "sampler", "guidance"):
        assert quick[key] == base[key], key
    for k in base.model:  # the model node carries the data source (smaller when quick)
        assert k == "source" or quick.model[k] == base.model[k], k
    for k in base.trainer:
        if k not in ("progress", "ckpt_every"):
            assert demo.trainer[k] == base.trainer[k], k


@pytest.mark.slow
def test_shapes_demo_quick_writes_renders_meshes_and_metrics(tmp_path):
    from polydiff.shapes.demo import run

    res = run(tmp_path, quick=True)
    for f in res["files"]:
        assert (tmp_path / f.split("/")[-1]).stat().st_size > 0, f
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= summary["experiments"]["sdf_wavelet"]["metrics"]["watertight_ratio"] <= 1
    assert any(p.suffix == ".glb" for p in (tmp_path / "samples_sdf_wavelet").iterdir())
