"""End-to-end RL experiments: generate data, train, roll out, measure (demo, benchmark, configs).

Each ``run_*`` function takes a frozen dataclass config (mirrored by
``configs/experiment/rl/*.yaml``) and returns a JSON-ready dict of measured numbers:

- :func:`run_maze_diffuser`: Diffuser on PointMaze with start/goal inpainting and a PD tracker,
  against the waypoint expert and random actions (success, normalised score, NFE, latency);
- :func:`run_pendulum_diffuser`: Diffuser on mixed-quality Pendulum data, value-guided vs
  unguided planning (returns over seeds, normalised between random and expert);
- :func:`run_two_path_policy`: Diffusion Policy (U-Net and transformer) vs an MSE policy on the
  two-path toy (success and coverage of the two modes).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polydiff.rl.datasets import ActionChunks, TrajectoryWindows, generate_dataset, load_minari
from polydiff.rl.diffuser import (
    DiffuserPlanner,
    LinearInverseDynamics,
    MazePlanAgent,
    PlanActionAgent,
)
from polydiff.rl.evaluate import (
    MazeExpertAgent,
    PendulumExpertAgent,
    RandomAgent,
    RolloutStats,
    normalized_score,
    run_episodes,
)
from polydiff.rl.models import (
    FlatSequenceMLP,
    MLPPolicy,
    SequenceUNet,
    StartConditionedLoss,
    TrajectoryValue,
    chunk_transformer,
    count_parameters,
    edm_objective,
    value_loss,
)
from polydiff.rl.policy import ChunkAgent, DiffusionPolicy, RegressionPolicy, regression_loss
from polydiff.rl.training import train_network


def _summary(stats: RolloutStats) -> dict[str, float]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in stats.summary().items()}


# ----------------------------------------------------------------------------------------------
# PointMaze
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MazeConfig:
    """Diffuser on PointMaze (horizon x stride environment steps per plan)."""

    env: str = "pointmaze-umaze"
    data_episodes: int = 60
    episode_len: int = 500
    horizon: int = 32
    stride: int = 5
    size: str = "diffuser-small"
    train_steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    n_steps: int = 12
    n_candidates: int = 4  # the smoothest plan is tracked
    # None: replan only once the plan is used up ((horizon - 1) * stride steps), as Janner et
    # al.'s maze2d plans once and tracks. Frequent replanning with the goal pinned at the last
    # index keeps postponing the arrival by a whole plan length (measured: success 0.5 at 10)
    replan_every: int | None = None
    eval_seeds: int = 20
    gif: bool = True  # a rollout animation when out_dir is given (MuJoCo EGL rendering)
    max_episode_steps: int | None = None  # None: gymnasium-robotics' limit (300 for U-maze)
    seed: int = 0
    data_root: str | None = None  # None: polydiff.rl.datasets.default_data_root()


def train_maze_diffuser(cfg: MazeConfig) -> tuple[DiffuserPlanner, TrajectoryWindows, dict]:
    """Generate (or reuse) the waypoint dataset and train the state-trajectory denoiser."""
    name = f"{cfg.env}-waypoint"
    data = load_minari(
        generate_dataset(
            name,
            cfg.data_root,
            seed=cfg.seed,
            n_episodes=cfg.data_episodes,
            episode_len=cfg.episode_len,
        )
    )
    windows = TrajectoryWindows(data, cfg.horizon, stride=cfg.stride, with_actions=False)
    net = SequenceUNet(windows.transition_dim, cfg.size)
    objective = edm_objective()
    t0 = time.perf_counter()
    ema, metrics = train_network(
        net, objective, windows, cfg.train_steps, cfg.batch_size, cfg.lr, seed=cfg.seed
    )
    info = {
        "dataset_steps": data.n_steps,
        "windows": len(windows),
        "parameters": count_parameters(net),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "final_loss": metrics.get("loss"),
    }
    planner = DiffuserPlanner(
        objective.denoiser(ema),
        windows.normalizer,
        cfg.horizon,
        windows.obs_dim,
        n_steps=cfg.n_steps,
        n_candidates=cfg.n_candidates,
        seed=cfg.seed,
    )
    return planner, windows, info


def run_maze_diffuser(cfg: MazeConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Train Diffuser on the maze dataset and evaluate it against the expert and random actions."""
    planner, _, info = train_maze_diffuser(cfg)
    seeds = range(1000, 1000 + cfg.eval_seeds)
    replan = cfg.replan_every or (cfg.horizon - 1) * cfg.stride
    agent = MazePlanAgent(planner, cfg.stride, replan)
    plans: list[list[tuple[int, np.ndarray]]] = []
    env_kwargs = {"max_episode_steps": cfg.max_episode_steps} if cfg.max_episode_steps else {}
    diffuser = run_episodes(
        cfg.env,
        agent,
        seeds,
        env_kwargs,
        on_episode_end=lambda _seed, a: plans.append(list(a.plans)),
    )
    expert = run_episodes(cfg.env, MazeExpertAgent(cfg.env), seeds, env_kwargs)
    rand = run_episodes(cfg.env, RandomAgent(-1.0, 1.0, 2, seed=cfg.seed), seeds, env_kwargs)
    res = {
        "config": asdict(cfg),
        "train": info,
        "diffuser": _summary(diffuser),
        "expert": _summary(expert),
        "random": _summary(rand),
    }
    e, r = expert.summary()["success_rate"], rand.summary()["success_rate"]
    d = diffuser.summary()["success_rate"]
    res["success_vs_expert"] = round(d / max(e, 1e-9), 4)
    res["normalized_score"] = round(normalized_score(d, r, e), 2) if e != r else None
    if out_dir is not None:
        from polydiff.rl.plots import plot_maze_plans

        path = Path(out_dir) / f"{cfg.env}_diffuser_plans.png"
        episodes = [(p, t[:, :2]) for p, t in zip(plans, diffuser.trajectories)]
        plot_maze_plans(cfg.env, episodes[:4], path)
        res["plot"] = str(path)
        if cfg.gif:
            from polydiff.rl.io import save_rollout_gif

            gif = Path(out_dir) / f"{cfg.env}_diffuser_rollout.gif"
            try:
                res["animation"] = str(
                    save_rollout_gif(
                        cfg.env, agent, seeds[0], gif, every=3, max_steps=cfg.max_episode_steps
                    )
                )
            except Exception as err:  # no off-screen OpenGL: the figures are still written
                res["animation"] = f"unavailable: {type(err).__name__}: {err}"
    return res


