"""Image editing with a trained denoiser: inpainting, outpainting, SDEdit and inversion edits.

Thin, image-shaped wrappers over :mod:`polydiff.core.editing` and :mod:`polydiff.core.inversion`;
no diffusion math lives here. Every function takes a denoiser ``D(x, sigma, cond)`` (wrap it in
``polydiff.core.guidance.classifier_free_guidance`` first for guided edits) and a sigma grid
(e.g. ``objective.schedule.sigmas_for(steps)``), and works on ``(B, C, H, W)`` images in [-1, 1].

- :func:`inpaint`: replacement (Song et al. 2021, sec. 5) or RePaint resampling (Lugmayr et al.
  2022) from a mask (True / 1 = known pixel). Known pixels are returned exactly.
- :func:`outpaint`: extend an image onto a larger canvas (:func:`outpaint_canvas`) and inpaint
  the border.
- :func:`img2img`: SDEdit (Meng et al. 2022) with a strength in (0, 1].
- :func:`invert` / :func:`regenerate` / :func:`inversion_edit`: invert an image under one
  condition (deterministic DDIM/ODE inversion, or edit-friendly DDPM noise maps of
  Huberman-Spiegelglas et al. 2023) and regenerate it under another (a new class or prompt).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from polydiff.core import editing as core_editing
from polydiff.core import inversion as core_inversion
from polydiff.core.utils import Cond, Denoiser

__all__ = [
    "EditConfig",
    "Inversion",
    "apply_edit",
    "box_mask",
    "edit_run",
    "img2img",
    "inpaint",
    "inversion_edit",
    "invert",
    "outpaint",
    "outpaint_canvas",
    "regenerate",
]

INPAINT_METHODS = ("replacement", "repaint")
INVERSION_METHODS = ("ddim", "heun", "ddpm")


def _check_images(x: torch.Tensor, name: str = "image") -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a (B, C, H, W) tensor, got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point in [-1, 1], got dtype {x.dtype}")


def _noise(shape: torch.Size, like: torch.Tensor, generator: torch.Generator | None):
    g_dev = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=g_dev, dtype=like.dtype).to(like.device)


# --------------------------------------------------------------------------- masks


def box_mask(
    size: int | tuple[int, int],
    top: int,
    left: int,
    height: int,
    width: int,
    *,
    known_inside: bool = False,
) -> torch.Tensor:
    """A known-pixel mask ``(1, 1, H, W)`` (True = known) with a rectangular hole.

    The box ``[top:top+height, left:left+width]`` is the unknown region; ``known_inside=True``
    inverts it (keep the box, generate everything else).
    """
    h, w = (size, size) if isinstance(size, int) else size
    if height < 1 or width < 1 or top < 0 or left < 0 or top + height > h or left + width > w:
        raise ValueError(
            f"box (top={top}, left={left}, height={height}, width={width}) does not fit in "
            f"a {h}x{w} image"
        )
    inside = torch.zeros(1, 1, h, w, dtype=torch.bool)
    inside[..., top : top + height, left : left + width] = True
    return inside if known_inside else ~inside


def _image_mask(mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    mask = torch.as_tensor(mask, device=image.device)
    if mask.ndim == 2:  # (H, W)
        mask = mask[None, None]
    elif mask.ndim == 3:  # (B, H, W)
        mask = mask[:, None]
    try:
        torch.broadcast_shapes(mask.shape, image.shape)
    except RuntimeError as err:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to images of shape "
            f"{tuple(image.shape)} (use (H, W), (B, H, W), (B, 1, H, W) or (B, C, H, W))"
        ) from err
    return mask


# --------------------------------------------------------------------------- inpainting


def inpaint(
    denoiser: Denoiser,
    image: torch.Tensor,
    mask: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    method: str = "replacement",
    cond: Cond = None,
    generator: torch.Generator | None = None,
    jump_length: int = 10,
    resample: int = 10,
    eta: float = 1.0,
) -> torch.Tensor:
    """Fill the unknown pixels of ``image`` (mask False / 0) consistently with the known ones.

    ``method="replacement"``: the known part, re-noised to each sigma, replaces that part of the
    sample after every step (:func:`polydiff.core.editing.inpaint`). ``"repaint"``: the same with
    RePaint's jumps back (``jump_length``, ``resample``; Lugmayr et al. 2022). Known pixels of the
    result equal ``image`` exactly. ``mask`` is (H, W), (B, H, W) or (B, 1|C, H, W), bool or
    float in [0, 1]. Returns (B, C, H, W).
    """
    _check_images(image)
    if method not in INPAINT_METHODS:
        raise ValueError(f"unknown inpainting method {method!r}; choose one of {INPAINT_METHODS}")
    m = _image_mask(mask, image)
    sigmas = sigmas.to(image.device)
    x = _noise(image.shape, image, generator) * float(sigmas[0])
    if method == "repaint":
        return core_editing.repaint(
            denoiser, x, sigmas, known=image, mask=m, cond=cond, generator=generator,
            jump_length=jump_length, resample=resample,
        )  # fmt: skip
    return core_editing.inpaint(
        denoiser, x, sigmas, known=image, mask=m, cond=cond, generator=generator, eta=eta
    )


def outpaint_canvas(
    image: torch.Tensor, pad: int | tuple[int, int, int, int], fill: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Place ``image`` on a larger canvas: returns ``(canvas, known_mask)``.

    ``pad`` is one int or ``(top, bottom, left, right)``; the new border is ``fill`` and unknown.
    """
    _check_images(image)
    top, bottom, left, right = (pad,) * 4 if isinstance(pad, int) else tuple(pad)
    if min(top, bottom, left, right) < 0:
        raise ValueError(f"pad must be non-negative, got {pad}")
    b, c, h, w = image.shape
    canvas = image.new_full((b, c, h + top + bottom, w + left + right), fill)
    canvas[..., top : top + h, left : left + w] = image
    known = torch.zeros(b, 1, *canvas.shape[2:], dtype=torch.bool, device=image.device)
    known[..., top : top + h, left : left + w] = True
    return canvas, known


