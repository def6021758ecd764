"""Fitted solvers (``optimize_solver`` and the ``fitted`` sampler, issue #20): iPNDM at the
start weights, never worse than the start on fresh noise, saved as JSON, cached."""

from __future__ import annotations

import json

import pytest
import torch

from polydiff.core import schedules
from polydiff.core.samplers import CountingDenoiser, denoiser_evaluations, sample
from polydiff.core.samplers.multistep import IPNDM_COEFFICIENTS, ipndm_coefficients
from polydiff.core.schedules import FittedSolver, karras_sigmas, optimize_solver
from polydiff.core.toy import GaussianMixture

F64 = torch.float64
SMIN, SMAX = 0.03, 15.0
# a small fit: the start grid is given (the grid search has its own tests), 4 steps
FIT = {"sigma_min": SMIN, "sigma_max": SMAX, "n_samples": 32, "pool": 320,
       "reference_steps": 24, "iterations": 40, "lr": 0.02, "dtype": F64}  # fmt: skip


def _mixture(shift: float = 0.0) -> GaussianMixture:
    g = torch.Generator().manual_seed(0)
    means = torch.randn(6, 8, generator=g, dtype=F64) * 0.6 + shift
    stds = torch.rand(6, 8, generator=g, dtype=F64) * 0.3 + 0.1
    return GaussianMixture(means, stds)


def _start_grid(steps: int = 4) -> torch.Tensor:
    return karras_sigmas(steps, SMIN, SMAX, 3.0)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_fitted_at_the_start_weights_is_ipndm_exactly(order: int, dtype: torch.dtype) -> None:
    mix = _mixture()
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1), dtype=dtype) * SMAX
    for grid in (karras_sigmas(6, SMIN, SMAX), karras_sigmas(6, SMIN, SMAX)[:-1]):
        ref = sample(mix, x, grid, "ipndm", order=order)
        assert torch.equal(sample(mix, x, grid, "fitted", order=order), ref)
    grid = karras_sigmas(6, SMIN, SMAX)
    rows = ipndm_coefficients(6, order)
    assert rows[-1] == [1.0] and rows[0] == [1.0]
    assert rows[3] == list(IPNDM_COEFFICIENTS[min(order, 4)])
    padded = [r + [0.0] * (i + 1 - len(r)) for i, r in enumerate(rows)]  # full history, zeros
    for coefficients in (rows, padded):
        out = sample(mix, x, grid, "fitted", coefficients=coefficients)
        assert torch.equal(out, sample(mix, x, grid, "ipndm", order=order))
    assert denoiser_evaluations("fitted", grid, coefficients=rows) == 6


