"""Figures: planned vs executed trajectories on the maze map (PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from polydiff.core.fileio import atomic_path
from polydiff.rl.envs import MazeMap, make_env


def _save(fig, path: str | Path) -> Path:
    """Lay out ``fig``, write it to ``path`` atomically (PNG at 110 dpi) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def plot_maze_plans(
    env_name: str,
    episodes: Sequence[tuple[Sequence[tuple[int, np.ndarray]], np.ndarray]],
    path: str | Path,
    columns: int = 2,
) -> Path:
    """One panel per episode: walls, every plan (thin, coloured by replanning time) and the
    executed path (thick black); start and goal marked. ``episodes`` holds
    ``(plans, executed_xy)`` with ``plans = [(env_step, (H, D) trajectory), ...]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maze = MazeMap.from_env(make_env(env_name))
    rows_n = max(1, int(np.ceil(len(episodes) / columns)))
    cols_n = min(columns, max(len(episodes), 1))
    fig, axes = plt.subplots(rows_n, cols_n, figsize=(3.2 * cols_n, 3.2 * rows_n), squeeze=False)
    s = maze.scaling
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (plans, executed) in zip(axes.ravel(), episodes):
        for r, c in np.argwhere(maze.cells == 1):
            x, y = maze.cell_to_xy(np.array([r, c]))
            ax.add_patch(plt.Rectangle((x - s / 2, y - s / 2), s, s, color="0.35"))
        cmap = plt.get_cmap("viridis")
        last = max((t for t, _ in plans), default=1) or 1
        for t, traj in plans:
            ax.plot(traj[:, 0], traj[:, 1], "-", lw=1, alpha=0.8, color=cmap(t / last))
        if len(executed):
            ax.plot(executed[:, 0], executed[:, 1], "k-", lw=2.2, label="executed")
            ax.plot(*executed[0], "o", color="tab:green", ms=7, label="start")
        if plans:
            goal = plans[0][1][-1, :2]
            ax.plot(*goal, "*", color="tab:red", ms=12, label="goal")
        rows, cols = maze.cells.shape
        ax.set_xlim(-cols * s / 2, cols * s / 2)
        ax.set_ylim(-rows * s / 2, rows * s / 2)
        ax.set_aspect("equal")
    axes.ravel()[0].legend(loc="upper right", fontsize=6)
    fig.suptitle(f"Diffuser on {env_name}: plans (thin) vs executed (black)", fontsize=9)
    return _save(fig, path)


def plot_two_path(rollouts: dict[str, Sequence[np.ndarray]], path: str | Path) -> Path:
    """Executed paths of each policy on the two-path toy (one panel per policy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from polydiff.rl.envs import TwoPathEnv

    n = max(len(rollouts), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.0 * n, 3.2), squeeze=False)
    for ax, (name, trajs) in zip(axes.ravel(), rollouts.items()):
        ax.add_patch(plt.Circle((0, 0), TwoPathEnv.obstacle_radius, color="0.4"))
        ax.add_patch(plt.Circle(tuple(TwoPathEnv.goal), TwoPathEnv.goal_radius, color="tab:red"))
        for traj in trajs:
            ax.plot(traj[:, 0], traj[:, 1], "-", lw=0.8, alpha=0.6)
        ax.set_xlim(-1.5, 1.5)
        ax.set_ylim(-1.3, 1.3)
        ax.set_aspect("equal")
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)
