"""Nothing ignored, guessed or overwritten: config keys, CLI values, sampler choices, outputs.

One tiny toy run (a few seconds) is trained per module; every test samples it with a few steps.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from polydiff.core.samplers import SAMPLERS
from polydiff.train.config import compose, find_config_dir, sampler_options
from polydiff.train.run import build_sampler, sample_run, train
from polydiff_apps.cli import main

CONFIGS = find_config_dir(Path(__file__).resolve().parent)
TINY = ["model=mlp_tiny", "trainer=tiny", "trainer.max_steps=4", "trainer.ckpt_every=0"]


def _strict(text: str) -> dict:
    def refuse(token: str):
        raise AssertionError(f"non-strict JSON token {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", "experiment=toy/gmm", *TINY, f"runs_root={root}"]) == 0
    return next((root / "toy" / "gmm").iterdir())


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cond") / "run"
    assert main(["train", "experiment=toy/gmm_cond", *TINY, f"run_dir={d}"]) == 0
    return d


# ------------------------------------------------------------------ config values take effect
@pytest.mark.slow
def test_every_root_config_key_takes_effect_when_set_in_an_experiment(tmp_path, monkeypatch):
    """Each key of configs/config.yaml set in an experiment (not on the command line) acts."""
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs)
    root_keys = OmegaConf.load(configs / "config.yaml")
    documented = {k for k in root_keys if k != "defaults"}
    documented |= {f"sample.{k}" for k in root_keys.sample} | {
        f"evaluate.{k}" for k in root_keys.evaluate
    }
    exp = {
        "name": "mine/exp",
        "seed": 7,
        "runs_root": str(tmp_path / "myruns"),
        "sample": {"n": 12, "seed": 3, "batch_size": 5, "ema": False,
                   "out": str(tmp_path / "sout"), "overwrite": True},
        "evaluate": {"n": 40, "seed": 4, "out": str(tmp_path / "e.json"), "overwrite": True,
                     "reference": None, "save_images": False},
        "trainer": {"max_steps": 4, "ckpt_every": 0},
    }  # fmt: skip
    body = OmegaConf.to_yaml(OmegaConf.create(exp))
    head = "# @package _global_\ndefaults:\n  - override /model: mlp_tiny\n"
    head += "  - override /trainer: tiny\n"
    (configs / "experiment" / "mine.yaml").write_text(head + body)
    (configs / "experiment" / "mine_dir.yaml").write_text(
        head + f"run_dir: {tmp_path / 'fixed_run'}\ntrainer:\n  max_steps: 4\n"
    )
    monkeypatch.setenv("POLYDIFF_CONFIGS", str(configs))
    seen = set()

    run_dir = train(["experiment=mine"])
    assert run_dir.parent == tmp_path / "myruns" / "mine" / "exp"  # runs_root + name
    seen |= {"runs_root", "name"}
    assert OmegaConf.load(run_dir / "config.yaml").trainer.seed == 7  # seed
    seen.add("seed")
    assert train(["experiment=mine_dir"]) == tmp_path / "fixed_run"  # run_dir
    seen.add("run_dir")

    out = sample_run(run_dir)
    assert out == tmp_path / "sout"  # sample.out
    info = _strict((out / "sample.json").read_text())
    assert np.load(out / "samples.npz")["samples"].shape == (12, 2)  # sample.n
    assert info["seed"] == 3 and info["batch_size"] == 5 and info["weights"] == "model"
    seen |= {"sample.out", "sample.n", "sample.ema", "sample.batch_size"}
    first = np.load(out / "samples.npz")["samples"]
    sample_run(run_dir)  # sample.overwrite: true in the experiment -> no refusal
    seen.add("sample.overwrite")
    other = sample_run(run_dir, ["sample.seed=4"], out=tmp_path / "other")
    assert not np.array_equal(np.load(other / "samples.npz")["samples"], first)  # sample.seed
    seen.add("sample.seed")
    with pytest.raises(Exception, match=r"sample\.batch_size=0"):  # the value is read, checked
        sample_run(run_dir, ["sample.batch_size=0"])

    from polydiff.train.run import evaluate_run

    result = evaluate_run(run_dir)
    saved = _strict((tmp_path / "e.json").read_text())  # evaluate.out
    assert saved["n"] == 40 and saved["seed"] == 4 and saved["metrics"]["n"] == 40
    evaluate_run(run_dir)  # evaluate.overwrite
    seen |= {"evaluate.out", "evaluate.n", "evaluate.seed", "evaluate.overwrite"}
    assert result["path"] == str(tmp_path / "e.json")
    # reference / save_images: the toy evaluator takes no options, so setting them is refused
    for key, value in (("reference", str(tmp_path)), ("save_images", "true")):
        with pytest.raises(Exception, match=f"evaluate.{key}"):
            evaluate_run(run_dir, [f"evaluate.{key}={value}"])
        seen.add(f"evaluate.{key}")  # (images: tests/image/test_own_data.py)
    assert documented <= seen | {"sample", "evaluate"}, documented - seen


# ------------------------------------------------------------------ CLI values are validated
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "arg,message",
    [
        ("n=0", "sample.n=0: expected a positive integer"),
        pytest.param("n=-3", "sample.n=-3: expected a positive integer", marks=SLOW),
        ("steps=0", "sampler.steps=0: expected a positive integer"),
        ("seed=1.5", "sample.seed=1.5: expected an integer seed"),
        pytest.param("sample.batch_size=0", "sample.batch_size=0", marks=SLOW),
        ("ema=0.5x", "ema='0.5x'"),
        pytest.param("ema=1.5", "ema=1.5", marks=SLOW),
        pytest.param("sampler.eta=0.5", "'sampler.eta'", marks=SLOW),
        ("model.hidden=8", "'model.hidden=8': model is fixed once a run is trained"),
        pytest.param("data=toy_moons", "data is fixed", marks=SLOW),
        pytest.param("objective.prediction=eps", "objective is fixed", marks=SLOW),
        pytest.param("trainer.max_steps=9", "trainer is fixed", marks=SLOW),
        ("guidance=cfg", "needs a condition to drop"),
        pytest.param("guidance.scale=3", "guidance.scale=3 has no effect", marks=SLOW),
    ],
)
def test_bad_values_get_one_line_naming_them(run, tmp_path, capsys, arg, message):
    assert main(["sample", f"run={run}", "steps=2", "n=4", arg, f"out={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_ema_values_accepted(run, tmp_path):
    for value, weights in (("true", "ema:0.9"), ("false", "model"), ("0.9", "ema:0.9")):
        out = sample_run(run, ["sample.n=4", "sampler.steps=2", f"sample.ema={value}"])
        assert _strict((out / "sample.json").read_text())["weights"] == weights


# ------------------------------------------------------------------ samplers are configs
FAST_SAMPLERS = ("euler_ancestral", "dpmpp_2m", "unipc")


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[] if n in FAST_SAMPLERS else [SLOW]) for n in sorted(SAMPLERS)],
)
def test_every_registered_sampler_is_a_config_with_plain_options(name):
    node = compose([f"sampler={name}"], CONFIGS).sampler
    assert node.method == name
    options = sampler_options(name)
    assert set(options) <= set(node), "every option is a plain key"
    spec = build_sampler(node)
    assert spec.method == name and spec.options == {}  # defaults are not passed on
    for key, default in options.items():
        if isinstance(default, (int, float)) and not isinstance(default, bool) and default != 0:
            changed = build_sampler(
                compose([f"sampler={name}", f"sampler.{key}=0"], CONFIGS).sampler
            )
            assert changed.options == {key: 0}
            break


def test_a_newly_registered_sampler_is_picked_up(monkeypatch):
    def mine(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, gain=1.0):
        return x

    monkeypatch.setitem(SAMPLERS, "mine_test", mine)
    node = compose(["sampler=mine_test", "sampler.gain=2"], CONFIGS).sampler
    assert build_sampler(node).options == {"gain": 2}


def test_tilde_removes_a_key_and_options_are_recorded(run, tmp_path):
    out = tmp_path / "a"
    argv = [
        "sample",
        f"run={run}",
        "sampler=euler_ancestral",
        "~sampler.eta",
        "sampler.s_noise=0.5",
    ]
    assert main([*argv, "steps=2", "n=4", f"out={out}"]) == 0
    info = _strict((out / "sample.json").read_text())
    assert info["options"] == {"eta": 1.0, "s_noise": 0.5}
    euler = sample_run(run, ["sampler=euler", "sample.n=4", "sampler.steps=2"])
    assert _strict((euler / "sample.json").read_text())["options"]["s_tmax"] == "inf"


# ------------------------------------------------------------------ nothing overwritten
@pytest.mark.slow
def test_outputs_are_named_by_every_setting_and_never_overwritten(run, capsys):
    base = ["sample", f"run={run}", "sampler=euler_ancestral", "steps=2", "n=4"]
    variants = [[], ["sampler.eta=0.5"], ["seed=1"], ["n=5"], ["ema=false"], ["steps=3"]]
    dirs = set()
    for extra in variants:
        assert main([*base, *extra]) == 0
        dirs.add(capsys.readouterr().out.split(" -> ")[1].split(" ")[0])
    assert len(dirs) == len(variants)
    for d in dirs:
        info = _strict((Path(d) / "sample.json").read_text())
        assert {"sampler", "steps", "options", "schedule", "guidance", "ema", "weights", "seed",
                "n", "checkpoint", "checkpoint_step"} <= set(info)  # fmt: skip
    assert main(base) == 2  # the same settings again: refused
    err = capsys.readouterr().err
    assert "exists" in err and "overwrite=true" in err
    assert main([*base, "overwrite=true"]) == 0


def test_guidance_scale_names_evaluations(cond_run, capsys):
    paths = []
    for scale in (2, 5):
        argv = ["evaluate", f"run={cond_run}", "steps=2", "n=16", f"guidance.scale={scale}"]
        assert main(argv) == 0
        paths.append(capsys.readouterr().out.strip().splitlines()[-1].split("-> ")[1])
    assert paths[0] != paths[1] and all(Path(p).is_file() for p in paths)
    assert _strict(Path(paths[1]).read_text())["guidance"]["scale"] == 5


def test_trainer_samples_and_polydiff_sample_share_one_function(tmp_path):
    run_dir = tmp_path / "run"
    train(["experiment=toy/gmm", *TINY, "trainer.sample_every=4", "trainer.sample_n=16",
           f"run_dir={run_dir}"])  # fmt: skip
    during = np.load(run_dir / "samples" / "step_00000004" / "samples.npz")["samples"]
    # the trainer samples with its first EMA (trainer.sample_with_ema): so does ema=true
    after = sample_run(
        run_dir, ["sample.n=16", "sample.seed=4", "sample.ema=true"], out=tmp_path / "s"
    )
    np.testing.assert_array_equal(np.load(after / "samples.npz")["samples"], during)


# ------------------------------------------------------------------ run=latest, show run=
def test_run_latest_and_show(run, capsys):
    root = run.parents[2]
    for n, spec in ((3, "latest"), (5, "latest:toy/gmm")):
        assert main(["sample", f"run={spec}", f"runs_root={root}", "steps=2", f"n={n}"]) == 0
        assert str(run) in capsys.readouterr().err
    assert main(["sample", "run=latest:toy/none", f"runs_root={root}"]) == 1
    assert "toy/none" in capsys.readouterr().err
    assert main(["show", f"run={run}"]) == 0
    text = capsys.readouterr().out
    info = OmegaConf.to_container(OmegaConf.create(text))
    assert info["name"] == "toy/gmm" and info["checkpoints"][-1]["step"] == 4
    assert any(o["n"] == 3 for o in info["outputs"])
