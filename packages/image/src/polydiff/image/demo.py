"""``polydiff demo`` image part: class-conditional digits, sample grids with and without CFG.

Trains a pixel-space U-Net on 16x16 digits (EDM objective, 10% label dropout) with the
``polydiff.train`` Trainer, samples one row per class with DPM-Solver++(2M) at 20 steps with
guidance scale 1 (none) and 3, and scores both with the built-in digits classifier (class
accuracy) and its features (FID against held-out digits). Quick mode: a tiny model, < 1 min.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from polydiff.core.objective import DiffusionObjective
from polydiff.core.schedules import EDMSchedule
from polydiff.train import Trainer, TrainerConfig

from .experiments import digits_data
from .metrics import ImageEvaluator
from .models import image_unet, num_parameters
from .pipeline import generate, generate_grid

__all__ = ["TrainedDigits", "run", "train_digits"]


@dataclass
class TrainedDigits:
    """A trained class-conditional digits model and how it was made."""

    trainer: Trainer
    objective: DiffusionObjective
    size: str
    steps: int
    seconds: float

    def denoiser(self):
        return self.objective.denoiser(self.trainer.sampling_model())


def train_digits(
    size: str = "small",
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 3e-3,
    conditional: bool = True,
    seed: int = 0,
    run_dir: str | Path | None = None,
    ema_decay: float = 0.99,
) -> TrainedDigits:
    """Train a (class-conditional) pixel U-Net on 16x16 digits; EDM, 10% condition dropout."""
    torch.manual_seed(seed)
    data = digits_data(size=16, conditional=conditional)
    net = image_unet(size, channels=1, image_size=16, num_classes=10 if conditional else None)
    objective = DiffusionObjective(
        EDMSchedule(sigma_data=0.5), "edm", "edm", cond_drop_prob=0.1 if conditional else 0.0
    )
    cfg = TrainerConfig(
        max_steps=steps,
        batch_size=batch_size,
        lr_schedule="constant",
        lr_warmup_steps=min(50, steps // 10),
        ema_decays=(ema_decay,),
        log_every=max(1, steps // 10),
        progress=False,
        cpu=True,
        seed=seed,
    )
    optimizer = functools.partial(torch.optim.AdamW, lr=lr, weight_decay=0.0)
    trainer = Trainer(net, objective, data, optimizer, cfg, run_dir=run_dir)
    t0 = time.perf_counter()
    trainer.fit()
    return TrainedDigits(trainer, objective, size, steps, time.perf_counter() - t0)


def evaluate_digits(
    model: TrainedDigits,
    n_per_class: int = 50,
    guidance_scale: float = 1.0,
    sampler: str = "dpmpp_2m",
    steps: int = 20,
    seed: int = 0,
    evaluator: ImageEvaluator | None = None,
) -> dict[str, float]:
    """Class accuracy and FID of ``10 * n_per_class`` class-conditional samples."""
    ev = evaluator or ImageEvaluator("digits")
    labels = torch.arange(10).repeat_interleave(n_per_class)
    t0 = time.perf_counter()
    images = generate(
        model.denoiser(),
        len(labels),
        (1, 16, 16),
        sampler=sampler,
        steps=steps,
        guidance_scale=guidance_scale,
        classes=labels,
        seed=seed,
        batch_size=250,
    )
    seconds = time.perf_counter() - t0
    return {
        "class_accuracy": ev.class_accuracy(images, labels),
        "fid": ev.fid(images),
        "sample_seconds": seconds,
    }


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    """Train, sample grids with and without guidance, write ``metrics.json``; returns metrics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # measured (tiny, batch 64): 600 steps -> 92% class accuracy with CFG 3, 900 -> 100%
    steps, size, n_eval = (400, "tiny", 20) if quick else (1500, "tiny", 50)
    model = train_digits(size=size, steps=steps, batch_size=64)
    ev = ImageEvaluator("digits")
    result: dict[str, Any] = {
        "model": f"UNet-{size} ({num_parameters(model.trainer.model) / 1e6:.2f} M params)",
        "train_steps": steps,
        "train_seconds": round(model.seconds, 1),
        "sampler": "dpmpp_2m, 20 steps (20 NFE)",
    }
    for scale in (1.0, 3.0):
        tag = "no_guidance" if scale == 1.0 else f"cfg{scale:g}"
        grid, _ = generate_grid(
            out_dir / f"digits_{tag}.png",
            model.denoiser(),
            (1, 16, 16),
            classes=list(range(10)),
            per_row=10,
            guidance_scale=scale,
            seed=1,
        )
        metrics = evaluate_digits(model, n_eval, scale, evaluator=ev)
        result[tag] = {k: round(v, 4) for k, v in metrics.items()} | {"grid": grid.name}
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=1))
    return result
