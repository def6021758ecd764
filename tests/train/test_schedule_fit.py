"""``polydiff schedule``: a grid fitted for a trained run, saved, and used by the sampler config;
and ``generate``'s per-sample random streams (the edit to ``polydiff.train.sampling``)."""

from __future__ import annotations

import json

import pytest
import torch

from polydiff.core.samplers import denoiser_evaluations
from polydiff.core.toy import ring_mixture
from polydiff.train.config import ConfigError
from polydiff.train.run import open_run, train
from polydiff.train.sampling import SamplerSpec, generate
from polydiff.train.schedule_fit import fitted_sigmas, load_sigmas, schedule_run


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    return train(
        [
            "experiment=toy/gmm",
            "trainer.max_steps=30",
            "trainer.ema_decays=[0.9]",
            "trainer.lr_warmup_steps=5",
            "trainer.progress=false",
            "trainer.ckpt_every=30",
            f"run_dir={tmp_path_factory.mktemp('runs') / 'gmm'}",
        ]
    )


@pytest.mark.slow  # trains a 30-step toy run and fits a grid (~25 s on a loaded 2-core box)
def test_schedule_run_fits_saves_and_the_sampler_config_uses_it(toy_run, tmp_path) -> None:
    record = schedule_run(toy_run, ["sampler=ipndm", "sampler.steps=4", "sample.n=32"])
    sigmas = torch.tensor(record["sigmas"], dtype=torch.float64)
    assert record["sampler"] == "ipndm" and record["steps"] == 4 and record["nfe"] == 4
    assert len(sigmas) == 5 and sigmas[-1] == 0 and (sigmas[1:] < sigmas[:-1]).all()
    assert float(sigmas[0]) == pytest.approx(record["sigma_max"])
    with open(record["path"]) as f:
        saved = json.load(f)
    assert saved["sigmas"] == record["sigmas"] and "fitted_sigmas" in saved["use"]
    # the sampler config takes the saved grid
    run = open_run(toy_run, saved["use"].split(" "))
    assert run.sampler.method == "ipndm" and run.sampler.steps == 4
    torch.testing.assert_close(run.sampler.sigmas(), sigmas)
    assert denoiser_evaluations("ipndm", run.sampler.sigmas()) == 4
    # the same run and settings again: the cached grid, no refit
    again = schedule_run(toy_run, ["sampler=ipndm", "sampler.steps=4", "sample.n=32"],
                         out=tmp_path / "again.json")  # fmt: skip
    assert again["sigmas"] == record["sigmas"] and again["fit"]["cached"]
    # the fit's own settings are optional schedule.<key> overrides, checked
    small = schedule_run(toy_run, ["sampler=ipndm", "sampler.steps=3", "sample.n=16",
                                   "+schedule.pool=32", "+schedule.reference_steps=8"],
                         out=tmp_path / "small.json")  # fmt: skip
    assert small["fit_options"] == {"pool": 32, "reference_steps": 8}
    assert small["fit"]["pool"] == 32 and len(small["sigmas"]) == 4
    with pytest.raises(ConfigError, match="unknown schedule.pools; valid: pool,"):
        schedule_run(toy_run, ["+schedule.pools=32"])
    with pytest.raises(ConfigError, match="schedule.pool must be an integer >= 1, got 0"):
        schedule_run(toy_run, ["+schedule.pool=0"])
    with pytest.raises(ConfigError, match="schedule.random_starts must be an integer >= 0"):
        schedule_run(toy_run, ["+schedule.random_starts=-1"])


def test_saved_grids_are_validated(tmp_path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"sigmas": [10.0, 2.0, 0.5, 0.0]}))
    assert fitted_sigmas(3, path=good).tolist() == [10.0, 2.0, 0.5, 0.0]
    with pytest.raises(ConfigError, match="holds a 3-step grid but sampler.steps=5"):
        fitted_sigmas(5, path=good)
    cases = {
        "missing.json": None,
        "text.json": "not json",
        "nolist.json": json.dumps({"sigmas": "10, 0"}),
        "up.json": json.dumps({"sigmas": [1.0, 2.0, 0.0]}),
        "nozero.json": json.dumps({"sigmas": [2.0, 1.0]}),
    }
    messages = ["not found", "not a JSON sigma grid", "list of numbers", "strictly decreasing",
                "must end in 0"]  # fmt: skip
    for (name, text), message in zip(cases.items(), messages):
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_sigmas(tmp_path / name)


