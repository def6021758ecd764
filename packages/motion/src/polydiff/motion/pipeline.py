"""Generation and editing of motions through the core (MDM sec. 4.3: editing as inpainting).

- :func:`edit_mask`: which features of a clip are kept for a task (True = kept):
  ``inbetween`` (the first and last quarter of the frames), ``continuation`` (the first half),
  ``upper_body`` (keep the lower body: root features, legs' positions / rotations / velocities,
  foot contacts; the upper body is generated), ``trajectory`` (keep the root channels: yaw
  velocity, xz velocity, height).
- :func:`edit`: the run's (guided) denoiser through :func:`polydiff.core.editing.inpaint`
  (replacement, optionally RePaint resampling); kept features are reproduced exactly.
- :func:`edit_run`: ``polydiff motion-edit run=<dir> edit.task=upper_body edit.n=8`` on held-out
  motions of the run's data, writing the edited and source motions (NPZ, GIF, BVH); defaults
  from the run's ``data.hooks.edit`` (``motion/edit_inbetween``).
- :func:`obj_run`: ``polydiff motion-obj run=<dir>``: OBJ meshes per frame of a sampled motion.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polydiff.core.editing import inpaint
from polydiff.core.fileio import atomic_write_text
from polydiff.train.config import ConfigError
from polydiff.train.run import OpenedRun, open_run

from .features import FEATURE_DIM, SLICES
from .io import export_obj, save_motion_files
from .skeleton import LOWER_BODY_JOINTS, NUM_JOINTS

__all__ = ["EDIT_TASKS", "edit", "edit_mask", "edit_run", "obj_run"]

EDIT_TASKS = ("inbetween", "continuation", "upper_body", "trajectory")


def _joint_channels(joints: Sequence[int]) -> list[int]:
    """Feature channels of ``joints`` (ric and rot6d exclude the root, local_vel includes it)."""
    out = []
    for j in joints:
        if j > 0:
            out += list(range(SLICES["ric"].start + 3 * (j - 1), SLICES["ric"].start + 3 * j))
            out += list(range(SLICES["rot6d"].start + 6 * (j - 1), SLICES["rot6d"].start + 6 * j))
        out += list(range(SLICES["local_vel"].start + 3 * j, SLICES["local_vel"].start + 3 * j + 3))
    return out


def edit_mask(
    task: str, lengths: Sequence[int], frames: int, dim: int = FEATURE_DIM
) -> torch.Tensor:
    """Bool mask (N, frames, dim), True = kept, for clips of the given lengths."""
    if task not in EDIT_TASKS:
        raise ValueError(f"unknown edit task {task!r}; valid: {list(EDIT_TASKS)}")
    if task in ("upper_body", "trajectory") and dim != FEATURE_DIM:
        raise ValueError(
            f"edit task {task!r} needs the {FEATURE_DIM}-d HumanML3D features, got {dim}"
        )
    mask = torch.zeros(len(lengths), frames, dim, dtype=torch.bool)
    for i, n in enumerate(lengths):
        n = int(n)
        if task == "inbetween":
            q = max(n // 4, 1)
            mask[i, :q] = True
            mask[i, n - q : n] = True
        elif task == "continuation":
            mask[i, : max(n // 2, 1)] = True
        elif task == "upper_body":
            chans = [
                0,
                1,
                2,
                3,
                *_joint_channels(LOWER_BODY_JOINTS),
                *range(SLICES["contacts"].start, dim),
            ]
            mask[i, :n, chans] = True
        else:  # trajectory
            mask[i, :n, :4] = True
        mask[i, n:] = True  # padding is "known" (zeros): nothing to generate there
    assert NUM_JOINTS == 22
    return mask


@torch.no_grad()
def edit(
    run: OpenedRun,
    known: torch.Tensor,
    mask: torch.Tensor,
    cond: dict[str, torch.Tensor] | None,
    *,
    seed: int = 0,
    resample: int = 1,
    jump_length: int = 1,
) -> torch.Tensor:
    """Data-space features (N, T, D) with ``known[mask]`` kept and the rest sampled by the
    run's denoiser (with its guidance) under ``cond``."""
    norm = run.hooks.data.normalizer
    known_n = norm.normalize(known.float())
    sigmas = run.sampler.sigmas().to(torch.float32)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(known.shape, generator=gen) * sigmas[0]
    out = inpaint(
        run.denoiser(),
        x,
        sigmas,
        known_n,
        mask,
        cond=cond,
        generator=gen,
        resample=resample,
        jump_length=jump_length,
    )
    out = torch.where(mask, known_n, out)  # exact in model space
    return norm.denormalize(out)


def _split_overrides(
    overrides: Sequence[str], prefix: str = "edit."
) -> tuple[dict[str, str], list[str]]:
    """``prefix``-keys (``edit.task=x`` -> ``{"task": "x"}``) and the other overrides."""
    opts, rest = {}, []
    for o in overrides:
        if o.startswith(prefix):
            key, _, value = o[len(prefix) :].partition("=")
            opts[key] = value
        else:
            rest.append(o)
    return opts, rest


