"""Fixtures of the reliability drills: one tiny trained toy run, copied per test."""

from __future__ import annotations

import shutil
import sys
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


def pytest_terminal_summary(terminalreporter) -> None:
    """Print every drill's ``trials / held`` (each test module's ``COUNTS`` dict)."""
    here = Path(__file__).resolve().parent
    rows: dict[str, list[int]] = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        counts = getattr(module, "COUNTS", None)
        if path and isinstance(counts, dict) and Path(path).resolve().parent == here:
            rows.update(counts)
    if rows:
        terminalreporter.section("reliability drills: held / trials")
        for name, (trials, held) in sorted(rows.items()):
            terminalreporter.write_line(f"{name}: {held}/{trials}")
