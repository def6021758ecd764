"""Diffuser planning and Diffusion Policy execution: tiny train-plan-rollout runs per method."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from polydiff.core.objective import DiffusionObjective
from polydiff.core.schedules import EDMSchedule
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
    Plan,
    PlanActionAgent,
)
from polydiff.rl.evaluate import (
    MazeExpertAgent,
    RandomAgent,
    normalized_score,
    run_episodes,
)
from polydiff.rl.models import (
    MLPPolicy,
    SequenceUNet,
    StartConditionedObjective,
    TrajectoryValue,
    chunk_transformer,
    value_loss,
)
from polydiff.rl.policy import ChunkAgent, DiffusionPolicy, RegressionPolicy, regression_loss
from polydiff.train import Trainer
from polydiff.train.run import build_trainer_config


def edm_objective() -> DiffusionObjective:
    """``configs/objective/edm.yaml`` with ``sigma_max=10`` (the RL experiments' objective)."""
    return DiffusionObjective(EDMSchedule(sigma_max=10.0), "edm", "edm", "log_normal")


def train_network(
    model: torch.nn.Module, objective, dataset, steps: int, batch_size: int = 64
) -> tuple[torch.nn.Module, dict]:
    """A few steps through the training engine (recipes train through configs; this is a unit
    test of the planners on a barely trained net). Returns (EMA model, last metrics)."""
    torch.manual_seed(0)
    cfg = build_trainer_config(
        {"max_steps": steps, "batch_size": min(batch_size, len(dataset)), "ema_decays": [0.995],
         "log_every": max(steps // 5, 1), "progress": False, "cpu": True}
    )  # fmt: skip
    opt = functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-6)
    trainer = Trainer(model, objective, dataset, opt, cfg)
    metrics = trainer.fit()
    return trainer.sampling_model().eval().requires_grad_(False), metrics


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("rl_data")


def test_networks_shapes_and_errors() -> None:
    net = SequenceUNet(3, "diffuser-tiny")
    x = torch.randn(2, 10, 3)  # 10 is not a multiple of the U-Net's factor 4: padded, cropped
    assert net(x, torch.zeros(2)).shape == (2, 10, 3)
    with pytest.raises(ValueError, match=r"\(B, T, 3\)"):
        net(torch.randn(2, 3, 10), torch.zeros(2))
    v = TrajectoryValue(3)
    assert v(x, torch.ones(2)).shape == (2,)
    tr = chunk_transformer(2, 16, cond_dim=4)
    out = tr(torch.randn(5, 16, 2), torch.zeros(5), {"vector": torch.randn(5, 4)})
    assert out.shape == (5, 16, 2)
    with pytest.raises(KeyError, match="diffuser-tiny"):
        SequenceUNet(3, "nope")


def test_maze_train_plan_rollout(data_root) -> None:
    data = load_minari(
        generate_dataset("pointmaze-umaze-waypoint", data_root, n_episodes=2, episode_len=120)
    )
    windows = TrajectoryWindows(data, horizon=8, stride=4, with_actions=False)
    objective = edm_objective()
    ema, metrics = train_network(
        SequenceUNet(4, "diffuser-tiny"), objective, windows, steps=20, batch_size=16
    )
    assert np.isfinite(metrics["loss"])
    planner = DiffuserPlanner(objective.denoiser(ema), windows.normalizer, 8, 4, n_steps=4)
    obs = np.array([0.5, -1.0, 0.1, 0.0], dtype=np.float32)
    goal = np.array([-1.0, 1.0])
    plan = planner.plan(obs, goal)
    # inpainting pins the current state and the goal (with zero velocity) exactly
    np.testing.assert_allclose(plan.trajectory[0], obs, atol=1e-5)
    np.testing.assert_allclose(plan.trajectory[-1], [-1.0, 1.0, 0.0, 0.0], atol=1e-5)
    assert plan.trajectory.shape == (8, 4) and plan.nfe == 4

    agent = MazePlanAgent(planner, stride=4, replan_every=10)
    stats = run_episodes("pointmaze-umaze", agent, [0], env_kwargs={"max_episode_steps": 25})
    s = stats.summary()
    steps = stats.lengths[0]
    assert len(stats.latencies_ms) == steps and s["latency_ms_p95"] >= s["latency_ms_median"] > 0
    n_plans = len(agent.plans)
    assert n_plans == -(-steps // 10)  # one plan every 10 steps
    assert s["nfe_per_action"] == pytest.approx(4 * n_plans / steps)
    assert all(p.shape == (8, 4) for _, p in agent.plans)


def test_value_guidance_raises_the_value(data_root) -> None:
    data = load_minari(generate_dataset("pendulum-mixed", data_root, n_per_level=1, n_random=1))
    windows = TrajectoryWindows(data, horizon=8, discount=0.9, return_value=True)
    objective = edm_objective()
    ema, _ = train_network(
        SequenceUNet(4, "diffuser-tiny"), objective, windows, steps=20, batch_size=16
    )
    value, m = train_network(TrajectoryValue(4), value_loss, windows, steps=10, batch_size=16)
    assert np.isfinite(m["loss"])

    class MeanAction(torch.nn.Module):  # analytic value: prefers large torques
        def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return x[..., 3].mean(dim=1)

    obs = data.episodes[0].obs[5]
    plans = {}
    for scale in (0.0, 5.0):
        planner = DiffuserPlanner(
            objective.denoiser(ema), windows.normalizer, 8, 3, n_steps=6, value=MeanAction(),
            guide_scale=scale, goal_zero_dims=(), n_candidates=4, seed=1,
        )  # fmt: skip
        plans[scale] = planner.plan(obs)
        np.testing.assert_allclose(plans[scale].trajectory[0, :3], obs, atol=1e-5)
    assert plans[5.0].value > plans[0.0].value + 0.1
    assert plans[5.0].trajectory[:, 3].mean() > plans[0.0].trajectory[:, 3].mean()

    # receding horizon: 4 planned actions executed per plan; trained value network plugged in
    planner = DiffuserPlanner(
        objective.denoiser(ema), windows.normalizer, 8, 3, n_steps=3, value=value,
        guide_scale=0.1, goal_zero_dims=(), n_candidates=2,
    )  # fmt: skip
    agent = PlanActionAgent(planner, execute=4)
    stats = run_episodes("pendulum", agent, [0], env_kwargs={"max_episode_steps": 12})
    assert stats.nfes == [3, 0, 0, 0] * 3 and len(agent.values) == 3
    assert -16.3 * 12 <= stats.returns[0] <= 0.0  # Pendulum's reward range per step


def test_linear_inverse_dynamics_recovers_pendulum_torques(data_root) -> None:
    data = load_minari(generate_dataset("pendulum-mixed", data_root, n_per_level=1, n_random=1))
    inv = LinearInverseDynamics.fit(data.episodes)
    # theta-dot' = theta-dot + 0.05 (15 sin(theta) + 3 u): coefficients of [s_t, s_t+1, 1]
    w = inv.weights[:, 0]  # (7,) = cos, sin, thdot, cos', sin', thdot', 1
    assert w[1] == pytest.approx(-5.0, abs=0.2) and w[5] == pytest.approx(20 / 3, abs=0.2)
    assert w[2] == pytest.approx(-20 / 3, abs=0.2)
    ep = data.episodes[0]
    pred = np.stack([inv(ep.obs[t], ep.obs[t + 1]) for t in range(len(ep.actions))])  # (T, 1)
    ok = np.abs(ep.obs[1:, 2]) < 7.9  # theta-dot clipped at +-8 breaks the linear map
    assert np.median(np.abs(pred - ep.actions)[ok]) < 0.01
    assert np.all(np.abs(pred) <= 2.0)
    with pytest.raises(ValueError, match="2 \\* obs_dim \\+ 1"):
        LinearInverseDynamics(np.zeros((6, 1)))


class _FixedPlanner:
    """Returns plan ``k`` (k = 0, 1, ...) with state dim 0 = 10 k + index, action = -1."""

    horizon, obs_dim = 4, 2

    def __init__(self) -> None:
        self.calls = 0

    def plan(self, obs: np.ndarray) -> Plan:
        traj = np.zeros((4, 3), dtype=np.float32)
        traj[:, 0] = 10 * self.calls + np.arange(4)
        traj[:, 2] = -1.0
        self.calls += 1
        return Plan(traj, nfe=5, seconds=0.0)


def test_plan_action_agent_tracks_next_planned_state_with_inverse_dynamics() -> None:
    # inverse dynamics a = next_obs[0] - obs[0] (clipped to [-100, 100])
    inv = LinearInverseDynamics(np.array([[-1.0], [0], [1.0], [0], [0]]), -100.0, 100.0)
    agent = PlanActionAgent(_FixedPlanner(), 2, -100.0, 100.0, inverse_dynamics=inv)
    obs = np.array([0.5, 0.0])
    actions, nfes = [], []
    for _ in range(4):
        actions.append(float(agent(obs)[0]))
        nfes.append(agent.last_nfe)
    # plan 0: targets states 1, 2; plan 1: targets 11, 12 (always from the observed 0.5)
    assert actions == pytest.approx([0.5, 1.5, 10.5, 11.5]) and nfes == [5, 0, 5, 0]
    plain = PlanActionAgent(_FixedPlanner(), execute=2)
    assert float(plain(obs)[0]) == -1.0  # without inverse dynamics: the planned action
    with pytest.raises(ValueError, match="execute=4 must be in 1..horizon-1"):
        PlanActionAgent(_FixedPlanner(), execute=4, inverse_dynamics=inv)


class _FixedChunks:
    """A chunk policy returning chunk ``k`` filled with the value ``k`` (0, 1, 2...)."""

    obs_horizon, pred_horizon, nfe = 2, 16, 7

    def __init__(self) -> None:
        self.calls: list[np.ndarray] = []

    def predict(self, obs_history: np.ndarray) -> np.ndarray:
        self.calls.append(obs_history)
        chunk = np.zeros((1, 16, 2)) + len(self.calls)
        chunk[0, :, 1] = np.arange(16)
        return chunk


def test_chunk_agent_executes_ta_actions_from_the_current_step() -> None:
    policy = _FixedChunks()
    agent = ChunkAgent(policy, action_horizon=8)
    actions, nfes = [], []
    for t in range(17):
        actions.append(agent(np.array([t, 0.0], dtype=np.float32)))
        nfes.append(agent.last_nfe)
    assert nfes == [7] + [0] * 7 + [7] + [0] * 7 + [7]
    # chunk index To-1 = 1 is the current step; 8 actions per prediction
    np.testing.assert_array_equal([a[1] for a in actions[:8]], np.arange(1, 9))
    np.testing.assert_array_equal([a[0] for a in actions], [1] * 8 + [2] * 8 + [3])
    # the first observation is repeated to fill the history, then the last two are used
    np.testing.assert_array_equal(policy.calls[0][0, :, 0], [0, 0])
    np.testing.assert_array_equal(policy.calls[1][0, :, 0], [7, 8])


def test_diffusion_and_mse_policies_tiny_run(data_root) -> None:
    data = load_minari(generate_dataset("two-path-expert", data_root, n_episodes=6))
    chunks = ActionChunks(data, 2, 16, 8)
    objective = edm_objective()
    for net in (
        SequenceUNet(2, "dp-tiny", cond_dim=4),
        chunk_transformer(2, 16, cond_dim=4),
    ):
        ema, metrics = train_network(net, objective, chunks, steps=10, batch_size=16)
        assert np.isfinite(metrics["loss"])
        for method, nfe in (("dpmpp_2m", 4), ("heun", 7)):
            policy = DiffusionPolicy(
                objective.denoiser(ema), chunks.obs_norm, chunks.act_norm, n_steps=4, method=method
            )
            stats = run_episodes("two-path", ChunkAgent(policy, 8), [0, 1])
            assert policy.nfe == nfe
            assert all(n in (0, nfe) for n in stats.nfes) and stats.nfes[0] == nfe
            assert all(1 <= n <= 60 for n in stats.lengths)
    mlp, m = train_network(MLPPolicy(4, 2, 16), regression_loss, chunks, steps=10, batch_size=16)
    mse = RegressionPolicy(mlp, chunks.obs_norm, chunks.act_norm)
    chunk = mse.predict(np.zeros((3, 2, 2)))
    assert chunk.shape == (3, 16, 2) and np.abs(chunk).max() <= 1.0 + 1e-6


def test_references_and_normalized_score() -> None:
    assert normalized_score(-500.0, -1000.0, -100.0) == pytest.approx(500 / 9)
    with pytest.raises(ValueError, match="equal"):
        normalized_score(1.0, 2.0, 2.0)
    expert = run_episodes("pointmaze-umaze", MazeExpertAgent("pointmaze-umaze"), range(3))
    rand = run_episodes(
        "pointmaze-umaze", RandomAgent(-1, 1, 2), range(3), env_kwargs={"max_episode_steps": 50}
    )
    assert expert.summary()["success_rate"] == 1.0 and expert.returns == [1.0, 1.0, 1.0]
    assert rand.summary()["nfe_per_action"] == 0.0


def test_candidates_without_value_keep_the_smoothest_plan() -> None:
    from polydiff.rl.datasets import MinMaxNormalizer

    smooth = torch.linspace(-1, 1, 8)[:, None].repeat(1, 4)  # (8, 4) straight line
    jumpy = smooth.clone()
    jumpy[3:5, :2] = 0.9  # a jump through the middle
    rows = torch.stack([jumpy, smooth, jumpy])  # candidate 1 is the smooth one

    def fake_denoiser(x, sigma, cond=None):
        return rows.to(x.dtype)

    norm = MinMaxNormalizer([-1.0] * 4, [1.0] * 4)
    planner = DiffuserPlanner(
        fake_denoiser, norm, 8, 4, n_steps=3, n_candidates=3, goal_zero_dims=()
    )
    plan = planner.plan(np.full(4, -1.0, dtype=np.float32))
    np.testing.assert_allclose(plan.trajectory, smooth.numpy(), atol=1e-5)
    assert plan.nfe == 3


def test_start_conditioned_objective_keeps_the_start_state_clean() -> None:
    objective = StartConditionedObjective(EDMSchedule(sigma_max=10.0), "edm", "edm", obs_dim=3)
    assert objective.denoiser is not None  # a DiffusionObjective: the run's denoiser works
    seen: list[torch.Tensor] = []

    class Recorder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, cond=None):
            seen.append(x.detach().clone())
            return x * self.w

    x0 = torch.rand(5, 8, 4) * 2 - 1
    loss = objective.loss(Recorder(), x0, None, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss > 0
    x_in = seen[0]  # EDM network input c_in * (x0 + sigma * noise), c_in > 0 per row
    ratio = x_in[:, 0, :3] / x0[:, 0, :3]  # clean start: the same c_in for the 3 state dims
    torch.testing.assert_close(ratio, ratio[:, :1].expand(-1, 3), rtol=1e-4, atol=1e-5)
    c_in = ratio[:, 0]
    noisy = x_in[:, 1:] / c_in[:, None, None] - x0[:, 1:]
    assert noisy.abs().mean() > 0.05  # everything else is noised
    with pytest.raises(ValueError, match="D >= 3"):
        objective.loss(Recorder(), torch.zeros(2, 8, 2))


def test_clean_known_planning_pins_the_state_at_every_step() -> None:
    from polydiff.rl.datasets import MinMaxNormalizer

    inputs: list[torch.Tensor] = []
    conds: list = []

    def fake_denoiser(x, sigma, cond=None):
        inputs.append(x.clone())
        conds.append(cond)
        return torch.zeros_like(x)

    norm = MinMaxNormalizer([-2.0] * 4, [2.0] * 4)
    planner = DiffuserPlanner(
        fake_denoiser, norm, 6, 3, n_steps=4, goal_zero_dims=(), clean_known=True,
        start_cond=True, n_candidates=2,
    )  # fmt: skip
    obs = np.array([1.0, -1.0, 0.5], dtype=np.float32)
    plan = planner.plan(obs)
    assert plan.nfe == 4 and len(inputs) == 4
    start = torch.tensor([0.5, -0.5, 0.25])  # normalised: obs / 2
    for x, cond in zip(inputs, conds):  # the start state enters every call clean and as FiLM
        torch.testing.assert_close(x[:, 0, :3], start.expand(2, 3))
        torch.testing.assert_close(cond["vector"], start.expand(2, 3))
    np.testing.assert_allclose(plan.trajectory[0, :3], obs, atol=1e-6)
    np.testing.assert_allclose(plan.trajectory[1:], 0.0, atol=1e-6)  # the denoiser's x0


def test_goal_indices_keep_the_earliest_feasible_arrival() -> None:
    from polydiff.rl.datasets import MinMaxNormalizer

    def straight(to: float, k: int) -> torch.Tensor:  # (8, 4): from -1 to `to` at index k
        xy = torch.cat([torch.linspace(-1, to, k + 1), torch.full((7 - k,), to)])
        return torch.stack([xy, xy, torch.zeros(8), torch.zeros(8)], dim=1)

    # candidates: goal at index 2 (a jump of 1.0 per step), 4 (0.5 per step), 7 (0.29)
    rows = torch.stack([straight(1.0, 2), straight(1.0, 4), straight(1.0, 7)])

    def fake_denoiser(x, sigma, cond=None):
        return rows.to(x.dtype)

    norm = MinMaxNormalizer([-1.0] * 4, [1.0] * 4)
    kw = dict(n_steps=3, goal_zero_dims=(), goal_indices=(2, 4, 7))
    obs, goal = np.array([-1.0, -1.0, 0.0, 0.0], dtype=np.float32), np.array([1.0, 1.0])
    for max_step, arrival in ((0.8, 4), (0.5, 7), (2.0, 2), (None, 7)):
        planner = DiffuserPlanner(fake_denoiser, norm, 8, 4, max_step=max_step, **kw)
        plan = planner.plan(obs, goal)
        assert plan.arrival == arrival and plan.nfe == 3
        np.testing.assert_allclose(plan.trajectory[arrival, :2], goal, atol=1e-5)
    with pytest.raises(ValueError, match="outside 1..7"):
        DiffuserPlanner(fake_denoiser, norm, 8, 4, goal_indices=(8,)).plan(obs, goal)