def outpaint(
    denoiser: Denoiser,
    image: torch.Tensor,
    pad: int | tuple[int, int, int, int],
    sigmas: torch.Tensor,
    **inpaint_options,
) -> torch.Tensor:
    """Extend ``image`` by ``pad`` pixels per side (:func:`outpaint_canvas` + :func:`inpaint`).

    The canvas size must suit the model (e.g. a 16x16 crop padded by 8 for a 32x32 U-Net).
    """
    canvas, known = outpaint_canvas(image, pad)
    return inpaint(denoiser, canvas, known, sigmas, **inpaint_options)


# --------------------------------------------------------------------------- SDEdit


def img2img(
    denoiser: Denoiser,
    image: torch.Tensor,
    sigmas: torch.Tensor,
    strength: float,
    *,
    cond: Cond = None,
    generator: torch.Generator | None = None,
    sampler: str | None = None,
    **sampler_options,
) -> torch.Tensor:
    """SDEdit / img2img (Meng et al. 2022): noise ``image`` to the last ``strength`` of the grid
    and denoise it (under ``cond``).

    ``strength`` in (0, 1]: 1 ignores the input, small values keep it. The loop is DDPM (the
    paper's SDE) unless ``sampler`` names one of ``polydiff.core.samplers.SAMPLERS``.
    """
    _check_images(image)
    run = None
    if sampler is not None:
        from polydiff.core.samplers import SAMPLERS, sample

        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; available: {sorted(SAMPLERS)}")
        run = functools.partial(sample, method=sampler, **sampler_options)
    return core_editing.sdedit(
        denoiser, image, sigmas.to(image.device), strength=strength, cond=cond,
        generator=generator, sampler=run,
    )  # fmt: skip


# --------------------------------------------------------------------------- inversion edits


