"""End-to-end RL experiments: the benchmark's goal logic, the demo, the toy's two modes (slow)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from polydiff.rl.experiments import (
    MazeConfig,
    PendulumConfig,
    TwoPathConfig,
    run_experiment,
    run_two_path_policy,
)

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("rl_bench", ROOT / "benchmarks/rl/run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _agent(success: float, ret: float, left: float = 0.5) -> dict:
    return {
        "episodes": 10, "success_rate": success, "return_mean": ret, "return_std": 1.0,
        "nfe_per_action": 2.0, "latency_ms_mean": 1.0, "latency_ms_median": 0.001,
        "latency_ms_p95": 3.0, "inference_ms_median": 5.0, "inference_ms_p95": 6.0,
        "left": left, "right": 1 - left, "normalized_score": 50.0,
    }  # fmt: skip


def test_benchmark_goals_and_markdown() -> None:
    bench = _bench()
    res = {
        "maze": {
            "diffuser": _agent(0.9, 0.9), "expert": _agent(1.0, 1.0), "random": _agent(0, 0),
            "success_vs_expert": 0.9,
            "config": {"train_steps": 10, "horizon": 32, "stride": 5, "n_candidates": 4,
                       "replan_every": None},
            "train": {"parameters": 1000, "train_seconds": 1.0},
        },
        "pendulum": {
            "guided": _agent(0, -300), "unguided": _agent(0, -500), "expert": _agent(0, -150),
            "random": _agent(0, -1200), "guided_minus_unguided": 200.0,
            "guided_scale_0": _agent(0, -400),
            "config": {"guide_scale": 0.1, "n_candidates": 8},
            "value_heldout_corr": {"sigma_0.1": 0.95},
        },
        "two_path": {"policies": {"diffusion_unet_ddim": _agent(0.9, 0.9, left=0.45),
                                  "mse": _agent(0.0, 0.0, left=0.9)}},
    }  # fmt: skip
    res["pendulum"]["guided"]["returns"] = [-300.0, -200.0, -400.0]
    res["pendulum"]["unguided"]["returns"] = [-500.0, -500.0, -350.0]
    goals = bench.goals(res)
    assert goals == {
        "maze_success_ge_90pct_expert": True,
        "pendulum_guided_above_unguided": True,
        "toy_both_modes": True,
        "toy_beats_mse": True,
    }
    res["two_path"]["policies"]["diffusion_unet_ddim"]["left"] = 0.05
    res["maze"]["success_vs_expert"] = 0.85
    goals = bench.goals(res)
    assert not goals["toy_both_modes"] and not goals["maze_success_ge_90pct_expert"]
    res["goals"] = goals
    md = bench.markdown(res)
    assert (
        "| maze Diffuser | 10 | 0.90 | 0.9 ± 1.0 | 2.00 | 1.00 | 0.001 | 3.00 | 5.00 | 6.00 |" in md
    )
    assert "| pendulum Diffuser guided_scale_0 | 10 | 0.00 | -400.0 ± 1.0 |" in md
    assert "scale 0.1, best of 8 by V" in md and "sigma_0.1 0.950" in md
    assert "per executed action ms" in md and "per inference call ms" in md
    assert "replanning when the plan is used up" in md
    # paired differences 200, 300, -50: mean 150, s.e. sqrt(32500 / 3) = 104.1
    assert "(paired over 3 seeds: 150.0 ± 104.1 s.e., guided better on 2)" in md
    assert "toy_both_modes: NOT met" in md
    quick = bench.configs(quick=True)
    assert quick[2].backbones == ("unet", "transformer") and quick[0].env == "pointmaze-umaze"


@pytest.mark.slow
def test_tiny_maze_and_pendulum_experiments(tmp_path) -> None:
    maze = run_experiment(
        MazeConfig(
            data_episodes=2, episode_len=100, horizon=8, stride=4, size="diffuser-tiny",
            train_steps=5, batch_size=16, n_steps=3, replan_every=10, eval_seeds=2,
            max_episode_steps=150, gif=False, data_root=str(tmp_path),
        ),
        tmp_path,
    )  # fmt: skip
    assert maze["expert"]["success_rate"] == 1.0 >= maze["random"]["success_rate"]
    assert maze["diffuser"]["episodes"] == 2 and maze["diffuser"]["nfe_per_action"] > 0
    assert maze["success_vs_expert"] == pytest.approx(
        maze["diffuser"]["success_rate"] / maze["expert"]["success_rate"], abs=1e-3
    )
    assert Path(maze["plot"]).stat().st_size > 10_000
    pend = run_experiment(
        PendulumConfig(
            n_per_level=1, n_random=1, horizon=8, size="diffuser-tiny", train_steps=5,
            value_steps=5, batch_size=16, n_steps=2, execute=4, n_candidates=2, eval_seeds=1,
            data_root=str(tmp_path),
        )
    )  # fmt: skip
    assert pend["expert"]["return_mean"] > -400 > pend["random"]["return_mean"]
    for k in ("guided", "unguided"):
        assert pend[k]["nfe_per_action"] == pytest.approx(2 / 4)
        assert -16.3 * 200 <= pend[k]["return_mean"] <= 0
    assert pend["guided_minus_unguided"] == pytest.approx(
        pend["guided"]["return_mean"] - pend["unguided"]["return_mean"], abs=0.01
    )


def test_run_experiment_rejects_unknown_config() -> None:
    with pytest.raises(TypeError, match="no RL experiment for dict"):
        run_experiment({})


@pytest.mark.slow
def test_diffusion_policy_covers_both_modes_and_beats_mse(tmp_path) -> None:
    cfg = TwoPathConfig(
        data_episodes=100, train_steps=800, mse_steps=400, eval_seeds=30, methods=("ddim",),
        data_root=str(tmp_path),
    )  # fmt: skip
    res = run_two_path_policy(cfg, tmp_path)["policies"]
    dp, mse = res["diffusion_unet_ddim"], res["mse"]
    assert min(dp["left"], dp["right"]) >= 0.2  # both ways around the obstacle
    assert dp["success_rate"] >= 0.6 > mse["success_rate"]
    assert (tmp_path / "two_path_policies.png").stat().st_size > 10_000


@pytest.mark.slow
def test_demo_quick(tmp_path, monkeypatch) -> None:
    from polydiff.rl.demo import run

    monkeypatch.setenv("POLYDIFF_RL_DATA", str(tmp_path / "data"))
    out = run(tmp_path, quick=True)
    saved = json.loads((tmp_path / "rl_demo.json").read_text())
    assert saved["two_path"] == out["two_path"]
    assert set(out["two_path"]) == {"diffusion_mlp_dpmpp_2m", "mse"}
    assert all(Path(f).is_file() for f in out["figures"])
