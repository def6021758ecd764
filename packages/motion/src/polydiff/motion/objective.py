"""MDM's geometric losses as an add-on to the core objective (Tevet et al. 2023, eq. 2-4).

``loss = L_simple + l_pos L_pos + l_vel L_vel + l_foot L_foot`` with, on joints recovered from
the denoised features (:func:`polydiff.motion.features.features_to_joints`, after
denormalisation): ``L_pos = ||FK(x0_hat) - FK(x0)||^2``, ``L_vel`` the same on frame-to-frame
velocities, ``L_foot = ||(FK(x0_hat)_{t+1} - FK(x0_hat)_t) * f_t||^2`` on the feet joints with
the data's contact labels ``f_t``. All are means over real frames (``cond["loss_mask"]``).
The diffusion term is the wrapped :class:`polydiff.core.objective.DiffusionObjective`'s; the
geometric terms reuse its network output (one forward pass per step: ``x0_hat = c_skip x +
c_out F``); sampling uses its denoiser unchanged. :func:`geometric_objective` builds one from a
config (``objective: {_target_: polydiff.motion.objective.geometric_objective, data:
${data.dataset}, <the core objective's keys>}``) with the training data's normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from polydiff.core.objective import DiffusionObjective
from polydiff.core.utils import Cond, append_dims

from .features import SLICES, features_to_joints

__all__ = ["GeometricObjective", "geometric_objective"]

_FEET = (7, 10, 8, 11)  # left ankle, left toe, right ankle, right toe (the contact order)


class GeometricObjective:
    """``base`` plus geometric losses; ``mean`` / ``std`` map model space to features."""

    def __init__(
        self,
        base: DiffusionObjective,
        mean: Sequence[float] | torch.Tensor | None = None,
        std: Sequence[float] | torch.Tensor | None = None,
        pos_weight: float = 1.0,
        vel_weight: float = 1.0,
        foot_weight: float = 1.0,
    ) -> None:
        self.base = base
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float32)
        self.weights = (float(pos_weight), float(vel_weight), float(foot_weight))
        self.schedule = base.schedule

    def denoiser(self, net):
        return self.base.denoiser(net)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return x
        return x * self.std.to(x) + self.mean.to(x)

    def geometric_terms(
        self, denoised: torch.Tensor, x0: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-sample ``(L_pos, L_vel, L_foot)`` of shape (B, 3)."""
        feats0 = self._features(x0)
        j_hat = features_to_joints(self._features(denoised))  # (B, T, 22, 3)
        j0 = features_to_joints(feats0)
        m = (
            torch.ones(x0.shape[:2], dtype=x0.dtype, device=x0.device)
            if mask is None
            else mask.to(x0.dtype)
        )
        mv = m[:, 1:] * m[:, :-1]

        def mean(err: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # err (B, T', ...)
            e = err.flatten(2).mean(-1)
            return (e * w).sum(1) / w.sum(1).clamp_min(1.0)

        pos = mean((j_hat - j0) ** 2, m)
        vel = mean((j_hat.diff(dim=1) - j0.diff(dim=1)) ** 2, mv)
        contact = feats0[:, :-1, SLICES["contacts"]].clamp(0, 1)  # (B, T-1, 4)
        foot_v = j_hat[:, 1:, list(_FEET)] - j_hat[:, :-1, list(_FEET)]  # (B, T-1, 4, 3)
        foot = mean((foot_v * contact[..., None]) ** 2, mv)
        return torch.stack([pos, vel, foot], -1)

    def loss(
        self, net, x0: torch.Tensor, cond: Cond = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        base = self.base
        if not any(self.weights):
            return base.loss(net, x0, cond, generator)
        batch, device = x0.shape[0], x0.device
        sigma = base.sample_sigma(batch, generator, device)
        gen_dev = generator.device if generator is not None else device
        noise = torch.randn(x0.shape, generator=generator, device=gen_dev, dtype=x0.dtype).to(
            device
        )
        keep = _KeepOutput(net)
        diffusion = base.per_sample_loss(keep, x0, cond, generator, sigma=sigma, noise=noise)
        x = x0 + append_dims(sigma, x0.ndim).to(x0.dtype) * noise
        scalings = base.param.scalings(sigma)
        c_skip, c_out, _ = (append_dims(c, x0.ndim).to(x0.dtype) for c in scalings)
        denoised = c_skip * x + c_out * keep.output.to(x0.dtype)  # the same forward pass
        terms = self.geometric_terms(denoised, x0, None if cond is None else cond.get("loss_mask"))
        w = torch.as_tensor(self.weights, dtype=terms.dtype, device=terms.device)
        return (diffusion + (terms * w).sum(-1)).mean()


class _KeepOutput(nn.Module):
    """Runs ``module`` and keeps its last output (``module``: the core objective looks through
    it for ``accepts_null_mask``, as through DDP)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.output: torch.Tensor | None = None

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.output = self.module(*args, **kwargs)
        return self.output


def geometric_objective(
    data: Any = None,
    pos_weight: float = 1.0,
    vel_weight: float = 1.0,
    foot_weight: float = 1.0,
    **base: Any,
) -> GeometricObjective:
    """:class:`GeometricObjective` over ``DiffusionObjective(**base)`` (schedule, prediction,
    weighting, noise density, condition dropout: the keys of any core objective config) with the
    normalisation of ``data`` (a :class:`polydiff.motion.experiments.MotionData`; None: the
    model space is the feature space)."""
    norm = getattr(data, "normalizer", None)
    if data is not None and norm is None:
        raise ValueError(
            f"objective.data must be a motion dataset with a normalizer, got {type(data).__name__}"
        )
    mean = None if norm is None else torch.as_tensor(norm.mean)
    std = None if norm is None else torch.as_tensor(norm.std)
    return GeometricObjective(
        DiffusionObjective(**base), mean, std, pos_weight, vel_weight, foot_weight
    )
