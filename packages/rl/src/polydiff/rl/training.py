"""Training of the RL networks through :class:`polydiff.train.Trainer` (one call per model)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from polydiff.train import Trainer, TrainerConfig


def train_network(
    model: nn.Module,
    objective: Any,
    dataset: torch.utils.data.Dataset,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-4,
    seed: int = 0,
    ema_decay: float | None = 0.995,
    run_dir: str | Path | None = None,
    progress: bool = False,
    weight_decay: float = 1e-6,
) -> tuple[nn.Module, dict[str, float]]:
    """Train ``model`` with ``objective`` (an object with ``.loss`` or a loss callable
    ``loss(net, x, cond, generator=)``) for ``steps`` AdamW steps; return (EMA model, metrics)."""
    torch.manual_seed(seed)
    config = TrainerConfig(
        max_steps=steps,
        batch_size=min(batch_size, len(dataset)),
        lr_schedule="cosine",
        lr_warmup_steps=min(100, steps // 10),
        ema_decays=(ema_decay,) if ema_decay else (),
        log_every=max(steps // 5, 1),
        seed=seed,
        progress=progress,
        cpu=True,
    )
    optimizer: Callable = functools.partial(torch.optim.AdamW, lr=lr, weight_decay=weight_decay)
    trainer = Trainer(model, objective, dataset, optimizer, config, run_dir=run_dir)
    metrics = trainer.fit()
    net = trainer.sampling_model().eval()
    net.requires_grad_(False)
    return net, metrics