def test_fitted_weights_change_the_result_as_written() -> None:
    """A final row [a, b] is a * D_last + b * D_before; a first row [c] scales the Euler step."""
    mix = _mixture()
    x = torch.randn(8, 8, generator=torch.Generator().manual_seed(2), dtype=F64) * SMAX
    grid = torch.tensor([SMAX, 2.0, 0.0], dtype=F64)
    seen = []
    out = sample(mix, x, grid, "fitted", coefficients=[[0.5], [1.5, -0.5]],
                 callback=lambda info: seen.append(info))  # fmt: skip
    d0 = mix(x, torch.full((8,), SMAX, dtype=F64))
    x1 = x + 0.5 * (x - d0) / SMAX * (2.0 - SMAX)
    d1 = mix(x1, torch.full((8,), 2.0, dtype=F64))
    torch.testing.assert_close(out, 1.5 * d1 - 0.5 * d0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(seen[1]["x"], x1, rtol=1e-12, atol=1e-12)


def test_fitted_coefficients_are_checked() -> None:
    mix, x = _mixture(), torch.zeros(2, 8, dtype=F64)
    grid = karras_sigmas(3, SMIN, SMAX)
    with pytest.raises(ValueError, match="2 coefficient rows for a grid of 3 steps"):
        sample(mix, x, grid, "fitted", coefficients=[[1.0], [1.0]])
    with pytest.raises(ValueError, match=r"coefficients\[1\] must hold 1 to 2 weights, got 3"):
        sample(mix, x, grid, "fitted", coefficients=[[1.0], [1.0, 0.0, 0.0], [1.0]])
    with pytest.raises(ValueError, match=r"coefficients\[2\] must be finite numbers"):
        sample(mix, x, grid, "fitted", coefficients=[[1.0], [1.0], [float("nan")]])


class _ScaledMixture(torch.nn.Module):
    """The mixture's denoiser behind a (trainable) parameter: a stand-in for a network."""

    def __init__(self, mix: GaussianMixture) -> None:
        super().__init__()
        self.mix, self.scale = mix, torch.nn.Parameter(torch.ones((), dtype=F64))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        return self.mix(x, sigma) * self.scale


def _fresh_error(mix, grid: torch.Tensor, **opts) -> float:
    """RMS error to a fine Heun solve on 512 fresh starts (never seen by the fit)."""
    x = torch.randn(512, 8, generator=torch.Generator().manual_seed(77), dtype=F64) * SMAX
    with torch.no_grad():
        ref = sample(mix, x, karras_sigmas(96, SMIN, SMAX), "heun")
        return float((sample(mix, x, grid, "fitted", **opts) - ref).square().mean().sqrt())


def test_fit_is_never_worse_than_its_start_on_fresh_noise_and_leaves_the_network_alone() -> None:
    net, info = _ScaledMixture(_mixture()), {}
    solver = optimize_solver(net, 4, shape=(8,), grid=_start_grid(), cache=False, info=info,
                             **FIT)  # fmt: skip
    assert net.scale.grad is None  # gradients only for the solver's parameters
    assert solver.steps == 4 and solver.sigmas[0] == SMAX and solver.sigmas[-1] == 0
    assert (solver.sigmas[1:] < solver.sigmas[:-1]).all() and solver.sigmas[-2] >= SMIN
    assert [len(r) for r in solver.coefficients] == [1, 2, 3, 4]  # full history
    start = _fresh_error(net, _start_grid(), order=3)
    fitted = _fresh_error(net, solver.sigmas, **solver.options)
    assert fitted < 0.8 * start, (fitted, start)  # never worse, and the fit is worth it
    assert info["fitted_error"] < info["start_error"] and info["best_iteration"] > 0
    assert not info["cached"] and json.dumps(info)  # plain JSON values
    # no iterations: the start itself (iPNDM-3 weights on the start grid)
    same = optimize_solver(net, 4, shape=(8,), grid=_start_grid(), cache=False,
                           **{**FIT, "iterations": 0})  # fmt: skip
    assert torch.equal(same.sigmas[1:], _start_grid()[1:]) and same.sigmas[0] == SMAX
    assert [list(r) for r in same.coefficients] == [
        r + [0.0] * (i + 1 - len(r)) for i, r in enumerate(ipndm_coefficients(4, 3))
    ]


def test_cache_and_json_round_trip(tmp_path) -> None:
    schedules._SOLVER_CACHE.clear()
    mix = _mixture()
    small = {**FIT, "iterations": 5, "pool": 64}
    first = optimize_solver(mix, 3, shape=(8,), grid=_start_grid(3), cache_dir=tmp_path, **small)
    counter, info = CountingDenoiser(mix), {}
    again = optimize_solver(counter, 3, shape=(8,), grid=_start_grid(3), cache_dir=tmp_path,
                            info=info, **small)  # fmt: skip
    assert torch.equal(again.sigmas, first.sigmas) and again.coefficients == first.coefficients
    assert info["cached"] and counter.calls == 3  # the fingerprint's probes only
    schedules._SOLVER_CACHE.clear()  # a new process: the JSON in cache_dir is found
    counter = CountingDenoiser(mix)
    again = optimize_solver(counter, 3, shape=(8,), grid=_start_grid(3), cache_dir=tmp_path,
                            **small)  # fmt: skip
    assert again.coefficients == first.coefficients and counter.calls == 3
    assert len(list(tmp_path.glob("solver-*.json"))) == 1
    info = {}  # another model is another entry
    optimize_solver(_mixture(0.01), 3, shape=(8,), grid=_start_grid(3), cache_dir=tmp_path,
                    info=info, **small)  # fmt: skip
    assert not info["cached"]
    # save / load: plain JSON, validated
    path = first.save(tmp_path / "solver.json")
    loaded = FittedSolver.load(path)
    assert torch.equal(loaded.sigmas, first.sigmas) and loaded.coefficients == first.coefficients
    assert loaded.info == json.loads(path.read_text())["info"]


def test_bad_solver_files_and_arguments_are_named(tmp_path) -> None:
    good = FittedSolver(karras_sigmas(2, SMIN, SMAX), ((1.0,), (1.0,)))
    data = good.to_dict()
    cases = {
        "not a fitted solver": {"sigmas": [1.0, 0.0]},
        "version 9": {**data, "version": 9},
        "'coefficients' must be a list of lists": {**data, "coefficients": [1.0, 1.0]},
        "2 coefficient rows for a grid of 1 steps": {**data, "sigmas": [SMAX, 0.0]},
        "must end in 0": {**data, "sigmas": [SMAX, 1.0, 0.5]},
        "strictly decreasing": {**data, "sigmas": [SMAX, SMAX, 0.0]},
    }
    for message, record in cases.items():
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(record))
        with pytest.raises(ValueError, match=message):
            FittedSolver.load(path)
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(ValueError, match="junk.json: not a JSON fitted solver"):
        FittedSolver.load(tmp_path / "junk.json")
    with pytest.raises(ValueError, match="not found"):
        FittedSolver.load(tmp_path / "missing.json")
    mix = _mixture()
    with pytest.raises(ValueError, match="order must be 1, 2, 3 or 4, got 5"):
        optimize_solver(mix, 3, shape=(8,), sigma_min=SMIN, sigma_max=SMAX, order=5)
    with pytest.raises(ValueError, match="grid must hold 4 sigmas from sigma_max=15.0 to 0"):
        optimize_solver(mix, 3, shape=(8,), sigma_min=SMIN, sigma_max=SMAX,
                        grid=karras_sigmas(4, SMIN, SMAX))  # fmt: skip
    with pytest.raises(ValueError, match="need 0 < holdout < 1"):
        optimize_solver(mix, 3, shape=(8,), sigma_min=SMIN, sigma_max=SMAX, holdout=1.0)


