"""Motion benchmark: text-to-motion on the built-in motions, the T2M protocol with CIs.

One recipe path: models are ``configs/experiment/motion/text2motion`` (and ``text2motion_geo``,
the same plus MDM's geometric losses) trained by ``polydiff.train.run.train``
(``benchmarks.common.train_recipe``) and scored by ``polydiff.train.run.evaluate_run``, which
runs :meth:`polydiff.motion.experiments.MotionHooks.evaluate_model` (replications with 95% CIs,
the real and nearest-caption retrieval rows, MultiModality). Every row is reproduced by

    polydiff train experiment=motion/<name> <TRAIN> && polydiff evaluate run=<dir> <EVAL>

with the ``TRAIN`` / ``EVAL`` overrides printed in the results (``TRAIN`` is empty for the
recipe itself: its training settings live in the config). Parts:

- ``base``: text2motion at 50 NFE (DPM-Solver++(2M), CFG 2.5) with replications and
  MultiModality, then 20 and 10 NFE on the same model;
- ``geo``: text2motion_geo with the same training budget (a step costs the same: measured
  0.20 s vs 0.19 s at batch 32 on one thread), 50 NFE, to see whether the geometric losses help
  foot skating and FID.

``--tag T`` stores a part as ``<part>_T`` (run directory ``<experiment>_T``), e.g. the
equal-compute geo ablation at the session-4 budget: ``--part geo --tag 2000 --set
$(S4_BUDGET)`` next to the 2000-step base run. A run interrupted between jobs is continued by
the same command (``polydiff train`` resumes from the run directory's newest checkpoint).

Goals (issue 19, at 50 NFE): R-precision top-3 >= 0.9 x real; FID below the retrieval
baseline's; foot skating ratio within 0.05 of real; Diversity within 10% of real.

    python -m benchmarks.motion.run [--part base|geo|all] [--quick] [--tag T] [--no-scaling]
        [--set <train overrides>] [--eval-set <evaluate overrides>]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import cpu_timer, results_dir, train_recipe, write_results
from polydiff.train.checkpoint import list_checkpoints
from polydiff.train.run import evaluate_run, open_run

QUIET = ["trainer.progress=false"]
# the session-4 training budget (2000 steps at batch 32, cosine lr 3e-3): the base_2000 row and
# the equal-compute geo ablation (--tag 2000 --set ...)
S4_BUDGET = [
    "trainer.max_steps=2000", "trainer.ckpt_every=1000", "trainer.batch_size=32",
    "trainer.lr_warmup_steps=100", "trainer.lr_schedule=cosine", "trainer.optimizer.lr=3e-3",
    "trainer.ema_snapshot_every=0", "trainer.keep_last=3",
]  # fmt: skip
SIZES: dict[bool, dict[str, Any]] = {
    False: {
        "train": [],  # the recipe's own settings (configs/experiment/motion/text2motion.yaml)
        # smaller than the protocol (20 replications, MultiModality 100 x 30): named in results
        "eval": ["evaluate.n=320", "evaluate.replications=3", "evaluate.mm_prompts=16",
                 "evaluate.mm_repeats=30", "evaluate.mm_times=10"],
        "eval_nfe": ["evaluate.n=320", "evaluate.replications=1", "evaluate.mm_prompts=0"],
        # the geo part fits its slot without MultiModality
        "eval_geo": ["evaluate.n=320", "evaluate.replications=3", "evaluate.mm_prompts=0"],
    },
    True: {
        "train": ["model.size=tiny", "data.n=60", "trainer.max_steps=30", "trainer.ckpt_every=30",
                  "data.text.name=words", "data.text_dim=32", "data.hooks.evaluator.steps=50"],
        "eval": ["evaluate.n=64", "evaluate.replications=2", "evaluate.mm_prompts=4",
                 "evaluate.mm_repeats=10", "evaluate.mm_times=10"],
        "eval_nfe": ["evaluate.n=64", "evaluate.replications=1", "evaluate.mm_prompts=0"],
        "eval_geo": ["evaluate.n=64", "evaluate.replications=2", "evaluate.mm_prompts=0"],
    },
}  # fmt: skip
COLUMNS = (
    "r_precision_top1", "r_precision_top2", "r_precision_top3", "fid", "mm_dist", "diversity",
    "multimodality", "foot_skating_ratio", "jitter", "bone_length_error",
)  # fmt: skip


def _row(metrics: dict[str, float], prefix: str = "", suffix: str = "") -> dict[str, list[float]]:
    """``{column: [mean, ci95]}`` of one evaluation (a prefix / suffix picks the real or
    retrieval copy)."""
    out = {}
    for c in COLUMNS:
        key = f"{prefix}{c}{suffix}"
        if key in metrics:
            out[c] = [metrics[key], metrics.get(f"{key}_ci95", 0.0)]
    return out


def _goals(gen: dict, real: dict, retrieval: dict) -> dict[str, bool]:
    return {
        "r_precision_top3_ge_0.9x_real":
            gen["r_precision_top3"][0] >= 0.9 * real["r_precision_top3"][0],
        "fid_below_retrieval": gen["fid"][0] < retrieval["fid"][0],
        "foot_skating_within_0.05_of_real":
            abs(gen["foot_skating_ratio"][0] - real["foot_skating_ratio"][0]) <= 0.05,
        "diversity_within_10pct_of_real":
            abs(gen["diversity"][0] - real["diversity"][0]) <= 0.1 * real["diversity"][0],
    }  # fmt: skip


def _evaluate(run_dir, overrides: list[str], out) -> tuple[dict, float]:
    with cpu_timer() as t:
        # a re-run measures again: the previous result file of the same name is replaced
        res = evaluate_run(run_dir, [*overrides, "evaluate.overwrite=true"], out=out)
    return res, t["cpu"]


def run_part(
    part: str,
    quick: bool,
    extra: Sequence[str] = (),
    tag: str = "",
    scaling: bool = True,
    eval_extra: Sequence[str] = (),
) -> dict[str, Any]:
    """Train one recipe (plus ``extra`` training overrides) and evaluate it (plus
    ``eval_extra`` overrides); returns the part's rows and settings (``scaling``: also every
    kept checkpoint, one replication)."""
    size = dict(SIZES[quick])
    size["train"] = [*size["train"], *extra]
    for k in ("eval", "eval_nfe", "eval_geo"):
        size[k] = [*size[k], *eval_extra]
    experiment = {"base": "motion/text2motion", "geo": "motion/text2motion_geo"}[part]
    out_root = results_dir(quick) / "motion_runs"
    key = f"{part}_{tag}" if tag else part
    t0 = time.time()
    leaf = experiment.split("/")[1] + (f"_{tag}" if tag else "")
    with cpu_timer() as t_train:
        run_dir = train_recipe(experiment, [*QUIET, *size["train"]], run_dir=out_root / leaf)
    ev = size["eval"] if part == "base" else size["eval_geo"]
    res, eval_cpu = _evaluate(run_dir, ev, out_root / f"eval-{key}-50nfe.json")
    m = res["metrics"]
    rows = {"real": _row(m, suffix="_real"), "retrieval": _row(m, prefix="retrieval_"),
            f"{key}: 50 NFE, CFG 2.5": _row(m)}  # fmt: skip
    evals = {"50": " ".join(ev)}
    scaled = {}
    if scaling:
        with cpu_timer() as t_scaling:
            scaled = checkpoint_scaling(run_dir, size["eval_nfe"])
        eval_cpu += t_scaling["cpu"]
    if part == "base":
        for steps in (20, 10):
            ov = [f"sampler.steps={steps}", *size["eval_nfe"]]
            r, cpu = _evaluate(run_dir, ov, out_root / f"eval-{key}-{steps}nfe.json")
            rows[f"{key}: {steps} NFE, CFG 2.5"] = _row(r["metrics"])
            evals[str(steps)] = " ".join(ov)
            eval_cpu += cpu
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [(e["step"], round(e["loss"], 4)) for e in log if "loss" in e]
    return {
        "experiment": experiment,
        "train_overrides": size["train"],
        "eval_overrides": evals,
        "command": f"polydiff train experiment={experiment} "
        + " ".join(size["train"])
        + " && polydiff evaluate run=<dir> "
        + evals["50"],
        "run_dir": str(run_dir),
        "protocol_note": res.get("protocol_note"),
        "checkpoint_step": res.get("checkpoint_step"),
        "weights": res.get("weights"),
        "rows": rows,
        "checkpoint_scaling": scaled,
        "goals": _goals(rows[f"{key}: 50 NFE, CFG 2.5"], rows["real"], rows["retrieval"]),
        "loss_curve": losses[:: max(1, len(losses) // 24)],
        "train_cpu_s": round(t_train["cpu"], 1),
        "eval_cpu_s": round(eval_cpu, 1),
        "wall_s": round(time.time() - t0, 1),
    }


def checkpoint_scaling(run_dir, overrides: Sequence[str]) -> dict[str, dict]:
    """Metrics of every kept checkpoint of a run (one replication, no MultiModality): how the
    numbers move with training steps. Same path as ``polydiff evaluate`` (``open_run`` +
    :meth:`MotionHooks.evaluate_model`) with the checkpoint pinned."""
    out = {}
    for ckpt in list_checkpoints(Path(run_dir) / "checkpoints"):
        opened = open_run(run_dir, list(overrides), checkpoint=ckpt)
        step = int(ckpt.name.rsplit("_", 1)[-1])
        out[str(step)] = _row(opened.hooks.evaluate_model(opened))
    return out


def _markdown(parts: dict[str, dict]) -> str:
    md = ["## motion: text-to-motion on the built-in motions (T2M protocol)", "",
          "Evaluator trained on the built-in training motions (movement + motion GRU, MiniLM "
          "text); mean ± 95% CI over the replications named below.", ""]  # fmt: skip

    def fmt(v):
        return "-" if v is None else (f"{v[0]:.3f} ± {v[1]:.3f}" if v[1] else f"{v[0]:.3f}")

    for name, p in parts.items():
        md += [f"### {name}: `{p['experiment']}`", "",
               f"`{p['command']}` (checkpoint step {p['checkpoint_step']}, {p['weights']}; "
               f"{p['protocol_note']}; train {p['train_cpu_s']} CPU s, eval {p['eval_cpu_s']} "
               "CPU s)", "",
               "| row | R-prec top1 | top2 | top3 | FID | MM-Dist | Diversity | MModality "
               "| skating | jitter | bone err |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for row, vals in p["rows"].items():
            md.append(f"| {row} | " + " | ".join(fmt(vals.get(c)) for c in COLUMNS) + " |")
        if p.get("checkpoint_scaling"):
            md += ["", "By checkpoint (50 NFE, one replication): " + "; ".join(
                f"step {k}: R-prec top3 {v['r_precision_top3'][0]:.3f}, FID {v['fid'][0]:.2f}, "
                f"skating {v['foot_skating_ratio'][0]:.3f}"
                for k, v in p["checkpoint_scaling"].items())]  # fmt: skip
        md += ["", "Goals at 50 NFE: " + ", ".join(
            f"{k}: {'met' if v else 'NOT met'}" for k, v in p["goals"].items()), ""]  # fmt: skip
    for key in sorted(k for k in parts if k.startswith("base") and "geo" + k[4:] in parts):
        b = parts[key]["rows"][f"{key}: 50 NFE, CFG 2.5"]
        g = parts["geo" + key[4:]]["rows"][f"geo{key[4:]}: 50 NFE, CFG 2.5"]
        md += [f"### geometric losses at equal compute ({key} vs geo{key[4:]}: same steps, same "
               "per-step cost)", "",
               f"FID {b['fid'][0]:.2f} -> {g['fid'][0]:.2f}; foot skating "
               f"{b['foot_skating_ratio'][0]:.3f} -> {g['foot_skating_ratio'][0]:.3f}; "
               f"R-precision top-3 {b['r_precision_top3'][0]:.3f} -> "
               f"{g['r_precision_top3'][0]:.3f} (text2motion -> text2motion_geo)", ""]  # fmt: skip
    return "\n".join(md)


def run(
    part: str = "all",
    quick: bool = False,
    extra: Sequence[str] = (),
    tag: str = "",
    scaling: bool = True,
    eval_extra: Sequence[str] = (),
) -> dict:
    """Run ``part`` (``base``, ``geo`` or ``all``) and merge it into the results file (as
    ``<part>_<tag>`` when ``tag`` is given)."""
    path = results_dir(quick) / "motion.json"
    previous = json.loads(path.read_text()).get("parts", {}) if path.is_file() else {}
    parts = dict(previous)
    for name in ("base", "geo") if part == "all" else (part,):
        key = f"{name}_{tag}" if tag else name
        parts[key] = run_part(name, quick, extra, tag, scaling, eval_extra)
    for p in parts.values() if scaling else ():  # parts measured before the scaling rows existed
        if "checkpoint_scaling" not in p:
            with cpu_timer() as t:
                p["checkpoint_scaling"] = checkpoint_scaling(p["run_dir"], SIZES[quick]["eval_nfe"])
            p["eval_cpu_s"] = round(p["eval_cpu_s"] + t["cpu"], 1)
    result = {"parts": parts}
    md = _markdown(parts)
    write_results("motion", result, md + "\n", quick=quick)
    result["markdown"] = md
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="all", choices=("base", "geo", "all"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--set", nargs="*", default=[], help="extra training overrides")
    parser.add_argument("--eval-set", nargs="*", default=[], help="extra evaluation overrides")
    parser.add_argument("--tag", default="", help="store the part as <part>_<tag>")
    parser.add_argument(
        "--no-scaling", action="store_true", help="skip the per-checkpoint rows (one slot less)"
    )
    args = parser.parse_args()
    result = run(args.part, args.quick, args.set, args.tag, not args.no_scaling, args.eval_set)
    print(result["markdown"])
