"""Rollout evaluations of trained RL runs: the ``rl:`` node of ``configs/experiment/rl/*.yaml``.

A recipe is a config: ``polydiff train experiment=rl/<name>`` trains the network its ``model``,
``objective``, ``data`` and ``trainer`` groups describe, and ``polydiff evaluate run=<dir>``
rolls the trained model out through :meth:`polydiff.rl.hooks.RLHooks.evaluate_model`, which
instantiates the experiment's ``rl`` node into one of the classes below and calls it on the
opened run. The network, the objective (its denoiser) and the sampler (method, steps, sigma
grid, options) all come from the run; these classes hold only what is specific to rolling out
(seeds, planner options, replanning, guidance, inverse dynamics) and are read from the config.

- :class:`MazeRollouts`: Diffuser on PointMaze with start/goal inpainting and a PD tracker,
  against the waypoint expert and random actions (success, normalised score, NFE, latency);
- :class:`PendulumRollouts`: value-guided vs unguided Diffuser planning on Pendulum; the value
  function is its own recipe (``rl.value.experiment``, e.g. ``rl/pendulum_value``) trained on
  the same data into ``<run>/value`` the first time it is needed (or given as ``rl.value.run``);
- :class:`ValueCorrelation`: the value run's own evaluation (correlation with held-out returns);
- :class:`ChunkRollouts`: Diffusion Policy (or the MSE baseline) on the two-path toy.

:func:`flat_metrics` turns a result into the flat ``{name: float}`` of ``polydiff evaluate``;
:func:`paired_difference` and :func:`benchmark_goals` are the benchmark's statistics and goals.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from polydiff.rl.datasets import (
    ActionChunks,
    TrajectoryWindows,
    generate_dataset,
    load_minari,
)
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
from polydiff.rl.models import TrajectoryValue
from polydiff.rl.plots import plot_maze_plans, plot_two_path
from polydiff.rl.policy import ChunkAgent, DiffusionPolicy, RegressionPolicy

__all__ = [
    "ChunkRollouts",
    "MazeRollouts",
    "PendulumRollouts",
    "ValueCorrelation",
    "benchmark_goals",
    "flat_metrics",
    "paired_difference",
    "value_correlation",
]

# Diffuser's planner runs DDIM steps with inpainting in between; in sigma space deterministic
# DDIM and Euler are the same step (x' = D + sigma'/sigma (x - D)), so either name is accepted
PLANNER_SAMPLERS = ("euler", "ddim")


def _summary(stats: RolloutStats) -> dict[str, float]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in stats.summary().items()}


def _dataset(run: Any, kind: type) -> Any:
    data = getattr(run.hooks, "dataset", None)
    if not isinstance(data, kind):
        raise TypeError(
            f"run {run.run_dir}: this rollout needs a {kind.__name__} training view "
            f"(data.dataset.view), got {type(data).__name__}"
        )
    return data


def _planner_grid(run: Any) -> tuple[torch.Tensor, float]:
    """The run's sampler grid and DDIM eta, for Diffuser's inpainting planner."""
    spec = run.sampler
    if spec.method not in PLANNER_SAMPLERS:
        raise ValueError(
            f"sampler.method={spec.method!r}: Diffuser planning inpaints between DDIM steps; "
            f"use one of {list(PLANNER_SAMPLERS)}"
        )
    options = dict(spec.options)
    eta = float(options.pop("eta", 0.0))
    if float(options.pop("s_churn", 0.0) or 0.0) != 0.0:
        raise ValueError("sampler.s_churn must be 0 for Diffuser planning (DDIM steps)")
    for inert in ("s_tmin", "s_tmax", "s_noise"):  # only act with churn
        options.pop(inert, None)
    if options:
        raise ValueError(f"sampler options {sorted(options)} do not apply to Diffuser planning")
    return spec.sigmas().float(), eta


def _diffuser_planner(run: Any, windows: TrajectoryWindows, **options: Any) -> DiffuserPlanner:
    """The run's Diffuser planner over its data's windows, on the run's sampling grid."""
    sigmas, eta = _planner_grid(run)
    return DiffuserPlanner(
        denoiser=run.objective.denoiser(run.model),
        normalizer=windows.normalizer,
        horizon=windows.horizon,
        obs_dim=windows.obs_dim,
        sigmas=sigmas,
        eta=eta,
        **options,
    )


