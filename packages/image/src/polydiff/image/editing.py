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

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from polydiff.core import editing as core_editing
from polydiff.core import inversion as core_inversion
from polydiff.core.utils import Cond, Denoiser

__all__ = [
    "Inversion",
    "box_mask",
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
            denoiser, x, sigmas, image, m, cond=cond, generator=generator,
            jump_length=jump_length, resample=resample,
        )  # fmt: skip
    return core_editing.inpaint(
        denoiser, x, sigmas, image, m, cond=cond, generator=generator, eta=eta
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
        return Inversion(x_t, sigmas, method, maps, eta)
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
