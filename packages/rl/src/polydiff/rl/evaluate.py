"""Rollout evaluation: success, returns, normalised score, NFE and latency per executed action.

Every agent is a callable ``agent(raw_obs) -> action`` with ``reset()`` and ``last_nfe`` (the
denoiser evaluations spent on the action just returned; 0 when it was read from a cached
plan or chunk). Latency is the wall time of each agent call, reported per executed action
(median, p95 and the amortised mean) and per inference call (the actions that ran the
network; chunked policies and receding-horizon planners answer the others from a cache):
users judge action diffusion by whether it is fast enough to control a robot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polydiff.rl.envs import MazeMap, WaypointController, flat_obs, make_env, pendulum_expert


@dataclass
class RolloutStats:
    """Per-episode results of one agent on one environment."""

    returns: list[float] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)  # one per executed action
    nfes: list[int] = field(default_factory=list)  # one per executed action
    infos: list[dict[str, Any]] = field(default_factory=list)  # last info of each episode
    trajectories: list[np.ndarray] = field(default_factory=list)  # (T+1, Do) flat observations

    def summary(self) -> dict[str, float]:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        calls = lat[np.asarray(self.nfes) > 0] if any(self.nfes) else lat
        r = np.asarray(self.returns)
        return {
            "episodes": len(self.returns),
            "return_mean": float(r.mean()),
            "return_std": float(r.std()),
            "success_rate": float(np.mean(self.successes)),
            "length_mean": float(np.mean(self.lengths)),
            "nfe_per_action": float(np.mean(self.nfes)) if self.nfes else 0.0,
            "latency_ms_median": float(np.median(lat)),
            "latency_ms_p95": float(np.percentile(lat, 95)),
            "latency_ms_mean": float(lat.mean()),
            "inference_ms_median": float(np.median(calls)),
            "inference_ms_p95": float(np.percentile(calls, 95)),
        }


def run_episodes(
    env_name: str,
    agent: Callable[[Any], np.ndarray],
    seeds: Sequence[int],
    env_kwargs: dict | None = None,
    reset_options: Callable[[int], dict | None] | None = None,
    on_episode_end: Callable[[int, Any], None] | None = None,
) -> RolloutStats:
    """Roll ``agent`` out once per seed; success is ``info["success"]`` at the episode end."""
    env = make_env(env_name, **(env_kwargs or {}))
    stats = RolloutStats()
    for seed in seeds:
        options = reset_options(seed) if reset_options else None
        obs, info = env.reset(seed=int(seed), options=options)
        if hasattr(agent, "reset"):
            agent.reset()
        total, steps = 0.0, 0
        visited = [flat_obs(obs)]
        while True:
            t0 = time.perf_counter()
            action = agent(obs)
            stats.latencies_ms.append(1e3 * (time.perf_counter() - t0))
            stats.nfes.append(int(getattr(agent, "last_nfe", 0)))
            obs, reward, terminated, truncated, info = env.step(action)
            visited.append(flat_obs(obs))
            total += float(reward)
            steps += 1
            if terminated or truncated:
                break
        stats.returns.append(total)
        stats.successes.append(bool(info.get("success", False)))
        stats.lengths.append(steps)
        stats.infos.append(dict(info))
        stats.trajectories.append(np.stack(visited))
        if on_episode_end is not None:
            on_episode_end(int(seed), agent)
    env.close()
    return stats


def normalized_score(value: float, random_ref: float, expert_ref: float) -> float:
    """D4RL's normalised score ``100 (value - random) / (expert - random)``."""
    if expert_ref == random_ref:
        raise ValueError(f"expert and random references are equal ({expert_ref}): no scale")
    return 100.0 * (value - random_ref) / (expert_ref - random_ref)


# ----------------------------------------------------------------------------------------------
# Reference agents (measured here, on the same seeds)
# ----------------------------------------------------------------------------------------------


class RandomAgent:
    """Uniform random actions from the environment's action box."""

    def __init__(self, low: float, high: float, dim: int, seed: int = 0) -> None:
        self.low, self.high, self.dim = low, high, dim
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: Any) -> np.ndarray:
        return self.rng.uniform(self.low, self.high, self.dim).astype(np.float32)


class MazeExpertAgent:
    """The dataset's waypoint controller, without action noise: the maze's expert reference."""

    def __init__(self, env_name: str) -> None:
        self.ctrl = WaypointController(MazeMap.from_env(make_env(env_name)))
        self.last_nfe = 0

    def reset(self) -> None:
        self.ctrl.reset()

    def __call__(self, obs: dict) -> np.ndarray:
        return self.ctrl(flat_obs(obs), np.asarray(obs["desired_goal"]))


class PendulumExpertAgent:
    """The swing-up controller without noise: the Pendulum expert reference."""

    last_nfe = 0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return np.array([pendulum_expert(obs)], dtype=np.float32)
