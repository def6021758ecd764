"""Shared benchmark helpers: machine description, CPU timer, one results writer.

Every benchmark writes through :func:`write_results`: full runs go to ``benchmarks/results/``
(committed, collected into ``benchmarks/README.md``); ``--quick`` smoke runs go to
``benchmarks/results/quick/`` and are marked ``"quick": true`` inside, so a smoke run never
overwrites the committed numbers.

Recipes are configs: a benchmark trains and samples through ``polydiff.train.run`` with
``experiment=<modality>/<name>`` plus overrides (:func:`train_recipe`), never by building a
``TrainerConfig`` itself, so every number it reports is reproducible with
``polydiff train experiment=... && polydiff evaluate run=<dir>``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from polydiff.core.fileio import atomic_write_text

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

__all__ = [
    "RESULTS",
    "cpu_timer",
    "load_average",
    "machine",
    "peak_rss_mb",
    "results_dir",
    "train_recipe",
    "write_results",
]


def machine() -> dict[str, Any]:
    """What the numbers were measured on (cores, threads, torch, load at the time)."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "date": time.strftime("%Y-%m-%d"),
        "load_average": load_average(),
    }


def load_average() -> list[float] | None:
    """1/5/15-minute load averages (the machine is shared: timings are noisy)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@contextmanager
def cpu_timer() -> Iterator[dict[str, float]]:
    """``with cpu_timer() as t: ...`` then ``t["cpu"]`` (process CPU seconds) and ``t["wall"]``."""
    out: dict[str, float] = {}
    c0, w0 = time.process_time(), time.perf_counter()
    try:
        yield out
    finally:
        out["cpu"] = time.process_time() - c0
        out["wall"] = time.perf_counter() - w0


def results_dir(quick: bool) -> Path:
    """``results/`` for full runs, ``results/quick/`` for smoke runs."""
    path = RESULTS / "quick" if quick else RESULTS
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_results(name: str, result: dict[str, Any], markdown: str, *, quick: bool) -> Path:
    """Write ``<name>.json`` (with machine info and the quick flag) and ``<name>.md``.

    Strict JSON (NaN/inf refused). Quick runs are written under ``results/quick/`` and their
    markdown starts with a QUICK banner. Returns the JSON path.
    """
    out = results_dir(quick)
    payload = {"quick": quick, "machine": machine(), **result}
    if quick:
        markdown = "> QUICK smoke run: small sizes, not the published numbers.\n\n" + markdown
    path = out / f"{name}.json"
    atomic_write_text(path, json.dumps(payload, indent=1, allow_nan=False, default=str))
    atomic_write_text(out / f"{name}.md", markdown)
    return path


def loss_log(run_dir: str | Path) -> tuple[list[dict[str, Any]], float | None]:
    """The logged training rows (those with a ``loss``) of a run's ``metrics.jsonl`` and the
    measured wall seconds per step between its first and last row (None below two rows)."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    rows = [r for r in map(json.loads, lines) if "loss" in r]
    if len(rows) < 2:
        return rows, None
    return rows, (rows[-1]["time"] - rows[0]["time"]) / max(rows[-1]["step"] - rows[0]["step"], 1)


def train_recipe(
    experiment: str,
    overrides: Sequence[str] = (),
    *,
    run_dir: str | os.PathLike | None = None,
    train_fn: Callable[..., Any] | None = None,
) -> Any:
    """Train ``experiment=<experiment>`` plus ``overrides`` through ``polydiff.train.run.train``.

    ``run_dir`` pins the run directory (a finished run there is resumed, i.e. reused). Returns
    whatever ``train`` returns (the run directory and trained objects).
    """
    from polydiff.train.run import train

    args = [f"experiment={experiment}", *overrides]
    if run_dir is not None:
        args.append(f"run_dir={Path(run_dir)}")
    return (train_fn or train)(args)
