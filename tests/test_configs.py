"""Every config in ``configs/`` composes and builds (generic: new files are picked up).

Each experiment is composed and all of its nodes instantiated; each group option that no
experiment uses is composed on top of the defaults and its own node instantiated. Data nodes
(which may generate a dataset or train a cached autoencoder) are built by slow tests.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from polydiff.core.samplers import SAMPLERS
from polydiff.train.config import (
    ConfigError,
    compose,
    find_config_dir,
    register_sampler_configs,
)

CONFIGS = find_config_dir(Path(__file__).resolve().parent)
GROUPS = ("data", "model", "objective", "sampler", "guidance", "trainer", "edit", "adapt")


def _options(group: str) -> list[str]:
    base = CONFIGS / group
    files = {str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.yaml")}
    if group == "sampler":  # every registered sampler is a choice (generated unless a file)
        files |= set(SAMPLERS)
    return sorted(files)


@cache
def _choices(experiment: str) -> dict[str, str]:
    """The group options an experiment selects (hydra's runtime choices)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_sampler_configs(CONFIGS)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = hydra_compose("config", [f"experiment={experiment}"], return_hydra_config=True)
    return dict(cfg.hydra.runtime.choices)


def _used_by_experiments() -> set[tuple[str, str]]:
    return {(g, c) for e in _options("experiment") for g, c in _choices(e).items() if c}


def _build_node(cfg: DictConfig, group: str) -> None:
    from polydiff.train.data import split_batch
    from polydiff.train.hooks import call_hook
    from polydiff.train.run import build_sampler, build_trainer_config, instantiate

    node = cfg[group]
    if group == "model":
        net = instantiate(node, "model")
        assert isinstance(net, torch.nn.Module) and sum(p.numel() for p in net.parameters()) > 0
    elif group == "objective":
        obj = instantiate(node, "objective")
        assert callable(obj.loss) and callable(obj.denoiser)
    elif group == "data":
        ds = instantiate(node.dataset, "data.dataset")
        x, _ = split_batch(ds[0])
        assert isinstance(x, torch.Tensor) and len(ds) > 0
        hooks = instantiate(node.get("hooks"), "data.hooks")
        cond = call_hook(hooks, "sample_cond", 2, torch.Generator().manual_seed(0))
        assert cond is None or all(len(v) == 2 for v in cond.values())
    elif group == "sampler":
        spec = build_sampler(node)
        assert spec.steps >= 1
        if spec.schedule is not None:
            sigmas = spec.sigmas()
            assert sigmas.ndim == 1 and len(sigmas) == spec.steps + 1 and sigmas[-1] == 0
    elif group == "guidance":
        assert "scale" in node
        if node.get("_target_"):
            wrapped = instantiate(node, "guidance")(lambda x, sigma, cond=None: x)
            assert callable(wrapped)
    elif group in ("edit", "adapt"):  # job settings of `polydiff edit` / `polydiff adapt`
        job = instantiate(node, group)
        assert type(job).__name__ == {"edit": "EditConfig", "adapt": "AdaptConfig"}[group]
    elif group == "trainer":
        tc = build_trainer_config(node)
        opt = instantiate(node.optimizer, "trainer.optimizer")([torch.nn.Parameter(torch.ones(2))])
        assert isinstance(opt, torch.optim.Optimizer) and tc.max_steps >= 1


# data nodes may build real datasets (procedural images, a cached autoencoder...): slow tests
CHEAP = tuple(g for g in GROUPS if g != "data")


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_experiment_composes_and_builds(experiment):
    cfg = compose([f"experiment={experiment}"], CONFIGS)
    assert cfg.name, "an experiment sets its name (runs/<name>/...)"
    for group in CHEAP:
        if cfg.get(group) is not None:  # edit / adapt: only experiments that choose one
            _build_node(cfg, group)
    text = (CONFIGS / "experiment" / f"{experiment}.yaml").read_text()
    assert text.startswith("# @package _global_"), "experiments hold deltas at the global level"


@pytest.mark.slow
@pytest.mark.parametrize("experiment", _options("experiment"))
def test_experiment_data_builds(experiment):
    _build_node(compose([f"experiment={experiment}"], CONFIGS), "data")


_UNUSED = [(g, o) for g in GROUPS for o in _options(g) if (g, o) not in _used_by_experiments()]


@pytest.mark.parametrize(
    "group,option",
    [pytest.param(g, o, marks=[pytest.mark.slow] if g == "data" else []) for g, o in _UNUSED],
    ids=[f"{g}={o}" for g, o in _UNUSED],
)
def test_group_option_composes_and_builds(group, option):
    """Options no experiment selects, on top of the defaults (the others: experiments above)."""
    text = (CONFIGS / group / f"{option}.yaml").read_text() if group == "data" else ""
    if "???" in text:  # own-data configs need a path: tests/image/test_own_data.py builds them
        pytest.skip(f"data={option} needs a path to the user's data")
    cfg = compose([f"{group}={option}"], CONFIGS)
    OmegaConf.to_container(cfg, resolve=True)
    _build_node(cfg, group)


def test_typo_in_group_choice_names_valid_choices():
    with pytest.raises(
        ConfigError,
        match=r"(?s)'toy/gmmm'.*'experiment'.*toy/gmm.*did you mean 'experiment=toy/gmm'",
    ):
        compose(["experiment=toy/gmmm"], CONFIGS)
    with pytest.raises(ConfigError, match=r"(?s)sampler.*dpmpp_2m"):
        compose(["sampler=dpmpp2m"], CONFIGS)


def test_typo_in_key_names_valid_keys():
    with pytest.raises(ConfigError, match=r"(?s)trainer\.max_stpes.*max_steps.*did you mean"):
        compose(["trainer.max_stpes=3"], CONFIGS)
    with pytest.raises(ConfigError, match="key=value"):
        compose(["trainer.max_steps"], CONFIGS)


def test_objective_defaults_follow_the_schedules_paper():
    """``DiffusionObjective(EDMSchedule())`` is EDM (preconditioning, lambda = 1/c_out^2,
    log-normal sigmas), as a k-diffusion user reads it; flow -> flow; VP -> eps (DDPM)."""
    from polydiff.core.objective import DiffusionObjective
    from polydiff.core.parameterization import (
        EDMParameterization,
        EpsParameterization,
        FlowParameterization,
    )
    from polydiff.core.schedules import EDMSchedule, FlowSchedule, VPSchedule

    edm = DiffusionObjective(EDMSchedule())
    assert isinstance(edm.param, EDMParameterization)
    assert type(edm.weighting).__name__ == "EDMWeighting"
    assert type(edm.noise_density).__name__ == "LogNormal"
    assert isinstance(DiffusionObjective(FlowSchedule()).param, FlowParameterization)
    vp = DiffusionObjective(VPSchedule.linear())
    assert isinstance(vp.param, EpsParameterization)
    assert type(vp.noise_density).__name__ == "UniformTime"
    explicit = DiffusionObjective(EDMSchedule(), "eps")  # an explicit choice is kept
    assert isinstance(explicit.param, EpsParameterization)
