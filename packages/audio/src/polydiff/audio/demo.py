"""``polydiff demo`` audio part: class-conditional notes with a trained vocoder.

Two recipes as they stand, trained, sampled and evaluated through ``polydiff.train.run`` (the
same as ``polydiff train experiment=audio/vocoder`` / ``experiment=audio/notes_mel`` followed by
``polydiff sample`` / ``polydiff evaluate run=<dir> audio.vocoder=<vocoder run>``):

- ``audio/vocoder``: the Vocos-style vocoder, scored against Griffin-Lim on held-out real mels;
- ``audio/notes_mel``: instrument x pitch notes as 64x64 log-mels (U-Net, EDM, CFG 2, 20 NFE),
  written as WAV files + a mel PNG with Griffin-Lim and with the trained vocoder, and scored
  (pitch accuracy by pyin, instrument accuracy and FAD on the notes classifier).

Quick mode shortens both trainings (:data:`QUICK`): a smoke run, not the recipe's quality.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from polydiff.core.fileio import atomic_write_text
from polydiff.train.run import evaluate_run, sample_run, train

__all__ = ["DEMO", "QUICK", "QUICK_NOTES", "run"]

DEMO = ["trainer.progress=false"]  # the recipes as they stand, only quieter
QUICK = [*DEMO, "trainer.max_steps=20", "trainer.ckpt_every=0"]
# quick mode also trains the notes metric classifier briefly (its own cache entry)
QUICK_NOTES = ["data.hooks.classifier_steps=60", "+data.hooks.classifier_per_class=2"]


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    """Train the vocoder and the notes model, write WAVs / PNGs / metrics; returns a summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = QUICK if quick else DEMO
    n_eval = 24 if quick else 96
    t0 = time.perf_counter()
    voc = train(["experiment=audio/vocoder", *overrides], run_dir=out_dir / "vocoder_run")
    notes_overrides = [*overrides, *(QUICK_NOTES if quick else [])]
    notes = train(["experiment=audio/notes_mel", *notes_overrides], run_dir=out_dir / "notes_run")
    t_train = time.perf_counter() - t0
    vocoded = [f"audio.vocoder={voc}"]
    files = {}
    for tag, extra in (("griffinlim", []), ("vocoder", vocoded)):
        dst = out_dir / f"notes_{tag}"
        shutil.rmtree(dst, ignore_errors=True)
        sample_run(notes, ["sample.n=16", *extra], out=dst)
        files[tag] = str(dst)
    metrics = {
        "vocoder_vs_griffinlim": evaluate_run(
            voc, [f"evaluate.n={min(n_eval, 96)}", "evaluate.overwrite=true"],
            out=out_dir / "vocoder_metrics.json",
        )["metrics"],
        "notes_cfg2_vocoder": evaluate_run(
            notes, [f"evaluate.n={n_eval}", "evaluate.overwrite=true", *vocoded],
            out=out_dir / "notes_metrics.json",
        )["metrics"],
    }  # fmt: skip
    summary = {
        "experiments": ["audio/vocoder", "audio/notes_mel"],
        "quick": quick,
        "train_seconds": round(t_train, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "metrics": metrics,
        "files": files,
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1, allow_nan=False))
    return summary
