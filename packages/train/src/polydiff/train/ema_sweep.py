"""Sweep EMA lengths of a trained run against its modality's metrics (post-hoc EMA), and the
metric choice of ``sample.ema=auto``.

Karras et al. 2024 ("Analyzing and Improving the Training Dynamics of Diffusion Models",
sec. 3.2) choose the EMA length after training: every ``sigma_rel`` is synthesised from the two
stored power-function profiles and their snapshots (:func:`polydiff.train.ema.load_weights`),
and evaluated with the run's own ``polydiff evaluate`` path. The raw weights and the default
EMA are evaluated alongside, so the table answers "is the EMA helping, and which length"::

    python -m polydiff.train.ema_sweep run=<dir> sigma_rels=0.02,0.05,0.1,0.15 [evaluate.n=...]

writes ``<run>/eval/ema_sweep-<checkpoint step>.json`` and prints one line per setting.

:func:`select_ema_by_metric` is the same sweep done cheaply and by default: after training (and
when ``polydiff sample / evaluate`` with ``ema=auto`` meet a final checkpoint without one), the
raw weights, the stored EMAs and a few post-hoc widths are each evaluated on
``trainer.ema_auto_n`` samples drawn with the run's own sampler and guidance from the fixed seed
:data:`AUTO_METRIC_SEED` (not ``evaluate.seed``'s default, so a reported evaluation is never the
selection sample), and the best by the metric the modality hooks declare
(``hooks.primary_metric()``) is stored in ``<run>/eval/ema_auto-step<N>.json`` with the table.
Hooks that declare no metric keep the checkpoint's fixed-noise loss choice (said in one line).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from polydiff.core.fileio import atomic_write_text

from .checkpoint import CheckpointError, latest_checkpoint, read_state, verify_checkpoint
from .config import ConfigError
from .ema import WeightSource, auto_candidates, parse_ema_spec, same_weights
from .hooks import guard_metrics, primary_metric

__all__ = [
    "AUTO_METRIC_SEED",
    "METRIC_SIGMA_RELS",
    "MIN_METRIC_N",
    "auto_metric_n",
    "main",
    "select_ema_by_metric",
    "stored_metric_choice",
    "sweep_ema",
]

DEFAULT_SIGMA_RELS = (0.02, 0.05, 0.1, 0.15, 0.2)
# post-hoc widths the metric choice adds to the stored EMAs (0.05 and 0.1 by default)
METRIC_SIGMA_RELS = (0.025, 0.15, 0.25)
# the selection sample's seed: not sample.seed (0) nor evaluate.seed (1), the defaults
AUTO_METRIC_SEED = 104729
# fewer samples than this cannot rank weights (smoke runs): the loss choice stands
MIN_METRIC_N = 32


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sweep_ema(
    run_dir: str | Path,
    sigma_rels: Sequence[float] = DEFAULT_SIGMA_RELS,
    overrides: Sequence[str] = (),
    *,
    specs: Sequence[str] | None = None,
    write: bool = True,
    config_dir: str | Path | None = None,
) -> dict:
    """Evaluate ``sample.ema`` = false, true and ``sigma_rel:<s>`` for each ``s`` (or the given
    ``specs``) with ``polydiff evaluate``; returns ``{"run", "checkpoint", "step", "rows":
    [{"ema", "weights", "metrics", "seconds"}]}`` and writes it to
    ``<run>/eval/ema_sweep-<step>.json`` unless ``write`` is false."""
    from .run import evaluate_run

    run_dir = Path(run_dir)
    if specs is None:
        specs = ["false", "true", *(f"sigma_rel:{float(s):g}" for s in sigma_rels)]
    for spec in specs:
        parse_ema_spec(spec)  # a bad width fails before any evaluation runs
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    step = read_state(ckpt)["step"] if ckpt is not None else None
    rows = []
    for spec in specs:
        t0 = time.perf_counter()
        result = evaluate_run(
            run_dir,
            [*overrides, f"sample.ema={spec}", "evaluate.overwrite=true"],
            config_dir=config_dir,
        )
        rows.append(
            {
                "ema": spec,
                "weights": result["weights"],
                "metrics": result["metrics"],
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in result["metrics"].items())
        print(f"ema={spec:<16} {result['weights']:<40} {shown}", flush=True)
    out = {"run": str(run_dir), "checkpoint": str(ckpt), "step": step, "rows": rows}
    if write:
        atomic_write_text(
            run_dir / "eval" / f"ema_sweep-{step}.json", json.dumps(out, indent=1, allow_nan=False)
        )
    return out


# --------------------------------------------------------------------------- ema=auto by metric
def auto_metric_n(trainer: dict[str, Any], needs: int = 0) -> int:
    """Samples per candidate of the metric choice: ``trainer.ema_auto_n`` (256 for runs trained
    before it existed; 0 turns the metric choice off) or more when the metric ``needs`` more
    to rank weights (``hooks.primary_metric_n``), never more than the items the run trained on
    (``max_steps x batch_size x grad_accum``)."""
    n = trainer.get("ema_auto_n", 256)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"trainer.ema_auto_n={n!r}: expected an integer >= 0")
    n = max(n, int(needs)) if n else 0
    seen = int(trainer.get("max_steps") or 1) * int(trainer.get("batch_size") or 1)
    return min(n, seen * int(trainer.get("grad_accum") or 1))


def _record_path(run_dir: Path, step: int) -> Path:
    return run_dir / "eval" / f"ema_auto-step{int(step):08d}.json"


def _state_digest(ckpt: Path) -> str:
    return str(verify_checkpoint(ckpt)["files"]["state.json"]["sha256"])


def stored_metric_choice(
    run_dir: str | Path,
    ckpt: str | Path,
    metric: str | None = None,
    guards: Sequence[tuple[str, int]] | None = None,
) -> dict[str, Any] | None:
    """The metric choice recorded for checkpoint ``ckpt`` of ``run_dir``, or None when there is
    none, it belongs to another checkpoint of that step (a re-trained run: its ``state.json``
    SHA-256 differs) or it ranked by another metric than ``metric`` (when given). A damaged
    record is an error naming the file."""
    ckpt = Path(ckpt)
    step = int(read_state(ckpt)["step"])
    path = _record_path(Path(run_dir), step)
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
        if rec["state_sha256"] != _state_digest(ckpt):
            return None
        if metric is not None and rec["metric"] != metric:
            return None
        if guards is not None and rec.get("guards", []) != _guards_record(guards):
            # ranked with other guards: rank the recorded rows again (no evaluation)
            direction = -1 if rec["direction"] == "min" else 1
            best, scores, excluded = rank_candidates(rec["rows"], rec["metric"], direction, guards)
            weights = next(r["weights"] for r in rec["rows"] if r["ema"] == best)
            rec.update(
                choice=best,
                weights=weights,
                scores=scores,
                excluded=excluded,
                guards=_guards_record(guards),
            )
            _write_record(path, rec)
        parse_ema_spec(rec["choice"])
        if not isinstance(rec["weights"], str) or not isinstance(rec["criterion"], str):
            raise TypeError("weights and criterion must be strings")
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{path}: not a valid ema=auto record ({type(err).__name__}: {err}); delete it to "
            "choose again"
        ) from None
    return rec


def _guards_record(guards: Sequence[tuple[str, int]]) -> list[list[str]]:
    """Guards ``(name, direction)`` as a record stores them (JSON): ``[[name, "min"|"max"]]``."""
    return [[name, "min" if sign < 0 else "max"] for name, sign in guards]


def rank_candidates(
    rows: Sequence[dict[str, Any]],
    name: str,
    direction: int,
    guards: Sequence[tuple[str, int]] = (),
) -> tuple[str, dict[str, float | None], dict[str, str]]:
    """The best candidate of ``rows`` (``sweep_ema`` rows, the raw weights ``"false"`` first)
    by metric ``name`` (``direction`` +1: higher is better), among those no worse than the raw
    weights on every guard metric; ties go to the earlier row. Returns ``(choice, scores,
    excluded)`` with ``excluded``: candidate -> the guard it failed. Raises ValueError when no
    row has a finite ``name``."""
    scores: dict[str, float | None] = {}
    for row in rows:
        value = row["metrics"].get(name)
        scores[row["ema"]] = value if value is not None and math.isfinite(value) else None
    raw = next((r["metrics"] for r in rows if r["ema"] == "false"), {})
    excluded: dict[str, str] = {}
    for row in rows:
        for guard, sign in guards:
            mine, ref = row["metrics"].get(guard), raw.get(guard)
            if mine is None or ref is None or not (math.isfinite(mine) and math.isfinite(ref)):
                continue
            if sign * (mine - ref) < 0:
                excluded[row["ema"]] = f"{guard} {mine:.4g} worse than the raw weights' {ref:.4g}"
                break
    order = [r["ema"] for r in rows]
    finite = {k: v for k, v in scores.items() if v is not None and k not in excluded}
    if not finite:
        raise ValueError(f"no candidate has a finite {name}")
    best = max(finite, key=lambda k: (direction * finite[k], -order.index(k)))
    return best, scores, excluded


def select_ema_by_metric(
    run_dir: str | Path,
    hooks: Any,
    *,
    config_dir: str | Path | None = None,
    log: Callable[[str], None] = _log,
    announce_fallback: bool = True,
) -> dict[str, Any] | None:
    """The ``ema=auto`` record of the run's newest checkpoint chosen by the modality's metric
    (stored, or evaluated now); None when the loss choice stands (no metric declared,
    ``trainer.ema_auto_n=0``, too few samples, or no EMA), which is said in one ``log`` line
    unless ``announce_fallback`` is false (``open_run``: the sample / evaluate JSON records
    the criterion of the choice it used).

    Candidates: the raw weights, every stored EMA and post-hoc power EMAs at
    :data:`METRIC_SIGMA_RELS`; those with bit-identical weights are evaluated once. Each is
    scored by :func:`sweep_ema` (``polydiff evaluate`` with ``evaluate.n=<ema_auto_n>
    evaluate.seed=<AUTO_METRIC_SEED>``); the best finite score wins, ties going to the earlier
    candidate (the raw weights first). A candidate worse than the raw weights on any of the
    hooks' ``guard_metrics`` (e.g. class accuracy while FID ranks) is not chosen, so the default
    never trades one of the modality's metrics for another (:func:`rank_candidates`).
    """
    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        return None
    state = read_state(ckpt)
    loss_choice = (state.get("ema_auto") or {}).get("weights", "none stored")
    if not (state.get("ema_decays") or state.get("ema_sigma_rels")):
        return None  # raw weights only
    declared = primary_metric(hooks)
    if declared is not None:
        stored = stored_metric_choice(run_dir, ckpt, declared[0], guard_metrics(hooks))
        if stored is not None:
            return stored
    n = auto_metric_n(state.get("trainer") or {}, getattr(hooks, "primary_metric_n", 0))
    if declared is None or n < MIN_METRIC_N:
        if declared is None:
            name = type(hooks).__name__ if hooks is not None else "none"
            why = f"its hooks ({name}) declare no primary metric"
        elif n == 0:
            why = "trainer.ema_auto_n=0"
        else:
            why = f"only {n} samples (the items it trained on) < {MIN_METRIC_N}"
        if not announce_fallback:
            return None
        log(
            f"polydiff: ema=auto for {ckpt}: {why}, so the weights are chosen by the fixed-noise "
            f"loss ({loss_choice})"
        )
        return None
    name, direction = declared
    source = WeightSource.from_checkpoint(ckpt)
    distinct: list[tuple[str, dict]] = []
    same_as: dict[str, str] = {}
    for spec in auto_candidates(state, METRIC_SIGMA_RELS):
        try:
            weights, _ = source.weights(spec)
        except CheckpointError as err:
            if "not finite" not in str(err):
                raise
            continue
        twin = next((s for s, w in distinct if same_weights(w, weights)), None)
        if twin is None:
            distinct.append((spec, weights))
        else:
            same_as[spec] = twin
    del source
    specs = [s for s, _ in distinct]
    distinct.clear()
    t0 = time.perf_counter()
    try:
        sweep = sweep_ema(
            run_dir,
            overrides=[f"evaluate.n={n}", f"evaluate.seed={AUTO_METRIC_SEED}"],
            specs=specs,
            write=False,
            config_dir=config_dir,
        )
    except (ConfigError, ValueError, RuntimeError, ArithmeticError) as err:
        log(
            f"polydiff: ema=auto for {ckpt}: evaluating the candidates failed "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}), so the "
            f"fixed-noise loss choice stands ({loss_choice})"
        )
        return None
    seconds = time.perf_counter() - t0
    guards = guard_metrics(hooks)
    try:
        best, scores, excluded = rank_candidates(sweep["rows"], name, direction, guards)
    except ValueError:
        log(
            f"polydiff: ema=auto for {ckpt}: no candidate has a finite {name} (evaluate gave "
            f"{sorted(sweep['rows'][0]['metrics'])}), so the fixed-noise loss choice stands "
            f"({loss_choice})"
        )
        return None
    weights = next(r["weights"] for r in sweep["rows"] if r["ema"] == best)
    better = "lower" if direction < 0 else "higher"
    record = {
        "choice": best,
        "weights": weights,
        "criterion": f"{name} ({better} is better) of {n} samples, seed {AUTO_METRIC_SEED}, "
        "the run's sampler and guidance",
        "metric": name,
        "direction": "min" if direction < 0 else "max",
        "n": n,
        "seed": AUTO_METRIC_SEED,
        "seconds": round(seconds, 1),
        "step": int(state["step"]),
        "checkpoint": str(ckpt),
        "state_sha256": _state_digest(ckpt),
        "scores": scores,
        "guards": _guards_record(guards),
        "excluded": excluded,
        "same_as": same_as,
        "rows": sweep["rows"],
        "loss_choice": state.get("ema_auto"),
    }
    _write_record(_record_path(run_dir, state["step"]), record, log)
    log(
        f"polydiff: ema=auto for {ckpt}: {weights} by {name} ({better} is better: "
        f"{scores[best]:.4g}; raw weights {_fmt(scores.get('false'))}) over {len(specs)} "
        f"distinct candidates x {n} samples in {seconds:.1f} s"
        + (f"; not worse than raw on {', '.join(g for g, _ in guards)}" if guards else "")
    )
    return record


def _write_record(path: Path, record: dict[str, Any], log: Callable[[str], None] = _log) -> None:
    """Write an ``ema=auto`` record; a run directory that cannot be written (read-only, shared)
    keeps working: the choice is used for this call and one line says it was not saved."""
    try:
        atomic_write_text(path, json.dumps(record, indent=1, allow_nan=False))
    except OSError as err:
        log(
            f"polydiff: ema=auto: could not save the choice to {path} ({err.strerror or err}); "
            "it is used for this call and made again next time"
        )


def _fmt(value: float | None) -> str:
    return "not finite" if value is None else f"{value:.4g}"


def main(argv: Sequence[str] | None = None) -> int:
    """``run=<dir> [sigma_rels=a,b,...] [other overrides]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    run = next((a.split("=", 1)[1] for a in args if a.startswith("run=")), None)
    rels = next((a.split("=", 1)[1] for a in args if a.startswith("sigma_rels=")), None)
    rest = [a for a in args if not a.startswith(("run=", "sigma_rels="))]
    try:
        if run is None:
            raise ConfigError("usage: python -m polydiff.train.ema_sweep run=<dir> [sigma_rels=..]")
        try:
            widths = [float(s) for s in rels.split(",")] if rels else list(DEFAULT_SIGMA_RELS)
        except ValueError:
            raise ConfigError(f"sigma_rels={rels!r}: expected numbers such as 0.05,0.1") from None
        sweep_ema(run, widths, rest)
    except (ConfigError, ValueError, RuntimeError) as err:  # CheckpointError is a RuntimeError
        print(f"polydiff ema_sweep: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
