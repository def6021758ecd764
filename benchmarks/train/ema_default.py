"""The default EMA (``sample.ema=auto``) against the raw weights, through the recipe path.

Issue #14's goal: for any training length, the default weights' metrics are no worse than the
raw weights' beyond seed noise. For each recipe, training length and seed this trains
``polydiff train experiment=<recipe> trainer.max_steps=<N> seed=<s>`` (a finished run in the
pinned run directory is reused) and runs ``polydiff evaluate run=<dir>`` with the default
(``auto``: the weights of lowest fixed-noise loss among raw / stored EMAs / post-hoc power EMAs,
chosen at the checkpoint) and with ``sample.ema=false``. ``--candidates`` also evaluates the
candidates ``auto`` chose from, to check that the loss criterion tracks the metric (Spearman rank
correlation per run)::

    python -m benchmarks.train.ema_default --recipe toy/gmm --steps 300,1500,4000 --seeds 0 \
        --candidates all
    python -m benchmarks.train.ema_default --recipe image/digits_cond --steps 300 --eval-n 500

Parts run separately accumulate in ``benchmarks/results/train_ema.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, results_dir, train_recipe, write_results
from polydiff.train.checkpoint import latest_checkpoint, read_state
from polydiff.train.ema import auto_candidates
from polydiff.train.run import evaluate_run

NAME = "train_ema"
# per recipe: the metrics shown, each with its direction (+1: higher is better)
METRICS = {
    "toy/gmm": {"swd": -1, "log_likelihood": +1, "near_mode_fraction": +1},
    "image/digits_cond": {"class_accuracy": +1, "fid": -1},
}
PRIMARY = {"toy/gmm": "swd", "image/digits_cond": "fid"}


def _spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None below 3 points."""
    if len(a) < 3:
        return None

    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else None


