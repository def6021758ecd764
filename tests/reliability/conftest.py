"""Fixtures of the reliability drills: one tiny trained toy run, copied per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

TINY = [
    "experiment=toy/gmm",
    "trainer=tiny",
    "trainer.max_steps=6",
    "trainer.ckpt_every=3",
    "trainer.ema_sigma_rels=[0.05,0.1]",
    "trainer.ema_snapshot_every=2",
    "trainer.num_threads=1",
    "model.hidden=32",
]


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    """The overrides of the tiny toy run (to resume it)."""
    return list(TINY)


@pytest.fixture(scope="session")
def tiny_run_master(tmp_path_factory) -> Path:
    from polydiff.train.run import train

    return train(TINY, run_dir=tmp_path_factory.mktemp("tiny") / "run")


@pytest.fixture
def tiny_run(tiny_run_master, tmp_path) -> Path:
    """A fresh copy of a 6-step toy run (checkpoints at 3 and 6, power-EMA snapshots)."""
    dst = tmp_path / "run"
    shutil.copytree(tiny_run_master, dst)
    return dst
