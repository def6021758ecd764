"""The video demo is the bouncing-digits recipe run through polydiff.train.run."""

from __future__ import annotations

import json

import pytest

from polydiff.train.config import compose
from polydiff.video.demo import demo_overrides


@pytest.mark.parametrize("quick", [True, False])
def test_demo_only_resizes_the_recipe(quick):
    base = compose(["experiment=video/digits_cond"])
    demo = compose(demo_overrides(quick))
    for key in ("objective", "sampler", "guidance"):
        assert demo[key] == base[key], key
    assert demo.model.size == "tiny" and demo.data.image_size == 16 and demo.name == base.name
    assert demo.trainer.optimizer == base.trainer.optimizer


@pytest.mark.slow
def test_video_demo_quick_writes_gifs(tmp_path, monkeypatch):
    from polydiff.video.demo import run

    monkeypatch.setenv("POLYDIFF_CACHE", str(tmp_path / "cache"))
    summary = run(tmp_path / "demo", quick=True)
    assert (tmp_path / "demo" / "samples" / "grid.gif").is_file()
    assert (tmp_path / "demo" / "extended_3x.gif").is_file()
    assert (
        json.loads((tmp_path / "demo" / "summary.json").read_text())["experiment"]
        == summary["experiment"]
    )
