"""RL benchmark: Diffuser on PointMaze, value-guided Pendulum planning, Diffusion Policy vs MSE.

Every number comes from the one recipe path: each model is ``configs/experiment/rl/<name>``
trained by ``polydiff.train.run.train`` (``benchmarks.common.train_recipe``) and rolled out by
``polydiff.train.run.evaluate_run`` (the experiment's ``rl`` node, ``polydiff.rl.experiments``),
so ``polydiff train experiment=rl/umaze_diffuser <overrides> && polydiff evaluate run=<dir>``
reproduces a row. The overrides of each part are in :data:`SIZES` and stored in the results.
Goals (checked and reported, :func:`polydiff.rl.experiments.benchmark_goals`):

- PointMaze U-maze: Diffuser's success rate >= 90% of the waypoint expert's;
- Pendulum: value-guided return above unguided sampling on the same mixed data;
- two-path toy: the diffusion policy covers both modes and beats the MSE policy's success.

Every planner and policy reports its NFE and latency per executed action (ms, median / p95).

    python -m benchmarks.rl.run [--quick] [maze] [pendulum] [two_path]
    python -m benchmarks.rl.run --markdown   # rl.md again from rl.json + rl.notes.md

``results/rl.notes.md`` (hand-written: old vs new numbers and why they changed) is appended to
the markdown when present.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from benchmarks.common import cpu_timer, results_dir, train_recipe, write_results
from polydiff.core.fileio import atomic_write_text
from polydiff.rl.experiments import benchmark_goals, nest_metrics
from polydiff.train.run import evaluate_run

PARTS = ("maze", "pendulum", "two_path")
ROOT = Path(__file__).resolve().parents[2]


def runs_root(quick: bool) -> Path:
    """The benchmark's runs (``runs/`` is git-ignored): a finished run there is reused (its
    training resumes at its last step), so a failed evaluation does not cost the training;
    delete the folder to train afresh."""
    return ROOT / "runs" / "bench" / ("rl-quick" if quick else "rl")


QUIET = ["trainer.progress=false"]

# (experiment, train overrides, [evaluation overrides per evaluated variant]) per part and mode
SIZES: dict[bool, dict[str, list[tuple[str, list[str], dict[str, list[str]]]]]] = {
    False: {  # full (2000 maze steps in the recipe; 1500 here to stay in the 20 CPU-min budget)
        "maze": [
            ("rl/umaze_diffuser", ["trainer.max_steps=1500"],
             {"diffuser": ["rl.n_candidates=8", "rl.eval_seeds=30", "rl.gif=true"]}),
        ],
        "pendulum": [
            ("rl/pendulum_diffuser",
             ["trainer.max_steps=1200", "rl.value.overrides=['trainer.max_steps=800']"],
             {"pendulum": ["rl.eval_seeds=10", "rl.n_candidates=16"]}),
        ],
        "two_path": [
            ("rl/two_path_dp_unet", ["trainer.max_steps=1200"],
             {"diffusion_unet_dpmpp_2m": ["rl.eval_seeds=50"],
              "diffusion_unet_ddim": ["rl.eval_seeds=50", "sampler=ddim", "sampler.steps=8"]}),
            ("rl/two_path_dp_transformer", ["trainer.max_steps=1200"],
             {"diffusion_transformer_dpmpp_2m": ["rl.eval_seeds=50"],
              "diffusion_transformer_ddim": ["rl.eval_seeds=50", "sampler=ddim",
                                             "sampler.steps=8"]}),
            ("rl/two_path_mse", ["trainer.max_steps=1000"], {"mse": ["rl.eval_seeds=50"]}),
        ],
    },
    True: {  # quick: a smoke run of a few minutes
        "maze": [
            ("rl/umaze_diffuser",
             ["trainer.max_steps=300", "data.dataset.generator_kwargs.n_episodes=20"],
             {"diffuser": ["rl.eval_seeds=5"]}),
        ],
        "pendulum": [
            ("rl/pendulum_diffuser",
             ["trainer.max_steps=300", "data.dataset.generator_kwargs.n_per_level=4",
              "data.dataset.generator_kwargs.n_random=4",
              "rl.value.overrides=['trainer.max_steps=200']"],
             {"pendulum": ["rl.eval_seeds=3"]}),
        ],
        "two_path": [
            ("rl/two_path_dp_unet",
             ["trainer.max_steps=300", "data.dataset.generator_kwargs.n_episodes=60"],
             {"diffusion_unet_dpmpp_2m": ["rl.eval_seeds=10"]}),
            ("rl/two_path_dp_transformer",
             ["trainer.max_steps=300", "data.dataset.generator_kwargs.n_episodes=60"],
             {"diffusion_transformer_dpmpp_2m": ["rl.eval_seeds=10"]}),
            ("rl/two_path_mse",
             ["trainer.max_steps=300", "data.dataset.generator_kwargs.n_episodes=60"],
             {"mse": ["rl.eval_seeds=10"]}),
        ],
    },
}  # fmt: skip


def _run_part(part: str, quick: bool, runs: Path) -> dict[str, Any]:
    """Train and evaluate the recipes of one part; figures copied next to the results."""
    out: dict[str, Any] = {"recipes": [], "variants": {}}
    figures = results_dir(quick)
    for experiment, overrides, variants in SIZES[quick][part]:
        run_dir = runs / f"{experiment.replace('/', '_')}-s{_steps(overrides)}"
        with cpu_timer() as t:
            train_recipe(experiment, [*QUIET, *overrides], run_dir=run_dir)
        cfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
        recipe = {
            "experiment": experiment,
            "train_overrides": overrides,
            "train_cpu_seconds": round(t["cpu"], 1),
            "train_wall_seconds": round(t["wall"], 1),
            "sampler": {"method": cfg["sampler"]["method"], "steps": cfg["sampler"]["steps"]},
            "rl": cfg["rl"],
        }
        for name, eval_overrides in variants.items():
            with cpu_timer() as t:  # the EMA weights, as the recipes' committed numbers
                settings = [*eval_overrides, "sample.ema=true", "evaluate.overwrite=true"]
                result = evaluate_run(run_dir, settings)
            metrics = nest_metrics(result["metrics"])
            metrics["evaluate_overrides"] = eval_overrides
            metrics["evaluate_cpu_seconds"] = round(t["cpu"], 1)
            metrics["experiment"] = experiment
            out["variants"][name] = metrics
        out["recipes"].append(recipe)
        for png in (run_dir / "eval" / "rollouts").glob("*.*"):
            if png.suffix in (".png", ".gif"):
                shutil.copy(png, figures / png.name)
    return out


def _steps(overrides: list[str]) -> str:
    """The ``trainer.max_steps`` of a part's overrides (part of its run directory's name)."""
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("trainer.max_steps=")), "")


def _reshape(parts: dict[str, dict]) -> dict[str, Any]:
    """The benchmark's result layout: maze / pendulum rows, two-path policies by name."""
    res: dict[str, Any] = {}
    if "maze" in parts:
        res["maze"] = {**parts["maze"]["variants"]["diffuser"], "recipes": parts["maze"]["recipes"]}
    if "pendulum" in parts:
        p = parts["pendulum"]
        res["pendulum"] = {**p["variants"]["pendulum"], "recipes": p["recipes"]}
    if "two_path" in parts:
        t = parts["two_path"]
        policies = {}
        for name, v in t["variants"].items():
            policies[name] = {
                **v["policy"],
                "parameters": v["train"]["parameters"],
                "final_loss": v["train"].get("final_loss"),
                "experiment": v["experiment"],
                "evaluate_overrides": v["evaluate_overrides"],
            }
        res["two_path"] = {"policies": policies, "recipes": t["recipes"]}
    return res


