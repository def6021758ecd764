"""Export: rollout animations (GIF) of MuJoCo environments rendered off-screen."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from polydiff.rl.envs import make_env


def save_rollout_gif(
    env_name: str,
    agent: Callable[[Any], np.ndarray],
    seed: int,
    path: str | Path,
    every: int = 2,
    downsample: int = 2,
    max_steps: int | None = None,
) -> Path:
    """Roll ``agent`` out once with off-screen rendering and write every ``every``-th frame as
    a GIF. MuJoCo renders headless through EGL (``MUJOCO_GL=egl``, set here when unset)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from PIL import Image

    kwargs = {"render_mode": "rgb_array"}
    if max_steps is not None:
        kwargs["max_episode_steps"] = max_steps
    env = make_env(env_name, **kwargs)
    obs, _ = env.reset(seed=seed)
    if hasattr(agent, "reset"):
        agent.reset()
    frames, t = [], 0
    while True:
        if t % every == 0:
            frames.append(Image.fromarray(env.render()[::downsample, ::downsample]))
        obs, _, terminated, truncated, _ = env.step(agent(obs))
        t += 1
        if terminated or truncated:
            frames.append(Image.fromarray(env.render()[::downsample, ::downsample]))
            break
    env.close()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.gif")
    frames[0].save(tmp, save_all=True, append_images=frames[1:], duration=40 * every, loop=0)
    os.replace(tmp, path)
    return path