# ----------------------------------------------------------------------------------------------
# Pendulum: value-guided vs unguided planning
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PendulumConfig:
    """Diffuser with a value function on mixed-quality Pendulum data."""

    n_per_level: int = 10
    n_random: int = 10
    horizon: int = 32
    size: str = "diffuser-small"
    train_steps: int = 1500
    value_steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    discount: float = 0.97
    n_steps: int = 5
    execute: int = 1  # replan every step (receding horizon)
    n_candidates: int = 16
    # act towards the next planned state with a linear inverse-dynamics model fitted on the
    # data (Decision Diffuser) instead of executing the planned action (Diffuser)
    inverse_dynamics: bool = True
    guide_scale: float = 0.1  # the "guided" row; chosen on other seeds (5000+) than eval's
    guide_scales: tuple[float, ...] = ()  # extra sweep rows (0: candidates ranked by V only)
    guide_sigma_min: float = 0.05
    eval_seeds: int = 10
    heldout_episodes: int = 4  # per noise level and random, for the value's correlation
    seed: int = 0
    data_root: str | None = None  # None: polydiff.rl.datasets.default_data_root()


@torch.no_grad()
def value_correlation(
    value: TrajectoryValue,
    windows: TrajectoryWindows,
    heldout: TrajectoryWindows,
    sigmas: tuple[float, ...] = (0.002, 0.1, 0.5, 1.0, 3.0),
    n: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Pearson correlation of ``V(x + sigma eps, sigma)`` with the held-out discounted return.

    ``heldout`` windows are normalised with the training statistics (``windows.normalizer``)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(heldout), generator=g)[:n].tolist()
    span = (heldout.horizon - 1) * heldout.stride + 1
    x = torch.stack(
        [
            windows.normalizer.normalize(heldout._episodes_x[e][s : s + span : heldout.stride])
            for e, s in (heldout.index[i] for i in idx)
        ]
    )  # (N, H, D)
    target = heldout.values[idx].numpy()
    out = {}
    for sigma in sigmas:
        xs = x + sigma * torch.randn(x.shape, generator=g)
        v = value(xs, torch.full((len(x),), sigma)).numpy()
        out[f"sigma_{sigma:g}"] = round(float(np.corrcoef(v, target)[0, 1]), 3)
    return out


