"""Generating samples from a trained network: sigma grid + sampler + optional guidance."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
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
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    seeds: Sequence[int] | None = None,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Draw ``n`` samples of per-item ``shape`` by solving from ``sigmas[0]`` to 0.

    Sample i has its own random stream (EDM's per-sample generators): seeded ``seeds[i]``, or
    ``generator[i]`` for a list, or ``base + i`` with ``base`` drawn once from a single
    ``generator``. Its start noise and every sampler noise come from that stream, so sample i is
    the same whatever ``n`` and ``batch_size`` (samplers in ``BATCH_COUPLED`` excepted unless
    given their decoupling options). With neither, torch's global generator is used and the
    result depends on ``batch_size``. Sampled in chunks of ``batch_size``; returns (n, *shape)
    float32.
    """
    from polydiff.core.samplers import per_sample_generators, randn, sample

    sigmas = spec.sigmas().to(device)
    gens: list[torch.Generator] | None = None
    if seeds is not None:
        gens = per_sample_generators(seeds, device=device)
    elif isinstance(generator, torch.Generator):
        base = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
        gens = per_sample_generators(range(base, base + n), device=device)
    elif generator is not None:
        gens = list(generator)
    if gens is not None and len(gens) != n:
        raise ValueError(f"generate: got {len(gens)} per-sample seeds/generators for n={n}")
    noise = randn((n, *shape), gens, device=device)
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
                generator=None if gens is None else gens[lo:hi],
                **spec.options,
            ).float()
        )
    return torch.cat(out)
