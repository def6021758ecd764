"""The contract every registered sampler passes (one suite, parametrised over SAMPLERS).

Ground truth is the closed-form Gaussian-mixture denoiser: shapes and dtypes, seeding, no state
between calls, grid handling, errors, and convergence (to the exact mixture in distribution, and
for ODE solvers to the exact probability-flow ODE solution) as the number of steps grows.
"""

from __future__ import annotations

import math

import pytest
import torch

from peers import ode_reference
from polydiff.core.metrics import sliced_wasserstein
from polydiff.core.samplers import (
    BATCH_COUPLED,
    DETERMINISTIC,
    SAMPLERS,
    per_sample_generators,
    randn,
    sample,
)
from polydiff.core.schedules import karras_sigmas
from polydiff.core.toy import GaussianMixture, ring_mixture

NAMES = list(SAMPLERS)
STOCHASTIC = [n for n in NAMES if n not in DETERMINISTIC]
# options turning every stochastic solver with an eta into a probability-flow ODE solver
ODE_VARIANTS = {
    **{n: {} for n in sorted(DETERMINISTIC - {"adaptive"})},
    "euler_ancestral": {"eta": 0.0},
    "dpm2_ancestral": {"eta": 0.0},
    "dpmpp_2s_ancestral": {"eta": 0.0},
    "dpmpp_sde": {"eta": 0.0},
    "dpmpp_2m_sde": {"eta": 0.0},
    "dpmpp_3m_sde": {"eta": 0.0},
    "unipc_order3": {"order": 3},
}


def _method(variant: str) -> str:
    return "unipc" if variant.startswith("unipc") else variant


@pytest.fixture(scope="module")
def gmm8() -> GaussianMixture:
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 8, generator=g, dtype=torch.float64) * 2
    stds = torch.rand(3, 8, generator=g, dtype=torch.float64) * 0.5 + 0.3
    return GaussianMixture(means, stds, torch.tensor([0.2, 0.3, 0.5]))


@pytest.fixture(scope="module")
def ring() -> GaussianMixture:
    return ring_mixture(6, radius=2.0, std=0.3)


