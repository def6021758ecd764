"""``polydiff demo --only video``: train the bouncing-digits class-to-video recipe briefly on CPU,
sample it (a grid GIF + per-clip GIF / MP4), evaluate it, and extend clips to 3x their length.

Everything goes through the recipe path (``polydiff.train.run``: ``train`` / ``sample_run`` /
``evaluate_run`` with ``experiment=video/digits_cond`` plus size overrides), so the same run is
reproduced by ``polydiff train experiment=video/digits_cond <overrides>``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from polydiff.core.fileio import atomic_write_text
from polydiff.train.run import evaluate_run, open_run, sample_run, train

from .io import save_clip_grid_gif
from .pipeline import extend

__all__ = ["demo_overrides", "run"]


def demo_overrides(quick: bool) -> list[str]:
    """The demo's deltas to ``experiment=video/digits_cond`` (16x16 canvas, tiny network)."""
    return [
        "experiment=video/digits_cond",
        "data.image_size=16",
        "data.digit_size=8",
        "data.dataset.n=400" if quick else "data.dataset.n=2000",
        "model.size=tiny",
        f"trainer.max_steps={4 if quick else 400}",
        "trainer.batch_size=8" if quick else "trainer.batch_size=16",
        "trainer.ckpt_every=0",
        "trainer.progress=false",
        "trainer.lr_warmup_steps=0" if quick else "trainer.lr_warmup_steps=20",
    ]


def run(out_dir: Path, quick: bool = False) -> dict:
    """Entry point ``video`` of the ``polydiff.demos`` group; ``quick`` = a few training steps,
    no metrics (seconds), else a short CPU run with metrics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    overrides = demo_overrides(quick)
    run_dir = train(overrides, run_dir=out_dir / "run")
    t_train = time.perf_counter() - t0
    n = 10 if quick else 40
    samples = sample_run(run_dir, [f"sample.n={n}", f"sample.batch_size={n}", "sampler.steps=20"],
                         out=out_dir / "samples")  # fmt: skip
    metrics: dict = {}
    if not quick:
        metrics = evaluate_run(run_dir, ["evaluate.n=100"], out=out_dir / "metrics.json")["metrics"]
    opened = open_run(run_dir, ["sampler.steps=10" if quick else "sampler.steps=20"])
    long = extend(opened, 8, 24, overlap=2, cond={"class": torch.arange(8)}, seed=0)
    long_gif = save_clip_grid_gif(long, out_dir / "extended_3x.gif", nrow=8)
    summary = {
        "experiment": "video/digits_cond",
        "overrides": overrides[1:],
        "train_seconds": round(t_train, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "metrics": metrics,
        "files": [str(samples / "grid.gif"), str(samples / "samples.npz"), str(long_gif)],
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
    return summary