def run_pendulum_diffuser(cfg: PendulumConfig, out_dir: str | Path | None = None) -> dict:
    """Value-guided vs unguided Diffuser planning on Pendulum, normalised by expert / random.

    The diffuser takes the start state as its FiLM condition and clean at step 0
    (:class:`StartConditionedLoss`), and plans with it pinned clean (``clean_known``);
    ``unguided`` samples one plan, ``guided`` samples ``n_candidates`` with the value gradient
    and follows the best-valued one; both replan every ``execute`` steps and (with
    ``inverse_dynamics``) act towards the next planned state (:class:`LinearInverseDynamics`).
    """
    data = load_minari(
        generate_dataset(
            "pendulum-mixed",
            cfg.data_root,
            seed=cfg.seed,
            n_per_level=cfg.n_per_level,
            n_random=cfg.n_random,
        )
    )
    windows = TrajectoryWindows(
        data, cfg.horizon, discount=cfg.discount, return_value=True, start_cond=True
    )
    objective = edm_objective()
    t0 = time.perf_counter()
    ema, metrics = train_network(
        SequenceUNet(windows.transition_dim, cfg.size, cond_dim=windows.obs_dim),
        StartConditionedLoss(objective, windows.obs_dim),
        windows,
        cfg.train_steps,
        cfg.batch_size,
        cfg.lr,
        seed=cfg.seed,
    )
    value, vmetrics = train_network(
        TrajectoryValue(windows.transition_dim),
        value_loss,
        windows,
        cfg.value_steps,
        cfg.batch_size,
        cfg.lr,
        seed=cfg.seed + 1,
    )
    train_s = round(time.perf_counter() - t0, 1)
    heldout = load_minari(
        generate_dataset(
            "pendulum-mixed",
            cfg.data_root,
            seed=cfg.seed + 1,
            n_per_level=cfg.heldout_episodes,
            n_random=cfg.heldout_episodes,
        )
    )
    held = TrajectoryWindows(heldout, cfg.horizon, discount=cfg.discount, return_value=True)
    seeds = range(2000, 2000 + cfg.eval_seeds)
    inv = LinearInverseDynamics.fit(data.episodes) if cfg.inverse_dynamics else None
    results: dict[str, Any] = {"config": asdict(cfg)}
    results["value_heldout_corr"] = value_correlation(value, windows, held)
    variants = {
        "unguided": dict(value=None, guide_scale=0.0, n_candidates=1),
        "guided": dict(value=value, guide_scale=cfg.guide_scale, n_candidates=cfg.n_candidates),
    }
    for scale in cfg.guide_scales:
        if scale != cfg.guide_scale:
            variants[f"guided_scale_{scale:g}"] = dict(
                value=value, guide_scale=scale, n_candidates=cfg.n_candidates
            )
    for name, kw in variants.items():
        planner = DiffuserPlanner(
            objective.denoiser(ema),
            windows.normalizer,
            cfg.horizon,
            windows.obs_dim,
            n_steps=cfg.n_steps,
            guide_sigma_min=cfg.guide_sigma_min,
            goal_zero_dims=(),
            clean_known=True,
            start_cond=True,
            seed=cfg.seed,
            **kw,
        )
        agent = PlanActionAgent(planner, cfg.execute, inverse_dynamics=inv)
        stats = run_episodes("pendulum", agent, seeds)
        results[name] = {**_summary(stats), "returns": [round(r, 1) for r in stats.returns]}
    results["expert"] = _summary(run_episodes("pendulum", PendulumExpertAgent(), seeds))
    results["random"] = _summary(run_episodes("pendulum", RandomAgent(-2, 2, 1, cfg.seed), seeds))
    lo, hi = results["random"]["return_mean"], results["expert"]["return_mean"]
    for name in variants:
        results[name]["normalized_score"] = round(
            normalized_score(results[name]["return_mean"], lo, hi), 2
        )
    results["train"] = {
        "dataset_steps": data.n_steps,
        "dataset_return_mean": float(np.mean([e.rewards.sum() for e in data.episodes])),
        "train_seconds": train_s,
        "final_loss": metrics.get("loss"),
        "value_final_loss": vmetrics.get("loss"),
    }
    results["guided_minus_unguided"] = round(
        results["guided"]["return_mean"] - results["unguided"]["return_mean"], 2
    )
    return results


# ----------------------------------------------------------------------------------------------
# Two-path toy: Diffusion Policy vs MSE policy
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TwoPathConfig:
    """Diffusion Policy (To=2, Tp=16, Ta=8) vs MSE regression on the two-path toy."""

    data_episodes: int = 100
    obs_horizon: int = 2
    pred_horizon: int = 16
    action_horizon: int = 8
    size: str = "dp-tiny"
    transformer_size: str = "dp-transformer-tiny"
    backbones: tuple[str, ...] = ("unet",)
    train_steps: int = 1500
    mse_steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    n_steps: int = 8
    methods: tuple[str, ...] = ("dpmpp_2m", "ddim")
    eval_seeds: int = 50
    seed: int = 0
    data_root: str | None = None  # None: polydiff.rl.datasets.default_data_root()


