"""Fitted sigma grids (``optimize_sigmas``), their cache, and the Align Your Steps family."""

from __future__ import annotations

import pytest
import torch

from polydiff.core import schedules
from polydiff.core.samplers import CountingDenoiser, sample
from polydiff.core.schedules import (
    AYS_SIGMAS,
    ays_sigmas,
    denoiser_fingerprint,
    karras_sigmas,
    optimize_sigmas,
)
from polydiff.core.toy import GaussianMixture

F64 = torch.float64
SMIN, SMAX = 0.03, 15.0
FIT = {"sigma_min": SMIN, "sigma_max": SMAX, "n_samples": 96, "pool": 384,
       "reference_steps": 32, "sweeps": 4, "dtype": F64}  # fmt: skip


def _mixture(shift: float = 0.0) -> GaussianMixture:
    g = torch.Generator().manual_seed(0)
    means = torch.randn(6, 8, generator=g, dtype=F64) * 0.6 + shift
    stds = torch.rand(6, 8, generator=g, dtype=F64) * 0.3 + 0.1
    return GaussianMixture(means, stds)


def _fresh_error(mix: GaussianMixture, grid: torch.Tensor, method: str, **opts) -> float:
    """RMS error to a fine Heun solve on 256 fresh starts (never seen by the fit)."""
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(77), dtype=F64) * SMAX
    ref = sample(mix, x, karras_sigmas(128, SMIN, SMAX), "heun")
    return float((sample(mix, x, grid, method, **opts) - ref).square().mean().sqrt())


@pytest.mark.slow  # two fits and fine reference solves: ~3 s each
@pytest.mark.parametrize(("method", "opts"), [("ipndm", {"order": 3}), ("unipc", {})])
def test_fitted_grid_shape_and_never_worse_than_karras_on_fresh_noise(method, opts) -> None:
    mix, info = _mixture(), {}
    grid = optimize_sigmas(mix, 5, shape=(8,), sampler=method, cache=False, info=info, **FIT,
                           **opts)  # fmt: skip
    assert grid.dtype == F64 and grid.shape == (6,)
    assert grid[0] == SMAX and grid[-1] == 0 and (grid[1:] < grid[:-1]).all()
    assert grid[-2] >= SMIN
    fitted = _fresh_error(mix, grid, method, **opts)
    karras = _fresh_error(mix, karras_sigmas(5, SMIN, SMAX), method, **opts)
    start = _fresh_error(mix, karras_sigmas(5, SMIN, SMAX, info["rho"]), method, **opts)
    assert fitted <= start <= karras * 1.0001 or fitted <= karras, (fitted, start, karras)
    assert fitted < 0.9 * karras, (fitted, karras)  # and the fit is worth it
    pooled = {name: info[f"{name}_error"] for name in ("fitted", "start", "karras")}
    assert pooled[info["kept"]] == min(pooled.values()), info


def test_cache_returns_the_same_grid_for_the_same_denoiser(tmp_path) -> None:
    schedules._FIT_CACHE.clear()
    mix = _mixture()
    first = optimize_sigmas(mix, 3, shape=(8,), cache_dir=tmp_path, **FIT)
    counter, info = CountingDenoiser(mix), {}
    again = optimize_sigmas(counter, 3, shape=(8,), cache_dir=tmp_path, info=info, **FIT)
    assert torch.equal(first, again) and info["cached"]
    assert counter.calls == 3  # only the fingerprint's probe evaluations
    schedules._FIT_CACHE.clear()  # a new process: the JSON in cache_dir is found
    counter = CountingDenoiser(mix)
    assert torch.equal(optimize_sigmas(counter, 3, shape=(8,), cache_dir=tmp_path, **FIT), first)
    assert counter.calls == 3 and len(list(tmp_path.glob("sigmas-*.json"))) == 1
    # another model (or another sampler / step count) is another entry
    other = {"sigma_min": SMIN, "sigma_max": SMAX, "dtype": F64}
    assert denoiser_fingerprint(mix, (8,), **other) == denoiser_fingerprint(_mixture(), (8,),
                                                                             **other)  # fmt: skip
    assert denoiser_fingerprint(mix, (8,), **other) != denoiser_fingerprint(_mixture(0.01), (8,),
                                                                            **other)  # fmt: skip
    info = {}
    optimize_sigmas(_mixture(0.01), 3, shape=(8,), cache_dir=tmp_path, info=info, **FIT)
    assert not info["cached"]


def test_optimize_sigmas_errors_name_the_argument() -> None:
    mix = _mixture()
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        optimize_sigmas(mix, 3, shape=(8,), sampler="nope", sigma_min=SMIN, sigma_max=SMAX)
    with pytest.raises(ValueError, match="n_samples must be >= 4, got 2"):
        optimize_sigmas(mix, 3, shape=(8,), sigma_min=SMIN, sigma_max=SMAX, n_samples=2)
    with pytest.raises(ValueError, match="pool must be >= n_samples = 16, got 8"):
        optimize_sigmas(mix, 3, shape=(8,), sigma_min=SMIN, sigma_max=SMAX, n_samples=16, pool=8)


def test_ays_grids() -> None:
    for model, table in AYS_SIGMAS.items():
        grid = ays_sigmas(11, model)
        torch.testing.assert_close(grid, torch.tensor([*table, 0.0], dtype=F64))
        five = ays_sigmas(5, model)
        assert five.shape == (6,) and float(five[0]) == pytest.approx(table[0])
        assert float(five[-2]) == pytest.approx(table[-1])
        assert (five[1:] < five[:-1]).all()
    # the log-linear interpolation: a midpoint of the index ramp is a geometric mean
    t = AYS_SIGMAS["sd15"]
    assert float(ays_sigmas(21)[1]) == pytest.approx((t[0] * t[1]) ** 0.5)
    with pytest.raises(ValueError, match="unknown AYS model 'sd3'"):
        ays_sigmas(10, "sd3")