def _training_info(run: Any) -> dict[str, Any]:
    """Size and training facts of a run (parameters, steps, last logged loss)."""
    info: dict[str, Any] = {
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "train_steps": int(run.cfg.trainer.max_steps),
    }
    log = Path(run.run_dir) / "metrics.jsonl"
    if log.is_file():
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        losses = [r["loss"] for r in rows if isinstance(r.get("loss"), (int, float))]
        if losses:
            info["final_loss"] = float(losses[-1])
    return info


# ----------------------------------------------------------------------------------------------
# PointMaze
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MazeRollouts:
    """Diffuser on PointMaze: plan states to the goal (start + goal inpainted), PD-track them.

    The plan horizon and stride are the training windows' (``data.dataset``); the denoiser and
    the sigma grid are the run's. ``replan_every=None`` replans only once the plan is used up
    (``(horizon - 1) * stride`` steps), as Janner et al.'s maze2d plans once and tracks
    (measured: replanning every 10 steps with the goal pinned at the last index, success 0.5).
    """

    env: str = "pointmaze-umaze"
    eval_seeds: int = 30
    first_seed: int = 1000
    n_candidates: int = 4  # the smoothest plan is tracked
    replan_every: int | None = None
    max_episode_steps: int | None = None  # None: gymnasium-robotics' limit (300 for U-maze)
    baselines: bool = True  # the waypoint expert and random actions on the same seeds
    figures: bool = True  # planned-vs-executed PNG (and a rollout GIF with ``gif``)
    gif: bool = False  # MuJoCo off-screen rendering
    seed: int = 0

    def __call__(self, run: Any, out_dir: str | Path | None = None) -> dict[str, Any]:
        windows = _dataset(run, TrajectoryWindows)
        planner = _diffuser_planner(run, windows, n_candidates=self.n_candidates, seed=self.seed)
        seeds = range(self.first_seed, self.first_seed + self.eval_seeds)
        replan = self.replan_every or (windows.horizon - 1) * windows.stride
        agent = MazePlanAgent(planner, windows.stride, replan)
        plans: list[list[tuple[int, np.ndarray]]] = []
        env_kwargs = {"max_episode_steps": self.max_episode_steps} if self.max_episode_steps else {}
        diffuser = run_episodes(
            self.env,
            agent,
            seeds,
            env_kwargs,
            on_episode_end=lambda _seed, a: plans.append(list(a.plans)),
        )
        res: dict[str, Any] = {
            "train": _training_info(run),
            "horizon": windows.horizon,
            "stride": windows.stride,
            "diffuser": _summary(diffuser),
        }
        if self.baselines:
            expert = run_episodes(self.env, MazeExpertAgent(self.env), seeds, env_kwargs)
            rand = run_episodes(
                self.env, RandomAgent(-1.0, 1.0, 2, seed=self.seed), seeds, env_kwargs
            )
            res["expert"], res["random"] = _summary(expert), _summary(rand)
            e, r = res["expert"]["success_rate"], res["random"]["success_rate"]
            d = res["diffuser"]["success_rate"]
            res["success_vs_expert"] = round(d / max(e, 1e-9), 4)
            if e != r:
                res["normalized_score"] = round(normalized_score(d, r, e), 2)
        if out_dir is not None and self.figures:
            path = Path(out_dir) / f"{self.env}_diffuser_plans.png"
            episodes = [(p, t[:, :2]) for p, t in zip(plans, diffuser.trajectories)]
            res["plot"] = str(plot_maze_plans(self.env, episodes[:4], path))
            if self.gif:
                from polydiff.rl.io import save_rollout_gif  # MuJoCo rendering: optional

                gif = Path(out_dir) / f"{self.env}_diffuser_rollout.gif"
                try:
                    res["animation"] = str(
                        save_rollout_gif(
                            self.env, agent, seeds[0], gif, every=3,
                            max_steps=self.max_episode_steps,
                        )
                    )  # fmt: skip
                except Exception as err:  # no off-screen OpenGL: the figures are still written
                    res["animation"] = f"unavailable: {type(err).__name__}: {err}"
        return res


