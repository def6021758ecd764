"""The RL part of ``polydiff demo``: Diffusion Policy on the two-path toy, Diffuser in a maze.

``run(out_dir, quick)`` generates its data (cached under
:func:`polydiff.rl.datasets.default_data_root`), trains small models on CPU, rolls them out and
writes PNG figures plus ``rl_demo.json``. Quick mode (< 1 min on 2 idle cores) covers the toy's
diffusion policy (residual-MLP denoiser) vs the MSE policy; the full mode (a few minutes) adds
Diffuser on the PointMaze U-maze with its planned-vs-executed figure.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from polydiff.rl.experiments import (
    MazeConfig,
    TwoPathConfig,
    run_maze_diffuser,
    run_two_path_policy,
)


def _brief(policy: dict) -> dict:
    keys = (
        "success_rate",
        "left",
        "right",
        "nfe_per_action",
        "latency_ms_median",
        "latency_ms_p95",
    )
    return {k: policy[k] for k in keys if k in policy}


def run(out_dir: Path, quick: bool = False) -> dict:
    """Run the RL demo into ``out_dir``; returns the measured numbers (also in rl_demo.json)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_root = None  # the shared dataset cache
    t0 = time.perf_counter()
    toy_cfg = TwoPathConfig(
        data_episodes=60 if quick else 100,
        backbones=("mlp",) if quick else ("unet",),
        train_steps=600 if quick else 1200,
        mse_steps=300 if quick else 1000,
        methods=("dpmpp_2m",) if quick else ("dpmpp_2m", "ddim"),
        eval_seeds=10 if quick else 30,
        data_root=data_root,
    )
    toy = run_two_path_policy(toy_cfg, out_dir)
    summary: dict = {
        "two_path": {name: _brief(p) for name, p in toy["policies"].items()},
        "figures": [toy["plot"]],
    }
    if not quick:
        maze_cfg = MazeConfig(
            data_episodes=40,
            train_steps=1000,
            n_candidates=4,
            eval_seeds=8,
            data_root=data_root,
        )
        maze = run_maze_diffuser(maze_cfg, out_dir)
        summary["pointmaze_umaze"] = {
            "diffuser": _brief(maze["diffuser"]),
            "expert_success": maze["expert"]["success_rate"],
            "success_vs_expert": maze["success_vs_expert"],
        }
        summary["figures"].append(maze["plot"])
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    tmp = out_dir / f".rl_demo.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out_dir / "rl_demo.json")
    return summary
