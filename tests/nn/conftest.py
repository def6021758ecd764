"""Shared helpers of the polydiff.nn tests (fixtures, since test modules are not importable)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn


def _randomise_zero_params(net: nn.Module, generator: torch.Generator) -> None:
    """Give zero-initialised parameters small random values so every path carries gradient."""
    with torch.no_grad():
        for p in net.parameters():
            if p.numel() and bool((p == 0).all()):
                p.copy_(0.02 * torch.randn(p.shape, generator=generator))


@pytest.fixture
def assert_grads_reach_all() -> Callable[..., None]:
    """``fn(net, loss_fn)``: with zero-init params un-zeroed, every parameter gets a gradient."""

    def check(net: nn.Module, loss_fn: Callable[[], torch.Tensor]) -> None:
        _randomise_zero_params(net, torch.Generator().manual_seed(0))
        net.zero_grad(set_to_none=True)
        loss_fn().backward()
        missing = [
            name
            for name, p in net.named_parameters()
            if p.requires_grad and (p.grad is None or float(p.grad.abs().sum()) == 0.0)
        ]
        assert not missing, f"no gradient reaches: {missing}"

    return check


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