# ----------------------------------------------------------------------------------------------
# Pendulum: value-guided vs unguided planning; the value function's own recipe
# ----------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class ValueCorrelation:
    """Evaluation of a value-function run (``experiment=rl/pendulum_value``): correlation of
    ``V`` on noised held-out windows with their discounted return, by noise level.

    The held-out episodes are generated like the training data with seed ``data seed + 1`` and
    ``heldout_episodes`` episodes per noise level and of random actions.
    """

    heldout_episodes: int = 4
    seed: int = 0

    def __call__(self, run: Any, out_dir: str | Path | None = None) -> dict[str, Any]:
        windows = _dataset(run, TrajectoryWindows)
        if not isinstance(run.model, TrajectoryValue):
            raise TypeError(f"run {run.run_dir} is not a value run (model: {type(run.model)})")
        ds = run.cfg.data.dataset
        heldout = load_minari(
            generate_dataset(
                str(ds.name), ds.get("root"), seed=int(ds.seed) + 1,
                n_per_level=self.heldout_episodes, n_random=self.heldout_episodes,
            )
        )  # fmt: skip
        held = TrajectoryWindows(
            heldout, windows.horizon, stride=windows.stride, discount=float(ds.discount),
            return_value=True,
        )  # fmt: skip
        return {
            "train": _training_info(run),
            "value_heldout_corr": value_correlation(run.model, windows, held, seed=self.seed),
        }


