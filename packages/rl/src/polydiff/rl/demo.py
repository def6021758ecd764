"""The RL part of ``polydiff demo``: Diffusion Policy on the two-path toy, Diffuser in a maze.

``run(out_dir, quick)`` trains the ``configs/experiment/rl/*`` recipes through
``polydiff.train.run`` (the path of ``polydiff train experiment=rl/... && polydiff evaluate``),
with smaller sizes as overrides, rolls them out and writes PNG figures plus ``rl_demo.json``.
Quick mode (< 1 min on 2 idle cores) covers the toy's diffusion policy (residual-MLP denoiser,
``experiment=rl/two_path_dp_mlp``) vs the MSE policy; the full mode adds Diffuser on the
PointMaze U-maze.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from polydiff.core.fileio import atomic_write_text
from polydiff.rl.experiments import nest_metrics
from polydiff.train.run import evaluate_run, train

BRIEF = ("success_rate", "left", "right", "nfe_per_action", "latency_ms_median", "latency_ms_p95")
QUIET = ["trainer.progress=false"]


def _recipe(
    experiment: str, overrides: list[str], eval_overrides: list[str], *, out_dir: Path, name: str
) -> dict[str, Any]:
    """Train ``experiment`` (+ overrides) into ``out_dir/runs/<name>`` and evaluate it."""
    run_dir = train(
        [f"experiment={experiment}", *QUIET, *overrides], run_dir=out_dir / "runs" / name
    )
    result = evaluate_run(run_dir, [*eval_overrides, "evaluate.overwrite=true"])
    return nest_metrics(result["metrics"])


def _figures(run_dir: Path, out_dir: Path) -> list[str]:
    """Copy the rollout figures of a run next to the demo's JSON."""
    out = []
    for png in sorted((run_dir / "eval" / "rollouts").glob("*.png")):
        out.append(str(shutil.copy(png, out_dir / png.name)))
    return out


def run(out_dir: Path, quick: bool = False) -> dict:
    """Run the RL demo into ``out_dir``; returns the measured numbers (also in rl_demo.json)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    seeds = f"rl.eval_seeds={10 if quick else 30}"
    data = [f"data.dataset.generator_kwargs.n_episodes={60 if quick else 100}"]
    dp_overrides = [*data, f"trainer.max_steps={600 if quick else 1200}"]
    experiment = "rl/two_path_dp_mlp" if quick else "rl/two_path_dp_unet"
    dp = _recipe(experiment, dp_overrides, [seeds], out_dir=out_dir, name="two_path_dp")
    backbone = "mlp" if quick else "unet"
    summary: dict[str, Any] = {"two_path": {}, "figures": []}
    summary["two_path"][f"diffusion_{backbone}_dpmpp_2m"] = {
        k: dp["policy"][k] for k in BRIEF if k in dp["policy"]
    }
    if not quick:
        ddim = evaluate_run(
            out_dir / "runs" / "two_path_dp", [seeds, "sampler=ddim", "evaluate.overwrite=true"]
        )
        policy = nest_metrics(ddim["metrics"])["policy"]
        summary["two_path"][f"diffusion_{backbone}_ddim"] = {
            k: policy[k] for k in BRIEF if k in policy
        }
    mse_overrides = [*data, f"trainer.max_steps={300 if quick else 1000}"]
    mse = _recipe("rl/two_path_mse", mse_overrides, [seeds], out_dir=out_dir, name="two_path_mse")
    summary["two_path"]["mse"] = {k: mse["policy"][k] for k in BRIEF if k in mse["policy"]}
    summary["figures"] += _figures(out_dir / "runs" / "two_path_dp", out_dir)
    summary["figures"] += _figures(out_dir / "runs" / "two_path_mse", out_dir)
    if not quick:
        maze_overrides = [
            "data.dataset.generator_kwargs.n_episodes=40", "trainer.max_steps=1000",
            "rl.n_candidates=4",
        ]  # fmt: skip
        maze = _recipe(
            "rl/umaze_diffuser", maze_overrides, ["rl.eval_seeds=8"], out_dir=out_dir, name="umaze"
        )
        summary["pointmaze_umaze"] = {
            "diffuser": {k: maze["diffuser"][k] for k in BRIEF if k in maze["diffuser"]},
            "expert_success": maze["expert"]["success_rate"],
            "success_vs_expert": maze["success_vs_expert"],
        }
        summary["figures"] += _figures(out_dir / "runs" / "umaze", out_dir)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(out_dir / "rl_demo.json", json.dumps(summary, indent=2))
    return summary
