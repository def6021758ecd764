"""Environments and the scripted experts that generate their datasets.

- PointMaze U-maze / medium / large (gymnasium-robotics on the ``mujoco`` package: the
  successor of D4RL's maze2d) with a waypoint controller (BFS over maze cells + PD tracking,
  as D4RL generated maze2d);
- gymnasium's ``Pendulum-v1`` with an energy-shaping swing-up controller (Astrom & Furuta 2000)
  and a PD balancer near the top;
- ``TwoPathEnv``: a 2-D point that must go around a disc obstacle to a goal, with two equally
  good ways (left or right): the multi-modal toy of Diffusion Policy (Chi et al. 2023, fig. 3).

Every environment is created by :func:`make_env` from a short name; observations handed to the
models are flat float vectors (:func:`flat_obs`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

# gymnasium ids of the maze sizes; the episode limits are gymnasium-robotics' own
MAZE_IDS = {
    "pointmaze-umaze": "PointMaze_UMaze-v3",
    "pointmaze-medium": "PointMaze_Medium-v3",
    "pointmaze-large": "PointMaze_Large-v3",
}
GOAL_RADIUS = 0.45  # PointMaze's success distance (maze_v4.compute_terminated)


def env_names() -> list[str]:
    """Names accepted by :func:`make_env`."""
    return [*MAZE_IDS, "pendulum", "two-path"]


def make_env(name: str, **kwargs: Any) -> gym.Env:
    """Build an environment by short name (``pointmaze-umaze``, ``pendulum``, ``two-path``...).

    Maze keyword arguments go to gymnasium-robotics (``continuing_task``, ``reset_target``,
    ``max_episode_steps``); rendering is off unless ``render_mode`` is given.
    """
    if name in MAZE_IDS:
        import gymnasium_robotics

        gym.register_envs(gymnasium_robotics)
        kwargs.setdefault("continuing_task", False)
        return gym.make(MAZE_IDS[name], **kwargs)
    if name == "pendulum":
        return gym.make("Pendulum-v1", **kwargs)
    if name == "two-path":
        return gym.wrappers.TimeLimit(
            TwoPathEnv(**kwargs), max_episode_steps=TwoPathEnv.max_episode_steps
        )
    raise KeyError(f"unknown environment {name!r}; choose one of {env_names()}")


def flat_obs(obs: Any) -> np.ndarray:
    """The model's view of an observation: the maze's ``observation`` entry, else the array."""
    if isinstance(obs, dict):
        return np.asarray(obs["observation"], dtype=np.float32)
    return np.asarray(obs, dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# PointMaze: map helpers and the waypoint controller
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MazeMap:
    """Cell grid of a PointMaze (1 = wall) with gymnasium-robotics' cell <-> xy convention."""

    cells: np.ndarray  # (rows, cols) int, 1 = wall
    scaling: float

    @classmethod
    def from_env(cls, env: gym.Env) -> MazeMap:
        maze = env.unwrapped.maze
        cells = np.array([[1 if c == 1 else 0 for c in row] for row in maze.maze_map])
        return cls(cells=cells, scaling=float(maze.maze_size_scaling))

    @property
    def free_cells(self) -> np.ndarray:
        """(N, 2) row/col of every free cell."""
        return np.argwhere(self.cells == 0)

    def cell_to_xy(self, cell: np.ndarray) -> np.ndarray:
        """Centre of cell(s) ``(..., 2)`` row/col -> ``(..., 2)`` x/y."""
        cell = np.asarray(cell, dtype=np.float64)
        rows, cols = self.cells.shape
        x = (cell[..., 1] + 0.5) * self.scaling - cols * self.scaling / 2
        y = rows * self.scaling / 2 - (cell[..., 0] + 0.5) * self.scaling
        return np.stack([x, y], axis=-1)

    def xy_to_cell(self, xy: np.ndarray) -> np.ndarray:
        """Cell row/col containing point(s) ``(..., 2)``."""
        xy = np.asarray(xy, dtype=np.float64)
        rows, cols = self.cells.shape
        r = np.floor((rows * self.scaling / 2 - xy[..., 1]) / self.scaling)
        c = np.floor((xy[..., 0] + cols * self.scaling / 2) / self.scaling)
        return np.stack([r, c], axis=-1).astype(np.int64)

    def shortest_path(self, start: np.ndarray, goal: np.ndarray) -> list[tuple[int, int]]:
        """Breadth-first shortest path of cells from ``start`` to ``goal`` (both included)."""
        start_t, goal_t = (int(start[0]), int(start[1])), (int(goal[0]), int(goal[1]))
        parent: dict[tuple[int, int], tuple[int, int] | None] = {start_t: None}
        queue = deque([start_t])
        while queue:
            cell = queue.popleft()
            if cell == goal_t:
                break
            for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                nxt = (cell[0] + dr, cell[1] + dc)
                if self.cells[nxt] == 0 and nxt not in parent:
                    parent[nxt] = cell
                    queue.append(nxt)
        if goal_t not in parent:
            raise ValueError(f"no path from cell {start_t} to cell {goal_t}")
        path, node = [], goal_t
        while node is not None:
            path.append(node)
            node = parent[node]
        return path[::-1]

    def wall_hit(self, xy: np.ndarray) -> np.ndarray:
        """True where a point lies inside a wall cell (or outside the map)."""
        rc = self.xy_to_cell(xy)
        rows, cols = self.cells.shape
        inside = (rc[..., 0] >= 0) & (rc[..., 0] < rows) & (rc[..., 1] >= 0) & (rc[..., 1] < cols)
        hit = np.ones(rc.shape[:-1], dtype=bool)
        r, c = np.clip(rc[..., 0], 0, rows - 1), np.clip(rc[..., 1], 0, cols - 1)
        hit[inside] = self.cells[r[inside], c[inside]] == 1
        return hit


