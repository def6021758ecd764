"""Drill: the failures a person meets get one line naming the step, file, value or key, what
was expected and what was kept safe; never a raw traceback."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import torch

import polydiff.train.checkpoint as ck
from polydiff.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint_files
from polydiff.train.config import ConfigError
from polydiff.train.run import train
from polydiff.train.trainer import NonFiniteLossError

FULL_DISK = """
import resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from polydiff_apps.cli import main
sys.exit(main(["train", *sys.argv[2:]]))
"""


def test_file_size_limit_while_checkpointing_names_step_and_last_good(tiny_run, tiny_overrides):
    """RLIMIT_FSIZE below the EMA file's size: the step-9 checkpoint cannot be written."""
    before = latest_checkpoint(tiny_run / "checkpoints")
    limit = (before / "ema.safetensors").stat().st_size - 1
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            FULL_DISK,
            str(limit),
            *tiny_overrides,
            "trainer.max_steps=9",
            "trainer.ckpt_every=9",
            f"run_dir={tiny_run}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(err) == 1, err
    assert "step 9" in err[0] and "exceeds the allowed size" in err[0], err[0]
    assert f"last good checkpoint is {before}" in err[0], err[0]
    assert latest_checkpoint(tiny_run / "checkpoints") == before
    load_checkpoint_files(before)  # intact
    assert not [p for p in (tiny_run / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("code", "words"),
    [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only"), (errno.EFBIG, "size")],
)
def test_write_errors_at_checkpoint_time(tiny_run, tiny_overrides, monkeypatch, code, words):
    before = latest_checkpoint(tiny_run / "checkpoints")

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(args[1]))

    monkeypatch.setattr(ck, "save_file", fail)
    with pytest.raises(CheckpointError) as info:
        train([*tiny_overrides, "trainer.max_steps=9", "trainer.ckpt_every=9"], run_dir=tiny_run)
    msg = str(info.value)
    assert "step 9" in msg and words in msg and str(before) in msg and "\n" not in msg, msg
    assert latest_checkpoint(tiny_run / "checkpoints") == before


@pytest.mark.parametrize("lr", ["1e39", "inf", "nan", "-1e-3"])  # 0 freezes: allowed
def test_learning_rate_out_of_range_is_named(tiny_overrides, tmp_path, lr):
    with pytest.raises(ConfigError, match=r"trainer\.optimizer.*finite number"):
        train([*tiny_overrides, f"trainer.optimizer.lr={lr}"], run_dir=tmp_path / "run")


def test_non_finite_loss_names_step_and_sigma_range(tiny_overrides, tmp_path, monkeypatch):
    from polydiff.nn.mlp import ResidualMLP

    orig = ResidualMLP.forward

    def poisoned(self, x, *args, **kwargs):
        out = orig(self, x, *args, **kwargs)
        return (
            out * torch.tensor(float("nan"))
            if self.training and _calls.append(1) is None and len(_calls) >= 5
            else out
        )

    _calls: list[int] = []
    monkeypatch.setattr(ResidualMLP, "forward", poisoned)
    with pytest.raises(NonFiniteLossError) as info:
        train([*tiny_overrides, "trainer.ckpt_every=3"], run_dir=tmp_path / "run")
    msg = str(info.value)
    assert "at step 5 (batch sigma in [" in msg and "step_00000003" in msg, msg