def run_one(
    recipe: str,
    steps: int,
    seed: int,
    root: Path,
    candidates: str | None,
    eval_n: int | None = None,
) -> dict[str, Any]:
    """Train (or reuse) one run and evaluate its default and raw weights, and the candidates
    ``auto`` chose from (``"all"`` or a comma list; candidates whose loss equals an earlier
    one's are the same weights and are not evaluated twice)."""
    run_dir = root / recipe.replace("/", "_") / f"steps{steps}_seed{seed}"
    overrides = [f"trainer.max_steps={steps}", f"seed={seed}", "trainer.progress=false"]
    train_recipe(recipe, overrides, run_dir=run_dir)
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    state = read_state(ckpt)
    losses = (state.get("ema_auto") or {}).get("losses") or {}
    specs = ["auto", "false"]
    if candidates:
        wanted = auto_candidates(state) if candidates == "all" else candidates.split(",")
        for s in wanted:
            if s not in specs and losses.get(s) not in [losses.get(t) for t in specs]:
                specs.append(s)
    rows = {}
    job = [f"evaluate.n={eval_n}"] if eval_n else []
    chosen = (state.get("ema_auto") or {}).get("choice")
    for spec in specs:
        if spec == chosen and "auto" in rows:  # the weights auto chose: evaluated once
            rows[spec] = dict(rows["auto"])
            continue
        res = evaluate_run(run_dir, [*job, f"sample.ema={spec}", "evaluate.overwrite=true"])
        rows[spec] = {"weights": res["weights"], "metrics": res["metrics"], "eval": res["path"]}
        print(f"{recipe} {steps} seed{seed} ema={spec}: {res['weights']} {res['metrics']}")
    choice = state.get("ema_auto") or {}
    out = {
        "recipe": recipe,
        "steps": steps,
        "seed": seed,
        "run": str(run_dir),
        "checkpoint_step": state["step"],
        "command": f"polydiff train experiment={recipe} {' '.join(overrides)} run_dir={run_dir}"
        f" && polydiff evaluate run={run_dir} {' '.join(job)} [ema=false]",
        "eval_n": eval_n,
        "auto": choice,
        "rows": rows,
    }
    scored = [s for s in rows if s != "auto" and losses.get(s) is not None]
    out["loss_metric_spearman"] = {
        m: _spearman([losses[s] for s in scored], [-d * rows[s]["metrics"][m] for s in scored])
        for m, d in METRICS[recipe].items()
        if all(m in rows[s]["metrics"] for s in scored)
    }  # positive: lower loss goes with a better metric
    return out


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown(entries: list[dict[str, Any]]) -> str:
    lines = [
        "# Default EMA (`sample.ema=auto`) vs raw weights",
        "",
        "`polydiff train experiment=<recipe> trainer.max_steps=<N> seed=<s>` then `polydiff "
        "evaluate run=<dir>` (default: `auto`) and `polydiff evaluate run=<dir> ema=false`; "
        "script: `python -m benchmarks.train.ema_default`. `auto` = the raw weights, stored EMAs "
        "or post-hoc power EMA with the lowest objective loss on fixed items and noise, chosen "
        "when the checkpoint was written. Delta = auto - raw, signed so that > 0 is better.",
        "",
    ]
    for recipe in sorted({e["recipe"] for e in entries}):
        ms = list(METRICS[recipe])
        lines += [
            f"## {recipe}",
            "",
            "| steps | seed | eval n | auto chose | "
            + " | ".join(f"{m} auto | {m} raw | delta" for m in ms)
            + " |",
            "|---|---|---|---|" + "---|---|---|" * len(ms),
        ]
        for e in sorted(
            (e for e in entries if e["recipe"] == recipe), key=lambda e: (e["steps"], e["seed"])
        ):
            a, r = e["rows"]["auto"]["metrics"], e["rows"]["false"]["metrics"]
            cells = []
            for m, d in METRICS[recipe].items():
                delta = d * (a[m] - r[m]) if m in a and m in r else None
                cells += [_fmt(a.get(m)), _fmt(r.get(m)), _fmt(delta)]
            lines.append(
                f"| {e['steps']} | {e['seed']} | {e.get('eval_n') or 'recipe'} | "
                f"{e['rows']['auto']['weights']} | " + " | ".join(cells) + " |"
            )
        lines.append("")
        cand = [e for e in entries if e["recipe"] == recipe and len(e["rows"]) > 2]
        if cand:
            lines += [
                "Does the loss track the metric? Every candidate of a run: its fixed-noise loss "
                "and metrics (Spearman > 0: lower loss goes with a better metric).",
                "",
            ]
            for e in cand:
                rho = ", ".join(f"{m} {_fmt(v)}" for m, v in e["loss_metric_spearman"].items())
                lines += [
                    f"{e['steps']} steps, seed {e['seed']} (Spearman: {rho})",
                    "",
                    "| candidate | loss | " + " | ".join(ms) + " |",
                    "|---|---|" + "---|" * len(ms),
                ]
                losses = e["auto"].get("losses") or {}
                for spec, row in e["rows"].items():
                    if spec == "auto":
                        continue
                    lines.append(
                        f"| {row['weights']} | {_fmt(losses.get(spec))} | "
                        + " | ".join(_fmt(row["metrics"].get(m)) for m in ms)
                        + " |"
                    )
                lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", required=True, choices=sorted(METRICS))
    p.add_argument("--steps", default="300,1500,4000")
    p.add_argument("--seeds", default="0")
    p.add_argument("--candidates", help="also evaluate auto's candidates: all or a comma list")
    p.add_argument("--eval-n", type=int, help="evaluate.n (default: the recipe's)")
    p.add_argument("--runs-root", default="runs/bench/train_ema")
    p.add_argument("--quick", action="store_true", help="results/quick (smoke runs)")
    args = p.parse_args(argv)
    path = results_dir(args.quick) / f"{NAME}.json"
    entries = json.loads(path.read_text())["entries"] if path.is_file() else []
    for steps in [int(s) for s in args.steps.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            entry = run_one(
                args.recipe, steps, seed, Path(args.runs_root), args.candidates, args.eval_n
            )
            key = (args.recipe, steps, seed)
            entries = [e for e in entries if (e["recipe"], e["steps"], e["seed"]) != key]
            entries.append(entry)
            write_results(NAME, {"entries": entries}, markdown(entries), quick=args.quick)
    print(f"results: {path} (and {RESULTS.name}/{NAME}.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
