"""Offline datasets: generation with scripted experts, Minari storage, windows for training.

Episodes are stored in Minari's on-disk format (``<root>/<dataset_id>/data/metadata.json`` and
``main_data.hdf5``, written through Minari's own storage layer), so they load with
``minari.MinariDataset`` and a user's own Minari datasets load with :func:`load_minari`.
Per-dimension normalisation statistics live inside ``metadata.json`` (key ``polydiff``,
versioned), as lerobot keeps them inside its dataset format.

Training views (dataset items are dicts ``{"x": Tensor, <cond keys>}``):

- :class:`TrajectoryWindows`: windows of horizon H (optionally every ``stride``-th step) of
  concatenated ``[obs, action]`` for Diffuser (Janner et al. 2022), with the discounted
  return-to-go of the window start for its value function;
- :class:`ActionChunks`: ``obs_horizon`` observations -> ``pred_horizon`` actions for Diffusion
  Policy (Chi et al. 2023), padded at episode ends as in the paper's ``SequenceSampler``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polydiff.rl.envs import (
    MazeMap,
    TwoPathExpert,
    WaypointController,
    flat_obs,
    make_env,
    pendulum_expert,
)

FORMAT_VERSION = 1


def default_data_root() -> Path:
    """Where generated datasets go: ``$POLYDIFF_RL_DATA`` or ``~/.cache/polydiff/rl``."""
    env = os.environ.get("POLYDIFF_RL_DATA")
    return Path(env) if env else Path.home() / ".cache" / "polydiff" / "rl"


# ----------------------------------------------------------------------------------------------
# Episodes
# ----------------------------------------------------------------------------------------------


@dataclass
class Episode:
    """One episode in Minari's layout: T actions, T+1 observations (the first is the reset's)."""

    observations: np.ndarray | dict[str, np.ndarray]  # (T+1, ...) or dict of such
    actions: np.ndarray  # (T, A)
    rewards: np.ndarray  # (T,)
    terminations: np.ndarray  # (T,) bool
    truncations: np.ndarray  # (T,) bool
    infos: dict[str, np.ndarray] = field(default_factory=dict)  # each (T+1, ...)
    seed: int | None = None

    def __post_init__(self) -> None:
        t = len(self.actions)
        n_obs = len(self.obs)
        if n_obs != t + 1:
            raise ValueError(f"episode has {t} actions but {n_obs} observations (expected T+1)")
        for name in ("rewards", "terminations", "truncations"):
            if len(getattr(self, name)) != t:
                raise ValueError(f"episode {name} has length {len(getattr(self, name))}, not {t}")

    @property
    def obs(self) -> np.ndarray:
        """Flat observations ``(T+1, D)`` (the maze's ``observation`` entry)."""
        if isinstance(self.observations, dict):
            return np.asarray(self.observations["observation"], dtype=np.float32)
        return np.asarray(self.observations, dtype=np.float32).reshape(len(self.observations), -1)

    def __len__(self) -> int:
        return len(self.actions)


def _stack_tree(items: list[Any]) -> Any:
    if isinstance(items[0], dict):
        return {k: _stack_tree([it[k] for it in items]) for k in items[0]}
    return np.stack([np.asarray(it) for it in items])


def rollout_episode(
    env: Any,
    act: Callable[[Any], np.ndarray],
    seed: int,
    reset_options: dict | None = None,
    info_keys: Sequence[str] = ("success",),
) -> Episode:
    """Run one episode of ``act(raw_obs) -> action`` and record it in Minari's layout."""
    obs, info = env.reset(seed=seed, options=reset_options)
    observations, actions, rewards, terms, truncs = [obs], [], [], [], []
    infos = {k: [info.get(k, False)] for k in info_keys}
    while True:
        action = np.asarray(act(obs), dtype=np.float32).reshape(env.action_space.shape)
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(float(reward))
        terms.append(bool(terminated))
        truncs.append(bool(truncated))
        for k in info_keys:
            infos[k].append(info.get(k, False))
        if terminated or truncated:
            break
    return Episode(
        observations=_stack_tree(observations),
        actions=np.stack(actions).astype(np.float32),
        rewards=np.asarray(rewards, dtype=np.float64),
        terminations=np.asarray(terms),
        truncations=np.asarray(truncs),
        infos={k: np.asarray(v) for k, v in infos.items()},
        seed=seed,
    )


# ----------------------------------------------------------------------------------------------
# Generators (D4RL-style scripted data)
# ----------------------------------------------------------------------------------------------


def maze_waypoint_episodes(
    env_name: str = "pointmaze-umaze",
    n_episodes: int = 20,
    episode_len: int = 500,
    seed: int = 0,
    action_noise: float = 0.1,
) -> list[Episode]:
    """D4RL maze2d-style data: the waypoint controller chases random goals in a continuing maze.

    The environment resamples its goal on arrival (``continuing_task=True, reset_target=True``),
    so one episode visits many goals; Gaussian action noise adds diversity.
    """
    env = make_env(env_name, continuing_task=True, reset_target=True, max_episode_steps=episode_len)
    ctrl = WaypointController(MazeMap.from_env(env))
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(n_episodes):
        ctrl.reset()

        def act(obs: dict) -> np.ndarray:
            a = ctrl(flat_obs(obs), obs["desired_goal"])
            return np.clip(a + action_noise * rng.standard_normal(2), -1.0, 1.0)

        episodes.append(rollout_episode(env, act, seed=seed * 100_003 + i))
    env.close()
    return episodes


def pendulum_mixed_episodes(
    n_per_level: int = 10,
    noise_levels: Sequence[float] = (0.0, 0.5, 1.0, 2.0),
    n_random: int = 10,
    seed: int = 0,
) -> list[Episode]:
    """Mixed-quality Pendulum data: the swing-up expert at several torque-noise levels + random."""
    env = make_env("pendulum")
    rng = np.random.default_rng(seed)
    episodes = []
    i = 0
    for noise in noise_levels:
        for _ in range(n_per_level):

            def act(obs: np.ndarray, noise: float = noise) -> np.ndarray:
                u = pendulum_expert(obs) + noise * rng.standard_normal()
                return np.array([np.clip(u, -2.0, 2.0)])

            episodes.append(rollout_episode(env, act, seed=seed * 100_003 + i, info_keys=()))
            i += 1
    for _ in range(n_random):
        episodes.append(
            rollout_episode(
                env, lambda _o: rng.uniform(-2.0, 2.0, 1), seed=seed * 100_003 + i, info_keys=()
            )
        )
        i += 1
    env.close()
    return episodes


def two_path_episodes(n_episodes: int = 100, seed: int = 0, noise: float = 0.05) -> list[Episode]:
    """Demonstrations on the two-path toy: half go left of the obstacle, half go right."""
    env = make_env("two-path")
    expert = TwoPathExpert(np.random.default_rng(seed), noise=noise)
    episodes = []
    for i in range(n_episodes):
        expert.reset()
        episodes.append(
            rollout_episode(env, expert, seed=seed * 100_003 + i, info_keys=("success", "side"))
        )
    env.close()
    return episodes


# dataset name -> (environment name, generator)
GENERATORS: dict[str, tuple[str, Callable[..., list[Episode]]]] = {
    "pointmaze-umaze-waypoint": ("pointmaze-umaze", maze_waypoint_episodes),
    "pointmaze-medium-waypoint": (
        "pointmaze-medium",
        lambda **kw: maze_waypoint_episodes("pointmaze-medium", **kw),
    ),
    "pointmaze-large-waypoint": (
        "pointmaze-large",
        lambda **kw: maze_waypoint_episodes("pointmaze-large", **kw),
    ),
    "pendulum-mixed": ("pendulum", pendulum_mixed_episodes),
    "two-path-expert": ("two-path", two_path_episodes),
}


# ----------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------


def compute_stats(episodes: Sequence[Episode]) -> dict[str, dict[str, list[float]]]:
    """Per-dimension min / max / mean / std of flat observations and of actions."""
    out = {}
    for key, arrays in (
        ("observations", [e.obs for e in episodes]),
        ("actions", [e.actions.reshape(len(e), -1) for e in episodes]),
    ):
        a = np.concatenate(arrays).astype(np.float64)
        out[key] = {
            "min": a.min(0).tolist(),
            "max": a.max(0).tolist(),
            "mean": a.mean(0).tolist(),
            "std": a.std(0).tolist(),
        }
    return out


class MinMaxNormalizer:
    """Per-dimension affine map of ``[min, max]`` to ``[-1, 1]`` (Diffuser / Diffusion Policy)."""

    def __init__(self, low: Sequence[float], high: Sequence[float], eps: float = 1e-6) -> None:
        self.low = torch.as_tensor(np.asarray(low), dtype=torch.float32)
        high_t = torch.as_tensor(np.asarray(high), dtype=torch.float32)
        self.scale = torch.clamp(high_t - self.low, min=eps) / 2.0

    @classmethod
    def from_stats(cls, stats: dict[str, dict[str, list[float]]], keys: Sequence[str]):
        """Normaliser over the concatenation of ``keys`` (e.g. observations then actions)."""
        low = sum((list(stats[k]["min"]) for k in keys), [])
        high = sum((list(stats[k]["max"]) for k in keys), [])
        return cls(low, high)

    def normalize(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32)
        return (x - self.low) / self.scale - 1.0

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 1.0) * self.scale + self.low

    def __len__(self) -> int:
        return len(self.low)


