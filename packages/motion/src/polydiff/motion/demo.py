"""``polydiff demo --only motion``: train text-to-motion briefly on the built-in motions, sample
with CFG, write stick-figure GIFs / BVH / NPZ, edit one motion (in-betweening), and score.

Every step is the one recipe path: ``train([experiment=motion/text2motion, ...])`` then
``sample_run`` / ``evaluate_run`` from :mod:`polydiff.train.run` and
:func:`polydiff.motion.pipeline.edit_run`. ``quick=True`` is a very short run on a small set
with the dependency-free words encoder (no MiniLM) and kinematic metrics only.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from polydiff.core.fileio import atomic_write_text
from polydiff.train.run import evaluate_run, sample_run, train

from .pipeline import edit_run

__all__ = ["run"]


def run(out_dir: str | Path, quick: bool = False) -> dict:
    """Entry point ``motion`` of the ``polydiff.demos`` group; returns the summary dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if quick:
        overrides = [
            "model.size=tiny",
            "data.n=60",
            "trainer.max_steps=60",
            "trainer.ckpt_every=60",
            "data.text.name=words",
            "data.text_dim=32",
            "data.hooks.metrics=kinematic",
            "sampler.steps=10",
        ]
        n_eval = 32
    else:
        overrides = ["trainer.max_steps=600", "trainer.ckpt_every=600"]
        n_eval = 320
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_dir = train(
            ["experiment=motion/edit_inbetween", "trainer.progress=false", *overrides],
            run_dir=out_dir / "run",
        )
        t_train = time.perf_counter() - t0
        samples = sample_run(run_dir, ["sample.n=8"], out=out_dir / "samples")
        # one replication and a small MultiModality (named in metrics.json's protocol_note)
        small = ["evaluate.replications=1", "evaluate.mm_prompts=8", "evaluate.mm_repeats=10"]
        metrics = evaluate_run(
            run_dir, [f"evaluate.n={n_eval}", *small], out=out_dir / "metrics.json"
        )
        edited = edit_run(run_dir, ["edit.task=inbetween", "edit.n=2"], out=out_dir / "inbetween")
    finally:
        torch.set_num_threads(threads)
    gif = out_dir / "motion_text2motion.gif"
    shutil.copyfile(samples / "motion_00.gif", gif)
    summary = {
        "experiment": "motion/edit_inbetween (text2motion recipe)",
        "overrides": overrides,
        "train_seconds": round(t_train, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "metrics": metrics["metrics"],
        "edit_max_kept_error": edited["max_kept_error"],
        "files": [
            str(gif),
            str(samples / "samples.npz"),
            str(samples / "motion_00.bvh"),
            str(out_dir / "inbetween" / "motion_00.gif"),
        ],
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1, default=str))
    return summary
