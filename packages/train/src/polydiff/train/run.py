"""Runs: train one from a composed config, reopen one, sample and evaluate it, find one.

A run directory ``<runs_root>/<name>/<timestamp>-<hash of the config delta>/`` holds
``config.yaml`` (resolved), ``overrides.json`` (what was asked for), ``checkpoints/``,
``metrics.jsonl``, ``samples/<job>/`` and ``eval/<job>.json``. Everything is built by
``_target_`` (hydra instantiate).

Sampling and evaluating never overwrite and never drop a setting: a job's output is named by
all of its settings (:func:`job_settings`: sampler, steps, options, guidance and scale, EMA,
seed, n, checkpoint step) and an existing output is refused unless ``sample.overwrite`` /
``evaluate.overwrite``; ``sample.json`` / the evaluation JSON record the resolved settings in
strict JSON. What cannot change after training (``data``, ``model``, ``objective``,
``trainer``) is refused at sample time, and so is guidance that cannot apply.

Config layout expected (see ``configs/config.yaml``): ``data.dataset`` and optional
``data.hooks`` (``polydiff.train.hooks``), ``model``, ``objective``, ``sampler`` (``method``,
``steps``, ``schedule`` partial, ``options``), ``guidance`` (``scale`` and optional
``_target_`` partial ``fn(denoiser) -> denoiser``), ``trainer`` (the ``TrainerConfig`` fields plus
``optimizer``, a ``_partial_`` optimizer).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from polydiff.core.fileio import atomic_write_text
from polydiff.core.samplers import SAMPLERS

from .checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, read_state
from .config import (
    SAMPLER_KEYS,
    ConfigError,
    compose,
    config_delta,
    json_safe,
    merge_overrides,
    sampler_options,
)
from .ema import HeldOutLoss, auto_items, choose_weights, load_weights, parse_ema_spec
from .ema_sweep import select_ema_by_metric
from .hooks import call_evaluate, call_hook, draw, write_outputs
from .safe_config import check_config, is_trusted_config_dir
from .sampling import SamplerSpec, with_objective_grid
from .tracking import config_delta_hash, make_run_dir

__all__ = [
    "FIXED_AT_SAMPLE_TIME",
    "OpenedRun",
    "build_sampler",
    "CONFIG_VERSION",
    "build_trainer_config",
    "describe_run",
    "evaluate_run",
    "find_run",
    "instantiate",
    "job_dir",
    "job_settings",
    "migrate_run_config",
    "open_run",
    "run_job_config",
    "sample_run",
    "train",
    "with_job_default",
]

# what a trained run is: overriding these when sampling would be ignored, so it is refused
FIXED_AT_SAMPLE_TIME = ("data", "model", "objective", "trainer")
# guidance that needs a condition to drop (refused on unconditional runs)
CONDITIONAL_GUIDANCE = ("polydiff.core.guidance.classifier_free_guidance",)

# A run's saved config.yaml carries ``config_version`` (runs without one are version 1); an
# older saved config is migrated when the run is opened (:func:`migrate_run_config`).
CONFIG_VERSION = 4
# version 1 -> 2 (issue 13): a size name means one network across the project; the image U-Net's
# own "tiny" / "small" / "base" became polydiff.nn.UNET_SIZES' "tiny-c16" / "small-c32" / "small"
# (the same networks under their new names)
RENAMED_SIZES_V2 = {
    "polydiff.image.models.image_unet": {"tiny": "tiny-c16", "small": "small-c32", "base": "small"},
}
# version 2 -> 3: the audio mel U-Net's own sizes got the "audio-" prefix (they reused "tiny" /
# "small" for networks other than polydiff.nn.UNET_SIZES')
RENAMED_SIZES_V3 = {
    "polydiff.audio.models.audio_unet": {
        name: f"audio-{name}" for name in ("tiny", "small", "base", "latent")
    },
}
# version 3 -> 4: the shapes point transformer's and voxel U-Net's sizes got the "points-" /
# "voxel-" prefixes (their bare "tiny" / "small" / "base" were other networks than nn's)
RENAMED_SIZES_V4 = {
    f"polydiff.shapes.models.{target}": {n: f"{prefix}-{n}" for n in ("tiny", "small", "base")}
    for target, prefix in (("point_transformer", "points"), ("voxel_unet", "voxel"))
}
RENAMED_SIZES = {2: RENAMED_SIZES_V2, 3: RENAMED_SIZES_V3, 4: RENAMED_SIZES_V4}


def instantiate(node: Any, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` whose errors name the config node."""
    from hydra.utils import instantiate as hydra_instantiate

    if node is None:
        return None
    try:
        return hydra_instantiate(node, **kwargs)
    except Exception as err:
        target = node.get("_target_") if isinstance(node, (Mapping, DictConfig)) else None
        raise ConfigError(f"cannot build '{what}' (_target_: {target}): {err}") from err


