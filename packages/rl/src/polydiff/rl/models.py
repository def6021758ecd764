"""Network factories over ``polydiff.nn`` for trajectories and action chunks.

- :class:`SequenceUNet`: ``(B, T, D)`` sequences through the 1-D :class:`polydiff.nn.UNet`
  (channels = D, length = T): Diffuser's temporal U-Net (Janner et al. 2022) and Diffusion
  Policy's ``ConditionalUnet1D`` (Chi et al. 2023, FiLM on ``cond["vector"]``);
- :class:`TrajectoryValue`: Diffuser's value function ``V(x_sigma, sigma)`` on noisy
  trajectories, in the same EDM input scaling as the denoiser;
- :class:`MLPPolicy`: the MSE-regression baseline of the multi-modal comparison;
- :class:`StartConditionedObjective` and :func:`value_loss`: the objectives of Diffuser's
  start-conditioned trajectory model and of its value function (``configs/objective/rl_*``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from polydiff.core.objective import DiffusionObjective
from polydiff.nn.embeddings import TimestepMLP
from polydiff.nn.mlp import ResidualMLP
from polydiff.nn.transformer import TransformerDenoiser
from polydiff.nn.unet import unet

# Named sizes for CPU training: overrides of polydiff.nn's "diffuser-1d" / "dp-1d" U-Nets
RL_UNET_SIZES: dict[str, tuple[str, dict[str, Any]]] = {
    "diffuser-tiny": ("diffuser-1d", dict(model_channels=16, channel_mult=(1, 2, 4))),
    "diffuser-small": ("diffuser-1d", dict(model_channels=32, channel_mult=(1, 2, 4))),
    "diffuser": ("diffuser-1d", {}),
    "dp-tiny": ("dp-1d", dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1)),
    "dp-small": ("dp-1d", dict(model_channels=64, channel_mult=(1, 2, 4), num_res_blocks=1)),
    "dp": ("dp-1d", {}),
}


class SequenceUNet(nn.Module):
    """``forward(x (B, T, D), t (B,), cond) -> (B, T, D)`` through a 1-D U-Net over time.

    ``T`` is padded (edge replication) up to a multiple of the U-Net's downsampling factor and
    cropped back, so any horizon works.
    """

    def __init__(
        self, transition_dim: int, size: str = "diffuser-small", cond_dim: int | None = None
    ) -> None:
        super().__init__()
        if size not in RL_UNET_SIZES:
            raise KeyError(f"unknown RL U-Net size {size!r}; choose one of {sorted(RL_UNET_SIZES)}")
        base, overrides = RL_UNET_SIZES[size]
        self.net = unet(base, in_channels=transition_dim, cond_dim=cond_dim, **overrides)
        self.transition_dim = transition_dim
        self.factor = 2 ** (self.net.levels - 1)
        self.accepts_null_mask = self.net.accepts_null_mask

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        if x.ndim != 3 or x.shape[2] != self.transition_dim:
            raise ValueError(
                f"SequenceUNet expects x of shape (B, T, {self.transition_dim}), got "
                f"{tuple(x.shape)}"
            )
        length = x.shape[1]
        pad = (-length) % self.factor
        h = x.transpose(1, 2)  # (B, D, T)
        if pad:
            h = F.pad(h, (0, pad), mode="replicate")
        return self.net(h, t, cond)[..., :length].transpose(1, 2)  # (B, T, D)


# Diffusion Policy's transformer variant: adaLN-Zero blocks over the Tp action tokens, the
# observation vector entering through the conditioning embedding
RL_TRANSFORMER_SIZES: dict[str, dict[str, Any]] = {
    "dp-transformer-tiny": dict(hidden=64, depth=2, heads=4),
    "dp-transformer-small": dict(hidden=128, depth=4, heads=4),
    "dp-transformer": dict(hidden=256, depth=8, heads=4),
}


def chunk_transformer(
    action_dim: int, pred_horizon: int, cond_dim: int, size: str = "dp-transformer-tiny"
) -> TransformerDenoiser:
    """Action-chunk transformer denoiser ``(B, Tp, A) -> (B, Tp, A)`` over ``polydiff.nn``."""
    if size not in RL_TRANSFORMER_SIZES:
        raise KeyError(f"unknown size {size!r}; choose one of {sorted(RL_TRANSFORMER_SIZES)}")
    return TransformerDenoiser(
        in_dim=action_dim,
        pos_embedding="learned",
        max_len=pred_horizon,
        cond_dim=cond_dim,
        **RL_TRANSFORMER_SIZES[size],
    )


class FlatSequenceMLP(nn.Module):
    """``(B, T, D)`` sequences flattened through :class:`polydiff.nn.ResidualMLP` (FiLM by
    ``cond["vector"]``): the cheapest chunk denoiser, for CPU demos and tests."""

    def __init__(
        self, transition_dim: int, horizon: int, cond_dim: int | None = None, hidden: int = 256,
        depth: int = 3,
    ) -> None:  # fmt: skip
        super().__init__()
        self.shape = (horizon, transition_dim)
        self.net = ResidualMLP(horizon * transition_dim, hidden, depth, cond_dim=cond_dim)
        self.accepts_null_mask = self.net.accepts_null_mask

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"FlatSequenceMLP expects x of shape (B, {self.shape}), got {x.shape}")
        return self.net(x.flatten(1), t, cond).view(-1, *self.shape)  # (B, T, D)


class TrajectoryValue(nn.Module):
    """Value of a noisy trajectory, ``V(x (B, T, D), sigma (B,)) -> (B,)`` (Diffuser sec. 3.3).

    A small 1-D conv encoder (FiLM by the noise level) + mean pooling + MLP head; inputs are
    scaled by ``1 / sqrt(sigma^2 + sigma_data^2)`` and the noise level enters as ``log(sigma)/4``.
    """

    def __init__(
        self, transition_dim: int, hidden: int = 64, depth: int = 3, sigma_data: float = 0.5
    ) -> None:
        super().__init__()
        self.sigma_data = sigma_data
        self.time = TimestepMLP(hidden, freq_dim=64)
        self.proj_in = nn.Conv1d(transition_dim, hidden, 5, padding=2)
        self.convs = nn.ModuleList(
            nn.Conv1d(hidden, hidden, 5, padding=2, stride=2) for _ in range(depth)
        )
        self.films = nn.ModuleList(nn.Linear(hidden, 2 * hidden) for _ in range(depth))
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c_in = (sigma**2 + self.sigma_data**2).rsqrt()[:, None, None]
        emb = F.silu(self.time(sigma.log() / 4))  # (B, H)
        h = self.proj_in((c_in * x).transpose(1, 2))  # (B, H, T)
        for conv, film in zip(self.convs, self.films):
            scale, shift = film(emb)[..., None].chunk(2, dim=1)
            h = F.silu(conv(h) * (1 + scale) + shift)  # (B, H, ceil(T/2))
        return self.head(h.mean(dim=2)).squeeze(-1)  # (B,)


class MLPPolicy(nn.Module):
    """Regression baseline: observations (B, To*Do) -> action chunk (B, Tp, A), trained by MSE."""

    def __init__(self, obs_dim: int, action_dim: int, pred_horizon: int, hidden: int = 256):
        super().__init__()
        self.action_dim, self.pred_horizon = action_dim, pred_horizon
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden),
            nn.Mish(),
            nn.Linear(hidden, hidden),
            nn.Mish(),
            nn.Linear(hidden, hidden),
            nn.Mish(),
            nn.Linear(hidden, action_dim * pred_horizon),
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).view(-1, self.pred_horizon, self.action_dim)


class CountingDenoiser:
    """Wraps a denoiser and counts its evaluations (the NFE of a sampler call)."""

    def __init__(self, denoiser: Callable) -> None:
        self.denoiser, self.calls = denoiser, 0

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        self.calls += 1
        return self.denoiser(x, sigma, cond)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def value_loss(
    value: TrajectoryValue,
    x0: torch.Tensor,
    cond: Mapping[str, torch.Tensor] | None,
    generator: torch.Generator | None = None,
    p_mean: float = -1.2,
    p_std: float = 1.2,
) -> torch.Tensor:
    """MSE of ``V(x0 + sigma eps, sigma)`` to ``cond["value"]`` at log-normal noise levels."""
    if cond is None or "value" not in cond:
        raise KeyError("value_loss needs the regression target in cond['value'] (B,)")
    b = x0.shape[0]
    sigma = (p_mean + p_std * torch.randn(b, generator=generator, device=x0.device)).exp()
    x = x0 + sigma[:, None, None] * torch.randn(x0.shape, generator=generator, device=x0.device)
    return F.mse_loss(value(x, sigma), cond["value"].to(x.dtype))


class StartConditionedObjective(DiffusionObjective):
    """Diffuser's training with the conditioning applied (Janner et al. 2022, ``p_losses``).

    A :class:`polydiff.core.objective.DiffusionObjective` (same schedule, parameterisation,
    weighting and noise density; built from the ``objective`` config node plus ``obs_dim``)
    whose noise is zero on the current state (first ``obs_dim`` entries of step 0): the network
    sees that state clean at every noise level, exactly as it is imposed while planning with
    ``DiffuserPlanner(clean_known=True)``, so it learns the actions and futures that go with the
    state instead of reconciling a replaced boundary at sampling time only.
    """

    def __init__(self, *args: Any, obs_dim: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if obs_dim < 1:
            raise ValueError(f"obs_dim must be >= 1, got {obs_dim}")
        self.obs_dim = obs_dim

    def loss(
        self,
        net: nn.Module,
        x0: torch.Tensor,
        cond: Mapping[str, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if x0.ndim != 3 or x0.shape[2] < self.obs_dim:
            raise ValueError(f"expected x0 of shape (B, H, D >= {self.obs_dim}), got {x0.shape}")
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        noise[:, 0, : self.obs_dim] = 0.0  # (B, H, D): the start state stays clean
        return self.per_sample_loss(net, x0, cond, generator, noise=noise).mean()


class ValueObjective:
    """The value function's training objective (Diffuser sec. 3.3): :func:`value_loss` at
    log-normal noise levels ``exp(p_mean + p_std z)``; ``objective: rl_value`` of the
    ``rl/pendulum_value`` recipe. A value network is not a denoiser (:meth:`denoiser` says so)."""

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2) -> None:
        if p_std <= 0:
            raise ValueError(f"p_std must be > 0, got {p_std}")
        self.p_mean, self.p_std = p_mean, p_std

    def loss(
        self,
        net: nn.Module,
        x0: torch.Tensor,
        cond: Mapping[str, torch.Tensor] | None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return value_loss(net, x0, cond, generator, p_mean=self.p_mean, p_std=self.p_std)

    def denoiser(self, net: nn.Module) -> Callable:
        raise TypeError(
            "a value-function run has no denoiser to sample: evaluate it (polydiff evaluate) for "
            "its held-out correlation, or plan with it from a Diffuser run (rl.value.run)"
        )
