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


def test_benchmark_markdown_tables():
    from benchmarks.image.run import markdown

    score = {"class_accuracy": 0.97, "fid": 3.5, "sample_seconds": 1.0}
    attrs = {"acc_shape": 0.7, "acc_colour": 1.0, "acc_size": 1.0, "acc_position": 0.9}
    result = {
        "quick": False,
        "model": {"pixel": "UNet-tiny A", "latent": "UNet-tiny B"},
        "guidance_scale": 3.0,
        "eval_samples": 300,
        "reference_fid_real_vs_real": 1.2,
        "pixel": [{"steps": 1500, "train_seconds": 700.0} | score],
        "latent": [{"steps": 1500, "train_seconds": 300.0} | score | {"fid": 9.25}],
        "autoencoder": {
            "train_seconds": 60.0,
            "recon_mse_test": 0.008,
            "scale_factor": 0.7,
            "recon_class_accuracy": 0.99,
        },
        "sampler_nfe": [{"sampler": "heun", "nfe": 19, "steps": 10} | score],
        "goal": {"target": "T", "class_accuracy": 0.97, "fid": 3.5, "met": True},
        "shapes_text": {
            "model": "UNet-tiny C",
            "train_steps": 2000,
            "train_seconds": 900.0,
            "train_images": 2400,
            "eval_samples": 360,
            "rows": [
                {"guidance": "none", "scale": 1.0, **attrs, "acc_all": 0.55, "fid": 5.0},
                {"guidance": "CFG 3", "scale": 3.0, **attrs, "acc_all": 0.65, "fid": 3.0},
            ],
        },
        "total_seconds": 2000.4,
    }
    md = markdown(result)
    assert "| latent | 1500 | 300.0 | 0.970 | 9.25 |" in md
    assert "| heun | 19 | 0.970 | 3.50 | 1.0 |" in md
    assert "class accuracy 0.970, FID 3.50 -> met." in md
    assert "| CFG 3 | 0.700 | 1.000 | 1.000 | 0.900 | 0.650 | 3.00 |" in md
    assert "Quick smoke run" not in md and "Total benchmark time 2000 s" in md