def _start(shape, sigma0: float, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (noise * sigma0).to(dtype)


def _run(name: str, denoiser, x, sigmas, seed: int | None = 1, **options) -> torch.Tensor:
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    return sample(denoiser, x, sigmas, name, generator=gen, **options)


class Recorder:
    """Wraps a denoiser; records every call's sigma, cond and output."""

    def __init__(self, denoiser) -> None:
        self.denoiser, self.calls = denoiser, []

    def __call__(self, x, sigma, cond=None):
        out = self.denoiser(x, sigma, cond)
        self.calls.append((sigma.clone(), cond, out.clone(), sigma.dtype))
        return out


# ----------------------------------------------------------------------------- registry


def test_registry_has_exactly_the_issue_names() -> None:
    assert set(SAMPLERS) == {
        "ddpm", "ddim", "euler", "euler_ancestral", "heun", "dpm2", "dpm2_ancestral", "lms",
        "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "unipc",
        "adaptive", "langevin", "pc", "ipndm", "deis", "fitted",
    }  # fmt: skip
    assert set(SAMPLERS) >= DETERMINISTIC
    for fn in SAMPLERS.values():
        assert fn.__doc__ and fn.__doc__.strip()


# ------------------------------------------------------------------ shapes, dtypes, seeding


@pytest.mark.parametrize("name", NAMES)
def test_shape_and_dtype_kept_for_ranks_2_to_5(name: str, gmm8: GaussianMixture) -> None:
    sigmas = karras_sigmas(4, 0.05, 10.0)
    for shape in [(3, 8), (3, 2, 4), (3, 2, 2, 2), (3, 1, 2, 2, 2)]:
        ref = _run(name, gmm8, _start(shape, 10.0, dtype=torch.float32), sigmas)
        assert ref.shape == shape and ref.dtype == torch.float32
        assert torch.isfinite(ref).all()
        low = _run(name, gmm8, _start(shape, 10.0, dtype=torch.bfloat16), sigmas)
        assert low.shape == shape and low.dtype == torch.bfloat16
        if name in DETERMINISTIC:  # same trajectory up to bf16 rounding
            err = (low.float() - ref).abs().max().item()
            assert err < 0.1 * (1 + ref.abs().max().item()), (shape, err)


@pytest.mark.parametrize("name", NAMES)
def test_same_generator_same_output(name: str, gmm8: GaussianMixture) -> None:
    x, sigmas = _start((4, 8), 10.0), karras_sigmas(5, 0.05, 10.0)
    a = _run(name, gmm8, x, sigmas, seed=7)
    b = _run(name, gmm8, x, sigmas, seed=7)
    assert torch.equal(a, b)
    c = _run(name, gmm8, x, sigmas, seed=8)
    if name in DETERMINISTIC:
        assert torch.equal(a, c)
        gen = torch.Generator().manual_seed(3)
        state = gen.get_state()
        sample(gmm8, x, sigmas, name, generator=gen)
        assert torch.equal(gen.get_state(), state), "an ODE solver consumed random numbers"
    else:
        assert (a - c).abs().max() > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_no_state_leaks_between_calls(name: str, gmm8: GaussianMixture) -> None:
    sigmas = karras_sigmas(6, 0.05, 10.0)
    xa, xb = _start((3, 8), 10.0, seed=1), _start((5, 8), 10.0, seed=2)
    b_alone = _run(name, gmm8, xb, sigmas, seed=5)
    _run(name, gmm8, xa, sigmas, seed=4)
    b_after_a = _run(name, gmm8, xb, sigmas, seed=5)
    assert torch.equal(b_alone, b_after_a)


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_batch_concatenation_consistent(name: str, gmm8: GaussianMixture) -> None:
    sigmas = karras_sigmas(6, 0.05, 10.0)
    xa, xb = _start((3, 8), 10.0, seed=1), _start((5, 8), 10.0, seed=2)
    joint = _run(name, gmm8, torch.cat([xa, xb]), sigmas)
    apart = torch.cat([_run(name, gmm8, xa, sigmas), _run(name, gmm8, xb, sigmas)])
    torch.testing.assert_close(joint, apart, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_sample_i_with_seed_s_does_not_depend_on_the_batch(name: str, gmm8) -> None:
    """Per-sample generators (EDM's StackedRandomGenerator): start noise and every step's noise
    of row i come from ``generator[i]``, so row i is the same in any batch (issue #13)."""
    sigmas, seeds = karras_sigmas(5, 0.05, 10.0), list(range(100, 108))
    options = BATCH_COUPLED.get(name, {})

    def draw(rows, offset: int = 0) -> torch.Tensor:
        gens = per_sample_generators([seeds[i] + offset for i in rows])
        x = randn((len(rows), 8), gens, dtype=torch.float64) * 10.0
        return sample(gmm8, x, sigmas, name, generator=gens, **options)

    full = draw(range(8))
    torch.testing.assert_close(torch.cat([draw(range(3)), draw(range(3, 8))]), full,
                               rtol=1e-12, atol=1e-12)  # fmt: skip
    torch.testing.assert_close(draw([5]), full[5:6], rtol=1e-12, atol=1e-12)
    assert (draw(range(8), offset=50) - full).abs().min() > 1e-6  # other seeds, other samples


def test_batch_coupled_options_are_needed_and_generator_lists_checked(gmm8) -> None:
    sigmas, gens = karras_sigmas(5, 0.05, 10.0), per_sample_generators(range(4))
    x = randn((4, 8), gens, dtype=torch.float64) * 10.0
    for name in BATCH_COUPLED:  # the default really couples rows: otherwise drop the entry
        full = sample(gmm8, x, sigmas, name, generator=per_sample_generators(range(4)))
        part = sample(gmm8, x[:2], sigmas, name, generator=per_sample_generators(range(2)))
        assert (full[:2] - part).abs().max() > 1e-6, name
    with pytest.raises(ValueError, match="3 per-sample generators for a batch of 4"):
        sample(gmm8, x, sigmas, "euler_ancestral", generator=gens[:3])


# ------------------------------------------------------------------------------- grids


@pytest.mark.parametrize("name", NAMES)
def test_grid_ending_in_zero_ends_with_a_clean_denoise(name: str, gmm8: GaussianMixture) -> None:
    sigmas = karras_sigmas(5, 0.05, 10.0)
    rec = Recorder(gmm8)
    out = _run(name, rec, _start((4, 8), 10.0), sigmas)
    last_sigma, _, last_out, sigma_dtype = rec.calls[-1]
    torch.testing.assert_close(out, last_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last_sigma, torch.full((4,), 0.05, dtype=torch.float64))
    assert sigma_dtype == torch.float64  # float64 x -> float64 sigma; never rounded to x's dtype
    assert all(s.shape == (4,) and (s > 0).all() for s, *_ in rec.calls)


@pytest.mark.parametrize("name", NAMES)
def test_grid_not_ending_in_zero_gives_the_noisy_marginal(name: str, ring: GaussianMixture) -> None:
    # the result is x at sigmas[-1] = 1: its covariance is the mixture's noised at sigma 1
    sigmas = karras_sigmas(40, 1.0, 20.0)[:-1]
    out = _run(name, ring, _start((1500, 2), 20.0, seed=3), sigmas)
    cov = torch.cov(out.T)
    exact = ring.covariance(1.0)
    assert (cov - exact).abs().max() < (0.5 if name == "langevin" else 0.35), cov
    assert out.mean(0).abs().max() < 0.2


def test_repeated_sigmas_are_zero_length_steps(gmm8: GaussianMixture) -> None:
    x = _start((4, 8), 10.0)
    grid = karras_sigmas(5, 0.05, 10.0)
    doubled = torch.cat([grid[:3], grid[2:3], grid[3:]])
    for name in ["euler", "heun", "dpmpp_2m", "unipc", "lms", "dpmpp_3m_sde", "ipndm", "deis"]:
        torch.testing.assert_close(_run(name, gmm8, x, doubled), _run(name, gmm8, x, grid))


@pytest.mark.parametrize("name", NAMES)
def test_cond_and_callback_are_passed_through(name: str, gmm8: GaussianMixture) -> None:
    cond = {"class": torch.tensor([0, 1, 2, 0])}
    rec, seen = Recorder(gmm8), []
    sample(rec, _start((4, 8), 10.0), karras_sigmas(4, 0.05, 10.0), name, cond=cond,
           callback=seen.append)  # fmt: skip
    assert all(c is cond for _, c, *_ in rec.calls)
    assert seen and all({"x", "i", "sigma", "denoised"} <= set(info) for info in seen)
    if name != "adaptive":
        steps = [info["i"] for info in seen]
        assert steps == sorted(steps) and steps[0] == 0


# ----------------------------------------------------------------------------- errors


def test_errors_name_the_problem(gmm8: GaussianMixture) -> None:
    x, grid = _start((2, 8), 10.0), karras_sigmas(4, 0.05, 10.0)
    with pytest.raises(ValueError, match="unknown sampler 'eulr'.*euler_ancestral"):
        sample(gmm8, x, grid, "eulr")
    with pytest.raises(ValueError, match="1-D"):
        sample(gmm8, x, grid[None], "euler")
    with pytest.raises(ValueError, match=r"non-increasing.*sigmas\[2\]"):
        sample(gmm8, x, torch.tensor([10.0, 5.0, 1.0, 2.0, 0.0]), "heun")
    with pytest.raises(ValueError, match=r"non-negative.*sigmas\[3\]"):
        sample(gmm8, x, torch.tensor([10.0, 5.0, 1.0, -1.0]), "dpmpp_2m")
    with pytest.raises(ValueError, match="at least 2"):
        sample(gmm8, x, torch.tensor([10.0]), "euler")
    with pytest.raises(TypeError, match="no option.*'etta'.*eta"):
        sample(gmm8, x, grid, "euler_ancestral", etta=0.5)

    def broken(x, sigma, cond=None):
        out = gmm8(x, sigma, cond)
        return out / 0 if float(sigma[0]) < 1.0 else out

    for name in NAMES:
        with pytest.raises(FloatingPointError, match=r"step \d+ \(sigma=0\.\d+"):
            sample(broken, x, grid, name)


# ------------------------------------------------------------------- VE identities


def test_ddim_is_euler_and_ddpm_is_ddim_eta_one(gmm8: GaussianMixture) -> None:
    x, grid = _start((6, 8), 10.0), karras_sigmas(8, 0.05, 10.0)
    torch.testing.assert_close(_run("ddim", gmm8, x, grid), _run("euler", gmm8, x, grid))
    torch.testing.assert_close(
        _run("ddpm", gmm8, x, grid, seed=3), _run("ddim", gmm8, x, grid, seed=3, eta=1.0)
    )


def test_adaptive_shared_step_size_mode(ring, ode_case) -> None:
    x, exact = ode_case
    grid = karras_sigmas(2, 0.02, 40.0)
    info_rows, info_batch = {}, {}
    per_row = sample(ring, x, grid, "adaptive", rtol=1e-4, atol=1e-4, info=info_rows)
    shared = sample(ring, x, grid, "adaptive", rtol=1e-4, atol=1e-4, per_sample=False,
                    info=info_batch)  # fmt: skip
    assert info_batch["nfe"] < info_rows["nfe"]  # one step size: no waiting for the worst row
    for out in (per_row, shared):
        assert (out - exact).norm(dim=1).mean() < 1e-3


def test_adaptive_reports_its_nfe(gmm8: GaussianMixture) -> None:
    x, grid = _start((6, 8), 10.0), karras_sigmas(8, 0.05, 10.0)
    for solver in ["dpmpp32", "bosh3", "dopri5"]:
        rec, info = Recorder(gmm8), {}
        sample(rec, x, grid, "adaptive", solver=solver, info=info)
        assert info["nfe"] == len(rec.calls) > 0
        assert info["accepted"] >= 1 and info["rejected"] >= 0


# ------------------------------------------------------------------------ convergence


@pytest.fixture(scope="module")
def ode_case(ring: GaussianMixture):
    """Start states, and the exact ODE solution followed by the final clean denoise."""
    x = _start((64, 2), 40.0, seed=11)
    at_min = ode_reference(ring, x, 40.0, 0.02)
    return x, ring(at_min, torch.full((64,), 0.02, dtype=torch.float64))


@pytest.mark.parametrize("variant", list(ODE_VARIANTS))
def test_ode_solvers_converge_to_the_exact_solution(variant: str, ring, ode_case) -> None:
    x, exact = ode_case
    errs = []
    for steps in [6, 12, 24]:
        out = _run(_method(variant), ring, x, karras_sigmas(steps, 0.02, 40.0), seed=None,
                   **ODE_VARIANTS[variant])  # fmt: skip
        errs.append((out - exact).norm(dim=1).mean().item())
    assert errs[0] > errs[1] > errs[2], errs
    limit = 0.1 if variant in ("euler", "ddim", "euler_ancestral") else 0.03
    assert errs[2] < limit, errs


def test_adaptive_error_follows_its_tolerance(ring, ode_case) -> None:
    x, exact = ode_case
    grid = karras_sigmas(2, 0.02, 40.0)
    errs, nfes = [], []
    for tol in [1e-3, 1e-5, 1e-7]:
        info = {}
        out = sample(ring, x, grid, "adaptive", solver="dopri5", rtol=tol, atol=tol, info=info)
        errs.append((out - exact).norm(dim=1).max().item())
        nfes.append(info["nfe"])
    assert nfes[0] < nfes[1] < nfes[2], nfes
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-5, errs


def _swd(a: torch.Tensor, b: torch.Tensor) -> float:
    return sliced_wasserstein(a, b, 64, generator=torch.Generator().manual_seed(0)).item()


@pytest.fixture(scope="module")
def ring_reference(ring: GaussianMixture) -> tuple[torch.Tensor, float]:
    """10000 exact samples, and the SWD of 1000 other exact samples to them (the MC floor)."""
    ref = ring.sample(10_000, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    exact = ring.sample(1000, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    return ref, _swd(exact, ref)


@pytest.mark.parametrize("name", NAMES)
def test_samples_approach_the_mixture_as_steps_grow(name: str, ring, ring_reference) -> None:
    ref, floor = ring_reference
    x0 = _start((1000, 2), 1.0, seed=12)
    dist = []
    # the adaptive solver ignores the grid interior: its effort follows the tolerance instead
    coarse_fine = [{"rtol": 0.5, "atol": 0.5}, {}] if name == "adaptive" else [{}, {}]
    for steps, options in zip([4, 25], coarse_fine):
        grid = karras_sigmas(steps, 0.02, 40.0)
        out = _run(name, ring, x0 * 40.0, grid, seed=13, **options)
        dist.append(_swd(out, ref))
    assert dist[1] < dist[0], dist
    # within the Monte-Carlo floor of 1000 exact samples; annealed Langevin is biased (ULA)
    assert dist[1] < (2.5 if name == "langevin" else 1.6) * floor, (dist, floor)


def test_float32_sigma_handed_to_float32_denoiser(gmm8: GaussianMixture) -> None:
    rec = Recorder(gmm8)
    sample(rec, _start((2, 8), 10.0, dtype=torch.bfloat16), karras_sigmas(3, 0.05, 10.0), "heun")
    assert {d for *_, d in rec.calls} == {torch.float32}
    assert math.isclose(float(rec.calls[0][0][0]), 10.0, rel_tol=1e-7)
