"""``denoiser_evaluations`` equals the actual number of denoiser calls of every sampler."""

from __future__ import annotations

import pytest
import torch

from polydiff.core.samplers import (
    EVALUATIONS,
    SAMPLERS,
    CountingDenoiser,
    denoiser_evaluations,
    sample,
    steps_for_evaluations,
)
from polydiff.core.schedules import karras_sigmas
from polydiff.core.toy import GaussianMixture

# extra option sets exercising the branches that change the count
EXTRA_OPTIONS: dict[str, list[dict]] = {
    "heun": [{"s_churn": 2.0}],
    "dpm2": [{"s_churn": 2.0}],
    "dpm2_ancestral": [{"eta": 0.0}, {"eta": 3.0}],  # eta 3: sigma_down = 0 on big steps
    "dpmpp_2s_ancestral": [{"eta": 0.0}, {"eta": 3.0}],
    "langevin": [{"n_steps_each": 3}],
    "pc": [{"n_corrector": 2}, {"snr": 0.0}, {"n_corrector": 0}],
    "unipc": [{"order": 3}],
}


@pytest.fixture(scope="module")
def gmm() -> GaussianMixture:
    g = torch.Generator().manual_seed(0)
    means = torch.randn(2, 3, generator=g, dtype=torch.float64)
    return GaussianMixture(means, torch.tensor([0.5, 0.7]), torch.tensor([0.4, 0.6]))


def _grids() -> dict[str, torch.Tensor]:
    k = karras_sigmas(5, 0.05, 10.0)
    return {
        "to_zero": k,
        "no_zero": k[:-1],
        "repeats": torch.cat([k[:3], k[2:3], k[3:]]),
        "one_step": torch.tensor([10.0, 0.0]),
    }


def test_every_registered_sampler_has_a_count() -> None:
    assert set(EVALUATIONS) == set(SAMPLERS)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_count_equals_the_calls_made(name: str, gmm: GaussianMixture) -> None:
    x = torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 10
    for options in [{}, *EXTRA_OPTIONS.get(name, [])]:
        for label, grid in _grids().items():
            counter = CountingDenoiser(gmm)
            info: dict = {}
            extra = {"info": info} if name == "adaptive" else {}
            sample(counter, x, grid, name, generator=torch.Generator().manual_seed(2),
                   **options, **extra)  # fmt: skip
            assert counter.rows == counter.calls * 3
            if name == "adaptive" and label != "one_step":
                assert counter.calls == info["nfe"]
                with pytest.raises(ValueError, match="CountingDenoiser"):
                    denoiser_evaluations(name, grid, **options)
                continue
            assert denoiser_evaluations(name, grid, **options) == counter.calls, (options, label)


def test_steps_given_as_an_int_and_the_budget_inverse() -> None:
    assert denoiser_evaluations("euler", 10) == 10
    assert denoiser_evaluations("heun", 10) == 19  # the last step into 0 is Euler
    assert denoiser_evaluations("pc", 10) == 20
    assert denoiser_evaluations("langevin", 10, n_steps_each=3) == 31
    assert steps_for_evaluations("heun", 10) == 5
    assert steps_for_evaluations("heun", 9) == 5
    assert steps_for_evaluations("dpmpp_2m", 7) == 7
    with pytest.raises(ValueError, match="one step already costs 3"):
        steps_for_evaluations("pc", 2, n_corrector=2)
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        denoiser_evaluations("nope", 4)
