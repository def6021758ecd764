"""RL recipes are configs: every experiment composes into its groups, ``polydiff evaluate`` rolls
a trained run out through the experiment's ``rl`` node, goals and paired statistics."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from polydiff.rl.experiments import (
    ROLLOUTS,
    ChunkRollouts,
    MazeRollouts,
    PendulumRollouts,
    _planner_grid,
    benchmark_goals,
    flat_metrics,
    nest_metrics,
    paired_difference,
    rollouts_from_config,
)
from polydiff.train.config import compose
from polydiff.train.run import evaluate_run, instantiate, open_run, train
from polydiff.train.sampling import SamplerSpec

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted(
    p.relative_to(ROOT / "configs/experiment").with_suffix("").as_posix()
    for p in (ROOT / "configs/experiment/rl").glob("*.yaml")
)
TARGETS = {
    "rl/umaze_diffuser": ("polydiff.rl.models.SequenceUNet", "DiffusionObjective", MazeRollouts),
    "rl/pendulum_diffuser": (
        "polydiff.rl.models.SequenceUNet", "StartConditionedObjective", PendulumRollouts,
    ),
    "rl/two_path_dp_unet": ("polydiff.rl.models.SequenceUNet", "DiffusionObjective", ChunkRollouts),
    "rl/two_path_dp_transformer": (
        "polydiff.rl.models.chunk_transformer", "DiffusionObjective", ChunkRollouts,
    ),
    "rl/two_path_mse": ("polydiff.rl.models.MLPPolicy", "RegressionObjective", ChunkRollouts),
    "rl/two_path_dp_mlp": (
        "polydiff.rl.models.FlatSequenceMLP", "DiffusionObjective", ChunkRollouts,
    ),
}  # fmt: skip


def test_every_rl_experiment_takes_model_objective_sampler_from_its_groups() -> None:
    assert {"rl/umaze_diffuser", "rl/pendulum_value", "rl/two_path_mse"} <= set(EXPERIMENTS)
    for name in EXPERIMENTS:
        cfg = compose([f"experiment={name}"])
        assert cfg.name == name
        rollouts = rollouts_from_config(cfg.rl)  # the rollout settings: the experiment's node
        assert type(rollouts) in ROLLOUTS.values()
        if name in TARGETS:
            model, objective, kind = TARGETS[name]
            assert cfg.model._target_ == model and cfg.objective._target_.endswith(objective)
            assert isinstance(rollouts, kind)
        assert rollouts.seed == cfg.seed  # interpolated, so `seed=` moves everything
        objective = instantiate(cfg.objective, "objective")
        assert callable(objective.loss) and callable(objective.denoiser)
        if name in ("rl/pendulum_value", "rl/two_path_mse"):  # not denoisers: said, not crashed
            with pytest.raises(TypeError, match="no denoiser to sample"):
                objective.denoiser(torch.nn.Linear(1, 1))
    pend = compose(["experiment=rl/pendulum_diffuser", "rl.n_candidates=3", "seed=4"])
    r = rollouts_from_config(pend.rl)
    assert (r.n_candidates, r.seed, r.value["experiment"]) == (3, 4, "rl/pendulum_value")
    assert pend.model.cond_dim == 3 and pend.data.dataset.start_cond and pend.objective.obs_dim == 3


def test_rollouts_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="no 'rl' node"):
        rollouts_from_config(None)
    with pytest.raises(ValueError, match=r"rl._target_='os.system'"):
        rollouts_from_config({"_target_": "os.system"})
    node = OmegaConf.create({"_target_": "polydiff.rl.experiments.MazeRollouts", "seeds": 3})
    with pytest.raises(ValueError, match=r"unknown rl keys \['seeds'\].*eval_seeds"):
        rollouts_from_config(node)
    with pytest.raises(ValueError, match="rl.policy='sac'"):
        ChunkRollouts(policy="sac")
    pend = rollouts_from_config(
        {"_target_": "polydiff.rl.experiments.PendulumRollouts", "guide_scales": [0, 1]}
    )
    assert pend.guide_scales == (0.0, 1.0)


def test_planner_takes_the_runs_sampler_or_refuses_it() -> None:
    def run_with(spec: SamplerSpec):
        return SimpleNamespace(sampler=spec)

    grid = lambda n: torch.linspace(10.0, 0.0, n + 1)  # noqa: E731
    sigmas, eta = _planner_grid(run_with(SamplerSpec("ddim", 4, grid, {"eta": 0.5})))
    torch.testing.assert_close(sigmas, grid(4).float())
    assert eta == 0.5
    euler = SamplerSpec("euler", 3, grid, {"s_churn": 0.0, "s_noise": 1.0})
    assert _planner_grid(run_with(euler))[0].shape == (4,)
    with pytest.raises(ValueError, match=r"sampler.method='dpmpp_2m'.*\['euler', 'ddim'\]"):
        _planner_grid(run_with(SamplerSpec("dpmpp_2m", 4, grid)))
    with pytest.raises(ValueError, match="s_churn must be 0"):
        _planner_grid(run_with(SamplerSpec("euler", 4, grid, {"s_churn": 1.0})))


def test_paired_difference_matches_brute_force_and_goals() -> None:
    g, u = [-300.0, -200.0, -400.0], [-500.0, -500.0, -350.0]
    p = paired_difference(g, u)
    d = torch.tensor(g, dtype=torch.float64) - torch.tensor(u, dtype=torch.float64)
    assert p["mean"] == pytest.approx(float(d.mean()))
    assert p["se"] == pytest.approx(float(d.std(unbiased=True) / math.sqrt(3)))  # 104.08
    assert p["se"] == pytest.approx(104.083, abs=1e-3) and (p["wins"], p["seeds"]) == (2, 3)
    assert math.isnan(paired_difference([1.0], [0.0])["se"])
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [])

    agent = lambda s, left=0.5: {"success_rate": s, "left": left, "right": 1 - left}  # noqa: E731
    maze, pend = {"success_vs_expert": 0.9}, {"guided_minus_unguided": 5.0}
    policies = {"diffusion_unet_ddim": agent(0.9, 0.45), "mse": agent(0.0, 0.9)}
    assert all(benchmark_goals(maze, pend, policies).values())
    policies["diffusion_unet_ddim"]["left"] = 0.05
    goals = benchmark_goals({"success_vs_expert": 0.85}, {"guided_minus_unguided": -1}, policies)
    assert goals == {
        "maze_success_ge_90pct_expert": False,
        "pendulum_guided_above_unguided": False,
        "toy_both_modes": False,
        "toy_beats_mse": True,
    }


def test_flat_metrics_round_trip() -> None:
    result = {"a": {"b": 1, "c": {"d": 2.5}}, "e": 3.0, "skip": [1, 2], "name": "x", "ok": True}
    flat = flat_metrics(result)
    assert flat == {"a/b": 1.0, "a/c/d": 2.5, "e": 3.0, "ok": 1.0}
    assert nest_metrics(flat) == {"a": {"b": 1.0, "c": {"d": 2.5}}, "e": 3.0, "ok": 1.0}


@pytest.mark.slow
def test_train_then_evaluate_is_the_rollout(tmp_path, monkeypatch) -> None:
    """``polydiff train experiment=rl/umaze_diffuser`` + ``polydiff evaluate`` (tiny sizes) gives
    exactly the numbers of the rollout object the ``rl`` node names, called on the opened run."""
    monkeypatch.setenv("POLYDIFF_RL_DATA", str(tmp_path / "data"))
    tiny = [
        "trainer.max_steps=5", "trainer.progress=false", "model.size=diffuser-tiny",
        "data.dataset.generator_kwargs.n_episodes=2",
        "data.dataset.generator_kwargs.episode_len=100",
        "data.dataset.horizon=8", "data.dataset.stride=4", "sampler.steps=3",
        "rl.eval_seeds=2", "rl.max_episode_steps=150",
    ]  # fmt: skip
    run_dir = train(["experiment=rl/umaze_diffuser", *tiny], run_dir=tmp_path / "run")
    result = evaluate_run(run_dir)
    m = result["metrics"]
    assert m["expert/success_rate"] == 1.0 >= m["random/success_rate"]
    assert m["diffuser/episodes"] == 2 and m["diffuser/nfe_per_action"] > 0
    assert m["success_vs_expert"] == pytest.approx(
        m["diffuser/success_rate"] / m["expert/success_rate"], abs=1e-3
    )
    assert json.loads(Path(result["path"]).read_text())["metrics"] == m
    assert (run_dir / "eval/rollouts/pointmaze-umaze_diffuser_plans.png").stat().st_size > 10_000
    run = open_run(run_dir)
    direct = flat_metrics(rollouts_from_config(run.cfg.rl)(run))
    same = {k: v for k, v in direct.items() if "latency" not in k and "inference_ms" not in k}
    assert same == {k: m[k] for k in same}  # seeded: the same rollouts, timings aside


@pytest.mark.slow
def test_pendulum_trains_its_value_by_the_value_recipe(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("POLYDIFF_RL_DATA", str(tmp_path / "data"))
    tiny = [
        "trainer.max_steps=5", "trainer.progress=false", "model.size=diffuser-tiny",
        "data.dataset.generator_kwargs.n_per_level=1", "data.dataset.generator_kwargs.n_random=1",
        "data.dataset.horizon=8", "sampler.steps=2", "rl.eval_seeds=1", "rl.execute=4",
        "rl.n_candidates=2", "rl.value.overrides=['trainer.max_steps=7']",
    ]  # fmt: skip
    run_dir = train(["experiment=rl/pendulum_diffuser", *tiny], run_dir=tmp_path / "run")
    m = evaluate_run(run_dir)["metrics"]
    value = open_run(run_dir / "value")
    assert value.cfg.name == "rl/pendulum_value" and value.cfg.trainer.max_steps == 7
    assert value.cfg.data.dataset.horizon == 8 and value.cfg.data.dataset.return_value
    assert m["value_train/train_steps"] == 7
    assert m["expert/return_mean"] > -400 > m["random/return_mean"]
    for k in ("guided", "unguided"):
        assert m[f"{k}/nfe_per_action"] == pytest.approx(2 / 4)
        assert -16.3 * 200 <= m[f"{k}/return_mean"] <= 0
    assert m["paired/mean"] == pytest.approx(m["guided_minus_unguided"], abs=0.06)


@pytest.mark.slow
def test_diffusion_policy_covers_both_modes_and_beats_mse(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("POLYDIFF_RL_DATA", str(tmp_path / "data"))
    common = ["trainer.progress=false", "rl.eval_seeds=30"]
    dp = train(
        ["experiment=rl/two_path_dp_unet", "trainer.max_steps=800", *common],
        run_dir=tmp_path / "dp",
    )
    mse = train(
        ["experiment=rl/two_path_mse", "trainer.max_steps=400", *common], run_dir=tmp_path / "mse"
    )
    d = nest_metrics(evaluate_run(dp, ["sampler=ddim", "sampler.steps=8"])["metrics"])["policy"]
    r = nest_metrics(evaluate_run(mse)["metrics"])["policy"]
    assert min(d["left"], d["right"]) >= 0.2  # both ways around the obstacle
    assert d["success_rate"] >= 0.6 > r["success_rate"]


@pytest.mark.slow
def test_demo_quick(tmp_path, monkeypatch) -> None:
    from polydiff.rl.demo import run

    monkeypatch.setenv("POLYDIFF_RL_DATA", str(tmp_path / "data"))
    out = run(tmp_path, quick=True)
    saved = json.loads((tmp_path / "rl_demo.json").read_text())
    assert saved["two_path"] == out["two_path"]
    assert set(out["two_path"]) == {"diffusion_mlp_dpmpp_2m", "mse"}
    assert all(Path(f).is_file() for f in out["figures"]) and len(out["figures"]) == 2
