"""``polydiff schedule run=<dir> steps=10 sampler=ipndm``: fit a sigma grid for a trained run.

The grid is fitted by :func:`polydiff.core.schedules.optimize_sigmas` to the run's (guided)
denoiser and the chosen sampler, on the run's own noise and conditioning (``n`` = samples to
fit on, ``seed``), between the run's sigma range (the objective's own grid for ``steps``), and
saved as JSON under ``<run>/schedules/``. A sampler config uses it with::

    sampler=<name> sampler.steps=<n> \\
    sampler.schedule={_target_:polydiff.train.schedule_fit.fitted_sigmas,_partial_:true,path:<json>}

(:func:`fitted_sigmas` checks that the file holds a grid of the requested number of steps).

``sampler=fitted`` fits a whole solver instead (:func:`polydiff.core.schedules.optimize_solver`:
the grid and the ``fitted`` sampler's per-step weights, starting from iPNDM of
``sampler.order`` on the fitted iPNDM grid); the record then also holds ``coefficients`` and its
``use`` passes them inline (``sampler.coefficients=[[...],...]``). Its own settings are
``+schedule.iterations``, ``lr``, ``holdout``, ``history``, ``check_every``, ``robust``,
``sigma_scales`` (``true``: also fit the noise level each step calls the denoiser at; ``use``
then passes ``sampler.sigma_scales=[...]``) and ``average`` (an iterate-average decay in
``[0, 1)``) (``SOLVER_KEYS``) besides the grid's.
The fit's own settings are optional ``+schedule.<key>=`` overrides (``pool``,
``reference_steps``, ``rounds``, ``sweeps``, ``restarts``, ``random_starts``, ``batch_size``:
see ``optimize_sigmas``); an expensive network wants a smaller search than the defaults, e.g.
(the digits UNet, 1-5 min per grid on one CPU thread) ``sample.n=24 +schedule.pool=72
+schedule.reference_steps=20 +schedule.rounds=1 +schedule.sweeps=4 +schedule.restarts=1
+schedule.random_starts=8``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from polydiff.core.fileio import atomic_write_text
from polydiff.core.samplers import denoiser_evaluations
from polydiff.core.samplers._base import as_grid
from polydiff.core.schedules import optimize_sigmas, optimize_solver

from .config import ConfigError
from .hooks import call_hook
from .run import job_dir, open_run

__all__ = ["FIT_KEYS", "SOLVER_KEYS", "load_sigmas", "fitted_sigmas", "schedule_run"]

FIT_KEYS = (
    "pool",
    "reference_steps",
    "rounds",
    "sweeps",
    "restarts",
    "random_starts",
    "batch_size",
)
# extra settings of a solver fit (sampler=fitted): optimize_solver's own
SOLVER_KEYS = ("iterations", "lr", "holdout", "history", "check_every", "robust", "sigma_scales",
               "average")  # fmt: skip
# the grid fit's settings that optimize_solver passes on as grid_options
_GRID_ONLY = ("rounds", "sweeps", "restarts", "random_starts")


def load_sigmas(path: str | Path) -> torch.Tensor:
    """The grid saved by :func:`schedule_run` (a JSON file with a ``"sigmas"`` list), validated
    (1-D, finite, non-negative, strictly decreasing, ending in 0). Never executes anything."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"sigma grid file {path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not a JSON sigma grid ({err})") from None
    values = data.get("sigmas") if isinstance(data, dict) else None
    if not isinstance(values, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        raise ConfigError(f"{path}: expected a JSON object with a list of numbers 'sigmas'")
    try:
        grid = as_grid(torch.tensor(values, dtype=torch.float64), strict=True, name="sigmas")
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from None
    if grid[-1] != 0:
        raise ConfigError(f"{path}: a sampling grid must end in 0, got {grid[-1]}")
    return torch.tensor(grid, dtype=torch.float64)


def fitted_sigmas(steps: int, *, path: str | Path) -> torch.Tensor:
    """``schedule(steps) -> sigmas`` for a sampler config: the grid in ``path``, which must
    have ``steps`` steps (``steps + 1`` values)."""
    grid = load_sigmas(path)
    if len(grid) != steps + 1:
        raise ConfigError(
            f"{path} holds a {len(grid) - 1}-step grid but sampler.steps={steps}; "
            f"set sampler.steps={len(grid) - 1} or fit one with 'polydiff schedule steps={steps}'"
        )
    return grid


def schedule_run(
    run_dir: str | Path, overrides: Sequence[str] = (), out: str | Path | None = None
) -> dict[str, Any]:
    """Fit a ``sampler.steps``-step grid for the run's sampler (``sampler=<name>``: any
    registered one) to the run's guided denoiser and save it as JSON.

    Reads ``sample.n`` (samples per objective evaluation), ``sample.seed``, the sampler's
    options (``sampler.order=3``) and the optional ``schedule.<key>`` fit settings
    (``FIT_KEYS``). Writes ``out`` or ``<run>/schedules/<method>-<steps>-<hash>.json`` holding
    ``sigmas``, the settings, the fit's errors and the override that uses it; returns that
    record plus ``"path"``.
    """
    run = open_run(run_dir, overrides)
    spec = run.sampler
    default_grid = spec.sigmas()
    positive = [float(s) for s in default_grid if s > 0]
    sigma_min, sigma_max = min(positive), max(positive)
    n, seed = int(run.cfg.sample.n), int(run.cfg.sample.seed)
    fit_opts = dict(run.cfg.get("schedule") or {})
    solver = spec.method == "fitted"
    valid = (*FIT_KEYS, *SOLVER_KEYS) if solver else FIT_KEYS
    for key, value in fit_opts.items():
        if key not in valid:
            raise ConfigError(f"unknown schedule.{key}; valid: {', '.join(valid)}")
        if key == "sigma_scales":
            if not isinstance(value, bool):
                raise ConfigError(f"schedule.sigma_scales must be true or false, got {value!r}")
            continue
        if key == "average":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or not 0 <= value < 1:
                raise ConfigError(f"schedule.average must be a number in [0, 1), got {value!r}")
            continue
        if key in ("lr", "holdout", "robust"):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            if not ok or (key == "holdout" and value >= 1):
                upper = "1" if key == "holdout" else "inf"
                raise ConfigError(f"schedule.{key} must be a number in (0, {upper}), got {value!r}")
            continue
        least = 0 if key in ("random_starts", "iterations") else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"schedule.{key} must be an integer >= {least}, got {value!r}")
    if solver and (set(spec.options) - {"order"}):
        raise ConfigError("polydiff schedule sampler=fitted fits the coefficients: drop "
                          f"sampler.{sorted(set(spec.options) - {'order'})[0]}")  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    cond = call_hook(run.hooks, "sample_cond", n, gen)
    denoiser = run.denoiser()
    info: dict[str, Any] = {}
    cache_dir = run.run_dir / "schedules" / "cache"
    coefficients = scales = None
    if solver:
        grid_options = {k: fit_opts[k] for k in _GRID_ONLY if k in fit_opts}
        solver_opts = {k: v for k, v in fit_opts.items() if k not in _GRID_ONLY}
        fitted = optimize_solver(
            denoiser, spec.steps, shape=run.sample_shape, sigma_min=sigma_min,
            sigma_max=sigma_max, n_samples=n, cond=cond, generator=gen, cache_dir=cache_dir,
            info=info, grid_options=grid_options, **solver_opts, **spec.options,
        )  # fmt: skip
        grid, coefficients = fitted.sigmas, fitted.options["coefficients"]
        scales = None if fitted.sigma_scales is None else list(fitted.sigma_scales)
    else:
        grid = optimize_sigmas(
            denoiser, spec.steps, shape=run.sample_shape, sampler=spec.method,
            sigma_min=sigma_min, sigma_max=sigma_max, n_samples=n, cond=cond, generator=gen,
            cache_dir=cache_dir, info=info, **fit_opts, **spec.options,
        )  # fmt: skip
    settings = {
        "sampler": spec.method,
        "steps": spec.steps,
        "options": spec.options,
        "sigma_min": sigma_min,
        "sigma_max": sigma_max,
        "n": n,
        "seed": seed,
        "fit_options": fit_opts,
        "guidance": {k: v for k, v in (run.cfg.get("guidance") or {}).items()},
        "checkpoint": str(run.checkpoint),
        "weights": run.weights,
    }
    path = Path(out) if out else job_dir(run.run_dir / "schedules", f"{spec.method}-{spec.steps}",
                                         settings).with_suffix(".json")  # fmt: skip
    use = (
        f"sampler={spec.method} sampler.steps={spec.steps} "
        "sampler.schedule={_target_:polydiff.train.schedule_fit.fitted_sigmas,"
        f"_partial_:true,path:{path}}}"
    )
    if coefficients is not None:
        use += f" sampler.coefficients={json.dumps(coefficients, separators=(',', ':'))}"
    if scales is not None:
        use += f" sampler.sigma_scales={json.dumps(scales, separators=(',', ':'))}"
    record = {
        "run": str(run.run_dir),
        **settings,
        "sigmas": grid.tolist(),
        **({} if coefficients is None else {"coefficients": coefficients}),
        **({} if scales is None else {"sigma_scales": scales}),
        "nfe": denoiser_evaluations(spec.method, grid, **spec.options),
        "fit": {k: v for k, v in info.items() if not isinstance(v, float) or math.isfinite(v)},
        "use": use,
    }
    atomic_write_text(path, json.dumps(record, indent=1, default=str, allow_nan=False))
    return {**record, "path": str(path)}
