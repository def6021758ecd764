"""Subprocess of the SIGKILL drill (not a test module).

``python kill_worker.py <run_dir> <mode> <k> <overrides...>`` trains through
``polydiff.train.run.train`` and SIGKILLs itself:

- mode ``write``: at the ``k``-th write event (before and after every ``save_file``,
  ``os.rename``, ``os.replace``, ``os.fsync``, ``shutil.rmtree``, metrics row), so ``k = 1, 2,
  ...`` walks through every point of a checkpoint write, a snapshot write and a prune;
- mode ``step``: right after optimizer step ``k``.

With ``k = 0`` it never kills and prints the number of write events.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys

import polydiff.train.checkpoint as ck
import polydiff.train.trainer as tr
from polydiff.train.run import train
from polydiff.train.tracking import MetricLogger

run_dir, mode, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
overrides = sys.argv[4:]
count = 0


def tick() -> None:
    global count
    count += 1
    if mode == "write" and count == k:
        os.kill(os.getpid(), signal.SIGKILL)


def wrap(owner, name):
    orig = getattr(owner, name)

    def wrapped(*args, **kwargs):
        tick()
        out = orig(*args, **kwargs)
        tick()
        return out

    setattr(owner, name, wrapped)


for owner, name in [
    (ck, "save_file"),
    (tr, "save_file"),
    (os, "rename"),
    (os, "replace"),
    (os, "fsync"),
    (shutil, "rmtree"),
    (MetricLogger, "log"),
]:
    wrap(owner, name)

if mode == "step":
    orig_step = tr.Trainer.train_step

    def train_step(self):
        out = orig_step(self)
        if self.step == k:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    tr.Trainer.train_step = train_step

train(overrides, run_dir=run_dir)
print(f"write events: {count}", flush=True)