def _override_value(v: Any) -> str:
    """A Python value as a hydra override value (null, numbers, strings, flat dicts)."""
    if v is None:
        return "null"
    if isinstance(v, Mapping):
        return "{" + ",".join(f"{k}:{_override_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


@dataclass(frozen=True)
class PendulumRollouts:
    """Value-guided vs unguided Diffuser planning on Pendulum, normalised by expert / random.

    The diffuser takes the start state as its FiLM condition and clean at step 0
    (``objective: rl_start_conditioned``) and plans with it pinned clean (``clean_known``);
    ``unguided`` samples one plan, ``guided`` samples ``n_candidates`` with the value gradient
    ``D + s sigma^2 grad V`` (scale ``guide_scale``) and follows the best-valued one (extra rows
    for ``guide_scales``); both replan every ``execute`` steps and, with ``inverse_dynamics``,
    act towards the next planned state (:class:`LinearInverseDynamics` fitted on the data).

    ``value``: ``{experiment, overrides, run}``: the value function's recipe, trained through
    ``polydiff.train.run.train`` on this run's data (seed, dataset generator settings, horizon,
    discount forwarded) into ``<run>/value`` unless ``run`` names an existing value run.
    """

    eval_seeds: int = 10
    first_seed: int = 2000
    execute: int = 1  # replan every step (receding horizon)
    n_candidates: int = 16
    inverse_dynamics: bool = True
    guide_scale: float = 0.1  # the "guided" row; chosen on other seeds (5000+) than eval's
    guide_scales: tuple[float, ...] = ()  # extra rows (0: candidates ranked by V only)
    guide_sigma_min: float = 0.05
    value: Mapping[str, Any] = field(
        default_factory=lambda: {"experiment": "rl/pendulum_value", "overrides": [], "run": None}
    )
    seed: int = 0

    def value_run(self, run: Any) -> Path:
        """The value run: ``value.run`` or trained (once) into ``<run>/value`` by its recipe."""
        unknown = sorted(set(self.value) - {"experiment", "overrides", "run"})
        if unknown:
            raise ValueError(
                f"rl.value has unknown keys {unknown}; expected experiment/overrides/run"
            )
        if self.value.get("run"):
            return Path(self.value["run"])
        from polydiff.train.run import train  # the one recipe path (train imports rl lazily)

        ds = run.cfg.data.dataset
        forwarded = [
            f"seed={int(run.cfg.seed)}",
            f"data.dataset.name={ds.name}",
            f"data.dataset.root={_override_value(ds.get('root'))}",
            f"data.dataset.seed={int(ds.seed)}",
            f"data.dataset.generator_kwargs={_override_value(dict(ds.generator_kwargs))}",
            f"data.dataset.horizon={int(ds.horizon)}",
            f"data.dataset.discount={float(ds.discount)}",
            f"trainer.progress={str(bool(run.cfg.trainer.progress)).lower()}",
        ]
        args = [f"experiment={self.value['experiment']}", *forwarded, *self.value["overrides"]]
        return Path(train(args, run_dir=Path(run.run_dir) / "value"))

    def __call__(self, run: Any, out_dir: str | Path | None = None) -> dict[str, Any]:
        from polydiff.train.run import open_run

        windows = _dataset(run, TrajectoryWindows)
        value_run = open_run(self.value_run(run))
        value = value_run.model
        if not isinstance(value, TrajectoryValue):
            raise TypeError(f"value run {value_run.run_dir} holds {type(value).__name__}")
        data = windows.source
        seeds = range(self.first_seed, self.first_seed + self.eval_seeds)
        inv = LinearInverseDynamics.fit(data.episodes) if self.inverse_dynamics else None
        vres = value_run.hooks.dataset  # the value's own windows: its normaliser must match
        same = [
            torch.equal(getattr(vres.normalizer, k), getattr(windows.normalizer, k))
            for k in ("low", "scale")
        ]
        if not all(same):
            raise ValueError(f"value run {value_run.run_dir} was trained on other data")
        results: dict[str, Any] = {
            "train": _training_info(run),
            "value_train": _training_info(value_run),
            "horizon": windows.horizon,
        }
        results["value_heldout_corr"] = ValueCorrelation(seed=self.seed)(value_run)[
            "value_heldout_corr"
        ]
        variants = {
            "unguided": dict(value=None, guide_scale=0.0, n_candidates=1),
            "guided": dict(
                value=value, guide_scale=self.guide_scale, n_candidates=self.n_candidates
            ),
        }
        for scale in self.guide_scales:
            if scale != self.guide_scale:
                variants[f"guided_scale_{scale:g}"] = dict(
                    value=value, guide_scale=scale, n_candidates=self.n_candidates
                )
        returns: dict[str, list[float]] = {}
        for name, kw in variants.items():
            planner = _diffuser_planner(
                run,
                windows,
                guide_sigma_min=self.guide_sigma_min,
                goal_zero_dims=(),
                clean_known=True,
                start_cond=windows.start_cond,
                seed=self.seed,
                **kw,
            )
            agent = PlanActionAgent(planner, self.execute, inverse_dynamics=inv)
            stats = run_episodes("pendulum", agent, seeds)
            results[name] = _summary(stats)
            returns[name] = [round(r, 1) for r in stats.returns]
        results["expert"] = _summary(run_episodes("pendulum", PendulumExpertAgent(), seeds))
        rand = RandomAgent(-2, 2, 1, self.seed)
        results["random"] = _summary(run_episodes("pendulum", rand, seeds))
        lo, hi = results["random"]["return_mean"], results["expert"]["return_mean"]
        for name in variants:
            results[name]["normalized_score"] = round(
                normalized_score(results[name]["return_mean"], lo, hi), 2
            )
        results["returns"] = returns
        results["guided_minus_unguided"] = round(
            results["guided"]["return_mean"] - results["unguided"]["return_mean"], 2
        )
        results["paired"] = paired_difference(returns["guided"], returns["unguided"])
        return results


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Per-seed ``a - b`` over the same start states: mean, standard error, wins of ``a``.

    Standard error ``sqrt(sum (d - mean)^2 / (n - 1) / n)`` (NaN below two seeds)."""
    if len(a) != len(b):
        raise ValueError(f"paired returns need equal lengths, got {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n if n else float("nan")
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n) if n > 1 else float("nan")
    return {"seeds": n, "mean": mean, "se": se, "wins": sum(x > 0 for x in d)}


# ----------------------------------------------------------------------------------------------
# Two-path toy: Diffusion Policy and the MSE baseline
# ----------------------------------------------------------------------------------------------


def two_path_sides(stats: RolloutStats) -> dict[str, float]:
    """Share of episodes passing left / right of the obstacle (x-sign when crossing y = 0)."""
    sides = np.asarray([i.get("side", 0.0) for i in stats.infos])
    return {"left": float(np.mean(sides < 0)), "right": float(np.mean(sides > 0))}


@dataclass(frozen=True)
class ChunkRollouts:
    """An action-chunk policy on the two-path toy: ``policy="diffusion"`` samples chunks with the
    run's denoiser and sampler (Diffusion Policy, To / Tp / Ta of the training windows);
    ``"regression"`` runs an MSE-trained :class:`MLPPolicy` run (``experiment=rl/two_path_mse``).
    """

    env: str = "two-path"
    policy: str = "diffusion"
    eval_seeds: int = 50
    first_seed: int = 3000
    figures: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.policy not in ("diffusion", "regression"):
            raise ValueError(f"rl.policy={self.policy!r}; expected 'diffusion' or 'regression'")

    def __call__(self, run: Any, out_dir: str | Path | None = None) -> dict[str, Any]:
        chunks = _dataset(run, ActionChunks)
        if self.policy == "diffusion":
            policy: DiffusionPolicy | RegressionPolicy = DiffusionPolicy(
                run.objective.denoiser(run.model),
                chunks.obs_norm,
                chunks.act_norm,
                obs_horizon=chunks.obs_horizon,
                pred_horizon=chunks.pred_horizon,
                n_steps=run.sampler.steps,
                method=run.sampler.method,
                sigmas=run.sampler.sigmas(),
                options=dict(run.sampler.options),
                seed=self.seed,
            )
            name = f"diffusion {run.sampler.method}"
        else:
            policy = RegressionPolicy(
                run.model, chunks.obs_norm, chunks.act_norm, obs_horizon=chunks.obs_horizon,
                pred_horizon=chunks.pred_horizon,
            )  # fmt: skip
            name = "mse"
        seeds = range(self.first_seed, self.first_seed + self.eval_seeds)
        stats = run_episodes(self.env, ChunkAgent(policy, chunks.action_horizon), seeds)
        res: dict[str, Any] = {
            "train": _training_info(run),
            "policy": {**_summary(stats), **two_path_sides(stats)},
        }
        if out_dir is not None and self.figures:
            path = Path(out_dir) / f"two_path_{name.replace(' ', '_')}.png"
            res["plot"] = str(plot_two_path({name: stats.trajectories}, path))
        return res


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


def flat_metrics(result: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numbers of a nested result as ``{"a/b": float}`` (lists and strings left out)."""
    out: dict[str, float] = {}
    for k, v in result.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flat_metrics(v, key + "/"))
        elif isinstance(v, (bool, int, float, np.integer, np.floating)):
            out[key] = float(v)
    return out