@pytest.mark.parametrize("method", ["euler_ancestral", "dpmpp_2m_sde", "heun"])
def test_generate_sample_i_is_the_same_whatever_n_and_batch_size(method: str) -> None:
    ring, spec = ring_mixture(), SamplerSpec(method, 6)

    def draw(n: int, batch_size: int) -> torch.Tensor:
        return generate(ring, (2,), n, spec, generator=torch.Generator().manual_seed(3),
                        batch_size=batch_size)  # fmt: skip

    full = draw(8, 8)
    torch.testing.assert_close(draw(8, 3), full, rtol=0, atol=0)
    torch.testing.assert_close(draw(5, 2), full[:5], rtol=0, atol=0)
    by_seed = generate(ring, (2,), 3, spec, seeds=[10, 11, 12])
    torch.testing.assert_close(generate(ring, (2,), 1, spec, seeds=[11])[0], by_seed[1])
    with pytest.raises(ValueError, match="2 per-sample seeds/generators for n=3"):
        generate(ring, (2,), 3, spec, seeds=[1, 2])


@pytest.mark.slow  # trains the 30-step toy run (shared) and fits a small solver (~10 s)
def test_schedule_run_fits_a_solver_and_the_sampler_config_uses_it(toy_run, tmp_path) -> None:
    small = ["sample.n=16", "+schedule.pool=64", "+schedule.reference_steps=8",
             "+schedule.rounds=1", "+schedule.sweeps=2", "+schedule.restarts=1",
             "+schedule.random_starts=2", "+schedule.iterations=6",
             "+schedule.lr=0.02"]  # fmt: skip
    record = schedule_run(toy_run, ["sampler=fitted", "sampler.steps=3", "sampler.order=2",
                                    *small], out=tmp_path / "solver.json")  # fmt: skip
    assert record["sampler"] == "fitted" and record["nfe"] == 3 and len(record["sigmas"]) == 4
    assert [len(r) for r in record["coefficients"]] == [1, 2, 3]
    assert record["fit"]["iterations"] == 6 and "sampler.coefficients=[[" in record["use"]
    run = open_run(toy_run, record["use"].split(" "))
    assert (
        run.sampler.method == "fitted"
        and run.sampler.options["coefficients"] == (record["coefficients"])
    )
    torch.testing.assert_close(run.sampler.sigmas(), torch.tensor(record["sigmas"]).double())
    out = generate(run.denoiser(), run.sample_shape, 4, run.sampler, seeds=[1, 2, 3, 4])
    assert out.shape == (4, *run.sample_shape) and torch.isfinite(out).all()
    # sigma_scales / average reach optimize_solver and the scales reach the sampler via `use`
    scaled = schedule_run(toy_run, ["sampler=fitted", "sampler.steps=3", "sampler.order=2", *small,
                                    "+schedule.sigma_scales=true", "+schedule.average=0.5"],
                          out=tmp_path / "solver_scales.json")  # fmt: skip
    assert len(scaled["sigma_scales"]) == 3 and "sampler.sigma_scales=[" in scaled["use"]
    assert scaled["fit_options"]["sigma_scales"] is True
    run = open_run(toy_run, scaled["use"].split(" "))
    assert run.sampler.options["sigma_scales"] == scaled["sigma_scales"]
    with pytest.raises(ConfigError, match="schedule.sigma_scales must be true or false, got 2"):
        schedule_run(toy_run, ["sampler=fitted", "+schedule.sigma_scales=2"])
    with pytest.raises(ConfigError, match=r"schedule.average must be a number in \[0, 1\), got 1"):
        schedule_run(toy_run, ["sampler=fitted", "+schedule.average=1"])
    with pytest.raises(ConfigError, match="unknown schedule.iterations; valid: pool,"):
        schedule_run(toy_run, ["sampler=ipndm", "+schedule.iterations=3"])
    with pytest.raises(ConfigError, match=r"schedule.holdout must be a number in \(0, 1\)"):
        schedule_run(toy_run, ["sampler=fitted", "+schedule.holdout=1.5"])
    with pytest.raises(ConfigError, match="fits the coefficients: drop sampler.coefficients"):
        schedule_run(toy_run, ["sampler=fitted", "sampler.coefficients=[[1.0]]"])