# ----------------------------------------------------------------------------------------------
# Minari storage
# ----------------------------------------------------------------------------------------------


@dataclass
class OfflineDataset:
    """Episodes plus the metadata (and normalisation statistics) stored with them."""

    episodes: list[Episode]
    stats: dict[str, dict[str, list[float]]]
    env_name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        return sum(len(e) for e in self.episodes)


def write_minari(
    root: str | os.PathLike,
    dataset_id: str,
    episodes: Sequence[Episode],
    env_name: str,
) -> Path:
    """Write episodes as a Minari dataset ``<root>/<dataset_id>/data`` and return that path."""
    from minari import __version__ as minari_version
    from minari.data_collector.episode_buffer import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    data_path = Path(root) / dataset_id / "data"
    if data_path.exists():
        raise FileExistsError(f"{data_path} exists; delete it or choose another root")
    data_path.parent.mkdir(parents=True, exist_ok=True)
    env = make_env(env_name)
    storage = MinariStorage.new(
        data_path,
        observation_space=env.observation_space,
        action_space=env.action_space,
        data_format="hdf5",
    )
    storage.update_episodes(
        EpisodeBuffer(
            id=i,
            seed=e.seed,
            observations=e.observations,
            actions=e.actions,
            rewards=e.rewards,
            terminations=e.terminations,
            truncations=e.truncations,
            infos=e.infos or None,
        )
        for i, e in enumerate(episodes)
    )
    storage.update_metadata(
        {
            "dataset_id": dataset_id,
            "minari_version": minari_version,
            "algorithm_name": "polydiff scripted expert",
            "polydiff": {
                "format_version": FORMAT_VERSION,
                "env_name": env_name,
                "stats": compute_stats(episodes),
            },
        }
    )
    env.close()
    return data_path


