"""Dataset generators: valid episodes, rewards equal to the environment's own, Minari round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from polydiff.rl.datasets import (
    ActionChunks,
    TrajectoryWindows,
    discounted_returns,
    generate_dataset,
    load_minari,
    maze_waypoint_episodes,
    pendulum_mixed_episodes,
    two_path_episodes,
)
from polydiff.rl.envs import GOAL_RADIUS, MazeMap, make_env


@pytest.fixture(scope="module")
def maze_episodes():
    return maze_waypoint_episodes("pointmaze-umaze", n_episodes=2, episode_len=150, seed=3)


def test_maze_episodes_shapes_and_env_rewards(maze_episodes) -> None:
    for ep in maze_episodes:
        assert ep.obs.shape == (151, 4) and ep.actions.shape == (150, 2)
        assert np.abs(ep.actions).max() <= 1.0
        assert not ep.terminations.any() and ep.truncations[-1] and not ep.truncations[:-1].any()
        # sparse reward of PointMaze: 1 iff the ball is within 0.45 of the goal after the step
        o = ep.observations
        dist = np.linalg.norm(o["achieved_goal"][1:] - o["desired_goal"][1:], axis=1)
        np.testing.assert_array_equal(ep.rewards, (dist <= GOAL_RADIUS).astype(float))
        np.testing.assert_array_equal(ep.infos["success"][1:], dist <= GOAL_RADIUS)
    # the waypoint expert reaches several goals in 150 steps of the U-maze
    assert sum(ep.rewards.sum() > 0 for ep in maze_episodes) == 2
    # never inside a wall cell
    maze = MazeMap.from_env(make_env("pointmaze-umaze"))
    assert not any(maze.wall_hit(ep.obs[:, :2]).any() for ep in maze_episodes)


def test_pendulum_rewards_match_dynamics() -> None:
    eps = pendulum_mixed_episodes(n_per_level=1, noise_levels=(0.0, 2.0), n_random=1, seed=0)
    assert len(eps) == 3
    for ep in eps:
        assert ep.obs.shape == (201, 3) and ep.actions.shape == (200, 1)
        th = np.arctan2(ep.obs[:-1, 1], ep.obs[:-1, 0])
        u = np.clip(ep.actions[:, 0], -2, 2)
        expected = -(th**2 + 0.1 * ep.obs[:-1, 2] ** 2 + 0.001 * u**2)
        np.testing.assert_allclose(ep.rewards, expected, rtol=1e-4, atol=1e-4)
    ret = [ep.rewards.sum() for ep in eps]
    # expert (noise 0) > noisy expert > random: a mixed-quality dataset
    assert ret[0] > -250 and ret[0] > ret[1] > ret[2]


def test_two_path_both_modes_and_success() -> None:
    eps = two_path_episodes(n_episodes=40, seed=1)
    sides = np.array([np.sign(ep.obs[:, 0][np.argmin(np.abs(ep.obs[:, 1]))]) for ep in eps])
    assert 10 <= (sides > 0).sum() <= 30 and (sides < 0).sum() == 40 - (sides > 0).sum()
    for ep in eps:
        assert ep.terminations[-1] and ep.rewards[-1] == 1.0 and ep.rewards[:-1].sum() == 0
        assert np.linalg.norm(ep.obs, axis=1).min() > 0.5  # never touches the obstacle


def test_minari_round_trip_and_stats(tmp_path, monkeypatch) -> None:
    import minari

    path = generate_dataset("two-path-expert", tmp_path, seed=0, n_episodes=8)
    assert path == tmp_path / "two-path-expert-s0-n_episodes8-v0" / "data"
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["total_episodes"] == 8 and meta["polydiff"]["format_version"] == 1
    # Minari itself reads what we wrote
    md = minari.MinariDataset(path)
    assert md.total_episodes == 8
    data = load_minari(path)
    ep0 = next(iter(md.iterate_episodes()))
    np.testing.assert_array_equal(ep0.actions, data.episodes[0].actions)
    all_actions = np.concatenate([e.actions for e in data.episodes])
    np.testing.assert_allclose(data.stats["actions"]["max"], all_actions.max(0), rtol=1e-6)
    # by id under MINARI_DATASETS_PATH, like a dataset the user downloaded earlier
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    assert load_minari("two-path-expert-s0-n_episodes8-v0").n_steps == data.n_steps
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        load_minari(tmp_path / "missing")


def test_windows_and_chunks(tmp_path) -> None:
    data = load_minari(generate_dataset("pendulum-mixed", tmp_path, n_per_level=1, n_random=1))
    w = TrajectoryWindows(data, horizon=16, stride=2, discount=0.9, return_value=True)
    assert len(w) == 5 * (200 - 30) and w.transition_dim == 4
    item = w[7]
    assert item["x"].shape == (16, 4) and item["x"].abs().max() <= 1.0 + 1e-5
    ep = data.episodes[0]
    raw = w.normalizer.unnormalize(item["x"])
    np.testing.assert_allclose(raw[:, :3], ep.obs[7 : 7 + 31 : 2], atol=1e-5)
    g = discounted_returns(ep.rewards, 0.9)[7]
    assert item["value"].item() * w.value_std + w.value_mean == pytest.approx(g, rel=1e-4)
    assert "vector" not in item
    ws = TrajectoryWindows(data, horizon=16, stride=2, start_cond=True)
    torch.testing.assert_close(ws[7]["vector"], ws[7]["x"][0, :3])  # the normalised start state

    toy = load_minari(generate_dataset("two-path-expert", tmp_path, n_episodes=4))
    c = ActionChunks(toy, obs_horizon=2, pred_horizon=16, action_horizon=8)
    first = c[0]
    assert first["x"].shape == (16, 2) and first["vector"].shape == (4,)
    # before the episode start the first observation is repeated
    torch.testing.assert_close(first["vector"][:2], first["vector"][2:])
    # the last chunk repeats the final action
    k, t = c.index[len(toy.episodes[0]) - 1 + 7 - 14]
    assert (k, t) == (0, len(toy.episodes[0]) - 1 + 7 - 14)
    last = c[len(toy.episodes[0]) - 1 + 7 - 14]
    torch.testing.assert_close(last["x"][-1], c.act[0][-1])


@pytest.mark.slow
def test_rollout_gif_of_the_expert(tmp_path) -> None:
    from PIL import Image

    from polydiff.rl.evaluate import MazeExpertAgent
    from polydiff.rl.io import record_actions, save_rollout_gif

    agent = MazeExpertAgent("pointmaze-umaze")
    actions = record_actions("pointmaze-umaze", agent, 0, max_steps=40)
    try:  # rendering happens in a child process (EGL); skip where there is no off-screen GL
        path = save_rollout_gif(
            "pointmaze-umaze", agent, 0, tmp_path / "a.gif", every=10, downsample=4, max_steps=40
        )
    except RuntimeError as err:
        pytest.skip(f"MuJoCo off-screen rendering unavailable: {err}")
    gif = Image.open(path)
    # frames at steps 0, 10, 20... and the last one (identical frames may be merged by PIL)
    assert gif.size == (120, 120) and 2 <= gif.n_frames <= len(actions) // 10 + 2
