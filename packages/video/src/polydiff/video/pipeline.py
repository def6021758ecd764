"""Video tasks over a trained run, all through ``polydiff.core`` (samplers, guidance, inpainting):

- :func:`generate`: class / text / unconditional video with the run's sampler and guidance.
- :func:`image_to_video`: from a given first frame, by first-frame channel concatenation
  (``method="concat"``, a run trained with ``experiment=video/image_to_video``; SVD-style) or by
  temporal inpainting of frames 1.. on any run (``method="inpaint"``: the frame is kept by
  replacement, :func:`polydiff.core.editing.inpaint`).
- :func:`predict` / :func:`interpolate`: MCVD-style conditioning on known frames (a run trained
  with ``experiment=video/prediction``; Voleti et al. 2022), or, on any other run, temporal
  inpainting with reconstruction guidance.
- :func:`extend`: clips longer than the training length by autoregressive extension: each new
  window starts with the last ``overlap`` frames of the clip so far, kept by replacement, while
  the new frames are steered by reconstruction guidance on those frames
  (:func:`polydiff.core.guidance.reconstruction_guidance`; Ho et al. 2022, sec. 3.1).

Every function takes a run opened by :func:`polydiff.train.run.open_run` and a seed.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from polydiff.core.editing import inpaint
from polydiff.core.guidance import reconstruction_guidance
from polydiff.train.run import OpenedRun
from polydiff.train.sampling import generate as generate_samples

from .experiments import masked_condition

__all__ = ["extend", "generate", "image_to_video", "interpolate", "predict"]


def _shape(run: OpenedRun, frames: int | None = None) -> tuple[int, ...]:
    c, f, h, w = run.sample_shape
    return (c, frames or f, h, w)


def _concat_channels(run: OpenedRun) -> int:
    return int(getattr(run.model, "concat_channels", 0))


def generate(
    run: OpenedRun,
    n: int,
    cond: Mapping[str, torch.Tensor] | None = None,
    *,
    seed: int = 0,
    frames: int | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """``n`` clips (n, C, F, H, W) in [-1, 1] with the run's sampler and guidance; ``frames``
    other than the training length works too (the temporal attention is relative)."""
    c, f, h, w = _shape(run, frames)
    if _concat_channels(run) == c + 1 and not (cond and "concat" in cond):  # MCVD: all unknown
        empty = masked_condition(torch.zeros(n, c, f, h, w), ["generate"] * n, 1)
        cond = {"concat": empty, **(cond or {})}
    gen = torch.Generator().manual_seed(seed)
    x = generate_samples(run.denoiser(), _shape(run, frames), n, run.sampler, cond=cond,
                         generator=gen, batch_size=batch_size)  # fmt: skip
    return x.clamp(-1, 1)


@torch.no_grad()  # reconstruction guidance enables gradients where it needs them
def _inpaint(
    run: OpenedRun,
    known: torch.Tensor,
    mask: torch.Tensor,
    cond: Mapping[str, torch.Tensor] | None,
    seed: int,
    guidance_scale: float = 0.0,
) -> torch.Tensor:
    """Replacement inpainting (DDIM steps, eta 0) on the run's sigma grid; with
    ``guidance_scale > 0`` the denoiser is steered by reconstruction guidance on the known part
    (DPS through the denoiser; Ho et al. 2022's reconstruction-guided sampling)."""
    gen = torch.Generator().manual_seed(seed)
    den = run.denoiser()
    if guidance_scale > 0:
        m = mask.bool()

        def operator(x0: torch.Tensor) -> torch.Tensor:
            return x0 * m

        den = reconstruction_guidance(den, operator, known * m, guidance_scale)
    sigmas = run.sampler.sigmas()
    x = torch.randn(known.shape, generator=gen) * sigmas[0]
    out = inpaint(den, x, sigmas, known, mask, cond=dict(cond) if cond else None,
                  generator=gen, eta=0.0)  # fmt: skip
    return out.clamp(-1, 1)


def image_to_video(
    run: OpenedRun,
    frame: torch.Tensor,
    *,
    method: str = "concat",
    cond: Mapping[str, torch.Tensor] | None = None,
    seed: int = 0,
    frames: int | None = None,
) -> torch.Tensor:
    """Clips (B, C, F, H, W) whose first frame is ``frame`` (B, C, H, W)."""
    c, f, h, w = _shape(run, frames)
    if frame.ndim != 4 or tuple(frame.shape[1:]) != (c, h, w):
        raise ValueError(f"frame must have shape (B, {c}, {h}, {w}), got {tuple(frame.shape)}")
    b = frame.shape[0]
    if method == "concat":
        if _concat_channels(run) != c:
            raise ValueError(
                f"method='concat' needs a run trained on first frames (concat_channels={c}, "
                f"experiment=video/image_to_video); {run.run_dir} has "
                f"concat_channels={_concat_channels(run)}: use method='inpaint'"
            )
        full = {"concat": frame[:, :, None].expand(b, c, f, h, w).clone(), **(cond or {})}
        return generate(run, b, full, seed=seed, frames=f)
    if method == "inpaint":
        known = torch.zeros(b, c, f, h, w)
        known[:, :, 0] = frame
        mask = torch.zeros(1, 1, f, 1, 1, dtype=torch.bool)
        mask[:, :, 0] = True
        return _inpaint(run, known, mask, cond, seed)
    raise ValueError(f"method must be 'concat' or 'inpaint', got {method!r}")


def _known_frames(
    run: OpenedRun, clips: torch.Tensor, task: str, context: int, cond, seed: int, scale: float
) -> torch.Tensor:
    b, c, f = clips.shape[:3]
    if _concat_channels(run) == c + 1:  # MCVD-style masked model
        concat = masked_condition(clips, [task] * b, context)
        out = generate(run, b, {"concat": concat, **(cond or {})}, seed=seed, frames=f)
        known = concat[:, -1:].bool()
        return torch.where(known, clips, out)  # the given frames, exactly
    mask = masked_condition(clips, [task] * b, context)[:, -1:].bool()  # (B, 1, F, H, W)
    return _inpaint(run, clips * mask, mask, cond, seed, scale)


def predict(
    run: OpenedRun,
    past: torch.Tensor,
    frames: int | None = None,
    *,
    cond: Mapping[str, torch.Tensor] | None = None,
    seed: int = 0,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Continue ``past`` (B, C, k, H, W) to ``frames`` frames (default: the training length);
    the first k frames of the result are ``past``."""
    c, f, h, w = _shape(run, frames)
    k = past.shape[2]
    if past.ndim != 5 or not 0 < k < f:
        raise ValueError(
            f"past must be (B, {c}, k, {h}, {w}) with 0 < k < {f}, got {tuple(past.shape)}"
        )
    clips = torch.zeros(past.shape[0], c, f, h, w)
    clips[:, :, :k] = past
    return _known_frames(run, clips, "predict", k, cond, seed, guidance_scale)


def interpolate(
    run: OpenedRun,
    start: torch.Tensor,
    end: torch.Tensor,
    frames: int | None = None,
    *,
    cond: Mapping[str, torch.Tensor] | None = None,
    seed: int = 0,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Fill the frames between ``start`` and ``end`` (B, C, k, H, W each): (B, C, F, H, W)."""
    c, f, h, w = _shape(run, frames)
    k = start.shape[2]
    if start.shape != end.shape or not 0 < 2 * k < f:
        raise ValueError(
            f"start and end must have one shape (B, {c}, k, {h}, {w}) with 2k < {f}, "
            f"got {tuple(start.shape)} and {tuple(end.shape)}"
        )
    clips = torch.zeros(start.shape[0], c, f, h, w)
    clips[:, :, :k], clips[:, :, f - k :] = start, end
    return _known_frames(run, clips, "interpolate", k, cond, seed, guidance_scale)


def extend(
    run: OpenedRun,
    n: int,
    total_frames: int,
    *,
    overlap: int = 2,
    cond: Mapping[str, torch.Tensor] | None = None,
    guidance_scale: float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """Clips of ``total_frames`` frames (n, C, total_frames, H, W): a first window from the run's
    sampler, then windows of the training length whose first ``overlap`` frames are the last
    ones generated so far (replacement + reconstruction guidance of weight ``guidance_scale``;
    Ho et al. 2022 sec. 3.1). MCVD-style runs condition on the overlap frames instead."""
    c, f, h, w = _shape(run)
    if not 0 < overlap < f:
        raise ValueError(f"overlap must be in [1, {f - 1}] for {f}-frame windows, got {overlap}")
    clip = generate(run, n, cond, seed=seed)
    window = 1
    while clip.shape[2] < total_frames:
        past = clip[:, :, -overlap:]
        new = predict(run, past, f, cond=cond, seed=seed + window, guidance_scale=guidance_scale)
        clip = torch.cat([clip, new[:, :, overlap:]], dim=2)
        window += 1
    return clip[:, :, :total_frames]
