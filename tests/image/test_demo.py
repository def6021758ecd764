"""The image demo is the digits recipe (``experiment=image/digits_cond``) run as it stands."""

from __future__ import annotations

import json

import pytest

from polydiff.image.demo import DEMO, EXPERIMENT, QUICK
from polydiff.train.config import compose


def test_demo_runs_the_digits_recipe_unchanged():
    """The recipe exists once: the demo's overrides only quiet it (and shorten it when quick)."""
    base = compose([f"experiment={EXPERIMENT}"])
    demo = compose([f"experiment={EXPERIMENT}", *DEMO])
    quick = compose([f"experiment={EXPERIMENT}", *QUICK])
    for key in ("data", "model", "objective", "sampler", "guidance"):
        assert demo[key] == base[key] and quick[key] == base[key], key
    quiet = {"progress", "ckpt_every"}
    for k in base.trainer:
        if k not in quiet:
            assert demo.trainer[k] == base.trainer[k], k
            assert quick.trainer[k] == base.trainer[k] or k == "max_steps", k
    sizes = (base.model.size, base.trainer.max_steps, quick.trainer.max_steps)
    assert sizes == ("tiny-c16", 1500, 400)


@pytest.mark.slow
def test_image_demo_quick_writes_grids_and_metrics(tmp_path):
    from polydiff.image.demo import run

    res = run(tmp_path, quick=True)
    for tag in ("no_guidance", "cfg3"):
        assert (tmp_path / res[tag]["grid"]).stat().st_size > 500
        assert 0.0 <= res[tag]["class_accuracy"] <= 1.0 and res[tag]["fid"] > 0
        assert f"experiment={EXPERIMENT}" in res["recipe"]
    # guidance sharpens class-conditional samples: accuracy up
    assert res["cfg3"]["class_accuracy"] >= res["no_guidance"]["class_accuracy"]
    assert json.loads((tmp_path / "metrics.json").read_text())["train_steps"] == 400
