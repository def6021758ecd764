"""What a modality tells the engine and the ``polydiff`` command: conditioning, files, metrics.

A data config may carry ``hooks: {_target_: ...}`` building an object with any of these methods
(missing methods fall back to :class:`DefaultHooks`' behaviour):

- ``sample_cond(n, generator) -> dict | None``: the conditioning used when sampling ``n`` items
  (class labels, prompts' embeddings, masks...); None = unconditional.
- ``to_data(x) -> Tensor``: model space -> data space (denormalise, decode latents...).
- ``write(samples, cond, out_dir) -> list[Path]``: the modality's own files (PNG, WAV, GIF...).
- ``evaluate(samples, cond) -> dict[str, float]``: metrics of samples already in data space.
- ``extra_npz(cond) -> dict[str, np.ndarray]``: extra arrays for ``samples.npz``
  (e.g. the prompts as strings).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = ["DefaultHooks", "ModalityHooks", "call_hook", "write_samples_npz"]


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path
