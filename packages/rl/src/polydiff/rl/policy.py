"""Diffusion Policy (Chi et al. 2023) and the MSE-regression baseline.

The policy denoises an action chunk of ``pred_horizon`` (Tp = 16) actions conditioned on the
last ``obs_horizon`` (To = 2) observations, given to the network as ``cond["vector"]`` (FiLM
in the 1-D U-Net, a conditioning token in the transformer). It executes ``action_horizon``
(Ta = 8) of them, starting at the current step (chunk index To - 1), then predicts again.
Inference is few-step deterministic sampling (Euler = DDIM, DPM-Solver++(2M)).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from polydiff.core.samplers import sample
from polydiff.core.schedules import karras_sigmas
from polydiff.rl.datasets import MinMaxNormalizer
from polydiff.rl.envs import flat_obs
from polydiff.rl.models import CountingDenoiser, MLPPolicy


@dataclass
class DiffusionPolicy:
    """Observation-conditioned action-chunk sampler (normalised model space inside)."""

    denoiser: Callable  # D(x (B, Tp, A), sigma (B,), cond={"vector": (B, To*Do)})
    obs_norm: MinMaxNormalizer
    act_norm: MinMaxNormalizer
    obs_horizon: int = 2
    pred_horizon: int = 16
    n_steps: int = 8
    method: str = "dpmpp_2m"
    sigma_min: float = 0.002
    sigma_max: float = 10.0
    seed: int = 0
    # the run's sampler grid (``sampler`` config group through the objective's schedule); None:
    # Karras rho=7 over [sigma_min, sigma_max] in n_steps steps
    sigmas: torch.Tensor | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # sampler options (eta, ...)
    nfe: int = field(init=False, default=0)  # denoiser evaluations of the last prediction
    _generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)

    @torch.no_grad()
    def predict(self, obs_history: np.ndarray) -> np.ndarray:
        """Observations ``(B, To, Do)`` -> action chunks ``(B, Tp, A)`` in environment units."""
        obs = self.obs_norm.normalize(np.asarray(obs_history, dtype=np.float32))
        b = obs.shape[0]
        cond = {"vector": obs.reshape(b, -1)}
        sigmas = (
            karras_sigmas(self.n_steps, self.sigma_min, self.sigma_max)
            if self.sigmas is None
            else self.sigmas
        ).float()
        x = torch.randn(b, self.pred_horizon, len(self.act_norm), generator=self._generator)
        counter = CountingDenoiser(self.denoiser)
        actions = sample(
            counter, x * sigmas[0], sigmas, self.method, cond=cond, generator=self._generator,
            **dict(self.options),
        )  # fmt: skip
        self.nfe = counter.calls
        return self.act_norm.unnormalize(actions.clamp(-1.0, 1.0)).numpy()


@dataclass
class RegressionPolicy:
    """MSE-trained chunk predictor with the same interface as :class:`DiffusionPolicy`."""

    net: MLPPolicy
    obs_norm: MinMaxNormalizer
    act_norm: MinMaxNormalizer
    obs_horizon: int = 2
    pred_horizon: int = 16
    nfe: int = 1

    @torch.no_grad()
    def predict(self, obs_history: np.ndarray) -> np.ndarray:
        obs = self.obs_norm.normalize(np.asarray(obs_history, dtype=np.float32))
        actions = self.net(obs.reshape(obs.shape[0], -1))
        return self.act_norm.unnormalize(actions.clamp(-1.0, 1.0)).numpy()


def regression_loss(
    net: MLPPolicy,
    x: torch.Tensor,
    cond: Mapping[str, torch.Tensor] | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MSE between the predicted chunk and the demonstrated one (the baseline's objective)."""
    if cond is None or "vector" not in cond:
        raise KeyError("regression_loss needs the observations in cond['vector']")
    return F.mse_loss(net(cond["vector"]), x)


class RegressionObjective:
    """The MSE baseline's objective (:func:`regression_loss`); ``objective: rl_mse`` of the
    ``rl/two_path_mse`` recipe. A regression policy is not a denoiser (:meth:`denoiser` says so)."""

    def loss(
        self,
        net: MLPPolicy,
        x: torch.Tensor,
        cond: Mapping[str, torch.Tensor] | None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return regression_loss(net, x, cond, generator)

    def denoiser(self, net: nn.Module) -> Callable:
        raise TypeError(
            "an MSE-regression policy has no denoiser to sample: evaluate it (polydiff evaluate "
            "rolls it out through the experiment's rl node)"
        )


class ChunkAgent:
    """Runs a chunk policy receding-horizon: keep To observations, execute Ta actions."""

    def __init__(self, policy: DiffusionPolicy | RegressionPolicy, action_horizon: int = 8):
        self.policy, self.action_horizon = policy, action_horizon
        self.reset()

    def reset(self) -> None:
        self.history: deque[np.ndarray] = deque(maxlen=self.policy.obs_horizon)
        self.queue: deque[np.ndarray] = deque()
        self.last_nfe = 0

    def __call__(self, obs: object) -> np.ndarray:
        o = flat_obs(obs)
        if not self.history:
            self.history.extend([o] * self.policy.obs_horizon)  # pad before the start
        else:
            self.history.append(o)
        self.last_nfe = 0
        if not self.queue:
            chunk = self.policy.predict(np.stack(self.history)[None])[0]  # (Tp, A)
            start = self.policy.obs_horizon - 1  # the chunk begins To-1 steps in the past
            self.queue.extend(chunk[start : start + self.action_horizon])
            self.last_nfe = self.policy.nfe
        return self.queue.popleft().astype(np.float32)