def two_path_sides(stats: RolloutStats) -> dict[str, float]:
    """Share of episodes passing left / right of the obstacle (x-sign when crossing y = 0)."""
    sides = np.asarray([i.get("side", 0.0) for i in stats.infos])
    return {"left": float(np.mean(sides < 0)), "right": float(np.mean(sides > 0))}


def build_chunk_denoiser(
    backbone: str, chunks: ActionChunks, cfg: TwoPathConfig
) -> torch.nn.Module:
    """The action-chunk network: ``unet`` (FiLM 1-D U-Net), ``transformer`` (adaLN-Zero) or
    ``mlp`` (residual MLP over the flattened chunk)."""
    cond_dim = chunks.obs_horizon * chunks.obs_dim
    if backbone == "mlp":
        return FlatSequenceMLP(chunks.action_dim, chunks.pred_horizon, cond_dim)
    if backbone == "unet":
        return SequenceUNet(chunks.action_dim, cfg.size, cond_dim=cond_dim)
    if backbone == "transformer":
        return chunk_transformer(
            chunks.action_dim, chunks.pred_horizon, cond_dim, cfg.transformer_size
        )
    raise KeyError(f"unknown backbone {backbone!r}; choose 'unet', 'transformer' or 'mlp'")


def run_two_path_policy(cfg: TwoPathConfig, out_dir: str | Path | None = None) -> dict:
    """Train the diffusion policies and the MSE policy; roll each out on the same seeds."""
    data = load_minari(
        generate_dataset(
            "two-path-expert", cfg.data_root, seed=cfg.seed, n_episodes=cfg.data_episodes
        )
    )
    chunks = ActionChunks(data, cfg.obs_horizon, cfg.pred_horizon, cfg.action_horizon)
    seeds = range(3000, 3000 + cfg.eval_seeds)
    results: dict[str, Any] = {"config": asdict(cfg), "policies": {}}
    paths: dict[str, list[np.ndarray]] = {}
    objective = edm_objective()
    for backbone in cfg.backbones:
        t0 = time.perf_counter()
        net = build_chunk_denoiser(backbone, chunks, cfg)
        ema, metrics = train_network(
            net, objective, chunks, cfg.train_steps, cfg.batch_size, cfg.lr, seed=cfg.seed
        )
        train_s = round(time.perf_counter() - t0, 1)
        for method in cfg.methods:
            policy = DiffusionPolicy(
                objective.denoiser(ema),
                chunks.obs_norm,
                chunks.act_norm,
                cfg.obs_horizon,
                cfg.pred_horizon,
                n_steps=cfg.n_steps,
                method=method,
                seed=cfg.seed,
            )
            stats = run_episodes("two-path", ChunkAgent(policy, cfg.action_horizon), seeds)
            paths[f"diffusion {backbone} {method}"] = stats.trajectories
            results["policies"][f"diffusion_{backbone}_{method}"] = {
                **_summary(stats),
                **two_path_sides(stats),
                "parameters": count_parameters(net),
                "train_seconds": train_s,
                "final_loss": metrics.get("loss"),
            }
    t0 = time.perf_counter()
    mlp = MLPPolicy(cfg.obs_horizon * chunks.obs_dim, chunks.action_dim, cfg.pred_horizon)
    mlp_ema, m = train_network(
        mlp, regression_loss, chunks, cfg.mse_steps, cfg.batch_size, cfg.lr, seed=cfg.seed
    )
    mse = RegressionPolicy(
        mlp_ema, chunks.obs_norm, chunks.act_norm, cfg.obs_horizon, cfg.pred_horizon
    )
    stats = run_episodes("two-path", ChunkAgent(mse, cfg.action_horizon), seeds)
    paths["mse"] = stats.trajectories
    results["policies"]["mse"] = {
        **_summary(stats),
        **two_path_sides(stats),
        "parameters": count_parameters(mlp),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "final_loss": m.get("loss"),
    }
    if out_dir is not None:
        from polydiff.rl.plots import plot_two_path

        results["plot"] = str(plot_two_path(paths, Path(out_dir) / "two_path_policies.png"))
    return results


RUNNERS = {
    MazeConfig: run_maze_diffuser,
    PendulumConfig: run_pendulum_diffuser,
    TwoPathConfig: run_two_path_policy,
}


def run_experiment(
    cfg: MazeConfig | PendulumConfig | TwoPathConfig, out_dir: str | Path | None = None
) -> dict:
    """Run the experiment of a config object (e.g. ``instantiate(composed_cfg.rl)``)."""
    if type(cfg) not in RUNNERS:
        raise TypeError(f"no RL experiment for {type(cfg).__name__}; expected one of {RUNNERS}")
    return RUNNERS[type(cfg)](cfg, out_dir)