def edit_run(
    run_dir: str | Path, overrides: Sequence[str] = (), out: str | Path | None = None
) -> dict:
    """``polydiff motion-edit run=<dir> [edit.task=...] [edit.n=...] [edit.seed=...]
    [edit.resample=...]``: edit held-out motions of the run's data; returns a summary."""
    opts, rest = _split_overrides(overrides)
    run = open_run(run_dir, rest)
    node = getattr(run.hooks, "edit_options", None)
    if node is None:
        raise ConfigError(
            f"{run.run_dir} is not a motion run (its data.hooks has no edit settings)"
        )
    settings: dict[str, Any] = {"task": "inbetween", "n": 8, "seed": 0, "resample": 1}
    settings.update({k: node[k] for k in node if k in settings})
    unknown = sorted(set(opts) - set(settings))
    if unknown:
        raise ConfigError(f"unknown edit keys {unknown}; valid: {sorted(settings)}")
    for k, v in opts.items():
        settings[k] = v if k == "task" else int(v)
    hooks = run.hooks
    cond = hooks.sample_cond(
        int(settings["n"]), torch.Generator().manual_seed(int(settings["seed"]))
    )
    rows = hooks._last["rows"]
    ref = hooks.reference
    known = ref.normalizer.denormalize(ref.tensors["x"][rows])
    lengths = [int(v) for v in cond["seq_mask"].sum(1)]
    mask = edit_mask(str(settings["task"]), lengths, known.shape[1], known.shape[2])
    edited = edit(
        run, known, mask, cond, seed=int(settings["seed"]), resample=int(settings["resample"])
    )
    name = f"{settings['task']}-n{settings['n']}-seed{settings['seed']}-r{settings['resample']}"
    out_dir = Path(out) if out else run.run_dir / "edits" / name
    prompts = hooks._last.get("prompts")
    files = save_motion_files(edited, lengths, out_dir, prompts, files=int(settings["n"]))
    save_motion_files(known, lengths, out_dir / "source", prompts, files=int(settings["n"]))
    kept = float((edited - known).abs()[mask].max()) if mask.any() else 0.0
    summary = {
        "run": str(run.run_dir),
        "out": str(out_dir),
        **settings,
        "files": [p.name for p in files],
        "max_kept_error": kept,
    }
    atomic_write_text(out_dir / "edit.json", json.dumps(summary, indent=1))
    return summary


def obj_run(
    run_dir: str | Path, overrides: Sequence[str] = (), out: str | Path | None = None
) -> dict:
    """``polydiff motion-obj run=<dir> [obj.samples=<sample dir>] [obj.index=0]
    [obj.model=<SMPL .npz>]``: one OBJ per frame of a sampled motion (the newest
    ``<run>/samples/*/joints.npz`` unless ``obj.samples``), the SMPL mesh fitted to its joints
    when ``obj.model`` names a body model (``.npz``, no pickle) and the documented stick-body
    mesh (:func:`polydiff.motion.io.skeleton_mesh`) otherwise. Writes ``<samples>/obj_XX``."""
    opts, rest = _split_overrides(overrides, "obj.")
    unknown = sorted(set(opts) - {"samples", "index", "model"}) + [o for o in rest if o]
    if unknown:
        raise ConfigError(f"unknown motion-obj settings {unknown}; valid: obj.samples, "
                          "obj.index, obj.model, out")  # fmt: skip
    run_dir = Path(run_dir)
    if "samples" in opts:
        samples = Path(opts["samples"])
    else:
        found = sorted(run_dir.glob("samples/*/joints.npz"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise ConfigError(f"{run_dir}/samples has no joints.npz; run `polydiff sample` first")
        samples = found[-1].parent
    path = samples / "joints.npz" if samples.is_dir() else samples
    if not path.is_file():
        raise ConfigError(f"obj.samples={samples}: no joints.npz there")
    with np.load(path, allow_pickle=False) as z:
        if "joints" not in z or "lengths" not in z:
            raise ConfigError(f"{path}: expected arrays 'joints' and 'lengths', got {z.files}")
        joints, lengths = z["joints"], z["lengths"]
    index = int(opts.get("index", 0))
    if not 0 <= index < len(joints):
        raise ConfigError(f"obj.index={index} but {path} holds {len(joints)} motions")
    out_dir = Path(out) if out else path.parent / f"obj_{index:02d}"
    model = opts.get("model")
    files = export_obj(joints[index, : int(lengths[index])], out_dir, model)
    summary = {
        "samples": str(path),
        "index": index,
        "mesh": f"SMPL ({model})" if model else "skeleton (octahedral bones, 126 vertices)",
        "out": str(out_dir),
        "frames": len(files),
    }
    atomic_write_text(out_dir / "obj.json", json.dumps(summary, indent=1))
    return summary
