"""Drill: SIGKILL during training (at optimizer steps and at every point of a checkpoint,
snapshot or prune write), then resume: the final weights, EMAs, optimizer state and power-EMA
snapshots are bit-identical to a run that was never killed, and ``metrics.jsonl`` holds every
step once, in order, with the same values."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from polydiff.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint_files
from polydiff.train.run import train
from polydiff.train.tracking import read_metrics

WORKER = Path(__file__).with_name("kill_worker.py")
COUNTS: dict[str, list[int]] = {}  # drill -> [trials, held] (printed by conftest.py)
STEPS = 12
DRILL = [
    "experiment=toy/gmm",
    "trainer=tiny",
    f"trainer.max_steps={STEPS}",
    "trainer.ckpt_every=4",
    "trainer.keep_last=2",
    "trainer.log_every=1",
    "trainer.ema_sigma_rels=[0.05,0.1]",
    "trainer.ema_snapshot_every=3",
    "trainer.num_threads=1",
    "model.hidden=32",
]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    return train(DRILL, run_dir=tmp_path_factory.mktemp("straight") / "run")


def _kill(run_dir: Path, mode: str, k: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(WORKER), str(run_dir), mode, str(k), *DRILL],
        capture_output=True,
        text=True,
    )


def _assert_same_run(a: Path, b: Path) -> None:
    ta, sa = load_checkpoint_files(latest_checkpoint(a / "checkpoints"))
    tb, sb = load_checkpoint_files(latest_checkpoint(b / "checkpoints"))
    assert sa["step"] == sb["step"] == STEPS
    for stem in ("model", "ema", "optimizer", "rng"):
        assert ta[stem].keys() == tb[stem].keys(), stem
        for key in ta[stem]:
            assert torch.equal(ta[stem][key], tb[stem][key]), (stem, key)
    assert sa["ema_snapshots"] == sb["ema_snapshots"]  # same files, same SHA-256
    assert sorted(p.name for p in (b / "ema_snapshots").iterdir()) == sorted(sb["ema_snapshots"])
    ra, rb = read_metrics(a), read_metrics(b)
    assert [r["step"] for r in rb] == list(range(1, STEPS + 1))
    for x, y in zip(ra, rb):
        assert (x["loss"], x["grad_norm"], x["lr"]) == (y["loss"], y["grad_norm"], y["lr"])
    assert len(list_checkpoints(b / "checkpoints")) <= 2  # keep_last held after the kill
    leftovers = [p.name for p in (b / "checkpoints").iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers


def _drill(straight: Path, tmp_path: Path, mode: str, k: int) -> None:
    name = f"SIGKILL at a {'write point' if mode == 'write' else 'step'}, then resume"
    COUNTS.setdefault(name, [0, 0])[0] += 1
    run_dir = tmp_path / f"{mode}-{k}"
    proc = _kill(run_dir, mode, k)
    assert proc.returncode == -signal.SIGKILL, (mode, k, proc.returncode, proc.stderr[-2000:])
    train(DRILL, run_dir=run_dir)  # resumes from the newest complete checkpoint
    _assert_same_run(straight, run_dir)
    COUNTS[name][1] += 1


def test_kill_mid_checkpoint_write(straight, tmp_path):
    _drill(straight, tmp_path, "write", 11)  # inside the first checkpoint write (step 4)


@pytest.mark.slow
def test_kill_between_checkpoints(straight, tmp_path):
    _drill(straight, tmp_path, "step", 6)  # after the step-6 snapshot, before checkpoint 8


@pytest.mark.slow
def test_kill_at_every_kind_of_point(straight, tmp_path):
    """20 random write points out of all of them, plus 8 random steps (28 kills)."""
    proc = _kill(tmp_path / "count", "write", 0)
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = int(proc.stdout.strip().rsplit(" ", 1)[-1])
    rng = random.Random(0)
    points = sorted(rng.sample(range(1, events + 1), 20))
    steps = sorted(rng.sample(range(1, STEPS), 8))
    for k in points:
        _drill(straight, tmp_path, "write", k)
    for k in steps:
        _drill(straight, tmp_path, "step", k)
