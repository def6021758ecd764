"""Generation and editing entry points over a trained mel run, all through ``polydiff.core``.

- :func:`generate`: class labels or captions -> log-mels (the run's sampler and guidance, e.g.
  DPM++ 2M at 20 NFE with CFG);
- :func:`inpaint_span` / :func:`continue_audio`: regenerate a time span (frames) of a clip, or
  everything after its first frames, by the core's replacement inpainting (RePaint with
  ``resample > 1``; Lugmayr et al. 2022) on the mel image, the rest kept exactly;
- :func:`audio_to_audio`: SDEdit (Meng et al. 2022): noise a clip's mel to a fraction of the
  grid and denoise it under a (new) condition with the run's sampler.

Inputs are log-mels ``(N, n_mels, F)`` (:meth:`MelRun.mel` turns waveforms into them) and the
outputs too; :meth:`MelRun.vocode` turns them into waveforms with the run's vocoder.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from polydiff.core.editing import inpaint, sdedit
from polydiff.core.samplers import sample
from polydiff.train.run import OpenedRun, open_run
from polydiff.train.sampling import generate as generate_samples

from .experiments import AudioHooks, encode_captions
from .spectral import MelSpectrogramCodec

__all__ = ["MelRun", "audio_to_audio", "continue_audio", "generate", "inpaint_span", "load"]


@dataclass
class MelRun:
    """A trained mel-diffusion run with its hooks (normalisation, classes, vocoder)."""

    run: OpenedRun

    @property
    def hooks(self) -> AudioHooks:
        hooks = self.run.hooks
        if not isinstance(hooks, AudioHooks) or hooks.representation != "mel":
            raise ValueError(f"{self.run.run_dir} is not a mel-diffusion run (AudioHooks, mel)")
        return hooks

    def cond(
        self, n: int, classes: Sequence[int] | torch.Tensor | None = None,
        prompts: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor] | None:  # fmt: skip
        """The condition of ``n`` items: class labels, captions, or None (unconditional)."""
        kind = self.hooks.dataset.conditioning
        if kind == "class":
            if classes is None:
                raise ValueError("this run is class-conditional: pass classes=[...]")
            y = torch.as_tensor(classes, dtype=torch.long).reshape(-1)
            k = int(self.hooks.dataset.num_classes or 0)
            if len(y) != n or y.min() < 0 or y.max() >= k:
                raise ValueError(f"need {n} class labels in [0, {k}), got {y.tolist()}")
            return {"class": y}
        if kind == "text":
            if prompts is None or len(prompts) != n:
                raise ValueError(f"this run is text-conditional: pass {n} prompts")
            return {"text_pooled": encode_captions(list(prompts))}
        if classes is not None or prompts is not None:
            raise ValueError("this run is unconditional: classes / prompts cannot apply")
        return None

    def to_model(self, logmel: torch.Tensor) -> torch.Tensor:
        """Log-mel (N, M, F) -> normalised model space (N, 1, M, F)."""
        mean, std = self.hooks.dataset.stats
        shape = self.run.sample_shape
        if tuple(logmel.shape[1:]) != tuple(shape[1:]):
            raise ValueError(f"log-mel of shape {tuple(logmel.shape)} does not fit {shape}")
        return ((logmel.float() - mean) / std)[:, None]

    def mel(self, wave: torch.Tensor) -> torch.Tensor:
        """Waveforms (N, L) at the run's sample rate -> log-mels (N, M, F)."""
        with torch.no_grad():
            return MelSpectrogramCodec(self.hooks.dataset.preset)(wave)

    def vocode(self, logmel: torch.Tensor) -> torch.Tensor:
        """Log-mels -> waveforms with the run's vocoder (``audio.vocoder``)."""
        return self.hooks.waves(logmel)

    def sampler_fn(self):
        """The run's registered sampler as ``fn(denoiser, x, sigmas, cond=, generator=)``."""
        return functools.partial(sample, method=self.run.sampler.method, **self.run.sampler.options)


def load(run_dir: str | Path, overrides: Sequence[str] = ()) -> MelRun:
    """Open a mel run (``overrides``: sampler / guidance / audio.* settings)."""
    return MelRun(open_run(run_dir, overrides))


@torch.no_grad()
def generate(mr: MelRun, n: int, *, classes=None, prompts=None, seed: int = 0) -> torch.Tensor:
    """``n`` log-mels (N, M, F) for the given classes / prompts."""
    cond = mr.cond(n, classes, prompts)
    x = generate_samples(
        mr.run.denoiser(), mr.run.sample_shape, n, mr.run.sampler, cond=cond,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    return mr.hooks.to_data(x)


@torch.no_grad()
def inpaint_span(
    mr: MelRun, logmel: torch.Tensor, start: int, end: int, *, classes=None, prompts=None,
    seed: int = 0, resample: int = 1, jump_length: int = 1,
) -> torch.Tensor:  # fmt: skip
    """Regenerate frames ``[start, end)`` of each log-mel; every other frame is kept exactly."""
    frames = logmel.shape[-1]
    if not 0 <= start < end <= frames:
        raise ValueError(f"need 0 <= start < end <= {frames} frames, got [{start}, {end})")
    known = mr.to_model(logmel)
    mask = torch.ones_like(known)
    mask[..., start:end] = 0.0  # 1 = known
    gen = torch.Generator().manual_seed(seed)
    sigmas = mr.run.sampler.sigmas()
    x = torch.randn(known.shape, generator=gen) * sigmas[0]
    out = inpaint(
        mr.run.denoiser(), x, sigmas, known, mask, cond=mr.cond(len(known), classes, prompts),
        generator=gen, resample=resample, jump_length=jump_length,
    )  # fmt: skip
    return mr.hooks.to_data(out)


def continue_audio(mr: MelRun, logmel: torch.Tensor, keep_frames: int, **kwargs) -> torch.Tensor:
    """Continuation: keep the first ``keep_frames`` frames, generate the rest in context."""
    return inpaint_span(mr, logmel, keep_frames, logmel.shape[-1], **kwargs)


@torch.no_grad()
def audio_to_audio(
    mr: MelRun, logmel: torch.Tensor, strength: float = 0.5, *, classes=None, prompts=None,
    seed: int = 0,
) -> torch.Tensor:  # fmt: skip
    """SDEdit: the last ``strength`` of the sampling grid from the noised input, under the
    (new) condition; strength 1 ignores the input, small strengths keep it."""
    x0 = mr.to_model(logmel)
    out = sdedit(
        mr.run.denoiser(), x0, mr.run.sampler.sigmas(), strength=strength,
        cond=mr.cond(len(x0), classes, prompts), generator=torch.Generator().manual_seed(seed),
        sampler=mr.sampler_fn(),
    )  # fmt: skip
    return mr.hooks.to_data(out)
