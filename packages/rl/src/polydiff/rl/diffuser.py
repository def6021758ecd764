"""Diffuser: planning with a trajectory diffusion model (Janner et al. 2022).

A temporal 1-D U-Net denoises whole trajectories ``(H, D)`` of ``[obs, action]`` (or states
only). Planning is conditional sampling through the core's denoiser transformations:

- the current state (and the goal in the maze) is imposed by inpainting (Diffuser sec. 3.4)
  with :func:`polydiff.core.editing.inpaint`: after every DDIM step the known entries are
  replaced by their values noised to the current level;
- a value function on noisy trajectories steers sampling by gradient guidance
  ``D + s sigma^2 grad V`` (sec. 3.3), switched off below ``guide_sigma_min`` (stop-grad near
  sigma = 0), and ranks a batch of candidate plans; without a value function the candidate
  with the smallest largest jump between consecutive planned positions is kept (jumps are
  where an under-trained model cuts through walls).

Execution is receding-horizon: :class:`MazePlanAgent` tracks the planned states with a PD
controller and replans every ``replan_every`` steps; :class:`PlanActionAgent` executes the
first planned actions open-loop and replans.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from polydiff.core.editing import inpaint
from polydiff.core.guidance import value_guidance
from polydiff.core.schedules import karras_sigmas
from polydiff.rl.datasets import MinMaxNormalizer
from polydiff.rl.envs import flat_obs, track
from polydiff.rl.models import CountingDenoiser, TrajectoryValue


@dataclass
class Plan:
    """A sampled plan in environment units, with its cost."""

    trajectory: np.ndarray  # (H, D) unnormalised [obs, action]
    nfe: int  # denoiser evaluations
    seconds: float
    value: float | None = None  # predicted (standardised) value of the chosen candidate


@dataclass
class DiffuserPlanner:
    """Conditional trajectory sampler (see module docstring); all tensors on CPU."""

    denoiser: Callable  # D(x (B, H, D), sigma (B,), cond) -> x0_hat, normalised space
    normalizer: MinMaxNormalizer
    horizon: int
    obs_dim: int
    n_steps: int = 16
    eta: float = 0.0  # DDIM eta of the inpainting steps (0: deterministic)
    sigma_min: float = 0.002
    sigma_max: float = 10.0
    value: TrajectoryValue | None = None
    guide_scale: float = 0.0
    guide_sigma_min: float = 0.05
    n_candidates: int = 1
    goal_dims: tuple[int, ...] = (0, 1)  # which state dims the goal pins (maze: x, y)
    goal_zero_dims: tuple[int, ...] = (2, 3)  # state dims pinned to 0 at the goal (velocity)
    seed: int = 0
    _generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)

    def _known(self, obs: np.ndarray, goal: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        d = len(self.normalizer)
        raw = torch.zeros(self.horizon, d)
        mask = torch.zeros(self.horizon, d, dtype=torch.bool)
        raw[0, : self.obs_dim] = torch.as_tensor(obs[: self.obs_dim], dtype=torch.float32)
        mask[0, : self.obs_dim] = True
        if goal is not None:
            for i, g in zip(self.goal_dims, goal):
                raw[-1, i], mask[-1, i] = float(g), True
            for i in self.goal_zero_dims:
                raw[-1, i], mask[-1, i] = 0.0, True
        return mask, self.normalizer.normalize(raw)  # (H, D) each

    @torch.no_grad()
    def plan(self, obs: np.ndarray, goal: np.ndarray | None = None) -> Plan:
        """Sample ``n_candidates`` plans from ``obs`` (to ``goal``) and keep the best-valued."""
        start = time.perf_counter()
        mask, known = self._known(np.asarray(obs, dtype=np.float32), goal)
        counter = CountingDenoiser(self.denoiser)
        denoiser = counter
        if self.value is not None and self.guide_scale > 0:
            value = self.value
            denoiser = value_guidance(
                counter,
                lambda x, sigma, cond: value(x, sigma),
                self.guide_scale,
                sigma_min=self.guide_sigma_min,
            )
        sigmas = karras_sigmas(self.n_steps, self.sigma_min, self.sigma_max).float()
        b, d = self.n_candidates, len(self.normalizer)
        x = torch.randn(b, self.horizon, d, generator=self._generator) * sigmas[0]
        x0 = inpaint(
            denoiser, x, sigmas, known, mask, generator=self._generator, eta=self.eta
        )  # (B, H, D)
        best, value = 0, None
        if self.value is not None:
            v = self.value(x0, torch.full((b,), self.sigma_min))
            best, value = int(v.argmax()), float(v.max())
        elif b > 1:  # no value: keep the smoothest plan (largest step between waypoints)
            steps = x0[:, 1:, list(self.goal_dims)] - x0[:, :-1, list(self.goal_dims)]
            best = int(steps.norm(dim=-1).amax(dim=1).argmin())
        traj = self.normalizer.unnormalize(x0[best]).numpy()
        return Plan(traj, counter.calls, time.perf_counter() - start, value)


class MazePlanAgent:
    """Receding-horizon Diffuser agent for PointMaze: plan states to the goal, PD-track them.

    Plan index ``j`` is ``j * stride`` environment steps after the planning step; the agent
    tracks the planned state ``lookahead`` indices ahead (position and velocity) and heads for
    the goal itself once the plan is exhausted.
    """

    def __init__(
        self,
        planner: DiffuserPlanner,
        stride: int,
        replan_every: int = 20,
        lookahead: int = 1,
        p_gain: float = 10.0,
        d_gain: float = 1.0,
    ) -> None:
        self.planner, self.stride, self.replan_every = planner, stride, replan_every
        self.lookahead, self.p_gain, self.d_gain = lookahead, p_gain, d_gain
        self.reset()

    def reset(self) -> None:
        self.t, self.t_plan = 0, 0
        self.current: Plan | None = None
        self.plans: list[tuple[int, np.ndarray]] = []  # (env step, planned trajectory)
        self.last_nfe = 0

    def __call__(self, obs: dict) -> np.ndarray:
        state, goal = flat_obs(obs), np.asarray(obs["desired_goal"])
        self.last_nfe = 0
        if self.current is None or self.t - self.t_plan >= self.replan_every:
            self.current = self.planner.plan(state, goal)
            self.t_plan, self.last_nfe = self.t, self.current.nfe
            self.plans.append((self.t, self.current.trajectory))
        traj = self.current.trajectory
        idx = (self.t - self.t_plan) // self.stride + self.lookahead
        self.t += 1
        if idx >= len(traj) - 1:
            return track(state[:2], state[2:4], goal, self.p_gain, self.d_gain)
        return track(state[:2], state[2:4], traj[idx, :2], self.p_gain, self.d_gain, traj[idx, 2:4])


class PlanActionAgent:
    """Receding-horizon Diffuser agent that executes the planned actions (Pendulum).

    Plans ``[obs, action]`` from the current state and executes the first ``execute`` actions
    open-loop before replanning (``execute = 1`` is Diffuser's replan-every-step control).
    """

    def __init__(
        self,
        planner: DiffuserPlanner,
        execute: int = 4,
        action_low: float = -2.0,
        action_high: float = 2.0,
    ) -> None:
        self.planner, self.execute = planner, execute
        self.low, self.high = action_low, action_high
        self.reset()

    def reset(self) -> None:
        self.k = self.execute
        self.current: Plan | None = None
        self.last_nfe = 0
        self.values: list[float] = []

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        self.last_nfe = 0
        if self.k >= self.execute or self.current is None:
            self.current = self.planner.plan(flat_obs(obs))
            self.k, self.last_nfe = 0, self.current.nfe
            if self.current.value is not None:
                self.values.append(self.current.value)
        action = self.current.trajectory[self.k, self.planner.obs_dim :]
        self.k += 1
        return np.clip(action, self.low, self.high).astype(np.float32)