def nest_metrics(flat: Mapping[str, float]) -> dict[str, Any]:
    """The inverse of :func:`flat_metrics` (``"a/b"`` -> ``{"a": {"b": ...}}``)."""
    out: dict[str, Any] = {}
    for key, v in flat.items():
        *path, last = key.split("/")
        node = out
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return out


def benchmark_goals(
    maze: Mapping[str, Any], pendulum: Mapping[str, Any], policies: Mapping[str, Mapping]
) -> dict[str, bool]:
    """The RL benchmark goals (issue 9): maze success >= 90% of the expert's; value-guided
    Pendulum return above unguided; the best diffusion policy on the two-path toy takes both
    ways round the obstacle (>= 20% each) and succeeds more often than the MSE policy."""
    best = max((v for k, v in policies.items() if k != "mse"), key=lambda v: v["success_rate"])
    return {
        "maze_success_ge_90pct_expert": maze["success_vs_expert"] >= 0.9,
        "pendulum_guided_above_unguided": pendulum["guided_minus_unguided"] > 0,
        "toy_both_modes": min(best["left"], best["right"]) >= 0.2,
        "toy_beats_mse": best["success_rate"] > policies["mse"]["success_rate"],
    }


def rollouts_from_config(node: Any) -> Any:
    """The rollout object of an ``rl`` config node (``_target_`` naming one of :data:`ROLLOUTS`
    plus its settings); unknown targets or keys are refused with the valid ones."""
    if node is None:
        raise ValueError(
            "this run's config has no 'rl' node: an RL experiment names its rollouts there "
            f"(rl._target_: one of {sorted(ROLLOUTS)})"
        )
    data = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    target = data.pop("_target_", None)
    if target not in ROLLOUTS:
        raise ValueError(f"rl._target_={target!r}; expected one of {sorted(ROLLOUTS)}")
    cls = ROLLOUTS[target]
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ValueError(
            f"unknown rl keys {unknown} for {cls.__name__}; valid keys: {sorted(valid)}"
        )
    if "guide_scales" in data:
        data["guide_scales"] = tuple(float(v) for v in data["guide_scales"])
    return cls(**data)


ROLLOUTS = {
    f"{__name__}.{cls.__name__}": cls
    for cls in (MazeRollouts, PendulumRollouts, ValueCorrelation, ChunkRollouts)
}