def _resolve_minari_path(id_or_path: str | os.PathLike) -> Path:
    path = Path(id_or_path)
    for candidate in (path, path / "data"):
        if (candidate / "metadata.json").is_file():
            return candidate
    root = Path(os.environ.get("MINARI_DATASETS_PATH", Path.home() / ".minari" / "datasets"))
    candidate = root / str(id_or_path) / "data"
    if (candidate / "metadata.json").is_file():
        return candidate
    raise FileNotFoundError(
        f"no Minari dataset at {path} (nor {candidate}): expected a folder with metadata.json"
    )


def load_minari(id_or_path: str | os.PathLike) -> OfflineDataset:
    """Load a Minari dataset from disk: a path, or an id under ``$MINARI_DATASETS_PATH``.

    Works for datasets written here and for a user's own (e.g. ``D4RL/pointmaze/umaze-v2``
    downloaded earlier with ``minari download``); statistics are computed when absent.
    """
    from minari import MinariDataset

    data_path = _resolve_minari_path(id_or_path)
    meta_file = data_path / "metadata.json"
    try:
        metadata = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_file} is not readable JSON ({type(e).__name__}: {e})") from e
    if not isinstance(metadata, dict):
        raise ValueError(f"{meta_file}: expected a JSON object, got {type(metadata).__name__}")
    try:  # h5py / minari raise many types on truncated or garbage HDF5 files
        episodes = _read_minari_episodes(MinariDataset(data_path))
    except Exception as e:
        files = ", ".join(sorted(p.name for p in data_path.iterdir() if p.suffix == ".hdf5"))
        raise ValueError(
            f"cannot read the Minari dataset in {data_path} ({files or 'no .hdf5 file'}): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    extra = metadata.get("polydiff", {})
    if not isinstance(extra, dict) or not isinstance(extra.get("format_version", 0), int):
        raise ValueError(
            f"{meta_file}: key 'polydiff' must be an object with an integer format_version"
        )
    if extra.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(
            f"{data_path} has polydiff format {extra['format_version']}, "
            f"newer than this reader's {FORMAT_VERSION}"
        )
    stats = extra.get("stats") or compute_stats(episodes)
    _check_stats(stats, meta_file)
    return OfflineDataset(episodes, stats, extra.get("env_name"), metadata)


def _check_stats(stats: Any, where: Path) -> None:
    """Normalisation statistics must be ``{key: {"min": [...], "max": [...]}}`` of finite
    numbers with ``min <= max``; otherwise name the file and the key."""
    if not isinstance(stats, dict) or not stats:
        raise ValueError(f"{where}: polydiff.stats must be a non-empty object, got {stats!r:.80}")
    for key, entry in stats.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: polydiff.stats.{key} must be an object with min and max")
        arrays = {}
        for bound in ("min", "max"):
            try:
                arrays[bound] = np.asarray(entry[bound], dtype=np.float64)
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(
                    f"{where}: polydiff.stats.{key}.{bound} must be a list of numbers ({e})"
                ) from e
            if not np.isfinite(arrays[bound]).all():
                raise ValueError(
                    f"{where}: polydiff.stats.{key}.{bound} holds NaN or infinity: "
                    f"{entry[bound]!r:.80}; delete the key to recompute the statistics"
                )
        if arrays["min"].shape != arrays["max"].shape or (arrays["min"] > arrays["max"]).any():
            raise ValueError(
                f"{where}: polydiff.stats.{key}: min and max differ in shape or min > max"
            )


def _read_minari_episodes(ds: Any) -> list[Episode]:
    return [
        Episode(
            observations=ep.observations,
            actions=np.asarray(ep.actions, dtype=np.float32).reshape(len(ep.actions), -1),
            rewards=np.asarray(ep.rewards),
            terminations=np.asarray(ep.terminations, dtype=bool),
            truncations=np.asarray(ep.truncations, dtype=bool),
            infos={
                k: np.asarray(v) for k, v in (ep.infos or {}).items() if not isinstance(v, dict)
            },
            seed=None,
        )
        for ep in ds.iterate_episodes()
    ]


def generate_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    seed: int = 0,
    overwrite: bool = False,
    **kwargs: Any,
) -> Path:
    """Generate a built-in dataset (see :data:`GENERATORS`) into ``root`` unless already there.

    The dataset id records the seed and the generator's arguments, so different sizes never
    collide; ``root`` defaults to :func:`default_data_root`.
    """
    root = default_data_root() if root is None else Path(root)
    if name not in GENERATORS:
        raise KeyError(f"unknown dataset {name!r}; choose one of {sorted(GENERATORS)}")
    args = "".join(f"-{k}{v}" for k, v in sorted(kwargs.items()))
    dataset_id = f"{name}-s{seed}{args}-v0"
    path = Path(root) / dataset_id / "data"
    if path.exists() and not overwrite:
        return path
    if path.exists():
        import shutil

        shutil.rmtree(path.parent)
    env_name, generator = GENERATORS[name]
    episodes = generator(seed=seed, **kwargs)
    tmp_id = f".{dataset_id}.tmp{os.getpid()}"
    tmp = write_minari(root, tmp_id, episodes, env_name)
    meta_file = tmp / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["dataset_id"] = dataset_id
    meta_file.write_text(json.dumps(meta))
    os.replace(tmp.parent, path.parent)  # atomic publish of the finished dataset
    return path


