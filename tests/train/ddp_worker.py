"""Worker of test_distributed.py: ``torchrun --nproc_per_node N ddp_worker.py OUT BATCH STEPS``.

Trains a ResidualMLP with a per-row deterministic loss (noise derived from the data), so the
same global batch gives the same gradient however it is split over processes; rank 0 writes
the final parameters to OUT (safetensors).
"""

from __future__ import annotations

import functools
import sys

import torch
from safetensors.torch import save_file

from polydiff.core.toy import ring_mixture
from polydiff.nn import ResidualMLP
from polydiff.train import TensorDictDataset, Trainer, TrainerConfig


def per_sample_loss(net, x, cond=None, generator=None):
    sigma = torch.sin(37.0 * x).sum(dim=1).exp()  # (B,)
    eps = torch.cos(53.0 * x)
    out = net(x + sigma[:, None] * eps, sigma.log() / 4, cond)
    return ((out - x) ** 2).mean()


def main(out: str, batch: int, steps: int) -> None:
    torch.manual_seed(0)
    data = TensorDictDataset(
        ring_mixture().sample(2048, generator=torch.Generator().manual_seed(0))
    )
    trainer = Trainer(
        ResidualMLP(2, 32, 2),
        per_sample_loss,
        data,
        functools.partial(torch.optim.AdamW, lr=1e-2),
        TrainerConfig(
            max_steps=steps,
            batch_size=batch,
            cpu=True,
            progress=False,
            ema_decays=(0.9,),
            lr_warmup_steps=2,
            log_every=0,
        ),
    )
    init = {f"init.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    if trainer.is_main:
        tensors = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
        tensors.update(init)
        tensors.update({f"ema.{k}": v for k, v in trainer.ema.tensors().items()})
        tensors["world_size"] = torch.tensor(trainer.accelerator.num_processes)
        save_file({k: v.contiguous() for k, v in tensors.items()}, out)
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