def test_sigma_scales_move_only_the_denoiser_calls() -> None:
    """``sigma_scales[i]``: step ``i`` calls the denoiser at ``sigmas[i] * sigma_scales[i]``,
    the step itself still runs on the grid; all ones is the plain solver."""
    mix = _mixture()
    x = torch.randn(8, 8, generator=torch.Generator().manual_seed(3), dtype=F64) * SMAX
    grid = karras_sigmas(4, SMIN, SMAX)
    rows = ipndm_coefficients(4, 3)
    plain = sample(mix, x, grid, "fitted", coefficients=rows)
    assert torch.equal(sample(mix, x, grid, "fitted", coefficients=rows, sigma_scales=[1.0] * 4),
                       plain)  # fmt: skip
    called = []

    def spy(y, sigma, cond=None):
        called.append(float(sigma[0]))
        return mix(y, sigma)

    scales = [1.0, 0.9, 1.2, 0.8]
    out = sample(spy, x, grid, "fitted", coefficients=rows, sigma_scales=scales)
    assert called == pytest.approx([float(s) * c for s, c in zip(grid[:-1], scales)], rel=1e-12)
    d0 = mix(x, torch.full((8,), SMAX, dtype=F64))  # step 0 at scale 1: Euler on the grid
    x1 = x + (x - d0) / SMAX * (float(grid[1]) - SMAX)
    seen = []
    sample(mix, x, grid, "fitted", coefficients=rows, sigma_scales=scales,
           callback=lambda info: seen.append(info))  # fmt: skip
    torch.testing.assert_close(seen[1]["x"], x1, rtol=1e-12, atol=1e-12)
    assert seen[1]["sigma"] == float(grid[1]) and seen[1]["sigma_hat"] == pytest.approx(
        0.9 * float(grid[1]), rel=1e-12
    )
    assert not torch.equal(out, plain)
    with pytest.raises(ValueError, match="3 sigma_scales for a grid of 4 steps"):
        sample(mix, x, grid, "fitted", coefficients=rows, sigma_scales=[1.0] * 3)
    with pytest.raises(ValueError, match="sigma_scales must be positive finite"):
        sample(mix, x, grid, "fitted", coefficients=rows, sigma_scales=[1.0, 0.0, 1.0, 1.0])


def test_fit_with_sigma_scales_is_never_worse_and_round_trips(tmp_path) -> None:
    mix, info = _mixture(), {}
    solver = optimize_solver(mix, 4, shape=(8,), grid=_start_grid(), cache=False, info=info,
                             sigma_scales=True, average=0.9, **FIT)  # fmt: skip
    assert solver.sigma_scales is not None and len(solver.sigma_scales) == 4
    assert solver.sigma_scales != (1.0,) * 4  # the fit moved them
    evals = [s * c for s, c in zip(solver.sigmas[:-1].tolist(), solver.sigma_scales)]
    assert all(SMIN * (1 - 1e-12) <= e <= SMAX * (1 + 1e-12) for e in evals)
    start = _fresh_error(mix, _start_grid(), order=3)
    fitted = _fresh_error(mix, solver.sigmas, **solver.options)
    assert fitted < 0.8 * start, (fitted, start)
    assert info["fitted_error"] < info["start_error"] and info["average"] == 0.9
    with pytest.raises(ValueError, match="average must be None or in"):
        optimize_solver(mix, 4, shape=(8,), grid=_start_grid(), average=1.0, **FIT)
    plain = optimize_solver(mix, 4, shape=(8,), grid=_start_grid(), cache=False, **FIT)
    assert plain.sigma_scales is None and "sigma_scales" not in plain.options
    assert plain.to_dict()["version"] == 1 and solver.to_dict()["version"] == 2
    loaded = FittedSolver.load(solver.save(tmp_path / "scaled.json"))
    assert loaded.sigma_scales == solver.sigma_scales and loaded.options == solver.options
    assert torch.equal(loaded.sigmas, solver.sigmas)
    data = solver.to_dict()
    for message, record in {
        "'sigma_scales' needs version 2": {**data, "version": 1},
        "'sigma_scales' must be a list of numbers": {**data, "sigma_scales": "1"},
        "sigma_scales must be positive": {**data, "sigma_scales": [1.0, -1.0, 1.0, 1.0]},
    }.items():
        with pytest.raises(ValueError, match=message):
            FittedSolver.from_dict(record)
