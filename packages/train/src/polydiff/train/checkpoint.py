"""Checkpoints that load without executing code: tensors in safetensors, everything else in JSON.

A checkpoint is a directory ``<root>/step_<N>/`` holding

- ``model.safetensors``           the (unwrapped) model's state dict
- ``ema.safetensors``             every EMA copy, keys ``<decay>/<param>``
- ``optimizer.safetensors``       the optimizer's per-parameter tensors, flattened
- ``rng.safetensors``             torch CPU RNG state and the trainer's generators' states
- ``state.json``                  step, data position, optimizer param groups and scalar state,
                                  LR scheduler state, python/numpy RNG states, the run config
- ``manifest.json``               name, byte size and SHA-256 of every file (written last)

The directory is written under a temporary name and renamed into place, so a crash or an
exception mid-write never damages (or replaces) an earlier checkpoint; pruning renames a
checkpoint out of the listed set before deleting it, so a kill mid-delete never leaves a
half-deleted ``step_*`` that is listed as complete. Loading verifies the manifest first (size
and SHA-256 of every file) and names the missing, truncated or modified file. A checkpoint is
only written if every floating tensor in it is finite. Nothing here ever unpickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from polydiff.core.fileio import fsync_dir

__all__ = [
    "CheckpointError",
    "flatten_optimizer_state",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint_files",
    "load_tensors",
    "non_finite_tensors",
    "prune_checkpoints",
    "read_state",
    "save_checkpoint_files",
    "sha256_file",
    "unflatten_optimizer_state",
    "verify_checkpoint",
]

_STEP_DIR = re.compile(r"^step_(\d+)$")
MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 1: sizes only (still read, with a warning); 2: sizes and SHA-256
_READABLE = (1, 2)


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


# --------------------------------------------------------------------------- integrity
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def non_finite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating tensors holding a NaN or an infinity."""
    return [
        k
        for k, v in tensors.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(v.isfinite().all())
    ]


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {path.parent} is not a complete checkpoint")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"cannot read {path} ({what}): {err}") from err
    if not text.strip():
        raise CheckpointError(f"{path} is empty; expected the checkpoint's {what} (JSON)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{path} is not valid JSON (truncated?): {err}; expected the checkpoint's {what}"
        ) from err


