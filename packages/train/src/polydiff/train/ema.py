"""Exponential moving averages of the weights, several decay rates at once.

Built on ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn`` (one fused
``lerp`` per parameter list): ``ema <- decay * ema + (1 - decay) * param``; buffers are copied.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["EMABank"]


def decay_key(decay: float) -> str:
    """Stable name of one EMA (``"0.999"``), used in checkpoints and configs."""
    return f"{decay:g}"


class EMABank(nn.Module):
    """A set of EMA copies of ``model``, one per decay in ``decays``.

    Args:
        model: the (unwrapped) model being trained.
        decays: decay rates, e.g. ``(0.999, 0.9999)``; empty disables EMA.
        start_step: before this optimizer step the EMAs simply copy the weights.
    """

    def __init__(self, model: nn.Module, decays: Iterable[float], start_step: int = 0) -> None:
        super().__init__()
        self.decays = tuple(float(d) for d in decays)
        for d in self.decays:
            if not 0.0 <= d < 1.0:
                raise ValueError(f"EMA decay must be in [0, 1), got {d}")
        self.start_step = int(start_step)
        self.averages = nn.ModuleDict(
            {
                decay_key(d).replace(".", "_"): AveragedModel(
                    model, multi_avg_fn=get_ema_multi_avg_fn(d), use_buffers=True
                )
                for d in self.decays
            }
        )
        for avg in self.averages.values():
            avg.requires_grad_(False)
        self._src: tuple | None = None  # (model, its params, its buffers), gathered on first update
        self._dst: dict[str, tuple[list, list]] = {}

    def keys(self) -> list[str]:
        return [decay_key(d) for d in self.decays]

    def __getitem__(self, key: str | float) -> nn.Module:
        """The averaged network (the inner module) of one decay."""
        name = decay_key(float(key)).replace(".", "_")
        if name not in self.averages:
            raise KeyError(f"no EMA with decay {key}; available: {self.keys()}")
        return self.averages[name].module

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold the current weights of ``model`` into every EMA (after optimizer step ``step``).

        Same arithmetic as ``AveragedModel.update_parameters`` (the first update copies), but on
        parameter lists gathered once, which saves a module-tree walk per step; buffers are copied.
        """
        if not self.decays:
            return
        if self._src is None or self._src[0] is not model:
            self._src = (model, list(model.parameters()), list(model.buffers()))
            self._dst = {
                name: (list(avg.module.parameters()), list(avg.module.buffers()))
                for name, avg in self.averages.items()
            }
        _, params, buffers = self._src
        for name, avg in self.averages.items():
            dst_params, dst_buffers = self._dst[name]
            if step < self.start_step or int(avg.n_averaged) == 0:
                torch._foreach_copy_(dst_params, params)
            else:
                avg.multi_avg_fn(dst_params, params, avg.n_averaged)
            if buffers:
                torch._foreach_copy_(dst_buffers, buffers)
            avg.n_averaged += 1

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat ``{"<decay>/<name>": tensor}`` for a checkpoint."""
        out = {}
        for d in self.decays:
            avg = self.averages[decay_key(d).replace(".", "_")]
            for name, t in avg.state_dict().items():
                out[f"{decay_key(d)}/{name}"] = t
        return out

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`tensors`; every EMA of this bank must be present."""
        for d in self.decays:
            prefix = f"{decay_key(d)}/"
            sub = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if not sub:
                saved = sorted({k.split("/", 1)[0] for k in tensors})
                raise KeyError(f"checkpoint has no EMA with decay {decay_key(d)} (it has {saved})")
            self.averages[decay_key(d).replace(".", "_")].load_state_dict(sub)
