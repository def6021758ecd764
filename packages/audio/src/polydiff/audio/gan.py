"""Adversarial vocoder training: HiFi-GAN / UnivNet discriminators and the GAN vocoder objective.

- :class:`MultiPeriodDiscriminator` (HiFi-GAN, Kong et al. 2020, sec. 2.2): the waveform
  folded into ``(T / p, p)`` for periods ``2, 3, 5, 7, 11``, 2-D convs with ``(5, 1)`` kernels.
- :class:`MultiResolutionDiscriminator` (UnivNet, Jang et al. 2021, sec. 2.3; used by Vocos):
  2-D convs on linear magnitude spectrograms at three STFT resolutions (``torch.stft``).
- :class:`GANVocoder`: a generator (any ``log-mel (B, M, F) -> wave (B, 1, L)`` network, e.g.
  :class:`polydiff.audio.models.VocosVocoder`) plus its discriminators in one module, so the
  engine's one optimizer, EMA and checkpoints carry both; ``forward`` is the generator.
- :class:`GANVocoderObjective`: HiFi-GAN's least-squares GAN losses (Eq. 1-2), feature matching
  (Eq. 4) and mel L1 (Eq. 3), total ``L_G = L_adv + fm_weight L_fm + mel_weight L_mel``
  (Eq. 5-6: 2 and 45), plus an optional MR-STFT term (auraloss, Yamamoto et al. 2020 Eq. 5)
  and an optional fine-resolution spectral-convergence term (:func:`fine_spectral_loss`);
  like HiFi-GAN it trains on random segments (``segment_frames`` mel frames) of the clips.

One optimizer step updates both players at once (simultaneous gradient descent): the
discriminator loss sees the generator output detached, and the generator's adversarial and
feature-matching terms run the discriminators with detached parameters
(``torch.func.functional_call``), so each loss reaches only its own player's parameters: the
gradient is exactly that of HiFi-GAN's two losses on one batch, taken together rather than in
turn. The "denoiser" is the generator's output, as for :class:`VocoderObjective`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from auraloss.freq import MultiResolutionSTFTLoss, SpectralConvergenceLoss
from torch import nn
from torch.func import functional_call
from torch.nn.utils.parametrizations import weight_norm

from .models import VocoderDenoiser, random_segment
from .spectral import MelSpectrogramCodec

__all__ = [
    "DISCRIMINATOR_SIZES",
    "GANVocoder",
    "GANVocoderObjective",
    "MultiPeriodDiscriminator",
    "MultiResolutionDiscriminator",
    "discriminator_loss",
    "feature_matching_loss",
    "fine_spectral_loss",
    "gan_vocoder",
    "generator_adversarial_loss",
]

Features = list[torch.Tensor]
UNIVNET_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))  # (n_fft, hop, win)


# ------------------------------------------------------------------------------ discriminators
def _conv_stack(
    convs: nn.ModuleList, post: nn.Module, h: torch.Tensor
) -> tuple[torch.Tensor, Features]:
    """Leaky-ReLU(0.1) conv stack then the score conv: ``(flattened scores, every feature map)``."""
    feats = []
    for conv in convs:
        h = F.leaky_relu(conv(h), 0.1)
        feats.append(h)
    h = post(h)
    feats.append(h)
    return h.flatten(1), feats


class PeriodDiscriminator(nn.Module):
    """One HiFi-GAN period sub-discriminator: ``(B, 1, T)`` -> ``(B, 1, T/p/3^k, p)`` scores
    and its feature maps. Kernels ``(5, 1)``, stride ``(3, 1)`` (HiFi-GAN Fig. 2b)."""

    def __init__(self, period: int, channels: Sequence[int] = (32, 128, 512, 1024)) -> None:
        super().__init__()
        self.period = period
        chans = [1, *channels]
        convs = [
            nn.Conv2d(chans[i], chans[i + 1], (5, 1), (3, 1), padding=(2, 0))
            for i in range(len(channels))
        ]
        convs.append(nn.Conv2d(chans[-1], chans[-1], (5, 1), 1, padding=(2, 0)))
        self.convs = nn.ModuleList(weight_norm(c) for c in convs)
        self.post = weight_norm(nn.Conv2d(chans[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, Features]:
        b, c, t = wave.shape
        if t % self.period:
            wave = F.pad(wave, (0, self.period - t % self.period), mode="reflect")
        return _conv_stack(self.convs, self.post, wave.reshape(b, c, -1, self.period))  # (T/p, p)


class MultiPeriodDiscriminator(nn.Module):
    """HiFi-GAN's MPD: one :class:`PeriodDiscriminator` per period (primes avoid overlap)."""

    def __init__(
        self,
        periods: Sequence[int] = (2, 3, 5, 7, 11),
        channels: Sequence[int] = (32, 128, 512, 1024),
    ) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(p, channels) for p in periods)

    def forward(self, wave: torch.Tensor) -> tuple[list[torch.Tensor], list[Features]]:
        outs = [d(wave) for d in self.discriminators]
        return [o[0] for o in outs], [o[1] for o in outs]


