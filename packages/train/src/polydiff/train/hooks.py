"""What a modality tells the engine and the ``polydiff`` command: conditioning, files, metrics.

:func:`draw` and :func:`write_outputs` are the one way samples are drawn and written, shared by
``Trainer.write_samples`` and ``polydiff sample`` / ``evaluate`` (``polydiff.train.run``).

A data config may carry ``hooks: {_target_: ...}`` building an object with any of these methods
(missing methods fall back to :class:`DefaultHooks`' behaviour):

- ``sample_cond(n, generator) -> dict | None``: the conditioning used when sampling ``n`` items
  (class labels, prompts' embeddings, masks...); None = unconditional.
- ``to_data(x) -> Tensor``: model space -> data space (denormalise, decode latents...).
- ``write(samples, cond, out_dir) -> list[Path]``: the modality's own files (PNG, WAV, GIF...).
- ``evaluate(samples, cond) -> dict[str, float]``: metrics of samples already in data space;
  a hook that also takes ``options`` gets the run's ``evaluate`` settings (``reference``,
  ``save_images``, ``out_dir``...) and may return non-float entries (what it compared against,
  which feature extractor) alongside the metrics.
- ``extra_npz(cond) -> dict[str, np.ndarray]``: extra arrays for ``samples.npz``
  (e.g. the prompts as strings).
- ``evaluate_model(run) -> dict[str, float]``: metrics of the trained model itself, given the
  opened run (``polydiff.train.run.OpenedRun``: model, objective, sampler, config), used by
  ``polydiff evaluate`` instead of sampling + ``evaluate`` (e.g. RL rollouts in simulators).
- ``primary_metric() -> (name, "min" | "max") | None``: the one metric of ``evaluate`` that
  ranks weights of the same run (``sample.ema=auto`` picks raw / EMA weights by it, see
  ``polydiff.train.ema_sweep.select_ema_by_metric``); None or missing: chosen by the loss.
- ``guard_metrics() -> [(name, "min" | "max"), ...]``: metrics an EMA candidate may not be worse
  on than the raw weights to be chosen (e.g. class accuracy next to FID); missing: none.
  An attribute ``primary_metric_n`` raises the samples per candidate (``trainer.ema_auto_n``)
  to what the metric needs to rank weights.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from polydiff.core.fileio import atomic_path

from .sampling import SamplerSpec, generate

__all__ = [
    "DefaultHooks",
    "ModalityHooks",
    "call_hook",
    "call_evaluate",
    "draw",
    "guard_metrics",
    "primary_metric",
    "write_outputs",
    "write_samples_npz",
]


@runtime_checkable
class ModalityHooks(Protocol):
    """The full protocol; implementations may define only a subset (see module docstring)."""

    def sample_cond(self, n: int, generator: torch.Generator | None) -> dict | None: ...

    def to_data(self, x: torch.Tensor) -> torch.Tensor: ...

    def write(self, samples: torch.Tensor, cond: Mapping | None, out_dir: Path) -> list[Path]: ...

    def evaluate(self, samples: torch.Tensor, cond: Mapping | None) -> dict[str, float]: ...


class DefaultHooks:
    """Unconditional sampling, identity data space, no extra files, no metrics."""

    def sample_cond(self, n: int, generator: torch.Generator | None) -> dict | None:
        return None

    def to_data(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def write(self, samples: torch.Tensor, cond: Mapping | None, out_dir: Path) -> list[Path]:
        return []

    def evaluate(self, samples: torch.Tensor, cond: Mapping | None) -> dict[str, float]:
        return {}

    def extra_npz(self, cond: Mapping | None) -> dict[str, np.ndarray]:
        return {}


_DEFAULT = DefaultHooks()


def call_hook(hooks: Any, name: str, *args: Any) -> Any:
    """Call ``hooks.<name>`` or the default behaviour when the modality does not define it."""
    fn = getattr(hooks, name, None) if hooks is not None else None
    return (fn or getattr(_DEFAULT, name))(*args)


def _declared(hooks: Any, method: str) -> Any:
    fn = getattr(hooks, method, None) if hooks is not None else None
    return fn() if callable(fn) else None


def _metric_spec(hooks: Any, method: str, declared: Any, item: Any) -> tuple[str, int]:
    """``(name, "min" | "max")`` -> ``(name, -1 | +1)``; anything else is named in a TypeError."""
    ok = isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
    if not ok or item[1] not in ("min", "max"):
        expected = "a list of " if method == "guard_metrics" else ""
        raise TypeError(
            f"{type(hooks).__name__}.{method}() returned {declared!r}; expected {expected}"
            "(metric name, 'min' or 'max')" + (" or None" if not expected else "")
        )
    return item[0], (-1 if item[1] == "min" else 1)


def primary_metric(hooks: Any) -> tuple[str, int] | None:
    """``(name, direction)`` of the metric ``hooks`` declares for ranking weights (direction
    ``-1``: lower is better, ``+1``: higher), or None when it declares none."""
    declared = _declared(hooks, "primary_metric")
    if declared is None:
        return None
    return _metric_spec(hooks, "primary_metric", declared, declared)


def guard_metrics(hooks: Any) -> list[tuple[str, int]]:
    """``[(name, direction), ...]`` of the metrics ``hooks`` declares as guards for ranking
    weights (an EMA may not be worse than the raw weights on any of them), or ``[]``."""
    declared = _declared(hooks, "guard_metrics")
    return [_metric_spec(hooks, "guard_metrics", declared, item) for item in declared or ()]


def write_samples_npz(
    path: Path,
    samples: torch.Tensor,
    cond: Mapping[str, torch.Tensor] | None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """``samples.npz``: ``samples`` (N, ...) in data space plus ``cond_<key>`` arrays used."""
    arrays: dict[str, np.ndarray] = {"samples": samples.detach().cpu().float().numpy()}
    for k, v in (cond or {}).items():
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu()
            arrays[f"cond_{k}"] = (v.float() if v.is_floating_point() else v).numpy()
    for k, v in (extra or {}).items():
        arrays[k] = np.asarray(v)
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)
    return path


def call_evaluate(
    hooks: Any, samples: torch.Tensor, cond: Mapping | None, options: Mapping[str, Any]
) -> dict[str, Any]:
    """``hooks.evaluate``, given ``options`` when its signature takes them."""
    fn = getattr(hooks, "evaluate", None) if hooks is not None else None
    if fn is None:
        return {}
    if "options" in inspect.signature(fn).parameters:
        return dict(fn(samples, cond, options=dict(options)))
    return dict(fn(samples, cond))


def draw(
    denoiser: Callable,
    hooks: Any,
    shape: tuple[int, ...],
    n: int,
    spec: SamplerSpec,
    *,
    seed: int,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, dict | None]:
    """``n`` samples in data space and the conditioning they were drawn with.

    One generator seeded ``seed`` draws the conditioning (``hooks.sample_cond``) and then the
    noise (a generator on ``device`` with the same seed off the CPU).
    """
    gen = torch.Generator().manual_seed(int(seed))
    cond = call_hook(hooks, "sample_cond", n, gen)
    if cond is not None:
        cond = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
    noise_gen = gen
    if torch.device(device).type != "cpu":
        noise_gen = torch.Generator(device=device).manual_seed(int(seed))
    x = generate(
        denoiser,
        shape,
        n,
        spec,
        cond=cond,
        generator=noise_gen,
        batch_size=batch_size,
        device=device,
    )
    return call_hook(hooks, "to_data", x), cond


def write_outputs(
    out_dir: str | Path, samples: torch.Tensor, cond: Mapping | None, hooks: Any
) -> list[str]:
    """``samples.npz`` plus the modality's files in ``out_dir``; returns their names."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = call_hook(hooks, "extra_npz", cond)
    write_samples_npz(out_dir / "samples.npz", samples, cond, extra)
    files = call_hook(hooks, "write", samples, cond, out_dir) or []
    return ["samples.npz", *[Path(f).name for f in files]]
