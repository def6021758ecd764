"""The audio part of ``polydiff demo --quick`` end to end (slow: two short trainings)."""

from __future__ import annotations

import json

import pytest
import soundfile

from polydiff.audio import demo


@pytest.mark.slow
def test_quick_demo_writes_wavs_pngs_and_metrics(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "QUICK", [*demo.QUICK, "trainer.max_steps=3"])
    monkeypatch.setattr(demo, "QUICK_NOTES", [*demo.QUICK_NOTES, "model.size=audio-tiny"])
    summary = demo.run(tmp_path, quick=True)
    assert json.loads((tmp_path / "summary.json").read_text())["quick"] is True
    for tag in ("griffinlim", "vocoder"):
        out = tmp_path / f"notes_{tag}"
        assert len(list(out.glob("*.wav"))) == 16 and (out / "mels.png").is_file()
        assert soundfile.info(str(out / "sample_0000.wav")).samplerate == 16000
    m = summary["metrics"]
    assert "griffinlim_mrstft" in m["vocoder_vs_griffinlim"]
    assert 0.0 <= m["notes_cfg2_vocoder"]["pitch_accuracy"] <= 1.0
