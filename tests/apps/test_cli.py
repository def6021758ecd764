"""The `polydiff` command end to end on a tiny config: train -> sample -> evaluate, errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from polydiff_apps.cli import discover_demos, main

TINY = [
    "experiment=toy/gmm",
    "model=mlp_tiny",
    "trainer.max_steps=30",
    "trainer.batch_size=64",
    "trainer.ckpt_every=10",
    "trainer.log_every=10",
    "trainer.keep_last=2",
    "trainer.progress=false",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", *TINY, f"runs_root={root}"]) == 0
    (run,) = list((root / "toy" / "gmm").iterdir())
    return run


def test_train_writes_a_run_directory(tiny_run):
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{8}", tiny_run.name)  # <timestamp>-<config hash>
    assert sorted(p.name for p in (tiny_run / "checkpoints").iterdir()) == [
        "step_00000020",
        "step_00000030",
    ]  # saved at 10, 20, 30; keep_last=2
    rows = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30] and all(np.isfinite(r["loss"]) for r in rows)
    cfg = (tiny_run / "config.yaml").read_text()
    assert "hidden: 32" in cfg and "max_steps: 30" in cfg
    delta = json.loads((tiny_run / "overrides.json").read_text())["delta"]
    assert delta["model.hidden"] == 32 and delta["name"] == "toy/gmm"


def test_sample_writes_npz_and_scatter(tiny_run, tmp_path):
    out = tmp_path / "s"
    assert (
        main(
            ["sample", f"run={tiny_run}", "sampler=dpmpp_2m", "steps=6", "n=300", "ema=true"]
            + [f"out={out}"]
        )
        == 0
    )
    data = np.load(out / "samples.npz")
    assert data["samples"].shape == (300, 2) and np.isfinite(data["samples"]).all()
    assert (out / "scatter.png").stat().st_size > 1000
    info = json.loads((out / "sample.json").read_text())
    assert info["sampler"] == "dpmpp_2m" and info["steps"] == 6 and info["weights"] == "ema:0.999"
    # same seed, same samples; raw weights differ from the EMA's
    assert (
        main(
            [
                "sample",
                f"run={tiny_run}",
                "sampler=dpmpp_2m",
                "steps=6",
                "n=300",
                "ema=true",
                f"out={tmp_path / 's2'}",
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(
        np.load(tmp_path / "s2" / "samples.npz")["samples"], data["samples"]
    )
    assert (
        main(
            ["sample", f"run={tiny_run}", "steps=6", "n=300", "ema=false", f"out={tmp_path / 's3'}"]
        )
        == 0
    )
    assert not np.array_equal(np.load(tmp_path / "s3" / "samples.npz")["samples"], data["samples"])


def test_evaluate_writes_metrics(tiny_run, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["evaluate", f"run={tiny_run}", "n=400", "steps=6", f"out={out}"]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert 0 < metrics["swd"] < 3 and metrics["n"] == 400
    # 30 steps of a tiny net: finite, and worse than real data under the true density
    assert np.isfinite(metrics["log_likelihood"])
    assert metrics["log_likelihood"] < metrics["log_likelihood_data"] < 0


def test_errors_name_the_problem(tiny_run, tmp_path, capsys):
    assert main(["train", "experiment=toy/gmmm", f"runs_root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "experiment" in err and "toy/gmm" in err
    assert main(["sample", f"run={tmp_path / 'nowhere'}"]) == 1
    assert "nowhere" in capsys.readouterr().err
    assert main(["sample", f"run={tiny_run}", "sampler.method=eulr"]) == 2
    assert "euler" in capsys.readouterr().err


def test_toy_demo_is_discoverable():
    assert "toy" in discover_demos()


def test_conditional_run_samples_with_guidance(tmp_path):
    run = tmp_path / "cond"
    tiny = [o for o in TINY if not o.startswith(("experiment=", "trainer.max_steps"))]
    assert (
        main(["train", "experiment=toy/gmm_cond", *tiny, "trainer.max_steps=30", f"run_dir={run}"])
        == 0
    )
    for scale in (1.0, 3.0):
        out = tmp_path / f"s{scale}"
        assert (
            main(
                [
                    "sample",
                    f"run={run}",
                    "steps=4",
                    "n=50",
                    "ema=false",
                    f"guidance.scale={scale}",
                    f"out={out}",
                ]
            )
            == 0
        )
        data = np.load(out / "samples.npz")
        assert data["samples"].shape == (50, 2) and data["cond_class"].shape == (50,)
        assert set(data["cond_class"].tolist()) <= set(range(8))
        assert json.loads((out / "sample.json").read_text())["guidance"]["scale"] == scale
    a = np.load(tmp_path / "s1.0" / "samples.npz")
    b = np.load(tmp_path / "s3.0" / "samples.npz")
    np.testing.assert_array_equal(a["cond_class"], b["cond_class"])  # same labels, same noise
    assert np.abs(a["samples"] - b["samples"]).max() > 1e-3  # guidance changed the samples


def test_modality_commands_are_discovered_and_run(tmp_path, capsys):
    """`polydiff edit` comes from the image package's ``polydiff.commands`` entry point."""
    from polydiff_apps.cli import build_parser, discover_commands

    commands = discover_commands()
    assert {"edit", "adapt"} <= set(commands)
    assert commands["edit"].value == "polydiff.image.editing:edit_run"
    assert "edit" in build_parser().format_help()
    run = tmp_path / "run"
    train = ["train", "experiment=image/edit_sdedit", "model.size=tiny", "trainer.max_steps=2",
             "trainer.batch_size=4", "trainer.ckpt_every=0", f"run_dir={run}"]  # fmt: skip
    assert main(train) == 0
    out = tmp_path / "edit"
    capsys.readouterr()
    assert main(["edit", f"run={run}", "edit.n=2", "edit.steps=2", f"out={out}"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["out"] == str(out)
    assert {p.name for p in out.iterdir()} == {"edit.png", "edit.json", "edit.npz"}
    assert json.loads((out / "edit.json").read_text())["edit"]["task"] == "sdedit"
    with pytest.raises(SystemExit, match="run=<run directory> is required"):
        main(["edit", "edit.n=2"])