def verify_checkpoint(path: str | os.PathLike) -> dict:
    """Check a checkpoint directory against its manifest; returns the manifest.

    Every listed file must exist with the listed size and SHA-256 (format 2). Raises
    :class:`CheckpointError` naming the first file that is missing, truncated or modified.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path}")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(
            f"{manifest_path} is missing: {path} is not a complete polydiff checkpoint"
        )
    manifest = _read_json(manifest_path, "manifest")
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{manifest_path}: expected a JSON object, got {manifest!r:.80}")
    version = manifest.get("format_version")
    if version not in _READABLE:
        raise CheckpointError(
            f"{manifest_path}: unknown checkpoint format {version!r} "
            f"(this polydiff reads formats {list(_READABLE)})"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise CheckpointError(
            f"{manifest_path} lists no files (key 'files' missing or empty): cannot verify {path}"
        )
    if version == 1:
        warnings.warn(
            f"{path} was written before checkpoints carried SHA-256 hashes: only sizes are checked",
            stacklevel=2,
        )
    for name, entry in files.items():
        file = path / name
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise CheckpointError(f"{manifest_path} lists an invalid file name {name!r}")
        if not file.is_file():
            raise CheckpointError(f"checkpoint file missing: {file} (listed in {manifest_path})")
        if version == 1:
            size, digest = entry, None
        elif isinstance(entry, dict):
            size, digest = entry.get("bytes"), entry.get("sha256")
        else:
            raise CheckpointError(
                f"{manifest_path}: entry of {name!r} should be {{'bytes': ..., 'sha256': ...}}, "
                f"got {entry!r:.60}"
            )
        actual = file.stat().st_size
        if actual != size:
            raise CheckpointError(
                f"checkpoint file truncated or modified: {file} has {actual} bytes, "
                f"the manifest says {size}"
            )
        if version >= 2:
            got = sha256_file(file)
            if got != digest:
                raise CheckpointError(
                    f"checkpoint file corrupt or modified: {file} has SHA-256 {got[:16]}..., "
                    f"the manifest says {str(digest)[:16]}..."
                )
    return manifest


def read_state(path: str | os.PathLike) -> dict:
    """The ``state.json`` of a checkpoint (not re-verified), with errors naming the file."""
    state = _read_json(Path(path) / "state.json", "state")
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(
            f"{Path(path) / 'state.json'}: expected a JSON object with a 'step' key"
        )
    return state


# --------------------------------------------------------------------------- directories
def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root`` (those with a manifest), oldest first.

    Temporary directories (being written) and trashed ones (being pruned) are never listed.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _STEP_DIR.match(p.name)) and (p / MANIFEST).is_file()
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``root`` (or None)."""
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def _trash(path: Path) -> None:
    """Rename ``path`` out of the listed set, then delete it (a kill leaves only trash)."""
    trash = path.parent / f".trash-{path.name}-{uuid.uuid4().hex[:8]}"
    os.rename(path, trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def prune_checkpoints(root: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest checkpoints, and leftovers of killed writes."""
    root = Path(root)
    removed = []
    if keep_last > 0:
        for path in list_checkpoints(root)[:-keep_last]:
            _trash(path)
            removed.append(path)
    for tmp in [*root.glob(".tmp-*"), *root.glob(".trash-*")]:
        if tmp.is_dir() and f"-{os.getpid()}-" not in tmp.name:
            shutil.rmtree(tmp, ignore_errors=True)
    for path in root.glob("step_*"):  # incomplete (no manifest): a write or delete was killed
        if path.is_dir() and not (path / MANIFEST).is_file():
            shutil.rmtree(path, ignore_errors=True)
    return removed


def save_checkpoint_files(
    root: str | os.PathLike,
    step: int,
    tensor_files: Mapping[str, Mapping[str, torch.Tensor]],
    state: Mapping[str, Any],
) -> Path:
    """Atomically write ``root/step_<step>/`` from named tensor groups and a JSON state.

    ``tensor_files`` maps a file stem (``"model"``) to its tensors. Returns the final path.
    Raises :class:`CheckpointError` (and writes nothing) if a floating tensor is not finite.
    """
    root = Path(root)
    for stem in ("model", "ema"):
        bad = non_finite_tensors(tensor_files.get(stem, {}))
        if bad:
            raise CheckpointError(
                f"refusing to write checkpoint step {step}: {stem} tensor {bad[0]!r} "
                f"(and {len(bad) - 1} more) is not finite"
            )
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files: dict[str, dict[str, Any]] = {}
        for stem, tensors in tensor_files.items():
            path = tmp / f"{stem}.safetensors"
            save_file(_contiguous(tensors), str(path), metadata={"format": "polydiff"})
        (tmp / "state.json").write_text(json.dumps(_jsonable(state), indent=1))
        for path in sorted(tmp.iterdir()):  # make the data durable before the rename publishes it
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
            files[path.name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        manifest = {"format_version": FORMAT_VERSION, "step": step, "files": files}
        with open(tmp / MANIFEST, "w") as fh:
            fh.write(json.dumps(manifest, indent=1))
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. final save after a periodic one)
            old = root / f".trash-{final.name}-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            try:
                os.rename(tmp, final)
            except BaseException:
                os.rename(old, final)  # put the previous copy back under its name
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_checkpoint_files(
    path: str | os.PathLike,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Read a checkpoint directory written by :func:`save_checkpoint_files`.

    Returns ``({stem: tensors}, state)``. Verifies the manifest (sizes and SHA-256) first and
    raises :class:`CheckpointError` naming the file that is missing, truncated or modified.
    """
    path = Path(path)
    manifest = verify_checkpoint(path)
    tensors = {
        name[: -len(".safetensors")]: load_tensors(path / name)
        for name in manifest["files"]
        if name.endswith(".safetensors")
    }
    return tensors, read_state(path)
