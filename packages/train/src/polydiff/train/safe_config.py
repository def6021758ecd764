"""Configs as data: check every ``_target_`` of a config before anything is built.

A run directory (``config.yaml``, ``overrides.json``) is something people share, so opening one
must never run code the run's author chose. Hydra's ``instantiate`` imports and calls whatever
``_target_`` names (``builtins.open`` truncates a file, ``torch.load`` with
``weights_only: false`` unpickles, ``numpy.load`` with ``allow_pickle``, ``os.system``...).
:func:`check_config` walks the whole config first (nested nodes, lists, ``_args_``,
``_partial_`` nodes) and accepts a target only if

1. its dotted path starts with an allowed top-level package (``polydiff``, ``polydiff_apps``,
   ``torch``, ``functools``): nothing else is even imported;
2. it resolves to a class or function defined in ``polydiff.*`` / ``polydiff_apps.*`` (checked
   on the resolved object, so ``polydiff.x.os.system`` is refused), outside the modules and
   names that write or delete files or start jobs (:data:`DENIED_MODULES`,
   :data:`DENIED_PREFIXES`); or it is one of the explicit external constructors in
   :data:`ALLOWED_EXTERNAL` (compared by identity);
3. no string holds an interpolation (``${...}``): a saved config is already resolved.

The first refusal raises :class:`UnsafeConfigError` naming the key path, the target and where
the config came from; nothing has been built at that point.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig

from .config import ConfigError

__all__ = [
    "ALLOWED_EXTERNAL",
    "TRUST_ENV",
    "UnsafeConfigError",
    "check_config",
    "is_trusted_config_dir",
    "safe_instantiate",
]

TRUST_ENV = "POLYDIFF_TRUST_CONFIGS"
ALLOWED_NAMESPACES = ("polydiff", "polydiff_apps")
_IMPORTABLE = (*ALLOWED_NAMESPACES, "torch", "functools")

# constructors outside polydiff that configs may name (resolved and compared by identity)
ALLOWED_EXTERNAL = (
    "functools.partial",
    "torch.optim.Adam",
    "torch.optim.AdamW",
    "torch.optim.SGD",
    "torch.optim.RAdam",
    "torch.optim.NAdam",
    "torch.optim.Adamax",
    "torch.optim.Adagrad",
    "torch.optim.RMSprop",
    "torch.optim.Adafactor",
    "torch.nn.Identity",
    "torch.nn.Linear",
    "torch.nn.LayerNorm",
    "torch.nn.GroupNorm",
    "torch.nn.Dropout",
    "torch.nn.SiLU",
    "torch.nn.GELU",
    "torch.nn.ReLU",
    "torch.nn.Mish",
    "torch.nn.Tanh",
    "torch.nn.Sigmoid",
)

# polydiff code that writes, deletes or launches: never a config target
DENIED_MODULES = (
    "polydiff.core.fileio",
    "polydiff.train.checkpoint",
    "polydiff.train.run",
    "polydiff.train.safe_config",
    "polydiff.train.config",
    "polydiff_apps.cli",
)
DENIED_PREFIXES = ("save", "write", "atomic", "export", "remove", "delete", "unlink", "rmtree")


class UnsafeConfigError(ConfigError):
    """A config names a ``_target_`` outside the allow-list (nothing was built)."""


def _walk(node: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    """``(key path, key, value)`` of every entry, depth first."""
    if isinstance(node, (DictConfig, Mapping)):
        items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else node.items()
        for k, v in items:
            sub = f"{path}.{k}" if path else str(k)
            yield sub, k, v
            yield from _walk(v, sub)
    elif isinstance(node, (ListConfig, Sequence)) and not isinstance(node, (str, bytes)):
        for i, v in enumerate(node):
            sub = f"{path}[{i}]"
            yield sub, i, v
            yield from _walk(v, sub)


def _external() -> dict[int, str]:
    from hydra._internal.utils import _locate

    out = {}
    for name in ALLOWED_EXTERNAL:
        try:
            out[id(_locate(name))] = name
        except (ImportError, AttributeError):  # e.g. an optimizer this torch does not have
            continue
    return out


def _why_refused(target: Any) -> str | None:
    """None if ``target`` may be built, else the reason."""
    from hydra._internal.utils import _locate

    if not isinstance(target, str) or not target or target.strip() != target:
        return "a target must be a dotted name such as polydiff.nn.ResidualMLP"
    if target.split(".")[0] not in _IMPORTABLE:
        return f"only targets in {ALLOWED_NAMESPACES} or the allow-list are built"
    try:
        obj = _locate(target)
    except Exception as err:  # ImportError, AttributeError, ...
        return f"it cannot be located ({type(err).__name__})"
    if id(obj) in _external():
        return None
    if callable(obj) and hasattr(obj, "__wrapped__"):  # functools.lru_cache / wraps
        obj = inspect.unwrap(obj)
    if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj)):
        return f"it is a {type(obj).__name__}, not a polydiff class or function"
    module = getattr(obj, "__module__", None) or ""
    if module.split(".")[0] not in ALLOWED_NAMESPACES:
        return f"it resolves to {module}.{getattr(obj, '__qualname__', '?')}, outside polydiff"
    if any(module == m or module.startswith(m + ".") for m in DENIED_MODULES):
        return f"{module} writes files or starts jobs"
    name = getattr(obj, "__name__", "").lower()
    if any(name.startswith(p) for p in DENIED_PREFIXES):
        return f"{name} writes or deletes files"
    return None


def check_config(cfg: Any, source: str | os.PathLike, *, root: str = "") -> None:
    """Refuse ``cfg`` (a DictConfig or plain mapping) if any ``_target_`` is not allowed.

    Walks the whole tree before anything is built; raises :class:`UnsafeConfigError` naming the
    key path, the target, the reason and ``source`` (the file or run it came from).
    """
    for path, key, value in _walk(cfg, root):
        if isinstance(value, str) and "${" in value:
            raise UnsafeConfigError(
                f"{source}: {path} holds an interpolation {value!r:.80}; a saved config must be "
                "resolved (interpolations can read the environment or call resolvers)"
            )
        if key == "_target_":
            reason = _why_refused(value)
            if reason is not None:
                raise UnsafeConfigError(
                    f"{source}: refused to build {path}={value!r:.100}: {reason}. Nothing was "
                    f"built (allowed: polydiff.* and {len(ALLOWED_EXTERNAL)} listed constructors)"
                )


def safe_instantiate(node: Any, what: str, source: str | os.PathLike, **kwargs: Any) -> Any:
    """:func:`check_config` on ``node`` (and ``kwargs``), then ``hydra.utils.instantiate``."""
    from hydra.utils import instantiate

    if node is None:
        return None
    check_config(node, source, root=what)
    check_config(kwargs, source, root=what)
    try:
        return instantiate(node, **kwargs)
    except Exception as err:
        target = node.get("_target_") if isinstance(node, (Mapping, DictConfig)) else None
        raise ConfigError(f"cannot build '{what}' (_target_: {target}): {err}") from err


def is_trusted_config_dir(config_dir: str | os.PathLike | None) -> bool:
    """True for the repository's own ``configs/``, or when the user sets
    ``$POLYDIFF_TRUST_CONFIGS=1`` (the explicit trust flag for configs from elsewhere)."""
    if os.environ.get(TRUST_ENV, "") in ("1", "true", "yes"):
        return True
    if config_dir is None:
        from .config import find_config_dir

        config_dir = find_config_dir()  # $POLYDIFF_CONFIGS or the repository's configs
    repo = Path(__file__).resolve().parents[5] / "configs"
    try:
        return Path(config_dir).resolve() == repo.resolve()
    except OSError:
        return False