# ----------------------------------------------------------------------------------------------
# Training windows
# ----------------------------------------------------------------------------------------------


def discounted_returns(rewards: np.ndarray, discount: float) -> np.ndarray:
    """``G_t = sum_k discount^k r_{t+k}`` to the end of the episode."""
    out = np.zeros(len(rewards), dtype=np.float64)
    acc = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        acc = rewards[t] + discount * acc
        out[t] = acc
    return out


class TrajectoryWindows(torch.utils.data.Dataset):
    """Diffuser training windows ``x = [obs, action]`` of shape ``(H, D)``, normalised to [-1, 1].

    ``stride`` keeps every ``stride``-th step (a planner over a coarser time grid);
    ``with_actions=False`` plans states only (the maze, where a tracking controller acts).
    With ``start_cond`` items also hold ``vector``: the normalised start state, the network's
    FiLM condition (a short-trained model does not learn from inpainting alone that step 0 is
    the clean current state: measured, its step 0 -> 1 transitions break the dynamics).
    With ``return_value`` items also hold ``value``: the discounted return-to-go at the window
    start, standardised (the regression target of Diffuser's value function).
    """

    def __init__(
        self,
        data: OfflineDataset,
        horizon: int,
        stride: int = 1,
        with_actions: bool = True,
        discount: float = 0.99,
        return_value: bool = False,
        start_cond: bool = False,
    ) -> None:
        self.return_value, self.start_cond = return_value, start_cond
        self.source = data  # the episodes (inverse dynamics, held-out checks, rollout figures)
        keys = ["observations", "actions"] if with_actions else ["observations"]
        self.normalizer = MinMaxNormalizer.from_stats(data.stats, keys)
        self.horizon, self.stride, self.with_actions = horizon, stride, with_actions
        span = (horizon - 1) * stride + 1
        self._episodes_x: list[np.ndarray] = []
        seqs, values = [], []
        for ep in data.episodes:
            obs = ep.obs[:-1]  # (T, Do): the state each action was taken in
            x = np.concatenate([obs, ep.actions], axis=1) if with_actions else obs
            if len(x) < span:
                continue
            returns = discounted_returns(ep.rewards, discount)
            seqs += [(len(self._episodes_x), s) for s in range(len(x) - span + 1)]
            values += list(returns[: len(x) - span + 1])
            self._episodes_x.append(x.astype(np.float32))
        if not seqs:
            raise ValueError(f"no episode is long enough for horizon {horizon} x stride {stride}")
        self.index = seqs
        values_a = np.asarray(values, dtype=np.float64)
        self.value_mean, self.value_std = float(values_a.mean()), float(values_a.std() + 1e-6)
        self.values = torch.as_tensor((values_a - self.value_mean) / self.value_std).float()
        self.transition_dim = self._episodes_x[0].shape[1]
        self.obs_dim = data.episodes[0].obs.shape[1]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ep, start = self.index[i]
        span = (self.horizon - 1) * self.stride + 1
        x = self._episodes_x[ep][start : start + span : self.stride]  # (H, D)
        item = {"x": self.normalizer.normalize(x)}
        if self.start_cond:  # the current state as a global condition (FiLM)
            item["vector"] = item["x"][0, : self.obs_dim].clone()
        if self.return_value:
            item["value"] = self.values[i]
        return item