class WaypointController:
    """D4RL maze2d's expert: BFS over cells to the goal, PD control towards the next waypoint.

    ``action = clip(p_gain * (waypoint - pos) - d_gain * vel, -1, 1)``; waypoints are cell
    centres along the shortest path and finally the goal itself.
    """

    def __init__(
        self, maze: MazeMap, p_gain: float = 10.0, d_gain: float = 1.0, switch_radius: float = 0.3
    ) -> None:
        self.maze, self.p_gain, self.d_gain = maze, p_gain, d_gain
        self.switch_radius = switch_radius
        self._goal: np.ndarray | None = None
        self._waypoints: list[np.ndarray] = []

    def reset(self) -> None:
        self._goal, self._waypoints = None, []

    def _plan(self, pos: np.ndarray, goal: np.ndarray) -> None:
        cells = self.maze.shortest_path(self.maze.xy_to_cell(pos), self.maze.xy_to_cell(goal))
        self._waypoints = [self.maze.cell_to_xy(np.array(c)) for c in cells[1:-1]] + [goal.copy()]
        self._goal = goal.copy()

    def __call__(self, obs: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Action for flat maze observation ``obs = (x, y, vx, vy)`` and goal ``(x, y)``."""
        pos, vel = obs[:2], obs[2:4]
        if self._goal is None or np.linalg.norm(goal - self._goal) > 1e-6:
            self._plan(pos, goal)
        while len(self._waypoints) > 1 and (
            np.linalg.norm(self._waypoints[0] - pos) < self.switch_radius
        ):
            self._waypoints.pop(0)
        return track(pos, vel, self._waypoints[0], p_gain=self.p_gain, d_gain=self.d_gain)


def track(
    pos: np.ndarray,
    vel: np.ndarray,
    target: np.ndarray,
    p_gain: float = 10.0,
    d_gain: float = 1.0,
    target_vel: np.ndarray | None = None,
) -> np.ndarray:
    """PD tracking force towards ``target`` (and ``target_vel``), clipped to the unit box."""
    dvel = -vel if target_vel is None else target_vel - vel
    return np.clip(p_gain * (target - pos) + d_gain * dvel, -1.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Pendulum: energy-shaping swing-up
# ----------------------------------------------------------------------------------------------

PENDULUM_A = 15.0  # 3 g / (2 l) with gymnasium's g = 10, l = 1: theta'' = A sin(theta) + B u
PENDULUM_B = 3.0  # 3 / (m l^2)
PENDULUM_MAX_TORQUE = 2.0


def pendulum_expert(obs: np.ndarray, k_energy: float = 0.5) -> float:
    """Energy-shaping swing-up torque for ``obs = (cos th, sin th, th_dot)``, theta=0 upright.

    ``E = th_dot^2 / 2 + A cos th`` has ``dE/dt = B u th_dot``; pumping ``u ~ (E* - E) th_dot``
    drives E to the upright energy ``E* = A``; near the top a PD law balances.
    """
    cos_th, sin_th, th_dot = float(obs[0]), float(obs[1]), float(obs[2])
    th = float(np.arctan2(sin_th, cos_th))
    if cos_th > 0.85:  # within ~32 degrees of upright: PD balance
        u = -(10.0 * th + 2.0 * th_dot)
    else:
        energy = 0.5 * th_dot**2 + PENDULUM_A * cos_th
        u = k_energy * (PENDULUM_A - energy) * np.sign(th_dot if th_dot != 0 else 1.0)
    return float(np.clip(u, -PENDULUM_MAX_TORQUE, PENDULUM_MAX_TORQUE))


# ----------------------------------------------------------------------------------------------
# Two-path toy: two equally good ways around an obstacle
# ----------------------------------------------------------------------------------------------


class TwoPathEnv(gym.Env):
    """A point at (0, -1) must reach (0, 1) around a disc of radius 0.5 at the origin.

    Observation: position ``(x, y)``. Action: velocity in ``[-1, 1]^2`` times ``dt = 0.1``.
    Reward 1 and termination on reaching the goal (radius 0.15); touching the obstacle ends the
    episode with reward 0. Going left and going right are equally short.
    """

    metadata = {"render_modes": []}
    max_episode_steps = 60
    start = np.array([0.0, -1.0])
    goal = np.array([0.0, 1.0])
    obstacle_radius = 0.5
    goal_radius = 0.15
    dt = 0.1

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-2.0, 2.0, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._pos = self.start.copy()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._pos = self.start + self.np_random.uniform(-0.05, 0.05, size=2)
        return self._pos.astype(np.float32), {}

    def step(self, action: np.ndarray):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self._pos = np.clip(self._pos + self.dt * action, -2.0, 2.0)
        collided = bool(np.linalg.norm(self._pos) < self.obstacle_radius)
        success = bool(np.linalg.norm(self._pos - self.goal) < self.goal_radius)
        info = {"success": success, "collision": collided, "side": float(np.sign(self._pos[0]))}
        return self._pos.astype(np.float32), float(success), success or collided, False, info


class TwoPathExpert:
    """Scripted demonstrator: picks left or right at random per episode, then follows waypoints."""

    def __init__(self, rng: np.random.Generator, noise: float = 0.05) -> None:
        self.rng, self.noise = rng, noise
        self.side = 1.0

    def reset(self) -> None:
        self.side = float(self.rng.choice([-1.0, 1.0]))

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        pos = np.asarray(obs, dtype=np.float64)
        waypoint = np.array([0.8 * self.side, 0.0]) if pos[1] < 0.0 else TwoPathEnv.goal
        direction = waypoint - pos
        action = direction / max(np.linalg.norm(direction), 1e-6)
        action = action + self.noise * self.rng.standard_normal(2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