def _row(name: str, r: dict, extra: str = "") -> str:
    return (
        f"| {name} | {r['episodes']:.0f} | {r['success_rate']:.2f} | "
        f"{r['return_mean']:.1f} ± {r['return_std']:.1f} | {r['nfe_per_action']:.2f} | "
        f"{r['latency_ms_mean']:.2f} | {r['latency_ms_median']:.3f} | {r['latency_ms_p95']:.2f} | "
        f"{r['inference_ms_median']:.2f} | {r['inference_ms_p95']:.2f} | {extra} |"
    )


def _num(v: float | None) -> str:
    """One decimal, or n/a (a standard error over one seed is stored as null)."""
    return "n/a" if v is None else f"{v:.1f}"


def _evaluated_rl(rl: dict, overrides: list[str]) -> dict:
    """The recipe's ``rl`` node with the evaluation's ``rl.<key>=<value>`` overrides applied
    (the settings the rollouts ran with, e.g. ``rl.n_candidates=8`` over the recipe's 4)."""
    dotted = [o.removeprefix("rl.") for o in overrides if o.startswith("rl.")]
    merged = OmegaConf.merge(OmegaConf.create(rl), OmegaConf.from_dotlist(dotted))
    return OmegaConf.to_container(merged)


def _recipe_line(recipes: list[dict]) -> str:
    return "; ".join(
        f"`polydiff train experiment={r['experiment']} {' '.join(r['train_overrides'])}` "
        f"({r['train_cpu_seconds']:.0f} CPU s)"
        for r in recipes
    )


