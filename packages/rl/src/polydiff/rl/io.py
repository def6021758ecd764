"""Export: rollout animations (GIF) of MuJoCo environments rendered off-screen.

The rollout runs in the calling process without rendering and records its actions; a child
process replays them (MuJoCo is deterministic) with EGL rendering and writes the GIF, so the
OpenGL context never lives in the process that trains and runs networks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from polydiff.core.fileio import atomic_path
from polydiff.rl.envs import make_env


def record_actions(
    env_name: str, agent: Callable[[Any], np.ndarray], seed: int, max_steps: int | None = None
) -> np.ndarray:
    """Roll ``agent`` out once (no rendering) and return its actions ``(T, A)``."""
    env = make_env(env_name, **({"max_episode_steps": max_steps} if max_steps else {}))
    obs, _ = env.reset(seed=seed)
    if hasattr(agent, "reset"):
        agent.reset()
    actions = []
    while True:
        actions.append(np.asarray(agent(obs), dtype=np.float32))
        obs, _, terminated, truncated, _ = env.step(actions[-1])
        if terminated or truncated:
            break
    env.close()
    return np.stack(actions)


def render_replay_gif(
    env_name: str, seed: int, actions: np.ndarray, path: str | Path, every: int = 2,
    downsample: int = 2,
) -> Path:  # fmt: skip
    """Replay ``actions`` from ``reset(seed)`` with off-screen rendering and write a GIF."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from PIL import Image

    env = make_env(env_name, render_mode="rgb_array", max_episode_steps=len(actions) + 1)
    env.reset(seed=seed)
    frames = [Image.fromarray(env.render()[::downsample, ::downsample])]
    for t, action in enumerate(actions, start=1):
        env.step(action)
        if t % every == 0 or t == len(actions):
            frames.append(Image.fromarray(env.render()[::downsample, ::downsample]))
    env.close()
    path = Path(path)
    with atomic_path(path) as tmp:
        frames[0].save(tmp, save_all=True, append_images=frames[1:], duration=40 * every, loop=0)
    return path


def save_rollout_gif(
    env_name: str,
    agent: Callable[[Any], np.ndarray],
    seed: int,
    path: str | Path,
    every: int = 2,
    downsample: int = 2,
    max_steps: int | None = None,
) -> Path:
    """Roll ``agent`` out and write every ``every``-th frame as a GIF (rendered in a child
    process through EGL, ``MUJOCO_GL=egl`` unless set). Raises ``RuntimeError`` when the
    child cannot render (no off-screen OpenGL)."""
    actions = record_actions(env_name, agent, seed, max_steps)
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "actions.npz"
        np.savez(npz, actions=actions)
        spec = {"env": env_name, "seed": seed, "actions": str(npz), "path": str(path),
                "every": every, "downsample": downsample}  # fmt: skip
        env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
        proc = subprocess.run(
            [sys.executable, "-m", "polydiff.rl.io", json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
        )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"rendering {env_name} failed: {tail[0]}")
    return Path(path)


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    render_replay_gif(
        spec["env"], spec["seed"], np.load(spec["actions"])["actions"], spec["path"],
        every=spec["every"], downsample=spec["downsample"],
    )  # fmt: skip
