"""Hydra glue: find ``configs/``, compose with helpful errors, hash the config delta.

Configs are composed with hydra's compose API (no ``@hydra.main``, no working-dir changes), so
the same code serves the ``polydiff`` command, tests and notebooks::

    cfg = compose(["experiment=toy/gmm", "trainer.max_steps=100"])

Two things happen besides plain composition:

- every sampler of ``polydiff.core.samplers.SAMPLERS`` is a ``sampler=<name>`` choice, generated
  from the registry (:func:`sampler_node`: ``method``, ``steps``, ``schedule`` and each keyword
  option of the function with its default, as plain keys: ``sampler.eta=0.5``) unless
  ``configs/sampler/<name>.yaml`` exists; a sampler registered later is picked up automatically;
- a data node may name the group options it pairs with (``pairs_with: {model: image_unet}``),
  used unless the command line or an experiment chooses;
- a data node with a ``describe`` node (``_target_`` returning a mapping) has its ``auto`` values
  read from the data itself (``data=image_folder data.root=<dir>``: channels, size, classes...)
  before interpolations resolve, so the model follows; the describing function raises naming
  both values when an explicit override disagrees with the data.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict

__all__ = [
    "ConfigError",
    "compose",
    "config_delta",
    "describe_data",
    "find_config_dir",
    "flatten",
    "json_safe",
    "merge_overrides",
    "register_sampler_configs",
    "sampler_node",
    "sampler_options",
]

ENV_VAR = "POLYDIFF_CONFIGS"
# keys that do not change what is trained (left out of the run signature)
NON_SEMANTIC = (
    "run_dir",
    "runs_root",
    "sample",
    "evaluate",
    "edit",
    "adapt",
    "trainer.progress",
    "trainer.resume",
    "trainer.log_every",
    "trainer.ckpt_every",
    "trainer.keep_last",
    "trainer.sample_every",
    "trainer.sample_n",
    "trainer.tensorboard",
    "trainer.num_workers",
)


class ConfigError(ValueError):
    """A config cannot be composed or built; the message names the key and the valid choices."""


def find_config_dir(start: str | os.PathLike | None = None) -> Path:
    """``$POLYDIFF_CONFIGS``, else the nearest ``configs/config.yaml`` above ``start`` (or the
    working directory), else the repository holding this file."""
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser().resolve()
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"${ENV_VAR}={env}: no config.yaml there")
        return path
    here = Path(start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "configs" / "config.yaml").is_file():
            return d / "configs"
    repo = Path(__file__).resolve().parents[5] / "configs"
    if (repo / "config.yaml").is_file():
        return repo
    raise ConfigError(
        f"cannot find the polydiff configs: set ${ENV_VAR} or run inside the repository "
        f"(looked above {here} and at {repo})"
    )


def _override_key(override: str) -> str:
    key = override.split("=", 1)[0].lstrip("+~")
    return key


def check_override_grammar(overrides: Sequence[str]) -> None:
    """Parse every override with hydra's grammar first, so that a syntax error is one line
    naming the override (hydra's own message names neither it nor its key)."""
    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_override(o)
        except HydraException as err:
            lines = [
                ln.strip()
                for ln in str(err).splitlines()
                if ln.strip() and not ln.startswith(("See https", "Error parsing override"))
            ]
            detail = lines[0] if lines else type(err).__name__
            raise ConfigError(
                f"override {o!r} (key {_override_key(o)!r}) is not valid override syntax: "
                f"{detail}; expected key=value, e.g. trainer.max_steps=1000, a list as [1,2], "
                "and quotes around a value holding spaces, '=' or brackets (key='a=b')"
            ) from None


def merge_overrides(*groups: Iterable[str]) -> list[str]:
    """Concatenate override lists, later ones replacing earlier ones with the same key."""
    merged: dict[str, str] = {}
    for group in groups:
        for o in group:
            key = _override_key(o)
            merged.pop(key, None)
            merged[key] = o
    return list(merged.values())


def _group_options(config_dir: Path, group: str) -> list[str]:
    base = config_dir / group
    found = {str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.yaml")}
    if group == "sampler":
        from polydiff.core.samplers import SAMPLERS

        found |= set(SAMPLERS)
    return sorted(found)


def _explain(config_dir: Path, overrides: Sequence[str], err: Exception) -> str:
    msg = str(err).strip()
    # a group choice that does not exist: hydra lists options; add a close match
    m = re.search(r"Could not find '([^']+)'", msg) or re.search(
        r"In '[^']*': Could not find '([^']+)'", msg
    )
    if m:
        missing = m.group(1)
        groups = sorted((p.name for p in config_dir.iterdir() if p.is_dir()), key=len, reverse=True)
        group = next((g for g in groups if missing.startswith(g + "/")), None)
        if group is not None:
            choice = missing[len(group) + 1 :]
            options = _group_options(config_dir, group)
            close = difflib.get_close_matches(choice, options, 1)
            hint = f"; did you mean '{group}={close[0]}'?" if close else ""
            return f"no config '{choice}' in group '{group}'. Valid choices: {options}{hint}"
    # an unknown key: list the valid keys at that level
    m = re.search(r"Could not override '([^']+)'", msg) or re.search(r"full_key: (\S+)", msg)
    if m:
        key = m.group(1)
        parent = key.rpartition(".")[0]
        bad = [o for o in overrides if _override_key(o) == key or _override_key(o).startswith(key)]
        rest = [o for o in overrides if o not in bad]
        try:
            cfg = _compose(config_dir, rest)
            node = OmegaConf.select(cfg, parent) if parent else cfg
            valid = sorted(node.keys()) if isinstance(node, DictConfig) else []
        except Exception:
            valid = []
        close = difflib.get_close_matches(key.rpartition(".")[2], valid, 1)
        hint = f"; did you mean '{parent + '.' if parent else ''}{close[0]}'?" if close else ""
        where = f"'{parent}'" if parent else "the top level"
        return (
            f"unknown config key '{key}' (from {bad or 'the config'}). "
            f"Valid keys under {where}: {valid}{hint} (use '+{key}=...' to add a new key)"
        )
    return msg


# keyword arguments of a sampler that are not options a config can set
_NOT_OPTIONS = ("cond", "generator", "callback", "info")
SAMPLER_KEYS = ("method", "steps", "schedule")
DEFAULT_STEPS = 32


def sampler_options(method: str) -> dict[str, Any]:
    """The options of a registered sampler with their defaults (its keyword-only arguments)."""
    from polydiff.core.samplers import SAMPLERS

    params = inspect.signature(SAMPLERS[method]).parameters.values()
    out = {}
    for p in params:
        if p.kind is p.KEYWORD_ONLY and p.name not in _NOT_OPTIONS:
            d = p.default
            if d is inspect.Parameter.empty:
                continue
            out[p.name] = list(d) if isinstance(d, tuple) else d
    return out


def sampler_node(method: str) -> dict[str, Any]:
    """The generated ``sampler=<method>`` config: ``method``, ``steps`` (32), ``schedule`` (null:
    the objective schedule's own grid) and every option of the function with its default."""
    return {"method": method, "steps": DEFAULT_STEPS, "schedule": None, **sampler_options(method)}


def register_sampler_configs(config_dir: Path) -> None:
    """Make every registered sampler a ``sampler=<name>`` choice (a file of that name wins)."""
    from hydra.core.config_store import ConfigStore

    from polydiff.core.samplers import SAMPLERS

    store = ConfigStore.instance()
    stored = store.repo.setdefault("sampler", {})
    for name in SAMPLERS:
        if (config_dir / "sampler" / f"{name}.yaml").is_file():
            stored.pop(f"{name}.yaml", None)  # the file is the choice (no schema matching)
        elif f"{name}.yaml" not in stored:
            store.store(group="sampler", name=name, node=sampler_node(name))


def _compose(config_dir: Path, overrides: Sequence[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_sampler_configs(config_dir)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides))


AUTO = "auto"


def describe_data(cfg: DictConfig) -> dict[str, Any]:
    """Fill the ``auto`` values of ``cfg.data`` from its ``describe`` node (in place).

    ``data.describe`` builds (``_target_``) a mapping of facts read from the data (channels,
    image size, classes, captions, normalisation...), given the declared values so that it can
    refuse a mismatch naming both. Returns the facts; ``{}`` when the data has no ``describe``.
    """
    data = cfg.get("data")
    node = data.get("describe") if isinstance(data, DictConfig) else None
    if node is None:
        return {}
    from hydra.utils import instantiate as hydra_instantiate

    missing = [k for k in data if k != "describe" and OmegaConf.is_missing(data, k)]
    if missing:
        raise ConfigError(
            f"data.{missing[0]} is required by this data config (e.g. "
            f"'polydiff train data=<name> data.{missing[0]}=<path>')"
        )
    try:
        facts = dict(hydra_instantiate(node))
    except Exception as err:  # the describing function names the file / value
        cause = err.__cause__ or err
        raise ConfigError(f"data: {cause}") from err
    with open_dict(data):
        for key, value in facts.items():
            data[key] = value
    left = [k for k in data if k != "describe" and not OmegaConf.is_missing(data, k)]
    auto = [k for k in left if OmegaConf.select(data, k, throw_on_resolution_failure=False) == AUTO]
    if auto:
        raise ConfigError(f"data: {auto} left 'auto' by {node.get('_target_')}")
    return facts


def _paired_groups(cfg: DictConfig, overrides: Sequence[str]) -> list[str]:
    """Group choices a data config pairs with (``pairs_with: {model: image_unet}``), for the
    groups neither the command line nor an experiment chose."""
    data = cfg.get("data")
    pairs = data.get("pairs_with") if isinstance(data, DictConfig) else None
    if not pairs:
        return []
    chosen = {_override_key(o) for o in overrides if "=" in o}
    if "experiment" in chosen:
        return []
    return [f"{g}={c}" for g, c in pairs.items() if g not in chosen]


def compose(
    overrides: Sequence[str] = (),
    config_dir: str | os.PathLike | None = None,
    *,
    describe: bool = True,
    resolve: bool = True,
) -> DictConfig:
    """Compose ``configs/config.yaml`` with hydra ``overrides``; resolves interpolations
    (unless ``resolve=False``: the caller reads an interpolation and resolves itself).

    With ``describe`` (the default) a data node's ``auto`` values are read from the data
    first (:func:`describe_data`); reopening a trained run passes ``False`` (the run's saved
    config already holds them). Raises :class:`ConfigError` naming the bad key or group and
    the valid choices.
    """
    config_dir = Path(config_dir) if config_dir is not None else find_config_dir()
    bad = [o for o in overrides if "=" not in o and not o.startswith("~")]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad}")
    check_override_grammar(overrides)
    try:
        paired = []
        if any(_override_key(o) == "data" for o in overrides):
            choices = [o for o in overrides if "=" in o and "." not in _override_key(o)]
            paired = _paired_groups(_compose(config_dir, choices), overrides)
        # e.g. data=image_folder brings model=image_unet unless one was chosen
        cfg = _compose(config_dir, [*paired, *overrides])
        if describe:
            describe_data(cfg)
        if resolve:
            OmegaConf.resolve(cfg)
    except Exception as err:  # hydra's own exceptions: rephrase with the valid choices
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(_explain(config_dir, overrides, err)) from err
    return cfg


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats made strict-JSON (NaN -> None, inf -> "inf"/"-inf") and
    tuples / paths turned into lists / strings, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": leaf}`` of a nested mapping (lists are leaves)."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    out: dict[str, Any] = {}
    if isinstance(cfg, Mapping):
        for k, v in cfg.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, Mapping) and v:
                out.update(flatten(v, key))
            else:
                out[key] = v
    return out


def config_delta(
    cfg: DictConfig, base: DictConfig, ignore: Iterable[str] = NON_SEMANTIC
) -> dict[str, Any]:
    """Keys whose values differ between ``cfg`` and ``base`` (the config without overrides)."""
    a, b = flatten(cfg), flatten(base)
    ignore = tuple(ignore)

    def kept(k: str) -> bool:
        return not any(k == i or k.startswith(i + ".") for i in ignore)

    return {
        k: a.get(k, "<absent>")
        for k in sorted(set(a) | set(b))
        if kept(k) and a.get(k, "<absent>") != b.get(k, "<absent>")
    }
