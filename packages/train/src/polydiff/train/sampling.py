"""Generating samples from a trained network: sigma grid + sampler + optional guidance."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["SamplerSpec", "generate", "slice_cond", "with_objective_grid"]


def _default_schedule(n: int) -> torch.Tensor:
    from polydiff.core.schedules import karras_sigmas

    return karras_sigmas(n, 0.002, 80.0, 7.0)


@dataclass
class SamplerSpec:
    """What ``polydiff.core.samplers.sample`` needs besides the denoiser.

    ``schedule(steps) -> sigmas`` (n+1 decreasing values ending in 0), e.g. a
    ``functools.partial`` of ``polydiff.core.schedules.karras_sigmas``; ``options`` are passed to
    the sampler (``s_churn``, ``eta``...).
    """

    method: str = "heun"
    steps: int = 32
    schedule: Callable[[int], torch.Tensor] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def sigmas(self) -> torch.Tensor:
        fn = self.schedule or _default_schedule
        return fn(self.steps)


def with_objective_grid(spec: SamplerSpec, objective: Any) -> SamplerSpec:
    """``spec`` with ``schedule`` defaulting to the objective schedule's ``sigmas_for(n)``."""
    grid = getattr(getattr(objective, "schedule", None), "sigmas_for", None)
    if spec.schedule is None and grid is not None:
        return dataclasses.replace(spec, schedule=grid)
    return spec


def slice_cond(cond: Mapping[str, torch.Tensor] | None, lo: int, hi: int) -> dict | None:
    """Rows ``lo:hi`` of every tensor of a condition dict."""
    if cond is None:
        return None
    return {k: v[lo:hi] for k, v in cond.items()}


@torch.no_grad()
def generate(
    denoiser: Callable,
    shape: tuple[int, ...],
    n: int,
    spec: SamplerSpec,
    *,
    cond: Mapping[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Draw ``n`` samples of per-item ``shape`` by solving from ``sigmas[0]`` to 0.

    The initial noise of all ``n`` samples is drawn first (so the result does not depend on
    ``batch_size``), then sampled in chunks of ``batch_size``. Returns (n, *shape) float32.
    """
    from polydiff.core.samplers import sample

    sigmas = spec.sigmas().to(device)
    noise = torch.randn(
        (n, *shape), generator=generator, device=generator.device if generator else "cpu"
    )
    noise = noise.to(device)
    batch_size = batch_size or n
    out = []
    for i in range(math.ceil(n / batch_size)):
        lo, hi = i * batch_size, min(n, (i + 1) * batch_size)
        x = noise[lo:hi] * sigmas[0]
        out.append(
            sample(
                denoiser,
                x,
                sigmas,
                spec.method,
                cond=slice_cond(cond, lo, hi),
                generator=generator,
                **spec.options,
            ).float()
        )
    return torch.cat(out)
