"""Sweep EMA lengths of a trained run against its modality's metrics (post-hoc EMA).

Karras et al. 2024 ("Analyzing and Improving the Training Dynamics of Diffusion Models",
sec. 3.2) choose the EMA length after training: every ``sigma_rel`` is synthesised from the two
stored power-function profiles and their snapshots (:func:`polydiff.train.ema.load_weights`),
and evaluated with the run's own ``polydiff evaluate`` path. The raw weights and the default
EMA are evaluated alongside, so the table answers "is the EMA helping, and which length"::

    python -m polydiff.train.ema_sweep run=<dir> sigma_rels=0.02,0.05,0.1,0.15 [evaluate.n=...]

writes ``<run>/eval/ema_sweep-<checkpoint step>.json`` and prints one line per setting.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from polydiff.core.fileio import atomic_write_text

from .checkpoint import latest_checkpoint, read_state
from .config import ConfigError
from .ema import parse_ema_spec

__all__ = ["main", "sweep_ema"]

DEFAULT_SIGMA_RELS = (0.02, 0.05, 0.1, 0.15, 0.2)


def sweep_ema(
    run_dir: str | Path,
    sigma_rels: Sequence[float] = DEFAULT_SIGMA_RELS,
    overrides: Sequence[str] = (),
) -> dict:
    """Evaluate ``sample.ema`` = false, true and ``sigma_rel:<s>`` for each ``s``; returns and
    writes ``{"run", "checkpoint", "rows": [{"ema", "weights", "metrics"}]}``."""
    from .run import evaluate_run

    run_dir = Path(run_dir)
    specs = ["false", "true", *(f"sigma_rel:{float(s):g}" for s in sigma_rels)]
    for spec in specs:
        parse_ema_spec(spec)  # a bad width fails before any evaluation runs
    rows = []
    for spec in specs:
        result = evaluate_run(
            run_dir, [*overrides, f"sample.ema={spec}", "evaluate.overwrite=true"]
        )
        rows.append({"ema": spec, "weights": result["weights"], "metrics": result["metrics"]})
        shown = ", ".join(f"{k}={v:.4g}" for k, v in result["metrics"].items())
        print(f"ema={spec:<16} {result['weights']:<40} {shown}", flush=True)
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    step = read_state(ckpt)["step"] if ckpt is not None else None
    out = {"run": str(run_dir), "checkpoint": str(ckpt), "step": step, "rows": rows}
    atomic_write_text(
        run_dir / "eval" / f"ema_sweep-{step}.json", json.dumps(out, indent=1, allow_nan=False)
    )
    return out


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
