"""Checkpoints that load without executing code: tensors in safetensors, everything else in JSON.

A checkpoint is a directory ``<root>/step_<N>/`` holding

- ``model.safetensors``           the (unwrapped) model's state dict
- ``ema.safetensors``             every EMA copy, keys ``<decay>/<param>``
- ``optimizer.safetensors``       the optimizer's per-parameter tensors, flattened
- ``rng.safetensors``             torch CPU RNG state and the trainer's generators' states
- ``state.json``                  step, data position, optimizer param groups and scalar state,
                                  LR scheduler state, python/numpy RNG states, the run config
- ``manifest.json``               name and byte size of every file (written last)

The directory is written under a temporary name and renamed into place, so a crash or an
exception mid-write never damages (or replaces) an earlier checkpoint. Loading checks the
manifest first and names the missing or truncated file. Nothing here ever unpickles.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = [
    "CheckpointError",
    "flatten_optimizer_state",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint_files",
    "load_tensors",
    "prune_checkpoints",
    "save_checkpoint_files",
    "unflatten_optimizer_state",
]

_STEP_DIR = re.compile(r"^step_(\d+)$")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, of an unknown format, or unsafe to load."""


# --------------------------------------------------------------------------- tensors I/O
def _contiguous(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors needs contiguous, non-shared CPU tensors
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file (no code execution), naming the file on any failure.

    ``.pt`` / ``.pth`` / ``.bin`` files are read with ``torch.load(weights_only=True)``, which
    refuses pickles that reference anything but plain tensors and containers.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix in {".pt", ".pth", ".bin", ".ckpt"}:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError for anything executable
            raise CheckpointError(
                f"refused to load {path}: not a plain tensor pickle ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''})"
            ) from err
        if not isinstance(obj, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in obj.values()
        ):
            raise CheckpointError(f"{path} does not hold a flat mapping of tensors")
        return dict(obj)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"cannot read {path} as safetensors (truncated or not a safetensors file): {err}"
        ) from err


# --------------------------------------------------------------------------- optimizer flattening
def flatten_optimizer_state(state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into safetensors-able tensors and a JSON-able rest.

    Tensor entries ``state[i][k]`` become ``"state.<i>.<k>"``; scalars stay in the JSON part with
    ``param_groups``.
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    meta = {"param_groups": _jsonable(state_dict["param_groups"]), "scalars": scalars}
    return tensors, meta


def unflatten_optimizer_state(tensors: Mapping[str, torch.Tensor], meta: Mapping) -> dict:
    """Inverse of :func:`flatten_optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, entry in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    groups = [dict(g) for g in meta["param_groups"]]
    for g in groups:  # JSON turned tuples into lists; restore the usual types
        for k in ("betas",):
            if isinstance(g.get(k), list):
                g[k] = tuple(g[k])
    return {"state": state, "param_groups": groups}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint's JSON metadata")


# --------------------------------------------------------------------------- directories
def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary dirs are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``root`` (or None)."""
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def prune_checkpoints(root: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest checkpoints (and stale temporary dirs)."""
    root = Path(root)
    removed = []
    if keep_last > 0:
        for path in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    for tmp in root.glob(".tmp-*"):
        if tmp.is_dir() and str(os.getpid()) not in tmp.name:
            shutil.rmtree(tmp, ignore_errors=True)
    return removed


def save_checkpoint_files(
    root: str | os.PathLike,
    step: int,
    tensor_files: Mapping[str, Mapping[str, torch.Tensor]],
    state: Mapping[str, Any],
) -> Path:
    """Atomically write ``root/step_<step>/`` from named tensor groups and a JSON state.

    ``tensor_files`` maps a file stem (``"model"``) to its tensors. Returns the final path.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        sizes: dict[str, int] = {}
        for stem, tensors in tensor_files.items():
            path = tmp / f"{stem}.safetensors"
            save_file(_contiguous(tensors), str(path), metadata={"format": "polydiff"})
            sizes[path.name] = path.stat().st_size
        state_path = tmp / "state.json"
        state_path.write_text(json.dumps(_jsonable(state), indent=1))
        sizes[state_path.name] = state_path.stat().st_size
        manifest = {"format_version": FORMAT_VERSION, "step": step, "files": sizes}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        for path in tmp.iterdir():  # make the data durable before the rename publishes it
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # re-saving the same step (e.g. final save after a periodic one)
            old = root / f".tmp-old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_checkpoint_files(
    path: str | os.PathLike,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Read a checkpoint directory written by :func:`save_checkpoint_files`.

    Returns ``({stem: tensors}, state)``. Raises :class:`CheckpointError` naming the file that is
    missing or truncated.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path}")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(
            f"{manifest_path} is missing: {path} is not a complete polydiff checkpoint"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{manifest_path} is not valid JSON: {err}") from err
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{manifest_path}: unknown checkpoint format {manifest.get('format_version')!r} "
            f"(this polydiff reads format {FORMAT_VERSION})"
        )
    for name, size in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint file missing: {file}")
        actual = file.stat().st_size
        if actual != size:
            raise CheckpointError(
                f"checkpoint file truncated or modified: {file} has {actual} bytes, "
                f"the manifest says {size}"
            )
    tensors = {
        name[: -len(".safetensors")]: load_tensors(path / name)
        for name in manifest["files"]
        if name.endswith(".safetensors")
    }
    try:
        state = json.loads((path / "state.json").read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path / 'state.json'} is not valid JSON: {err}") from err
    return tensors, state