class ResolutionDiscriminator(nn.Module):
    """One UnivNet resolution sub-discriminator on the linear magnitude spectrogram
    ``|STFT(x)|`` ``(B, 1, frames, bins)``: five ``(3, 9)`` convs (stride 2 along frequency)."""

    def __init__(self, n_fft: int, hop_length: int, win_length: int, channels: int = 32) -> None:
        super().__init__()
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        convs = [nn.Conv2d(1, channels, (3, 9), padding=(1, 4))]
        convs += [nn.Conv2d(channels, channels, (3, 9), (1, 2), padding=(1, 4)) for _ in range(3)]
        convs.append(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1)))
        self.convs = nn.ModuleList(weight_norm(c) for c in convs)
        self.post = weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, Features]:
        if wave.shape[-1] <= self.n_fft // 2:
            raise ValueError(
                f"the n_fft {self.n_fft} resolution discriminator needs clips of more than "
                f"{self.n_fft // 2} samples, got {wave.shape[-1]} (raise objective.segment_frames)"
            )
        spec = torch.stft(
            wave[:, 0],
            self.n_fft,
            self.hop_length,
            self.win_length,
            self.window,
            center=True,
            return_complex=True,
        ).abs()  # fmt: skip  (B, bins, frames)
        return _conv_stack(self.convs, self.post, spec.transpose(1, 2)[:, None])  # (frames, bins)


class MultiResolutionDiscriminator(nn.Module):
    """UnivNet's MRD: :class:`ResolutionDiscriminator` at ``(n_fft, hop, win)`` resolutions
    (UnivNet's 1024/120/600, 2048/240/1200, 512/50/240, the MR-STFT loss settings)."""

    def __init__(
        self,
        resolutions: Sequence[Sequence[int]] = UNIVNET_RESOLUTIONS,
        channels: int = 32,
    ) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            ResolutionDiscriminator(n, h, w, channels) for n, h, w in resolutions
        )

    def forward(self, wave: torch.Tensor) -> tuple[list[torch.Tensor], list[Features]]:
        outs = [d(wave) for d in self.discriminators]
        return [o[0] for o in outs], [o[1] for o in outs]


class _Discriminators(nn.Module):
    """MPD and MRD side by side: scores and feature maps of every sub-discriminator."""

    def __init__(
        self, mpd: MultiPeriodDiscriminator | None, mrd: MultiResolutionDiscriminator | None
    ) -> None:
        super().__init__()
        if mpd is None and mrd is None:
            raise ValueError("a GAN vocoder needs at least one of the MPD and the MRD")
        self.mpd, self.mrd = mpd, mrd

    def forward(self, wave: torch.Tensor) -> tuple[list[torch.Tensor], list[Features]]:
        scores: list[torch.Tensor] = []
        feats: list[Features] = []
        for d in (self.mpd, self.mrd):
            if d is not None:
                s, f = d(wave)
                scores += s
                feats += f
        return scores, feats


DISCRIMINATOR_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(periods=(2, 3), period_channels=(4, 8), resolution_channels=4),
    # CPU recipe: HiFi-GAN's periods and UnivNet's resolutions at 1/16 - 1/2 of their widths
    "small": dict(periods=(2, 3, 5, 7, 11), period_channels=(8, 16, 32, 32),
                  resolution_channels=8),
    "base": dict(periods=(2, 3, 5, 7, 11), period_channels=(32, 128, 512, 1024),
                 resolution_channels=32),  # HiFi-GAN / UnivNet widths
}  # fmt: skip


