"""Shared helpers of the polydiff.train tests (fixtures: test modules are not importable)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
from torch import nn

from polydiff.core.toy import ring_mixture
from polydiff.train import TensorDictDataset, TrainerConfig


def edm_like_loss(net: nn.Module, x: torch.Tensor, cond=None, generator=None) -> torch.Tensor:
    """A tiny EDM-preconditioned loss drawing its noise from ``generator`` (no core objective)."""
    sigma = (torch.randn(x.shape[0], generator=generator, device=x.device) * 1.2 - 1.2).exp()
    eps = torch.randn(x.shape, generator=generator, device=x.device)
    s, sd = sigma[:, None], 1.0
    c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
    c_in = 1 / (s**2 + sd**2).sqrt()
    xn = x + s * eps
    out = c_skip * xn + c_out * net(c_in * xn, sigma.log() / 4, cond)
    return ((out - x) ** 2 / c_out**2).mean()


def per_sample_loss(net: nn.Module, x: torch.Tensor, cond=None, generator=None) -> torch.Tensor:
    """Deterministic in each row of ``x`` (noise derived from the data): the same global batch
    gives the same gradient however it is split across processes or micro-batches."""
    sigma = (torch.sin(37.0 * x).sum(dim=1)).exp()  # (B,)
    eps = torch.cos(53.0 * x)
    out = net(x + sigma[:, None] * eps, sigma.log() / 4, cond)
    return ((out - x) ** 2).mean()


@pytest.fixture
def ring_dataset() -> TensorDictDataset:
    return TensorDictDataset(
        ring_mixture().sample(4096, generator=torch.Generator().manual_seed(0))
    )


@pytest.fixture
def make_trainer(ring_dataset) -> Callable:
    """``make(run_dir=None, loss=edm_like_loss, dataset=..., **TrainerConfig fields)``."""
    from polydiff.nn import ResidualMLP
    from polydiff.train import Trainer

    def make(run_dir=None, loss=edm_like_loss, dataset=None, model=None, **kw):
        defaults = dict(
            max_steps=30,
            batch_size=64,
            log_every=10,
            progress=False,
            cpu=True,
            ema_decays=(0.9, 0.99),
            lr_warmup_steps=5,
            lr_schedule="cosine",
        )
        defaults.update(kw)
        torch.manual_seed(0)
        model = model or ResidualMLP(2, 32, 2, dropout=0.1)
        return Trainer(
            model,
            loss,
            dataset or ring_dataset,
            functools.partial(torch.optim.AdamW, lr=3e-3, weight_decay=0.01),
            TrainerConfig(**defaults),
            run_dir=run_dir,
        )

    return make


@pytest.fixture
def losses() -> dict[str, Callable]:
    return {"edm_like": edm_like_loss, "per_sample": per_sample_loss}