def build_trainer_config(node: Mapping[str, Any]):  # -> TrainerConfig
    """``TrainerConfig`` from ``cfg.trainer`` (minus ``optimizer``); unknown keys are named."""
    from .trainer import TrainerConfig

    data = (
        OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    )
    data.pop("optimizer", None)
    fields = {f.name for f in dataclasses.fields(TrainerConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"unknown trainer keys {unknown}; valid keys: {sorted(fields)}")
    if isinstance(data.get("ema_decays"), list):
        data["ema_decays"] = tuple(data["ema_decays"])
    try:
        return TrainerConfig(**data)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def build_sampler(node: Mapping[str, Any]) -> SamplerSpec:
    """``SamplerSpec`` from ``cfg.sampler``: ``method``, ``steps``, ``schedule`` and the
    sampler's options as plain keys (``sampler.eta=0.5``; a legacy ``options`` mapping is
    merged). Unknown methods / options and non-positive steps are named."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    node = dict(node)
    method = node.get("method")
    if method not in SAMPLERS:
        raise ConfigError(
            f"sampler.method={method!r} is unknown; valid choices: {sorted(SAMPLERS)}"
        )
    steps = node.get("steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"sampler.steps={steps!r}: expected a positive integer")
    options = {k: v for k, v in node.items() if k not in (*SAMPLER_KEYS, "options")}
    options.update(node.get("options") or {})
    valid = sampler_options(method)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"sampler {method!r} has no option(s) {unknown}; its options: {sorted(valid)}"
        )
    # the spec carries what differs from the function's defaults (job records show all)
    options = {k: v for k, v in options.items() if _differs(v, valid[k])}
    schedule = node.get("schedule")
    return SamplerSpec(
        method=method,
        steps=steps,
        schedule=instantiate(OmegaConf.create(schedule) if schedule else None, "sampler.schedule"),
        options=options,
    )


def _differs(value: Any, default: Any) -> bool:
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return list(value) != list(default)
    return value != default


def _experiment_signature(cfg: DictConfig, config_dir: str | Path | None) -> tuple[str, dict]:
    """Hash of what differs from the default config (audiocraft's experiment signature)."""
    delta = config_delta(cfg, compose([], config_dir))
    return config_delta_hash(delta), delta


def migrate_run_config(saved: DictConfig, source: str | Path) -> DictConfig:
    """``saved`` (a run's ``config.yaml``) brought to :data:`CONFIG_VERSION`, in place; each
    renamed setting is reported in one line. A version newer than this polydiff is refused."""
    version = saved.get("config_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"{source}: config_version={version!r}: expected an integer >= 1")
    if version > CONFIG_VERSION:
        raise ConfigError(
            f"{source}: config_version={version} was written by a newer polydiff (this one "
            f"reads up to {CONFIG_VERSION}); update polydiff to open it"
        )
    model = saved.get("model")
    for target in range(version + 1, CONFIG_VERSION + 1):
        renames = RENAMED_SIZES[target].get(model.get("_target_")) if model is not None else None
        old = model.get("size") if renames else None
        if isinstance(old, str) and old in renames:
            model.size = renames[old]
            print(
                f"polydiff: {source}: model.size {old!r} is now called {renames[old]!r} (config "
                f"version {version} -> {CONFIG_VERSION}: the same network under its project-wide "
                "name)",
                file=sys.stderr,
            )
    with open_dict(saved):
        saved.config_version = CONFIG_VERSION
    return saved


def train(
    overrides: Sequence[str] = (),
    *,
    config_dir: str | Path | None = None,
    run_dir: str | Path | None = None,
) -> Path:
    """Compose, build and train; returns the run directory (resumes if ``run_dir`` has one)."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    from .trainer import Trainer

    cfg = compose(overrides, config_dir)
    if not is_trusted_config_dir(config_dir):  # configs from elsewhere: allow-list unless trusted
        check_config(cfg, config_dir or "$POLYDIFF_CONFIGS")
    trainer_cfg = build_trainer_config(cfg.trainer)
    state = PartialState(cpu=trainer_cfg.cpu)
    # everything is built before a run directory exists: a bad config leaves nothing behind
    torch.manual_seed(trainer_cfg.seed)
    run_dir = run_dir or cfg.get("run_dir")
    resuming = trainer_cfg.resume is not None or (
        run_dir is not None and latest_checkpoint(Path(run_dir) / "checkpoints") is not None
    )
    model = instantiate(without_init_source(cfg.model) if resuming else cfg.model, "model")
    objective = instantiate(cfg.objective, "objective")
    dataset = instantiate(cfg.data.dataset, "data.dataset")
    hooks = instantiate(cfg.data.get("hooks"), "data.hooks")
    optimizer = instantiate(cfg.trainer.optimizer, "trainer.optimizer")
    sampler = build_sampler(cfg.sampler)
    global_batch = trainer_cfg.batch_size * state.num_processes
    if len(dataset) < global_batch:
        raise ConfigError(
            f"the data has {len(dataset)} items, fewer than one batch "
            f"(trainer.batch_size={trainer_cfg.batch_size} x {state.num_processes} processes); "
            f"set trainer.batch_size<={len(dataset) // state.num_processes}"
        )
    if state.is_main_process:
        if run_dir is None:
            signature, delta = _experiment_signature(cfg, config_dir)
            run_dir = make_run_dir(
                cfg.get("runs_root", "runs"), cfg.get("name", "default"), signature
            )
        else:
            delta = {}
            run_dir = Path(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
        with open_dict(cfg):  # opened later: migrated from this version
            cfg.config_version = CONFIG_VERSION
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
        atomic_write_text(
            run_dir / "overrides.json",
            json.dumps(
                json_safe({"overrides": list(overrides), "delta": delta}), indent=1, default=str
            ),
        )
    box = [str(run_dir)]
    if state.num_processes > 1:
        broadcast_object_list(box)
    run_dir = Path(box[0])
    if trainer_cfg.resume is None and latest_checkpoint(run_dir / "checkpoints") is not None:
        trainer_cfg.resume = "auto"

    trainer = Trainer(
        model,
        objective,
        dataset,
        optimizer,
        trainer_cfg,
        run_dir=run_dir,
        sampler=sampler,
        hooks=hooks,
        run_config=OmegaConf.to_container(cfg, resolve=True),
    )
    if trainer.is_main:
        print(f"polydiff: run directory {run_dir}", flush=True)
    trainer.fit()
    if trainer.is_main:  # sample.ema=auto: the final weights chosen by the modality's metric
        select_ema_by_metric(run_dir, hooks, config_dir=config_dir)
    return run_dir


# ---------------------------------------------------------------------------- finding runs
def find_run(spec: str | Path, runs_root: str | Path | None = None) -> Path:
    """A run directory from ``run=<spec>``: a path, ``latest`` (the newest run under
    ``runs_root``, by the time its config was written) or ``latest:<experiment name>``."""
    text = str(spec)
    if text != "latest" and not text.startswith("latest:"):
        return Path(text)
    root = Path(runs_root if runs_root is not None else compose([]).get("runs_root", "runs"))
    name = text.partition(":")[2].strip("/")
    base = root / name if name else root
    if not base.is_dir():
        raise CheckpointError(f"run={text}: {base} is not a directory (runs_root={root})")
    runs = [p.parent for p in base.rglob("config.yaml") if (p.parent / "checkpoints").is_dir()]
    if not runs:
        raise CheckpointError(f"run={text}: no trained run under {base}")
    return max(runs, key=lambda p: ((p / "config.yaml").stat().st_mtime, str(p)))


# ---------------------------------------------------------------------------- reopening runs
@dataclass
class OpenedRun:
    """A trained run rebuilt for inference (weights from its newest checkpoint)."""

    run_dir: Path
    cfg: DictConfig
    model: torch.nn.Module
    objective: Any
    hooks: Any
    sampler: SamplerSpec
    sample_shape: tuple[int, ...]
    checkpoint: Path
    weights: str  # "ema:<decay>" or "model"
    ema_choice: dict[str, Any] | None = None  # ema=auto: the candidates' losses and the choice
    hook_settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # sample-time hooks

    def denoiser(self, guidance: bool = True):
        """The run's denoiser, wrapped by ``cfg.guidance`` when it has a ``_target_``."""
        den = self.objective.denoiser(self.model)
        g = self.cfg.get("guidance")
        if guidance and g is not None and g.get("_target_"):
            den = instantiate(g, "guidance")(den)
        return den


def without_init_source(model_cfg: Any) -> Any:
    """``model_cfg`` with its initialisation source (``init_from``: a run whose weights start
    the training, e.g. a video model warm-started from a per-frame model) set to None.

    Once a run has a checkpoint, that holds every weight: reopening it (sample / evaluate) or
    resuming its training builds the network without reading the source run, which may have
    been moved or deleted since; the saved config keeps ``init_from`` as provenance.
    """
    if isinstance(model_cfg, DictConfig) and model_cfg.get("init_from") is not None:
        model_cfg = model_cfg.copy()
        with open_dict(model_cfg):
            model_cfg.init_from = None
    return model_cfg


_SELECTED_ROOT = re.compile(r"\$\{oc\.select:([A-Za-z_]\w*)")


def sample_time_hook_settings(cfg: DictConfig) -> dict[str, Any]:
    """The ``data.hooks`` settings a run takes at sample time, resolved in ``cfg``.

    A hooks key whose value selects an optional node outside the fixed groups (``vocoder:
    ${oc.select:audio.vocoder,griffinlim}``; plain ``${seed}`` / ``${data...}`` interpolations
    are part of the trained run) follows that node: the saved config holds the value
    resolved at training time, so :func:`open_run` re-resolves these keys from the job's own
    composition (``polydiff evaluate run=<dir> audio.vocoder=<vocoder run>``); without this the
    override would be ignored.
    """
    data = cfg.get("data")
    hooks = data.get("hooks") if isinstance(data, DictConfig) else None
    if not isinstance(hooks, DictConfig):
        return {}
    raw = OmegaConf.to_container(hooks, resolve=False)
    resolved = OmegaConf.to_container(hooks, resolve=True)
    return {
        key: resolved[key]
        for key, value in raw.items()
        if isinstance(value, str)
        and (roots := _SELECTED_ROOT.findall(value))
        and not any(r in FIXED_AT_SAMPLE_TIME for r in roots)
    }


def _refuse_fixed(overrides: Sequence[str], run_dir: Path) -> None:
    """Overrides of what was trained (data, model, objective, trainer) would be ignored."""
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        group = key.split(".", 1)[0]
        if group in FIXED_AT_SAMPLE_TIME:
            raise ConfigError(
                f"'{o}': {group} is fixed once a run is trained ({run_dir} was trained with its "
                f"own {group}, see its config.yaml); sample-time settings are sampler, guidance, "
                "sample.* and evaluate.*; train a new run to change it"
            )


def _positive_int(value: Any, key: str, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r}: expected a positive integer")
    return value


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r}: expected an integer seed")
    return value


def _check_job_config(cfg: DictConfig) -> None:
    """Validate the settings a sample / evaluate job reads (one line naming the bad value)."""
    s, e = cfg.sample, cfg.evaluate
    _positive_int(s.get("n"), "sample.n")
    _positive_int(s.get("batch_size"), "sample.batch_size", allow_none=True)
    _positive_int(s.get("step"), "sample.step", allow_none=True)
    _int(s.get("seed"), "sample.seed")
    _positive_int(e.get("n"), "evaluate.n")
    _int(e.get("seed"), "evaluate.seed")
    try:
        parse_ema_spec(s.get("ema"))
    except ValueError as err:
        raise ConfigError(f"sample.{err}") from None


def checkpoint_at(run_dir: str | Path, step: int) -> Path:
    """The run's complete checkpoint of training step ``step`` (``sample.step``); a step without
    one is refused naming the steps that have one."""
    found = {_step_of(p): p for p in list_checkpoints(Path(run_dir) / "checkpoints")}
    if step not in found:
        have = sorted(found)
        shown = ", ".join(map(str, have[:12])) + (f", ... {have[-1]}" if len(have) > 12 else "")
        raise ConfigError(
            f"sample.step={step}: {run_dir} has no checkpoint of that step (it has: "
            f"{shown or 'none'})"
        )
    return found[step]


def open_run(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    *,
    ema: bool | float | str | None = None,
    checkpoint: str | Path | None = None,
    config_dir: str | Path | None = None,
) -> OpenedRun:
    """Rebuild a run: its model/objective/data from the saved resolved config, and sampler /
    guidance / sample settings from the configs re-composed with the run's overrides plus
    ``overrides`` (so ``sampler=dpmpp_2m guidance.scale=3`` work on any run). Overrides of
    ``data`` / ``model`` / ``objective`` / ``trainer`` are refused. ``ema`` defaults to the
    config's ``sample.ema`` (auto: the checkpoint's choice by held-out loss; true: the first
    EMA; false: raw weights; a decay; sigma_rel:x)."""
    run_dir = Path(run_dir)
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise CheckpointError(f"{saved_path} not found: {run_dir} is not a polydiff run directory")
    _refuse_fixed(overrides, run_dir)
    saved = migrate_run_config(OmegaConf.load(saved_path), run_dir)
    old = (
        json.loads((run_dir / "overrides.json").read_text())["overrides"]
        if (run_dir / "overrides.json").is_file()
        else []
    )
    cfg = compose(merge_overrides(old, overrides), config_dir, describe=False, resolve=False)
    late = sample_time_hook_settings(cfg)  # resolved now, before data is replaced
    try:
        OmegaConf.resolve(cfg)
    except Exception as err:  # an interpolation the job's overrides broke
        raise ConfigError(f"{run_dir}: {type(err).__name__}: {err}".splitlines()[0]) from err
    for key in ("data", "model", "objective"):  # what was trained is what the run says
        cfg[key] = saved[key]
    if late and cfg.data.get("hooks") is not None:
        with open_dict(cfg.data.hooks):
            cfg.data.hooks.update(late)
    _check_job_config(cfg)
    check_config(cfg, run_dir)  # a run directory is data: allow-listed targets only
    if ema is None:
        ema = cfg.sample.get("ema")
    if checkpoint is None and cfg.sample.get("step") is not None:
        checkpoint = checkpoint_at(run_dir, cfg.sample.step)
    ckpt = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise CheckpointError(f"no checkpoint in {run_dir / 'checkpoints'}")
    model = instantiate(without_init_source(cfg.model), "model")  # the checkpoint has it all
    objective = instantiate(cfg.objective, "objective")
    hooks = instantiate(cfg.data.get("hooks"), "data.hooks")
    sampler = with_objective_grid(build_sampler(cfg.sampler), objective)  # checked before auto
    choice = _ema_choice(ckpt, ema, cfg, model, objective, hooks, config_dir)
    weights, which = load_weights(ckpt, choice["choice"] if choice else ema)  # verified, finite
    state = read_state(ckpt)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        msg = str(err).splitlines()[0]
        raise CheckpointError(f"{ckpt}: weights ({which}) do not fit the model: {msg}") from err
    model.eval()
    shape = tuple(state.get("sample_shape") or ())
    return OpenedRun(
        run_dir=run_dir,
        cfg=cfg,
        model=model,
        objective=objective,
        hooks=hooks,
        sampler=sampler,
        sample_shape=shape,
        checkpoint=ckpt,
        weights=which,
        ema_choice=choice,
        hook_settings=late,
    )


def _ema_choice(
    ckpt: Path,
    ema: Any,
    cfg: DictConfig,
    model: torch.nn.Module,
    objective: Any,
    hooks: Any,
    config_dir: str | Path | None,
) -> dict[str, Any] | None:
    """The ``ema=auto`` record: for the run's newest checkpoint the choice by the modality's
    metric (stored, or evaluated now: ``ema_sweep.select_ema_by_metric``); otherwise, or without
    a metric, the checkpoint's loss choice, scored now for checkpoints written before it
    existed; None for other requests."""
    if parse_ema_spec(ema)[0] != "auto":
        return None
    run_dir = ckpt.parent.parent
    latest = latest_checkpoint(run_dir / "checkpoints")
    if latest is not None and ckpt.resolve() == latest.resolve():
        by_metric = select_ema_by_metric(
            run_dir, hooks, config_dir=config_dir, announce_fallback=False
        )
        if by_metric is not None:
            return by_metric
    state = read_state(ckpt)
    if state.get("ema_auto"):
        return dict(state["ema_auto"])
    trainer = state.get("trainer") or {}
    if not (state.get("ema_decays") or state.get("ema_sigma_rels")):
        return {"choice": "false", "weights": "model", "criterion": "no EMA", "losses": {}}
    score = HeldOutLoss(
        model,
        objective,
        instantiate(cfg.data.dataset, "data.dataset"),
        items=auto_items(trainer),
        draws=int(trainer.get("ema_auto_draws") or 1),
        seed=int(trainer.get("seed") or 0),
        batch_size=int(trainer.get("batch_size") or 256),
    )
    return choose_weights(ckpt, score, criterion=score.describe() + " (scored when opened)")


def with_job_default(
    run_dir: str | Path, overrides: Sequence[str], key: str, default: str
) -> list[str]:
    """``overrides`` plus ``<key>=<default>`` (a ``configs/<key>/`` option) when neither they
    nor the run's own config choose the job settings of a modality command."""
    chosen = any(o.split("=", 1)[0].lstrip("+~") == key for o in overrides)
    saved = Path(run_dir) / "config.yaml"
    has_node = saved.is_file() and OmegaConf.load(saved).get(key) is not None
    return list(overrides) if chosen or has_node else [f"{key}={default}", *overrides]


def job_dir(root: Path, name: str, settings: Mapping[str, Any]) -> Path:
    """``root/<name>-<hash of settings>``: one output directory per distinct job."""
    digest = hashlib.sha256(json.dumps(json_safe(settings), sort_keys=True).encode())
    return root / f"{name}-{digest.hexdigest()[:8]}"


def run_job_config(run: OpenedRun, key: str, cls: type, given: Any, param: str) -> Any:
    """The job config of a modality command (``polydiff <key> run=<dir>``): ``given`` (the
    function argument ``param``: an instance of ``cls`` or a mapping of its fields) or else the
    composed ``<key>`` node (``<key>=<group option> <key>.field=...``), instantiated."""
    if given is None:
        node = run.cfg.get(key)
        if node is None:
            raise ConfigError(
                f"{run.run_dir}: no {key!r} settings; choose one with '{key}=<option>' "
                f"(configs/{key}/) or pass {param}={cls.__name__}(...)"
            )
        given = instantiate(node, key)
    elif isinstance(given, Mapping):
        given = cls(**given)
    if not isinstance(given, cls):
        raise TypeError(f"{param} must be an {cls.__name__}, got {type(given).__name__}")
    return given


# ---------------------------------------------------------------------------- jobs
def _check_guidance(run: OpenedRun, cond: Mapping | None) -> None:
    g = run.cfg.get("guidance")
    target = g.get("_target_") if g is not None else None
    if target is None:
        scale = g.get("scale", 1.0) if g is not None else 1.0
        if scale not in (None, 1.0):
            raise ConfigError(
                f"guidance.scale={scale} has no effect without a guidance method "
                "(guidance=none); choose one, e.g. guidance=cfg"
            )
    elif target in CONDITIONAL_GUIDANCE and cond is None:
        raise ConfigError(
            f"guidance ({target}) needs a condition to drop, but {run.run_dir} samples "
            "unconditionally (its data config gives no condition); use guidance=none"
        )


def _step_of(checkpoint: Path) -> int | None:
    m = re.search(r"(\d+)$", checkpoint.name)
    return int(m.group(1)) if m else None


def job_settings(run: OpenedRun, block: str) -> dict[str, Any]:
    """Every setting that decides the output of a sample / evaluate job (``block`` is
    ``"sample"`` or ``"evaluate"``), resolved: sampler (method, steps, schedule, options),
    guidance, EMA request and the weights used, seed, n, batch size, checkpoint."""
    job = run.cfg[block]
    sampler = OmegaConf.to_container(run.cfg.sampler, resolve=True)
    return json_safe(
        {
            "sampler": run.sampler.method,
            "steps": run.sampler.steps,
            "schedule": sampler.get("schedule") or "the objective schedule's own grid",
            "options": {**sampler_options(run.sampler.method), **run.sampler.options},
            "guidance": OmegaConf.to_container(run.cfg.get("guidance") or {}, resolve=True),
            "ema": str(run.cfg.sample.get("ema")),
            "weights": run.weights,
            **({"ema_choice": run.ema_choice} if run.ema_choice else {}),
            "seed": int(job.seed),
            "n": int(job.n),
            "batch_size": run.cfg.sample.get("batch_size"),
            "checkpoint": str(run.checkpoint),
            "checkpoint_step": _step_of(run.checkpoint),
            **({"hooks": run.hook_settings} if run.hook_settings else {}),
        }
    )


_SHORT = {"classifier_free_guidance": "cfg"}


def _job_name(settings: Mapping[str, Any]) -> str:
    """``<sampler>-<steps>[-<guidance><scale>]-<weights>-seed<s>-n<n>-step<k>-<hash>``: readable
    parts plus a hash of every setting (options, schedule, rescale...)."""
    parts = [settings["sampler"], str(settings["steps"])]
    g = settings["guidance"]
    if g.get("_target_"):
        fn = str(g["_target_"]).rsplit(".", 1)[-1]
        parts.append(f"{_SHORT.get(fn, fn)}{g.get('scale', 1):g}")
    parts += [
        settings["weights"].replace("ema:", "ema").replace(":", ""),
        f"seed{settings['seed']}",
        f"n{settings['n']}",
        f"step{settings['checkpoint_step']}",
    ]
    digest = hashlib.sha256(
        json.dumps(
            {k: v for k, v in settings.items() if k != "checkpoint"}, sort_keys=True
        ).encode()
    ).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", "-".join(parts)) + f"-{digest}"


def _refuse_existing(path: Path, block: str) -> None:
    if path.exists() and (path.is_file() or any(path.iterdir())):
        raise ConfigError(
            f"{path} exists (a {block} with these settings was written before); "
            f"pass overwrite=true ({block}.overwrite=true) to replace it, or out=<elsewhere>"
        )


def _strict_json(data: Any) -> str:
    return json.dumps(json_safe(data), indent=1, allow_nan=False)


def _draw(run: OpenedRun, n: int, seed: int, batch_size: int | None):
    gen = torch.Generator().manual_seed(seed)
    _check_guidance(run, call_hook(run.hooks, "sample_cond", 1, gen))
    return draw(
        run.denoiser(), run.hooks, run.sample_shape, n, run.sampler, seed=seed,
        batch_size=batch_size,
    )  # fmt: skip


def sample_run(
    run_dir: str | Path, overrides: Sequence[str] = (), out: str | Path | None = None
) -> Path:
    """Sample a run (``cfg.sample``: n, seed, batch_size, ema, out, overwrite).

    Writes ``samples.npz``, the modality's files and ``sample.json`` (every resolved setting)
    into ``out`` (default ``<run>/samples/<name from every setting>``); refuses to replace an
    existing output unless ``sample.overwrite``.
    """
    run = open_run(run_dir, overrides)
    s = run.cfg.sample
    settings = job_settings(run, "sample")
    out_dir = Path(out or s.get("out") or run.run_dir / "samples" / _job_name(settings))
    if not s.get("overwrite", False):
        _refuse_existing(out_dir, "sample")
    data, cond = _draw(run, int(s.n), int(s.seed), s.get("batch_size"))
    files = write_outputs(out_dir, data, cond, run.hooks)
    info = {"run": str(run.run_dir), **settings, "files": files}
    atomic_write_text(out_dir / "sample.json", _strict_json(info))
    return out_dir


def evaluate_run(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    *,
    config_dir: str | Path | None = None,
) -> dict:
    """Sample ``cfg.evaluate.n`` items and compute the modality's metrics; writes
    ``<run>/eval/<name from every setting>.json`` (or ``out`` / ``evaluate.out``), refusing to
    replace one unless ``evaluate.overwrite``, and returns the result (with ``"path"``).

    The hooks get the ``evaluate`` settings (``reference``, ``save_images``...); what they
    compared against and with which features is recorded. No metric is an error saying why.
    """
    run = open_run(run_dir, overrides, config_dir=config_dir)
    e = run.cfg.evaluate
    settings = job_settings(run, "evaluate")
    name = _job_name(settings)
    path = Path(out or e.get("out") or run.run_dir / "eval" / f"{name}.json")
    if not e.get("overwrite", False):
        _refuse_existing(path, "evaluate")
    evaluate_model = getattr(run.hooks, "evaluate_model", None)
    if evaluate_model is not None:  # metrics of the model itself (RL rollouts), not of samples
        found = evaluate_model(run)
    elif getattr(run.hooks, "evaluate", None) is None:
        raise ConfigError(
            f"{run.run_dir}: nothing to evaluate: its data hooks "
            f"({type(run.hooks).__name__ if run.hooks is not None else 'none'}) define no "
            "metrics (data.hooks has no evaluate); use 'polydiff sample' and your own tools"
        )
    else:
        takes_options = "options" in inspect.signature(run.hooks.evaluate).parameters
        for key, default in (("reference", None), ("save_images", False)):
            if not takes_options and e.get(key, default) != default:
                raise ConfigError(
                    f"evaluate.{key}={e.get(key)}: the evaluation of {run.run_dir} "
                    f"({type(run.hooks).__name__}) takes no such setting"
                )
        data, cond = _draw(run, int(e.n), int(e.seed), run.cfg.sample.get("batch_size"))
        options = OmegaConf.to_container(e, resolve=True)
        options["out_dir"] = str(path.with_suffix(""))
        found = call_evaluate(run.hooks, data, cond, options)
    metrics = {k: float(v) for k, v in found.items() if isinstance(v, (int, float))}
    extra = {k: v for k, v in found.items() if not isinstance(v, (int, float))}
    if not metrics:
        why = extra.get("why") or (
            f"{type(run.hooks).__name__}.evaluate returned no metric for this run"
        )
        raise ConfigError(f"{run.run_dir}: no metric to compute: {why}")
    result = {"run": str(run.run_dir), **settings, **extra, "metrics": metrics}
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        result["non_finite"] = bad
    atomic_write_text(path, _strict_json(result))
    result["metrics"] = json_safe(metrics)
    result["path"] = str(path)
    return result


# ---------------------------------------------------------------------------- showing runs
def describe_run(run_dir: str | Path) -> dict[str, Any]:
    """What a run directory holds: its experiment, overrides, checkpoints (step, EMA), last
    logged metrics, and the sample / evaluate outputs written so far with their settings."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir / 'config.yaml'} not found: not a polydiff run directory")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    info: dict[str, Any] = {"run": str(run_dir), "name": cfg.get("name")}
    if (run_dir / "overrides.json").is_file():
        info["overrides"] = json.loads((run_dir / "overrides.json").read_text())["overrides"]
    info["data"] = {
        k: v for k, v in OmegaConf.to_container(cfg.data).items() if not isinstance(v, dict)
    }
    ckpts = []
    for c in (
        sorted((run_dir / "checkpoints").glob("*")) if (run_dir / "checkpoints").is_dir() else []
    ):
        state = json.loads((c / "state.json").read_text()) if (c / "state.json").is_file() else {}
        ckpts.append({"path": c.name, "step": state.get("step"), "ema": state.get("ema_decays")})
    info["checkpoints"] = ckpts
    log = run_dir / "metrics.jsonl"
    if log.is_file() and log.stat().st_size:
        info["last_log"] = json.loads(log.read_text().splitlines()[-1])
    jobs = []
    for f in sorted(run_dir.glob("samples/*/sample.json")) + sorted(run_dir.glob("eval/*.json")):
        d = json.loads(f.read_text())
        jobs.append(
            {
                "path": str(f.relative_to(run_dir)),
                "sampler": d.get("sampler"),
                "guidance": d.get("guidance"),
                "weights": d.get("weights"),
                "seed": d.get("seed"),
                "n": d.get("n"),
                **({"metrics": d["metrics"]} if "metrics" in d else {}),
            }
        )
    info["outputs"] = jobs
    return json_safe(info)