class GANVocoder(nn.Module):
    """A generator and its discriminators in one module; ``forward(logmel)`` = the generator.

    The buffer ``steps`` counts training loss evaluations (saved and resumed with the model), so
    :class:`GANVocoderObjective` can start the adversarial terms after a warm-up.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module) -> None:
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        return self.generator(logmel)


def gan_vocoder(
    generator: nn.Module,
    size: str = "small",
    mpd: bool = True,
    mrd: bool = True,
) -> GANVocoder:
    """``generator`` plus an MPD and / or MRD of a named size (:data:`DISCRIMINATOR_SIZES`)."""
    if size not in DISCRIMINATOR_SIZES:
        raise KeyError(
            f"unknown discriminator size {size!r}; available: {sorted(DISCRIMINATOR_SIZES)}"
        )
    cfg = DISCRIMINATOR_SIZES[size]
    disc = _Discriminators(
        MultiPeriodDiscriminator(cfg["periods"], cfg["period_channels"]) if mpd else None,
        MultiResolutionDiscriminator(channels=cfg["resolution_channels"]) if mrd else None,
    )
    return GANVocoder(generator, disc)


# ------------------------------------------------------------------------------ losses
def discriminator_loss(real: Sequence[torch.Tensor], fake: Sequence[torch.Tensor]) -> torch.Tensor:
    """LSGAN discriminator loss, HiFi-GAN Eq. 1: ``sum_k E[(D_k(x) - 1)^2] + E[D_k(G(s))^2]``."""
    return sum(((r - 1) ** 2).mean() + (f**2).mean() for r, f in zip(real, fake, strict=True))


def generator_adversarial_loss(fake: Sequence[torch.Tensor]) -> torch.Tensor:
    """LSGAN generator loss, HiFi-GAN Eq. 2: ``sum_k E[(D_k(G(s)) - 1)^2]``."""
    return sum(((f - 1) ** 2).mean() for f in fake)


def feature_matching_loss(real: Sequence[Features], fake: Sequence[Features]) -> torch.Tensor:
    """HiFi-GAN Eq. 4: ``sum_k sum_i (1 / N_i) ||D_k^i(x) - D_k^i(G(s))||_1`` (real detached)."""
    return sum(
        F.l1_loss(f, r.detach())
        for rs, fs in zip(real, fake, strict=True)
        for r, f in zip(rs, fs, strict=True)
    )


_SPECTRAL_CONVERGENCE = SpectralConvergenceLoss()


def fine_spectral_loss(y: torch.Tensor, x: torch.Tensor, n_fft: int = 4096) -> torch.Tensor:
    """Spectral convergence ``|| |Y| - |X| ||_F / || |X| ||_F`` (Arik et al. 2019, Eq. 2; the
    first term of Yamamoto et al. 2020, Eq. 3) of Hann-windowed ``n_fft``-sample magnitude
    spectra of ``y`` and the reference ``x`` (B, 1, L), hop ``n_fft // 4``, without centring.

    At 16 kHz and ``n_fft = 4096`` the bins are 3.9 Hz apart, so a partial 20 cents off at C4
    (3 Hz) already changes the spectrum: the 46-Hz-wide mel filters of the ``cpu`` preset and
    the 600-1200-sample windows of the MR-STFT loss blur such a shift inside their main lobes.
    No centring padding: a frame lies inside the clip, so a steady partial's magnitude does not
    depend on its phase (reflected padding mixes the partial with its mirror image, whose
    interference does), and the term is 0 for a phase-shifted copy. Spectral convergence
    alone: a log-magnitude distance at this resolution is dominated by the window's sidelobes.
    """
    if x.shape[-1] < n_fft or y.shape != x.shape:
        raise ValueError(
            f"fine_spectral_loss needs clips of the same shape with at least n_fft={n_fft} "
            f"samples, got {tuple(y.shape)} and {tuple(x.shape)} (raise objective.segment_frames)"
        )
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)

    def mag(w: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(w.reshape(-1, w.shape[-1]), n_fft, n_fft // 4, n_fft, window,
                          center=False, return_complex=True)  # fmt: skip
        return spec.abs().transpose(1, 2)  # (B, frames, bins)

    return _SPECTRAL_CONVERGENCE(mag(y), mag(x))


class GANVocoderObjective:
    """HiFi-GAN's generator + discriminator losses as one scalar for the engine's one optimizer.

    ``loss = L_D + adv_weight * (L_adv + fm_weight * L_fm) + mel_weight * L_mel
    + stft_weight * L_mrstft + fine_weight * L_fine`` (:func:`fine_spectral_loss` at
    ``fine_n_fft``) where ``L_D`` reaches only the discriminators and the rest only
    the generator (see the module docstring). Defaults are HiFi-GAN's (``fm 2, mel 45``). The
    first ``adv_start_step`` training steps use the spectral terms only (the discriminators
    idle, at no cost), as a warm start of the generator; so does a loss evaluated without
    gradients (held-out scoring), where the adversarial terms measure nothing about quality.
    """

    def __init__(
        self,
        preset: str = "cpu",
        mel_weight: float = 45.0,
        fm_weight: float = 2.0,
        adv_weight: float = 1.0,
        stft_weight: float = 0.0,
        segment_frames: int | None = 16,
        adv_start_step: int = 0,
        fine_weight: float = 0.0,
        fine_n_fft: int = 4096,
    ) -> None:
        self.segment_frames, self.adv_start_step = segment_frames, adv_start_step
        self.fine_weight, self.fine_n_fft = fine_weight, fine_n_fft
        self.codec = MelSpectrogramCodec(preset)
        self.mrstft = MultiResolutionSTFTLoss() if stft_weight else None
        self.mel_weight, self.fm_weight = mel_weight, fm_weight
        self.adv_weight, self.stft_weight = adv_weight, stft_weight

    @staticmethod
    def _parts(net: nn.Module) -> GANVocoder:
        inner = getattr(net, "module", net)  # DDP wraps the module
        if not isinstance(inner, GANVocoder):
            raise TypeError(
                f"GANVocoderObjective needs a GANVocoder model (model=audio_vocos_gan), got "
                f"{type(inner).__name__}"
            )
        return inner

    def terms(
        self, net: nn.Module, x: torch.Tensor, cond: Mapping | None, generator: Any = None
    ) -> dict[str, torch.Tensor]:
        """Every loss term (``disc``, ``adv``, ``fm``, ``mel``, ``mrstft``, ``fine``) on one
        batch."""
        if cond is None or "mel" not in cond:
            raise KeyError(
                "GANVocoderObjective needs items with 'mel' (use wave_data(with_mel=True))"
            )
        model = self._parts(net)
        disc = model.discriminator
        x, mel = random_segment(x, cond["mel"], self.segment_frames, generator)
        y = model.generator(mel)  # (B, 1, L)
        out = {"mel": F.l1_loss(self.codec(y), mel)}
        out["mrstft"] = self.mrstft(y, x) if self.mrstft is not None else y.new_zeros(())
        fine = fine_spectral_loss(y, x, self.fine_n_fft) if self.fine_weight else None
        out["fine"] = fine if fine is not None else y.new_zeros(())
        training = torch.is_grad_enabled()
        if training and model.training:
            model.steps += 1
        # warm-up, and held-out scoring without gradients (the trainer's EMA choice): the
        # spectral terms only, the quality of the generator's reconstruction
        if not training or int(model.steps) <= self.adv_start_step:
            zero = y.new_zeros(())
            return {**out, "disc": zero, "adv": zero, "fm": zero}
        real_scores, real_feats = disc(x)
        fake_scores_d, _ = disc(y.detach())
        out["disc"] = discriminator_loss(real_scores, fake_scores_d)
        frozen = {k: v.detach() for k, v in disc.named_parameters()}  # L_G must not move D
        fake_scores, fake_feats = functional_call(disc, frozen, (y,))
        out["adv"] = generator_adversarial_loss(fake_scores)
        out["fm"] = feature_matching_loss(real_feats, fake_feats)
        return out

    def loss(
        self, net: nn.Module, x: torch.Tensor, cond: Mapping | None, generator: Any = None
    ) -> torch.Tensor:
        t = self.terms(net, x, cond, generator)
        gen = self.adv_weight * (t["adv"] + self.fm_weight * t["fm"]) + self.mel_weight * t["mel"]
        return t["disc"] + gen + self.stft_weight * t["mrstft"] + self.fine_weight * t["fine"]

    def denoiser(self, net: nn.Module) -> VocoderDenoiser:
        return VocoderDenoiser(net)