@dataclass
class Inversion:
    """The result of :func:`invert`: the noise ``x_T`` at ``sigmas[0]`` (and the DDPM noise
    maps for ``method="ddpm"``) from which :func:`regenerate` rebuilds or edits the image."""

    x_t: torch.Tensor  # (B, C, H, W) at sigmas[0]
    sigmas: torch.Tensor
    method: str
    noise_maps: torch.Tensor | None = None  # (N, B, C, H, W) for "ddpm"
    eta: float = 1.0


def invert(
    denoiser: Denoiser,
    image: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    method: str = "ddpm",
    fixed_point_iterations: int = 0,
    generator: torch.Generator | None = None,
    eta: float = 1.0,
) -> Inversion:
    """Invert ``image`` under ``cond`` (the source class / prompt).

    ``"ddim"`` / ``"heun"``: deterministic ODE inversion (:func:`polydiff.core.inversion.
    ode_invert`, with optional fixed-point refinement); ``"ddpm"``: edit-friendly DDPM inversion
    (:func:`polydiff.core.inversion.ddpm_invert`), which reconstructs exactly.
    """
    _check_images(image)
    if method not in INVERSION_METHODS:
        raise ValueError(f"unknown inversion method {method!r}; choose one of {INVERSION_METHODS}")
    sigmas = sigmas.to(image.device)
    if method == "ddpm":
        x_t, maps = core_inversion.ddpm_invert(
            denoiser, image, sigmas, cond=cond, generator=generator, eta=eta
        )
        return Inversion(x_t, sigmas, method, noise_maps=maps, eta=eta)
    x_t = core_inversion.ode_invert(
        denoiser, image, sigmas, cond=cond, method=method,
        fixed_point_iterations=fixed_point_iterations,
    )  # fmt: skip
    return Inversion(x_t, sigmas, method)


def regenerate(denoiser: Denoiser, inversion: Inversion, *, cond: Cond = None) -> torch.Tensor:
    """Sample back from an :class:`Inversion` under ``cond`` (the target class / prompt).

    With the inversion's own condition this reconstructs the image; with another it edits it.
    """
    if inversion.method == "ddpm":
        return core_inversion.ddpm_reconstruct(
            denoiser, inversion.x_t, inversion.sigmas, inversion.noise_maps, cond=cond,
            eta=inversion.eta,
        )  # fmt: skip
    return core_inversion.ode_reconstruct(
        denoiser, inversion.x_t, inversion.sigmas, cond=cond, method=inversion.method
    )


def inversion_edit(
    denoiser: Denoiser,
    image: torch.Tensor,
    sigmas: torch.Tensor,
    source_cond: Mapping[str, torch.Tensor] | None,
    target_cond: Mapping[str, torch.Tensor] | None,
    **invert_options,
) -> torch.Tensor:
    """Invert ``image`` under ``source_cond`` and regenerate under ``target_cond``.

    E.g. ``inversion_edit(D, digits_of_3, sigmas, {"class": threes}, {"class": eights})``.
    Editing from part-way (SDEdit-like) is ``sigmas`` cut to its tail with
    :func:`polydiff.core.editing.sdedit_sigmas`.
    """
    inv = invert(denoiser, image, sigmas, cond=source_cond, **invert_options)
    return regenerate(denoiser, inv, cond=target_cond)


# --------------------------------------------------------------------------- configs and runs

EDIT_TASKS = ("inpaint", "outpaint", "sdedit", "inversion")