class ActionChunks(torch.utils.data.Dataset):
    """Diffusion Policy samples: ``obs_horizon`` observations -> ``pred_horizon`` actions.

    Item: ``{"x": (Tp, A) normalised actions, "vector": (To * Do,) normalised observations}``;
    the first observation is repeated before the episode start and the last action after its
    end (Chi et al. 2023, ``SequenceSampler`` with ``pad_before=To-1, pad_after=Ta-1``).
    """

    def __init__(
        self,
        data: OfflineDataset,
        obs_horizon: int = 2,
        pred_horizon: int = 16,
        action_horizon: int = 8,
    ) -> None:
        self.obs_norm = MinMaxNormalizer.from_stats(data.stats, ["observations"])
        self.act_norm = MinMaxNormalizer.from_stats(data.stats, ["actions"])
        self.obs_horizon, self.pred_horizon = obs_horizon, pred_horizon
        self.action_horizon = action_horizon  # actions executed per prediction
        self.source = data
        self.obs_dim = data.episodes[0].obs.shape[1]
        self.action_dim = data.episodes[0].actions.reshape(len(data.episodes[0]), -1).shape[1]
        self.obs, self.act, self.index = [], [], []
        for e in data.episodes:
            obs = self.obs_norm.normalize(e.obs[:-1])  # (T, Do)
            act = self.act_norm.normalize(e.actions.reshape(len(e), -1))  # (T, A)
            k = len(self.obs)
            self.obs.append(obs)
            self.act.append(act)
            # t = index of the current (last observed) step; predictions start at t - To + 1
            t_last = len(e) - 1 + (action_horizon - 1) - (pred_horizon - obs_horizon)
            self.index += [(k, t) for t in range(0, max(t_last, 0) + 1)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        k, t = self.index[i]
        obs, act = self.obs[k], self.act[k]
        first = t - self.obs_horizon + 1
        obs_idx = torch.arange(first, t + 1).clamp(0, len(obs) - 1)
        act_idx = torch.arange(first, first + self.pred_horizon).clamp(0, len(act) - 1)
        return {"x": act[act_idx], "vector": obs[obs_idx].reshape(-1)}


def training_dataset(
    name: str,
    view: str,
    root: str | os.PathLike | None = None,
    seed: int = 0,
    generator_kwargs: dict[str, Any] | None = None,
    **view_kwargs: Any,
) -> torch.utils.data.Dataset:
    """Hydra entry point: generate (or reuse) dataset ``name`` and return a training view,
    ``view="trajectories"`` (:class:`TrajectoryWindows`) or ``"chunks"`` (:class:`ActionChunks`).
    """
    views = {"trajectories": TrajectoryWindows, "chunks": ActionChunks}
    if view not in views:
        raise KeyError(f"unknown view {view!r}; choose one of {sorted(views)}")
    data = load_minari(generate_dataset(name, root, seed=seed, **dict(generator_kwargs or {})))
    return views[view](data, **view_kwargs)
