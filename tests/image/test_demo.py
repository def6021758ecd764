"""The image demo (quick mode) and the benchmark's helpers."""

from __future__ import annotations

import json

import pytest

from polydiff.image.pipeline import nfe


@pytest.mark.slow
def test_image_demo_quick_writes_grids_and_metrics(tmp_path):
    from polydiff.image.demo import run

    res = run(tmp_path, quick=True)
    for tag in ("no_guidance", "cfg3"):
        assert (tmp_path / res[tag]["grid"]).stat().st_size > 500
        assert 0.0 <= res[tag]["class_accuracy"] <= 1.0 and res[tag]["fid"] > 0
    # guidance sharpens class-conditional samples: accuracy up
    assert res["cfg3"]["class_accuracy"] >= res["no_guidance"]["class_accuracy"]
    assert json.loads((tmp_path / "metrics.json").read_text())["train_steps"] == 400


def test_benchmark_nfe_bookkeeping():
    from benchmarks.image.run import _steps_for_nfe

    for method in ("euler", "heun", "dpmpp_2m"):
        for n in (5, 10, 20, 50):
            steps = _steps_for_nfe(method, n)
            assert nfe(method, steps) in (n, n - 1 + n % 2)  # heun: odd NFE at most one less
