"""The post-hoc EMA sweep of a run: raw, default EMA and synthesised widths, one table."""

from __future__ import annotations

import json

from polydiff.train.ema_sweep import main, sweep_ema


def test_sweep_writes_one_row_per_setting(tiny_run, capsys):
    out = sweep_ema(tiny_run, [0.07], ["evaluate.n=64", "sampler.steps=4"])
    assert [r["ema"] for r in out["rows"]] == ["false", "true", "sigma_rel:0.07"]
    assert out["rows"][0]["weights"] == "model"
    assert out["rows"][2]["weights"].startswith("ema:sigma_rel:0.07 (post-hoc")
    assert all("swd" in r["metrics"] for r in out["rows"])
    saved = json.loads((tiny_run / "eval" / f"ema_sweep-{out['step']}.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(out["rows"]))
    assert main([f"run={tiny_run}", "sigma_rels=abc"]) == 1
    assert "sigma_rels='abc'" in capsys.readouterr().err
    assert main([f"run={tiny_run}", "sigma_rels=0.5"]) == 1  # outside (0, 0.2887): named
    assert "sigma_rel" in capsys.readouterr().err
