"""The default EMA (``sample.ema=auto``) against the raw weights, through the recipe path.

Issue #14's goal: for any training length, the default weights' metrics are no worse than the
raw weights' beyond seed noise. For each recipe, training length and seed this trains
``polydiff train experiment=<recipe> trainer.max_steps=<N> seed=<s>`` (a finished run in the
pinned run directory is reused; training ends with the metric choice of ``ema=auto``:
``polydiff.train.ema_sweep.select_ema_by_metric``) and runs ``polydiff evaluate run=<dir>``
with the default (``auto``) and with ``sample.ema=false`` at each evaluation seed::

    python -m benchmarks.train.ema_default --recipe toy/gmm --steps 300,1500,4000 --seeds 0,1
    python -m benchmarks.train.ema_default --recipe image/digits_cond --steps 1500 \
        --eval-n 500 --eval-seeds 1,2

Parts run separately accumulate in ``benchmarks/results/train_ema.json`` / ``.md``; the summary
gives, per recipe and length, the mean of auto - raw over training seeds x evaluation seeds and
its standard error (their spread / sqrt(count)).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, results_dir, train_recipe, write_results
from polydiff.train.checkpoint import latest_checkpoint, read_state
from polydiff.train.ema_sweep import stored_metric_choice
from polydiff.train.run import evaluate_run

NAME = "train_ema"
KIND = "metric"  # entries of the metric choice (earlier entries, of the loss choice, are dropped)
# earlier settings of the metric choice kept for comparison: kind -> section title
ABLATIONS = {
    "swd_n2000": "toy/gmm chosen by SWD on 2000 samples (the first toy metric; "
    "runs/bench/train_ema_s5b)",
    "swd_n256": "toy/gmm chosen by SWD on 256 samples (runs/bench/train_ema_s5, bit-identical "
    "weights)",
}
# per recipe: the metrics shown, each with its direction (+1: higher is better)
METRICS = {
    "toy/gmm": {"swd": -1, "log_likelihood": +1, "near_mode_fraction": +1},
    "image/digits_cond": {"fid": -1, "class_accuracy": +1},
}


def run_one(
    recipe: str,
    steps: int,
    seed: int,
    root: Path,
    eval_n: int | None = None,
    eval_seeds: tuple[int, ...] = (1,),
) -> dict[str, Any]:
    """Train (or reuse) one run and evaluate its default (auto) and raw weights at each
    evaluation seed."""
    run_dir = root / recipe.replace("/", "_") / f"steps{steps}_seed{seed}"
    overrides = [f"trainer.max_steps={steps}", f"seed={seed}", "trainer.progress=false"]
    t0 = time.perf_counter()
    train_recipe(recipe, overrides, run_dir=run_dir)
    train_s = time.perf_counter() - t0
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    state = read_state(ckpt)
    job = [f"evaluate.n={eval_n}"] if eval_n else []
    evals = []
    for es in eval_seeds:
        row: dict[str, Any] = {"eval_seed": es}
        for spec in ("auto", "false"):
            res = evaluate_run(
                run_dir,
                [*job, f"evaluate.seed={es}", f"sample.ema={spec}", "evaluate.overwrite=true"],
            )
            row[spec] = {"weights": res["weights"], "metrics": res["metrics"], "eval": res["path"]}
            print(
                f"{recipe} {steps} seed{seed} eval seed {es} ema={spec}: {res['weights']} "
                f"{res['metrics']}",
                flush=True,
            )
        evals.append(row)
    choice = stored_metric_choice(run_dir, ckpt)  # written by training or the first auto
    return {
        "kind": KIND,
        "recipe": recipe,
        "steps": steps,
        "seed": seed,
        "run": str(run_dir),
        "checkpoint_step": state["step"],
        "command": f"polydiff train experiment={recipe} {' '.join(overrides)} run_dir={run_dir}"
        f" && polydiff evaluate run={run_dir} {' '.join(job)} evaluate.seed=<s> [ema=false]",
        "eval_n": eval_n,
        "train_and_choice_seconds": round(train_s, 1),
        "auto": {k: v for k, v in (choice or {}).items() if k != "rows"},
        "evals": evals,
    }


def deltas(entry: dict[str, Any], metric: str, direction: int) -> list[float]:
    """auto - raw of ``metric`` at each evaluation seed, signed so that > 0 is better."""
    return [
        direction * (e["auto"]["metrics"][metric] - e["false"]["metrics"][metric])
        for e in entry["evals"]
        if metric in e["auto"]["metrics"] and metric in e["false"]["metrics"]
    ]


def mean_se(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and standard error (sample sd / sqrt(k)); None where undefined."""
    if not values:
        return None, None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return m, math.sqrt(var / len(values))


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown(entries: list[dict[str, Any]]) -> str:
    lines = [
        "# Default EMA (`sample.ema=auto`) vs raw weights",
        "",
        "`polydiff train experiment=<recipe> trainer.max_steps=<N> seed=<s>` then `polydiff "
        "evaluate run=<dir> evaluate.seed=<e>` (default: `auto`) and the same with `ema=false`; "
        "script: `python -m benchmarks.train.ema_default`. `auto` = after training, the raw "
        "weights, stored EMAs (0.999, 0.9999 warmed up; power EMAs sigma_rel 0.05, 0.1) and "
        "post-hoc power EMAs (0.025, 0.15, 0.25) are each evaluated on `trainer.ema_auto_n` "
        "samples from seed 104729 (never an evaluation seed) and the best by the modality's "
        "primary metric (toy: exact mean log-likelihood on 2000 samples; image: FID on 256), "
        "among the candidates no worse than the raw weights on the guard metrics (image: class "
        "accuracy; `hooks.guard_metrics()`), is kept. Delta = auto - raw, signed so that > 0 "
        "is better; s.e. over training seeds x "
        "evaluation seeds. The toy/gmm section's choices were taken by the log-likelihood rule "
        "from the selection tables the SWD runs recorded (every candidate's metrics on the "
        "selection sample; sampling is deterministic, so a re-run gives the same), and their "
        "evaluations are `polydiff evaluate` outputs of those runs (entry `command`).",
        "",
    ]
    sections = [(r, KIND, r) for r in sorted({e["recipe"] for e in entries if e["kind"] == KIND})]
    for kind, title in ABLATIONS.items():
        sections += [
            (r, kind, title) for r in sorted({e["recipe"] for e in entries if e["kind"] == kind})
        ]
    for recipe, kind, title in sections:
        ms = METRICS[recipe]
        mine = sorted(
            (e for e in entries if e["recipe"] == recipe and e["kind"] == kind),
            key=lambda e: (e["steps"], e["seed"]),
        )
        lines += [
            f"## {title}",
            "",
            "Summary (mean delta +- s.e.; 'worse' = below -2 s.e.)",
            "",
            "| steps | runs x eval seeds | " + " | ".join(f"{m} delta" for m in ms) + " |",
            "|---|---|" + "---|" * len(ms),
        ]
        for steps in sorted({e["steps"] for e in mine}):
            group = [e for e in mine if e["steps"] == steps]
            cells = []
            for m, d in ms.items():
                mean, se = mean_se([v for e in group for v in deltas(e, m, d)])
                verdict = (
                    "" if mean is None or se is None else (" (worse)" if mean < -2 * se else "")
                )
                cells.append("-" if mean is None else f"{_fmt(mean)} +- {_fmt(se)}{verdict}")
            k = sum(len(e["evals"]) for e in group)
            lines.append(
                f"| {steps} | {len(group)} x {k // len(group)} | " + " | ".join(cells) + " |"
            )
        lines += [
            "",
            "| steps | seed | eval n | eval seed | auto chose | choice s | "
            + " | ".join(f"{m} auto | {m} raw" for m in ms)
            + " |",
            "|---|---|---|---|---|---|" + "---|---|" * len(ms),
        ]
        for e in mine:
            for ev in e["evals"]:
                a, r = ev["auto"]["metrics"], ev["false"]["metrics"]
                cells = [c for m in ms for c in (_fmt(a.get(m)), _fmt(r.get(m)))]
                lines.append(
                    f"| {e['steps']} | {e['seed']} | {e.get('eval_n') or 'recipe'} | "
                    f"{ev['eval_seed']} | {ev['auto']['weights']} | "
                    f"{_fmt(e['auto'].get('seconds'))} | " + " | ".join(cells) + " |"
                )
        lines += ["", "What auto chose from (primary metric on the selection sample):", ""]
        for e in mine:
            sc = e["auto"].get("scores") or {}
            shown = ", ".join(f"{k} {_fmt(v)}" for k, v in sc.items())
            twins = e["auto"].get("same_as") or {}
            extra = f"; identical weights: {twins}" if twins else ""
            lines.append(
                f"- {e['steps']} steps, seed {e['seed']} ({e['auto'].get('metric')}, "
                f"n={e['auto'].get('n')}): {shown}{extra}"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", required=True, choices=sorted(METRICS))
    p.add_argument("--steps", default="300,1500,4000")
    p.add_argument("--seeds", default="0")
    p.add_argument("--eval-n", type=int, help="evaluate.n (default: the recipe's)")
    p.add_argument("--eval-seeds", default="1", help="evaluate.seed values (default 1)")
    p.add_argument("--runs-root", default="runs/bench/train_ema")
    p.add_argument("--quick", action="store_true", help="results/quick (smoke runs)")
    args = p.parse_args(argv)
    path = results_dir(args.quick) / f"{NAME}.json"
    eval_seeds = tuple(int(s) for s in args.eval_seeds.split(","))
    for steps in [int(s) for s in args.steps.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            entry = run_one(args.recipe, steps, seed, Path(args.runs_root), args.eval_n, eval_seeds)
            key = (args.recipe, steps, seed)
            # re-read: other parts may have been written meanwhile by another process
            entries = json.loads(path.read_text())["entries"] if path.is_file() else []
            entries = [
                e
                for e in entries
                if e.get("kind") in (KIND, *ABLATIONS)
                and (e.get("kind"), e["recipe"], e["steps"], e["seed"]) != (KIND, *key)
            ]
            entries.append(entry)
            write_results(NAME, {"entries": entries}, markdown(entries), quick=args.quick)
    print(f"results: {path} (and {RESULTS.name}/{NAME}.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