@dataclass
class EditConfig:
    """One editing job (the ``edit`` node of ``configs/experiment/image/edit_*.yaml``).

    - ``task``: ``"inpaint"`` (``mask_box`` = unknown ``(top, left, height, width)``),
      ``"outpaint"`` (the image's centre crop of side ``size - 2 * pad`` is kept and padded
      back by ``pad``), ``"sdedit"`` (``strength``) or ``"inversion"``.
    - ``method``: ``"replacement"`` / ``"repaint"`` for (out)painting, ``"ddpm"`` / ``"ddim"`` /
      ``"heun"`` for inversion; ignored by SDEdit.
    - ``target_class``: the class to edit towards (SDEdit, inversion); ``None`` keeps each
      image's own class (or unconditional). ``class_shift`` instead maps ``y -> (y + k) mod
      num_classes`` (a benchmark-style edit of every image).
    - ``n`` images of the run's training data (or ``images``, an ``.npz`` with ``images``
      (N, C, H, W) in [-1, 1] and optional ``labels``), ``steps`` of the run's sigma grid.
    """

    task: str = "inpaint"
    method: str = "repaint"
    mask_box: tuple[int, int, int, int] = (8, 0, 8, 16)
    pad: int = 4
    strength: float = 0.6
    target_class: int | None = None
    class_shift: int | None = None
    guidance_scale: float = 3.0
    steps: int = 18
    n: int = 16
    images: str | None = None
    jump_length: int = 2
    resample: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.task not in EDIT_TASKS:
            raise ValueError(f"edit.task={self.task!r}; choose one of {EDIT_TASKS}")
        valid = INVERSION_METHODS if self.task == "inversion" else INPAINT_METHODS
        if self.task != "sdedit" and self.method not in valid:
            raise ValueError(f"edit.method={self.method!r} for task {self.task!r}; choose {valid}")
        if not 0 < self.strength <= 1:
            raise ValueError(f"edit.strength must be in (0, 1], got {self.strength}")
        if self.steps < 1 or self.n < 1 or self.pad < 0 or len(tuple(self.mask_box)) != 4:
            raise ValueError(
                f"edit: need steps >= 1, n >= 1, pad >= 0 and a 4-tuple mask_box, got steps="
                f"{self.steps}, n={self.n}, pad={self.pad}, mask_box={self.mask_box}"
            )
        if self.target_class is not None and self.class_shift is not None:
            raise ValueError("edit: set target_class or class_shift, not both")
        self.mask_box = tuple(int(v) for v in self.mask_box)  # type: ignore[assignment]


def _target_labels(cfg: EditConfig, labels: torch.Tensor | None, num_classes: int | None):
    if cfg.target_class is not None:
        n = len(labels) if labels is not None else cfg.n
        return torch.full((n,), int(cfg.target_class), dtype=torch.long)
    if cfg.class_shift is not None:
        if labels is None or not num_classes:
            raise ValueError("edit.class_shift needs labelled images and a class-conditional model")
        return (labels + int(cfg.class_shift)) % num_classes
    return labels


def apply_edit(
    cfg: EditConfig,
    denoiser: Denoiser,
    images: torch.Tensor,
    sigmas: torch.Tensor,
    labels: torch.Tensor | None = None,
    num_classes: int | None = None,
) -> dict[str, torch.Tensor]:
    """Run the edit ``cfg`` on ``images`` (B, C, H, W) with ``denoiser`` (already guided, if
    wanted) on the grid ``sigmas``; ``labels`` (B,) are the images' classes for a
    class-conditional model. Returns ``{"edited", "source", "mask"?, "target_class"?}``."""
    _check_images(images)
    g = torch.Generator().manual_seed(cfg.seed)
    src_cond = None if labels is None else {"class": labels}
    target = _target_labels(cfg, labels, num_classes)
    tgt_cond = None if target is None else {"class": target}
    out: dict[str, torch.Tensor] = {"source": images}
    if cfg.task in ("inpaint", "outpaint"):
        size = images.shape[-2:]
        if cfg.task == "inpaint":
            known = box_mask(tuple(size), *cfg.mask_box)
            canvas = images
        else:
            p = cfg.pad
            if 2 * p >= min(size):
                raise ValueError(f"edit.pad={p} leaves nothing of a {tuple(size)} image")
            canvas, known = outpaint_canvas(images[..., p : size[0] - p, p : size[1] - p], p)
        opts = {"jump_length": cfg.jump_length, "resample": cfg.resample}
        out["edited"] = inpaint(
            denoiser, canvas, known, sigmas, method=cfg.method, cond=tgt_cond, generator=g,
            **(opts if cfg.method == "repaint" else {}),
        )  # fmt: skip
        out["mask"] = known.expand(len(images), 1, *size)
    elif cfg.task == "sdedit":
        out["edited"] = img2img(denoiser, images, sigmas, cfg.strength, cond=tgt_cond, generator=g)
    else:
        inv = invert(denoiser, images, sigmas, cond=src_cond, method=cfg.method, generator=g)
        out["edited"] = regenerate(denoiser, inv, cond=tgt_cond)
    out["edited"] = out["edited"].clamp(-1, 1)
    if target is not None:
        out["target_class"] = target
    return out


