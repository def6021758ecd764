"""Timing worker of the train benchmark: ``torchrun --nproc_per_node N ddp_worker.py OUT B S``.

Times ``Trainer.train_step`` (EDM objective, ResidualMLP) with ``B`` rows per process; rank 0
writes ``{"world_size", "step_ms": [...]}`` to OUT.
"""

from __future__ import annotations

import functools
import json
import sys
import time

import torch

from polydiff.core.objective import DiffusionObjective
from polydiff.core.schedules import EDMSchedule
from polydiff.core.toy import ring_mixture
from polydiff.nn import ResidualMLP
from polydiff.train import TensorDictDataset, Trainer
from polydiff.train.run import build_trainer_config


def main(out: str, batch: int, steps: int, hidden: int, depth: int) -> None:
    torch.manual_seed(0)
    data = TensorDictDataset(
        ring_mixture().sample(32768, generator=torch.Generator().manual_seed(0))
    )
    trainer = Trainer(
        ResidualMLP(2, hidden, depth),
        DiffusionObjective(EDMSchedule(sigma_data=1.0), "edm", "edm"),
        data,
        functools.partial(torch.optim.AdamW, lr=1e-3),
        build_trainer_config(  # the trainer node polydiff.train.run.train builds from
            {
                "max_steps": steps,
                "batch_size": batch,
                "cpu": True,
                "progress": False,
                "ema_decays": [0.999],
                "log_every": 0,
            }
        ),  # fmt: skip
    )
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step()
        times.append((time.perf_counter() - t0) * 1e3)
    if trainer.is_main:
        with open(out, "w") as fh:
            json.dump({"world_size": trainer.accelerator.num_processes, "step_ms": times}, fh)
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:6]))
