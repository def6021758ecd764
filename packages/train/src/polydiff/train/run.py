"""Runs built from a composed config: train one, reopen one, sample and evaluate it.

A run directory ``<runs_root>/<name>/<timestamp>-<hash of the config delta>/`` holds
``config.yaml`` (resolved), ``overrides.json`` (what was asked for), ``checkpoints/``,
``metrics.jsonl`` and ``samples/``. Everything is built by ``_target_`` (hydra instantiate).

Config layout expected (see ``configs/config.yaml``): ``data.dataset`` and optional
``data.hooks`` (``polydiff.train.hooks``), ``model``, ``objective``, ``sampler`` (``method``,
``steps``, ``schedule`` partial, ``options``), ``guidance`` (``scale`` and optional
``_target_`` partial ``fn(denoiser) -> denoiser``), ``trainer`` (the ``TrainerConfig`` fields plus
``optimizer``, a ``_partial_`` optimizer).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .checkpoint import CheckpointError, latest_checkpoint, load_tensors
from .config import ConfigError, compose, config_delta, merge_overrides
from .ema import decay_key
from .hooks import call_hook, write_samples_npz
from .sampling import SamplerSpec, generate, with_objective_grid
from .tracking import config_delta_hash, make_run_dir

__all__ = [
    "OpenedRun",
    "build_sampler",
    "build_trainer_config",
    "evaluate_run",
    "instantiate",
    "open_run",
    "sample_run",
    "train",
]


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
    """``SamplerSpec`` from ``cfg.sampler``."""
    from polydiff.core.samplers import SAMPLERS

    method = node["method"]
    if method not in SAMPLERS:
        raise ConfigError(
            f"sampler.method={method!r} is unknown; valid choices: {sorted(SAMPLERS)}"
        )
    options = node.get("options") or {}
    if isinstance(options, DictConfig):
        options = OmegaConf.to_container(options, resolve=True)
    return SamplerSpec(
        method=method,
        steps=int(node["steps"]),
        schedule=instantiate(node.get("schedule"), "sampler.schedule"),
        options=dict(options),
    )


def _experiment_signature(cfg: DictConfig, config_dir: str | Path | None) -> tuple[str, dict]:
    """Hash of what differs from the default config (audiocraft's experiment signature)."""
    delta = config_delta(cfg, compose([], config_dir))
    return config_delta_hash(delta), delta


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
    trainer_cfg = build_trainer_config(cfg.trainer)
    state = PartialState(cpu=trainer_cfg.cpu)
    run_dir = run_dir or cfg.get("run_dir")
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
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        (run_dir / "overrides.json").write_text(
            json.dumps({"overrides": list(overrides), "delta": delta}, indent=1, default=str)
        )
    box = [str(run_dir)]
    if state.num_processes > 1:
        broadcast_object_list(box)
    run_dir = Path(box[0])
    if trainer_cfg.resume is None and latest_checkpoint(run_dir / "checkpoints") is not None:
        trainer_cfg.resume = "auto"

    torch.manual_seed(trainer_cfg.seed)
    model = instantiate(cfg.model, "model")
    objective = instantiate(cfg.objective, "objective")
    dataset = instantiate(cfg.data.dataset, "data.dataset")
    hooks = instantiate(cfg.data.get("hooks"), "data.hooks")
    optimizer = instantiate(cfg.trainer.optimizer, "trainer.optimizer")
    trainer = Trainer(
        model,
        objective,
        dataset,
        optimizer,
        trainer_cfg,
        run_dir=run_dir,
        sampler=build_sampler(cfg.sampler),
        hooks=hooks,
        run_config=OmegaConf.to_container(cfg, resolve=True),
    )
    if trainer.is_main:
        print(f"polydiff: run directory {run_dir}", flush=True)
    trainer.fit()
    return run_dir


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

    def denoiser(self, guidance: bool = True):
        """The run's denoiser, wrapped by ``cfg.guidance`` when it has a ``_target_``."""
        den = self.objective.denoiser(self.model)
        g = self.cfg.get("guidance")
        if guidance and g is not None and g.get("_target_"):
            den = instantiate(g, "guidance")(den)
        return den


def open_run(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    *,
    ema: bool | float = True,
    checkpoint: str | Path | None = None,
    config_dir: str | Path | None = None,
) -> OpenedRun:
    """Rebuild a run: its model/objective/data from the saved resolved config, and sampler /
    guidance / sample settings from the configs re-composed with the run's overrides plus
    ``overrides`` (so ``sampler=dpmpp_2m guidance.scale=3`` work on any run)."""
    run_dir = Path(run_dir)
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise CheckpointError(f"{saved_path} not found: {run_dir} is not a polydiff run directory")
    saved = OmegaConf.load(saved_path)
    old = (
        json.loads((run_dir / "overrides.json").read_text())["overrides"]
        if (run_dir / "overrides.json").is_file()
        else []
    )
    cfg = compose(merge_overrides(old, overrides), config_dir)
    for key in ("data", "model", "objective"):  # what was trained is what the run says
        cfg[key] = saved[key]
    ckpt = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise CheckpointError(f"no checkpoint in {run_dir / 'checkpoints'}")
    model = instantiate(cfg.model, "model")
    state = json.loads((ckpt / "state.json").read_text()) if (ckpt / "state.json").is_file() else {}
    decays = state.get("ema_decays", [])
    if ema and decays:
        key = decays[0] if ema is True else decay_key(float(ema))
        tensors = load_tensors(ckpt / "ema.safetensors")
        prefix = f"{key}/module."
        weights = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not weights:
            raise CheckpointError(f"{ckpt / 'ema.safetensors'} has no EMA {key} (has {decays})")
        which = f"ema:{key}"
    else:
        weights, which = load_tensors(ckpt / "model.safetensors"), "model"
    model.load_state_dict(weights)
    model.eval()
    shape = tuple(state.get("sample_shape") or ())
    objective = instantiate(cfg.objective, "objective")
    return OpenedRun(
        run_dir=run_dir,
        cfg=cfg,
        model=model,
        objective=objective,
        hooks=instantiate(cfg.data.get("hooks"), "data.hooks"),
        sampler=with_objective_grid(build_sampler(cfg.sampler), objective),
        sample_shape=shape,
        checkpoint=ckpt,
        weights=which,
    )


def _draw(run: OpenedRun, n: int, seed: int, batch_size: int | None):
    gen = torch.Generator().manual_seed(seed)
    cond = call_hook(run.hooks, "sample_cond", n, gen)
    x = generate(
        run.denoiser(),
        run.sample_shape,
        n,
        run.sampler,
        cond=cond,
        generator=gen,
        batch_size=batch_size,
    )
    return call_hook(run.hooks, "to_data", x), cond


def sample_run(
    run_dir: str | Path, overrides: Sequence[str] = (), out: str | Path | None = None
) -> Path:
    """Sample a run (``cfg.sample``: n, seed, batch_size, ema).

    Writes ``samples.npz``, the modality's files and ``sample.json`` into ``out`` (default
    ``<run>/samples/<sampler>-<steps>``).
    """
    run = _open_with_sample_cfg(run_dir, overrides)
    s = run.cfg.sample
    data, cond = _draw(run, int(s.n), int(s.seed), s.get("batch_size"))
    name = f"{run.sampler.method}-{run.sampler.steps}"
    scale = run.cfg.get("guidance", {}).get("scale")
    if scale is not None and run.cfg.guidance.get("_target_"):
        name += f"-cfg{scale:g}"
    out_dir = Path(out or s.get("out") or run.run_dir / "samples" / name)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_samples_npz(out_dir / "samples.npz", data, cond, call_hook(run.hooks, "extra_npz", cond))
    files = call_hook(run.hooks, "write", data, cond, out_dir) or []
    info = {
        "run": str(run.run_dir),
        "checkpoint": str(run.checkpoint),
        "weights": run.weights,
        "sampler": run.sampler.method,
        "steps": run.sampler.steps,
        "n": int(s.n),
        "seed": int(s.seed),
        "guidance": OmegaConf.to_container(run.cfg.get("guidance") or {}),
        "files": ["samples.npz", *[Path(f).name for f in files]],
    }
    (out_dir / "sample.json").write_text(json.dumps(info, indent=1, default=str))
    return out_dir


def evaluate_run(
    run_dir: str | Path, overrides: Sequence[str] = (), out: str | Path | None = None
) -> dict:
    """Sample ``cfg.evaluate.n`` items and compute the modality's metrics; writes
    ``<run>/eval/<sampler>-<steps>.json`` (or ``out``) and returns the metrics."""
    run = _open_with_sample_cfg(run_dir, overrides)
    e = run.cfg.evaluate
    data, cond = _draw(run, int(e.n), int(e.seed), run.cfg.sample.get("batch_size"))
    metrics = {k: float(v) for k, v in call_hook(run.hooks, "evaluate", data, cond).items()}
    result = {
        "run": str(run.run_dir),
        "checkpoint": str(run.checkpoint),
        "weights": run.weights,
        "sampler": run.sampler.method,
        "steps": run.sampler.steps,
        "n": int(e.n),
        "seed": int(e.seed),
        "metrics": metrics,
    }
    path = (
        Path(out)
        if out
        else run.run_dir / "eval" / f"{run.sampler.method}-{run.sampler.steps}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    result["path"] = str(path)
    return result


def _open_with_sample_cfg(run_dir: str | Path, overrides: Sequence[str]) -> OpenedRun:
    ema = True
    for o in overrides:
        if o.startswith("sample.ema="):
            v = o.split("=", 1)[1].lower()
            ema = (
                False
                if v in ("false", "none", "null", "0")
                else (True if v == "true" else float(v))
            )
    return open_run(run_dir, overrides, ema=ema)
