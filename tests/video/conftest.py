"""Shared settings of the video tests."""

from __future__ import annotations

import pytest

# a tiny video run: 2 steps of the tiny network on 16 clips of 4 frames at 16x16, no metrics
TINY_RUN = [
    "model.size=tiny",
    "data.image_size=16",
    "data.frames=4",
    "data.dataset.n=16",
    "trainer.max_steps=2",
    "trainer.batch_size=4",
    "trainer.ckpt_every=0",
    "trainer.log_every=1",
    "trainer.progress=false",
    "trainer.lr_warmup_steps=0",
    "data.hooks.metrics=null",
]


@pytest.fixture(scope="session")
def tiny_run() -> list[str]:
    """The overrides of a tiny video training run (:data:`TINY_RUN`)."""
    return list(TINY_RUN)
