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
  where an under-trained model cuts through walls);
- ``clean_known`` keeps the known entries clean at every step instead (Diffuser's
  ``apply_conditioning``), for a model trained that way
  (:class:`~polydiff.rl.models.StartConditionedObjective`);
- ``goal_indices`` inpaints the goal at several plan indices and keeps the earliest arrival
  whose plan has no step longer than ``max_step``.

Execution is receding-horizon: :class:`MazePlanAgent` tracks the planned states with a PD
controller and replans every ``replan_every`` steps; :class:`PlanActionAgent` executes the
first planned actions open-loop and replans, or (with :class:`LinearInverseDynamics`) acts
towards the next planned state from the observed one (Ajay et al. 2023's inverse dynamics).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from polydiff.core.editing import ddim_step, inpaint
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
    arrival: int | None = None  # plan index where the goal was inpainted (None: no goal)


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
    # None: the goal is inpainted at the last index (Janner et al.'s maze2d). Else one batch of
    # ``n_candidates`` plans per index listed, and the earliest arrival whose plan is feasible
    # (no step between consecutive planned positions longer than ``max_step``) is kept
    goal_indices: tuple[int, ...] | None = None
    max_step: float | None = None  # env units of ``goal_dims``; None: the smoothest plan
    # True: the known entries stay clean at every step (Diffuser's apply_conditioning), for a
    # model trained with them clean (StartConditionedObjective); False: re-noised replacement
    clean_known: bool = False
    start_cond: bool = False  # the network takes the start state as cond["vector"] (FiLM)
    seed: int = 0
    # the run's sampler grid (``sampler`` config group through the objective's schedule); None:
    # Karras rho=7 over [sigma_min, sigma_max] in n_steps steps
    sigmas: torch.Tensor | None = None
    _generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)

    def _arrivals(self, goal: np.ndarray | None) -> list[int | None]:
        """The plan index at which each candidate has the goal inpainted (None: no goal)."""
        if goal is None:
            return [None] * self.n_candidates
        indices = self.goal_indices or (self.horizon - 1,)
        bad = [k for k in indices if not 0 < k < self.horizon]
        if bad:
            raise ValueError(f"goal_indices {bad} outside 1..{self.horizon - 1} (horizon)")
        return [k for k in indices for _ in range(self.n_candidates)]

    def _known(
        self, obs: np.ndarray, goal: np.ndarray | None, arrivals: list[int | None]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        d = len(self.normalizer)
        raw = torch.zeros(len(arrivals), self.horizon, d)
        mask = torch.zeros(len(arrivals), self.horizon, d, dtype=torch.bool)
        raw[:, 0, : self.obs_dim] = torch.as_tensor(obs[: self.obs_dim], dtype=torch.float32)
        mask[:, 0, : self.obs_dim] = True
        for b, k in enumerate(arrivals):
            if k is None or goal is None:
                continue
            for i, g in zip(self.goal_dims, goal):
                raw[b, k, i], mask[b, k, i] = float(g), True
            for i in self.goal_zero_dims:
                raw[b, k, i], mask[b, k, i] = 0.0, True
        return mask, self.normalizer.normalize(raw)  # (B, H, D) each

    @torch.no_grad()
    def plan(self, obs: np.ndarray, goal: np.ndarray | None = None) -> Plan:
        """Sample candidate plans from ``obs`` (to ``goal``) and keep one (module docstring)."""
        start = time.perf_counter()
        arrivals = self._arrivals(goal)
        mask, known = self._known(np.asarray(obs, dtype=np.float32), goal, arrivals)
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
        sigmas = (
            karras_sigmas(self.n_steps, self.sigma_min, self.sigma_max)
            if self.sigmas is None
            else self.sigmas
        ).float()
        b, d = len(arrivals), len(self.normalizer)
        x = torch.randn(b, self.horizon, d, generator=self._generator) * sigmas[0]
        cond = {"vector": known[:, 0, : self.obs_dim]} if self.start_cond else None
        if self.clean_known:
            x0 = self._clean_inpaint(denoiser, x, sigmas, known=known, mask=mask, cond=cond)
        else:
            x0 = inpaint(
                denoiser, x, sigmas, known=known, mask=mask, cond=cond, generator=self._generator,
                eta=self.eta,
            )  # (B, H, D)  # fmt: skip
        best, value = 0, None
        if self.value is not None:
            v = self.value(x0, torch.full((b,), float(sigmas[-2])))  # the last noise level
            best, value = int(v.argmax()), float(v.max())
        elif b > 1:
            best = self._select(self.normalizer.unnormalize(x0), arrivals)
        traj = self.normalizer.unnormalize(x0[best]).numpy()
        return Plan(
            trajectory=traj, nfe=counter.calls, seconds=time.perf_counter() - start, value=value,
            arrival=arrivals[best],
        )  # fmt: skip

    def _clean_inpaint(
        self,
        denoiser: Callable,
        x: torch.Tensor,
        sigmas: torch.Tensor,
        known: torch.Tensor,
        mask: torch.Tensor,
        cond: dict | None = None,
    ) -> torch.Tensor:
        """DDIM steps with the known entries set to their clean values before every step."""
        m = mask.to(x.dtype)
        x = m * known + (1 - m) * x
        for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
            denoised = denoiser(x, torch.full((x.shape[0],), s), cond)
            noise = torch.randn(x.shape, generator=self._generator) if self.eta else None
            x = ddim_step(x, denoised, s, s_next, eta=self.eta, noise=noise)
            x = m * known + (1 - m) * x
        return x  # (B, H, D)

    def _select(self, plans: torch.Tensor, arrivals: list[int | None]) -> int:
        """Without a value: the earliest feasible arrival, else the smoothest plan.

        A plan's roughness is its largest step between consecutive planned positions (up to
        its arrival): jumps are where an under-trained model cuts through walls.
        """
        xy = plans[..., list(self.goal_dims)]  # (B, H, 2) env units
        steps = (xy[:, 1:] - xy[:, :-1]).norm(dim=-1)  # (B, H-1)
        rough = torch.stack(
            [steps[i, : (k or self.horizon - 1)].max() for i, k in enumerate(arrivals)]
        )  # (B,)
        if self.max_step is not None:
            feasible = [i for i in range(len(arrivals)) if rough[i] <= self.max_step]
            if feasible:  # earliest arrival, then the smoothest among those
                return min(feasible, key=lambda i: ((arrivals[i] or 0), float(rough[i])))
        return int(rough.argmin())


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
        end = len(traj) - 1 if self.current.arrival is None else self.current.arrival
        if idx >= end:
            return track(state[:2], state[2:4], goal, p_gain=self.p_gain, d_gain=self.d_gain)
        return track(
            state[:2], state[2:4], traj[idx, :2], p_gain=self.p_gain, d_gain=self.d_gain,
            target_vel=traj[idx, 2:4],
        )  # fmt: skip


class LinearInverseDynamics:
    """Inverse dynamics ``a_t = W^T [s_t, s_{t+1}, 1]`` fitted by least squares on transitions.

    Decision Diffuser (Ajay et al. 2023) acts with an inverse-dynamics model on the planned
    next state instead of the planned action; a linear model is exact for Pendulum's
    ``[cos, sin, theta-dot]`` observations (theta-dot' = theta-dot + dt (15 sin + 3 u)).
    """

    def __init__(self, weights: np.ndarray, low: float = -2.0, high: float = 2.0) -> None:
        self.weights = np.asarray(weights, dtype=np.float64)  # (2 Do + 1, A)
        if self.weights.ndim != 2 or self.weights.shape[0] % 2 != 1:
            raise ValueError(f"weights must be (2 * obs_dim + 1, A), got {self.weights.shape}")
        self.low, self.high = low, high

    @classmethod
    def fit(cls, episodes: Sequence, low: float = -2.0, high: float = 2.0) -> LinearInverseDynamics:
        """Least squares on every ``(s_t, s_{t+1}) -> a_t`` of ``episodes``."""
        feats, targets = [], []
        for ep in episodes:
            obs = np.asarray(ep.obs, dtype=np.float64)  # (T+1, Do)
            ones = np.ones((len(obs) - 1, 1))
            feats.append(np.concatenate([obs[:-1], obs[1:], ones], axis=1))  # (T, 2 Do + 1)
            targets.append(np.asarray(ep.actions, dtype=np.float64).reshape(len(obs) - 1, -1))
        if not feats:
            raise ValueError("LinearInverseDynamics.fit needs at least one episode")
        w = np.linalg.lstsq(np.concatenate(feats), np.concatenate(targets), rcond=None)[0]
        return cls(w, low, high)

    def __call__(self, obs: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
        """The action (A,) taking ``obs`` (Do,) to ``next_obs`` (Do,), clipped to the bounds."""
        f = np.concatenate([np.asarray(obs, dtype=np.float64), np.asarray(next_obs), [1.0]])
        return np.clip(f @ self.weights, self.low, self.high)


class PlanActionAgent:
    """Receding-horizon Diffuser agent that executes the planned actions (Pendulum).

    Plans ``[obs, action]`` from the current state and executes the first ``execute`` actions
    open-loop before replanning (``execute = 1`` is Diffuser's replan-every-step control).
    With ``inverse_dynamics`` the ``k``-th step after planning acts towards planned state
    ``k + 1`` from the observed state instead (closed-loop tracking of the plan).
    """

    def __init__(
        self,
        planner: DiffuserPlanner,
        execute: int = 4,
        action_low: float = -2.0,
        action_high: float = 2.0,
        inverse_dynamics: LinearInverseDynamics | None = None,
    ) -> None:
        if inverse_dynamics is not None and not 1 <= execute < planner.horizon:
            raise ValueError(f"execute={execute} must be in 1..horizon-1 with inverse dynamics")
        self.planner, self.execute, self.inverse_dynamics = planner, execute, inverse_dynamics
        self.low, self.high = action_low, action_high
        self.reset()

    def reset(self) -> None:
        self.k = self.execute
        self.current: Plan | None = None
        self.last_nfe = 0
        self.values: list[float] = []

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        self.last_nfe = 0
        state = flat_obs(obs)
        if self.k >= self.execute or self.current is None:
            self.current = self.planner.plan(state)
            self.k, self.last_nfe = 0, self.current.nfe
            if self.current.value is not None:
                self.values.append(self.current.value)
        d = self.planner.obs_dim
        if self.inverse_dynamics is not None:
            action = self.inverse_dynamics(state, self.current.trajectory[self.k + 1, :d])
        else:
            action = self.current.trajectory[self.k, d:]
        self.k += 1
        return np.clip(action, self.low, self.high).astype(np.float32)