def markdown(res: dict) -> str:
    """The results as a markdown section."""
    lines = [
        "## RL: Diffuser and Diffusion Policy (CPU, locally generated data)",
        "",
        "Every row is a config recipe: `polydiff train experiment=rl/<name> <overrides>` then "
        "`polydiff evaluate run=<dir> <overrides>` (the overrides are listed below and in "
        "rl.json). Latency columns: *per executed action* = wall time of every agent call, one "
        "per environment step (most are answered from a cached plan / action chunk, so the "
        "median can be ~0); *per inference call* = only the calls that ran the denoiser (a "
        "whole plan or chunk). NFE / action = denoiser evaluations per executed action.",
        "",
        "| agent | seeds | success | return (mean ± std over seeds) | NFE / action "
        "| per executed action ms: mean | p50 | p95 | per inference call ms: p50 | p95 | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    m, p, t = res["maze"], res["pendulum"], res["two_path"]
    lines.append(_row("maze Diffuser", m["diffuser"], f"{m['success_vs_expert']:.2f} x expert"))
    lines.append(_row("maze expert", m["expert"]))
    lines.append(_row("maze random", m["random"]))
    prl = _evaluated_rl(p["recipes"][0]["rl"], p["evaluate_overrides"])
    steps = p["recipes"][0]["sampler"]["steps"]
    method = p["recipes"][0]["sampler"]["method"]  # Euler on the EDM grid = DDIM's update
    for k in ["unguided", "guided"] + sorted(k for k in p if k.startswith("guided_scale_")):
        if k == "unguided":
            how = "1 plan"
        else:
            scale = prl["guide_scale"] if k == "guided" else float(k.rsplit("_", 1)[1])
            how = f"scale {scale:g}, best of {prl['n_candidates']} by V"
        how += f", replan every {prl['execute']}, {steps} {method} steps"
        if prl["inverse_dynamics"]:
            how += ", inverse dynamics"
        lines.append(
            _row(f"pendulum Diffuser {k}", p[k], f"{how}; score {p[k]['normalized_score']:.1f}")
        )
    lines.append(_row("pendulum expert", p["expert"]))
    lines.append(_row("pendulum random", p["random"]))
    for name, r in t["policies"].items():
        lines.append(_row(f"two-path {name}", r, f"left {r['left']:.2f} / right {r['right']:.2f}"))
    corr = p.get("value_heldout_corr", {})
    pair = p["paired"]
    mrl = _evaluated_rl(m["recipes"][0]["rl"], m["evaluate_overrides"])
    replan = (
        f"every {mrl['replan_every']} steps" if mrl["replan_every"] else "when the plan is used up"
    )
    lines += [
        "",
        f"Maze: {m['train']['parameters']:,.0f}-parameter temporal U-Net, "
        f"{m['train']['train_steps']:.0f} steps, horizon {m['horizon']:.0f} x stride "
        f"{m['stride']:.0f}, start + goal inpainted, best of {mrl['n_candidates']} plans "
        f"(smoothest), PD tracking, replanning {replan}.",
        "Pendulum: value net's Pearson correlation with the discounted return on held-out "
        "episodes, by noise level: "
        + ", ".join(f"{k} {v:.3f}" for k, v in corr.items())
        + f"; guided - unguided return = {p['guided_minus_unguided']:.1f} (paired over "
        f"{pair['seeds']:.0f} seeds: {pair['mean']:.1f} ± {_num(pair['se'])} s.e., guided better "
        f"on {pair['wins']:.0f}).",
        "",
        "Recipes: " + _recipe_line(m["recipes"] + p["recipes"] + t["recipes"]) + ".",
        "",
        "Goals: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in res["goals"].items()),
    ]
    return "\n".join(lines) + "\n" + notes("rl", quick=bool(res.get("quick")))


def notes(name: str, *, quick: bool) -> str:
    """``results/<name>.notes.md`` (hand-written comparisons), to append to the markdown."""
    path = results_dir(quick) / f"{name}.notes.md"
    return "\n" + path.read_text() if path.is_file() else ""


def rerender(quick: bool = False) -> str:
    """``rl.md`` written again from ``rl.json`` (e.g. after editing ``rl.notes.md``)."""
    path = results_dir(quick) / "rl.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no RL results to render (run the benchmark first)")
    res = json.loads(path.read_text())
    if not all(p in res for p in PARTS):
        raise ValueError(f"{path}: parts {[p for p in PARTS if p not in res]} missing")
    md = markdown(res)
    atomic_write_text(path.with_suffix(".md"), md)
    return md