def _load_images(path: str, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    from pathlib import Path

    import numpy as np

    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"edit.images: {source} not found (an .npz with 'images')")
    with np.load(source) as f:
        if "images" not in f:
            raise ValueError(f"{source} has no 'images' array (keys: {sorted(f.files)})")
        images = torch.from_numpy(f["images"][:n]).float()
        labels = torch.from_numpy(f["labels"][:n]).long() if "labels" in f else None
    _check_images(images, f"{source}: images")
    return images, labels


def edit_run(
    run_dir: str,
    overrides: tuple[str, ...] | list[str] = (),
    out: str | None = None,
    edit: EditConfig | Mapping | None = None,
) -> dict[str, object]:
    """``polydiff edit run=<dir> [edit=inpaint edit.strength=0.5 ...]``: open any trained image
    run (:func:`polydiff.train.run.open_run`), apply ``edit`` (default: the ``configs/edit/``
    option chosen by ``edit=<task>``, else the run config's ``edit`` node, else ``sdedit``) to
    ``edit.n`` of its training images, and write ``edit.png`` (rows: source, edited),
    ``edit.npz`` and ``edit.json`` into ``out`` (default ``<run>/edits/<task>-<hash of the
    settings>``). Returns the written info."""
    import json
    from pathlib import Path

    import numpy as np

    from polydiff.core.fileio import atomic_path, atomic_write_text
    from polydiff.core.guidance import classifier_free_guidance
    from polydiff.train.data import split_batch
    from polydiff.train.run import (
        instantiate,
        job_dir,
        open_run,
        run_job_config,
        with_job_default,
    )

    from .io import save_image_grid

    run = open_run(run_dir, with_job_default(run_dir, overrides, "edit", "sdedit"))
    edit = run_job_config(run, "edit", cls=EditConfig, given=edit, param="edit")
    if edit.images:
        images, labels = _load_images(edit.images, edit.n)
    else:
        ds = instantiate(run.cfg.data.dataset, "data.dataset")
        batch = ds.get_batch(list(range(min(edit.n, len(ds)))))
        images, cond = split_batch(batch)
        labels = None if not cond else cond.get("class")
    num_classes = run.cfg.data.get("num_classes")
    denoiser = run.objective.denoiser(run.model)
    if labels is not None and edit.guidance_scale != 1.0:
        denoiser = classifier_free_guidance(denoiser, edit.guidance_scale)
    sigmas = run.objective.schedule.sigmas_for(edit.steps).float()
    with torch.no_grad():
        result = apply_edit(edit, denoiser, images, sigmas, labels=labels, num_classes=num_classes)
    settings = {"edit": dataclasses.asdict(edit), "checkpoint": run.checkpoint.name}
    target = Path(out) if out else job_dir(Path(run_dir) / "edits", edit.task, settings)
    target.mkdir(parents=True, exist_ok=True)
    save_image_grid(torch.cat([result["source"], result["edited"]]), target / "edit.png",
                    nrow=len(images), scale=4)  # fmt: skip
    arrays = {k: v.cpu().numpy() for k, v in result.items()}
    with atomic_path(target / "edit.npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    info = {
        "run": str(run_dir), "checkpoint": str(run.checkpoint),
        "edit": dataclasses.asdict(edit),
        "files": ["edit.png", "edit.npz", "edit.json"],
        "known_max_abs_diff": float(
            (result["edited"] - result["source"]).abs()[result["mask"].expand_as(images)].max()
        ) if edit.task == "inpaint" else None,
    }  # fmt: skip
    atomic_write_text(target / "edit.json", json.dumps(info, indent=1))
    return info | {"out": str(target)}
