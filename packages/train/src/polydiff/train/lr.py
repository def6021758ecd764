"""Learning-rate schedules: linear warmup followed by constant, cosine or linear decay."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["LRSchedule", "make_scheduler"]

KINDS = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class LRSchedule:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    ``warmup_steps`` of linear warmup from ``1 / warmup_steps`` to 1, then ``kind`` decay to
    ``min_ratio`` at ``total_steps`` (cosine: Loshchilov & Hutter 2017, SGDR).
    """

    kind: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 0
    min_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown LR schedule kind {self.kind!r}; valid choices: {KINDS}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant" or self.total_steps <= self.warmup_steps:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        if self.kind == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            decay = 1.0 - progress
        return self.min_ratio + (1.0 - self.min_ratio) * decay


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: LRSchedule
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying ``schedule``; its state (``last_epoch``, ``base_lrs``) is JSON."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