def _run_parallel(parts: tuple[str, ...], quick: bool, runs: Path) -> dict[str, dict]:
    """Each part in its own 1-thread process (``--part-json``); results by part."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {}
    for part in parts:
        cmd = [sys.executable, "-m", "benchmarks.rl.run", part, "--part-json"]
        cmd += [str(runs / f"{part}.json"), "--runs", str(runs)] + (["--quick"] if quick else [])
        procs[part] = subprocess.Popen(cmd, cwd=root, env=env)
    failed = [p for p, proc in procs.items() if proc.wait() != 0]
    if failed:
        raise RuntimeError(f"RL benchmark part(s) {failed} failed (see their output above)")
    return {p: json.loads((runs / f"{p}.json").read_text()) for p in parts}


def run(quick: bool = False, only: tuple[str, ...] | None = None, parallel: bool = True) -> dict:
    """Run the RL recipes; write ``rl.json`` / ``rl.md`` (``results/quick/`` when quick).

    With ``parallel`` the parts run in separate 1-thread processes. ``only`` runs a subset and
    merges it into the existing ``rl.json`` of the same mode; goals and markdown need all three.
    """
    torch.set_num_threads(1)  # the 2-core machine is shared; 1 thread is fastest here
    parts = tuple(only or PARTS)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; choose from {PARTS}")
    t0 = time.perf_counter()
    runs = runs_root(quick)
    runs.mkdir(parents=True, exist_ok=True)
    if parallel and len(parts) > 1:
        raw = _run_parallel(parts, quick, runs)
    else:
        raw = {part: _run_part(part, quick, runs) for part in parts}
    res = _reshape(raw)
    previous = results_dir(quick) / "rl.json"
    if only and previous.is_file():
        old = json.loads(previous.read_text())
        kept = {k: old[k] for k in PARTS if k in old and k not in res and "recipes" in old[k]}
        res = {**kept, **res}  # parts from before the recipe layout are not mixed in
    res["wall_seconds:" + ",".join(parts)] = round(time.perf_counter() - t0, 1)
    md = ""
    if all(p in res for p in PARTS):
        res["goals"] = benchmark_goals(res["maze"], res["pendulum"], res["two_path"]["policies"])
        md = markdown({**res, "quick": quick})
    partial = "(partial RL run: the markdown needs all three parts)\n"
    write_results("rl", res, md or partial, quick=quick)
    res["markdown"] = md
    return res


if __name__ == "__main__":
    args = sys.argv[1:]
    quick_mode = "--quick" in args
    if "--markdown" in args:
        print(rerender(quick_mode))
        sys.exit(0)
    if "--part-json" in args:  # a child of _run_parallel: one part, result to the given file
        target = Path(args[args.index("--part-json") + 1])
        runs_dir = Path(args[args.index("--runs") + 1])
        (part_name,) = [a for a in args if a in PARTS]
        torch.set_num_threads(1)
        target.write_text(json.dumps(_run_part(part_name, quick_mode, runs_dir)))
        sys.exit(0)
    chosen = tuple(a for a in args if a in PARTS) or None
    out = run(quick=quick_mode, only=chosen)
    print(out.get("markdown") or json.dumps(out, indent=1, default=str))
