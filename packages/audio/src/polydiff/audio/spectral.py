"""Log-mel front end and the Griffin-Lim baseline vocoder (torchaudio transforms, no hand STFT).

:class:`MelSpectrogramCodec` turns waveforms ``(B, L)`` into log-mel "images" ``(B, n_mels,
frames)`` and back with Griffin-Lim. Log compression is HiFi-GAN's ``log(clamp(mel, 1e-5))`` on
the magnitude (power 1) mel spectrogram with Slaney mel filters (librosa's default, as HiFi-GAN
and AudioLDM). Named presets (:data:`MEL_PRESETS`):

- ``cpu``: 16 kHz, n_fft 1024, hop 256, 64 mels, 64 frames (16384 samples, ~1 s): a 64x64
  mel image a small 2-D U-Net trains on in minutes on CPU;
- ``audioldm``: AudioLDM's (Liu et al. 2023) 16 kHz, n_fft 1024, hop 160, 64 mels, 0-8 kHz,
  1024 frames (10.24 s).

A clip of ``frames * hop`` samples gives ``frames + 1`` centred STFT frames; the last one is
dropped so every frame maps to exactly ``hop`` samples (vocoders output ``frames * hop``).

:func:`harmonic_comb` places a pitch on the mel axis: the response of each mel filter to the
harmonics of f0, the pitch condition of the notes U-Net (a spatial map it can align with).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torchaudio

__all__ = [
    "MEL_PRESETS",
    "GriffinLimVocoder",
    "MelConfig",
    "MelSpectrogramCodec",
    "harmonic_comb",
    "mel_config",
]

LOG_FLOOR = 1e-5  # HiFi-GAN dynamic_range_compression clip value


@dataclass(frozen=True)
class MelConfig:
    """Parameters of a log-mel front end."""

    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 256
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float = 8000.0
    frames: int = 64

    @property
    def num_samples(self) -> int:
        """Samples per clip (``frames * hop_length``)."""
        return self.frames * self.hop_length

    def __post_init__(self) -> None:
        if self.f_max > self.sample_rate / 2:
            raise ValueError(f"f_max {self.f_max} is above Nyquist ({self.sample_rate / 2})")
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} > n_fft {self.n_fft}")


MEL_PRESETS: dict[str, MelConfig] = {
    "cpu": MelConfig(),
    "audioldm": MelConfig(hop_length=160, frames=1024),
}


def mel_config(preset: str | MelConfig = "cpu", **overrides: Any) -> MelConfig:
    """A :class:`MelConfig` from a preset name plus field overrides."""
    if isinstance(preset, MelConfig):
        base = preset
    elif preset in MEL_PRESETS:
        base = MEL_PRESETS[preset]
    else:
        raise KeyError(f"unknown mel preset {preset!r}; available: {sorted(MEL_PRESETS)}")
    return MelConfig(**{**asdict(base), **overrides}) if overrides else base


def harmonic_comb(f0_hz: torch.Tensor, preset: str | MelConfig = "cpu") -> torch.Tensor:
    """Mel-axis map of pitches ``f0_hz`` (P,) -> (P, n_mels) in [0, 1]: for each mel filter the
    largest response, relative to its peak, to a partial ``k * f0`` (k = 1, 2, ... below
    ``f_max``). The filters are the codec's (torchaudio ``melscale_fbanks``, Slaney) sampled on
    a 1 Hz grid, so a partial between two filter centres lights both in proportion."""
    c = mel_config(preset)
    n_freqs = int(c.sample_rate // 2) + 1  # 1 Hz grid 0 .. Nyquist
    fb = torchaudio.functional.melscale_fbanks(
        n_freqs, c.f_min, c.f_max, c.n_mels, c.sample_rate, norm="slaney", mel_scale="slaney"
    )  # (n_freqs, n_mels)
    fb = fb / fb.amax(dim=0, keepdim=True).clamp(min=1e-12)
    f0 = torch.as_tensor(f0_hz, dtype=torch.float64).reshape(-1)
    if f0.numel() and (f0.min() <= 0 or f0.max() >= c.f_max):
        raise ValueError(f"harmonic_comb: f0 must lie in (0, {c.f_max}) Hz, got {f0.tolist()}")
    k = torch.arange(1, int(c.f_max // float(f0.min())) + 2, dtype=torch.float64)
    partials = f0[:, None] * k  # (P, K)
    inside = partials < c.f_max
    idx = partials.round().long().clamp(max=n_freqs - 1)
    resp = fb[idx] * inside[..., None]  # (P, K, n_mels)
    return resp.amax(dim=1).float()


class MelSpectrogramCodec(torch.nn.Module):
    """Waveform ``(B, L)`` <-> log-mel ``(B, n_mels, frames)`` (torchaudio transforms)."""

    def __init__(self, preset: str | MelConfig = "cpu", **overrides: Any) -> None:
        super().__init__()
        self.config = c = mel_config(preset, **overrides)
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=c.sample_rate,
            n_fft=c.n_fft,
            win_length=c.win_length,
            hop_length=c.hop_length,
            f_min=c.f_min,
            f_max=c.f_max,
            n_mels=c.n_mels,
            power=1.0,
            center=True,
            norm="slaney",
            mel_scale="slaney",
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.encode(wave)

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """Log-mel of ``wave`` (B, L) or (B, 1, L) -> (B, n_mels, L // hop)."""
        if wave.ndim == 3:
            wave = wave[:, 0]
        frames = wave.shape[-1] // self.config.hop_length
        mel = self.melspec(wave.float())[..., :frames]  # drop the trailing centred frame
        return torch.log(mel.clamp(min=LOG_FLOOR))


class GriffinLimVocoder(torch.nn.Module):
    """Baseline vocoder: inverse mel scale (least squares) then Griffin-Lim (Griffin & Lim 1984).

    ``forward(logmel (B, n_mels, F)) -> wave (B, F * hop)``; ``n_iter`` Griffin-Lim iterations
    with momentum 0.99 (torchaudio's default).
    """

    def __init__(self, codec: MelSpectrogramCodec | None = None, n_iter: int = 32) -> None:
        super().__init__()
        self.codec = codec or MelSpectrogramCodec()
        c = self.codec.config
        self.n_iter = n_iter
        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            n_stft=c.n_fft // 2 + 1,
            n_mels=c.n_mels,
            sample_rate=c.sample_rate,
            f_min=c.f_min,
            f_max=c.f_max,
            norm="slaney",
            mel_scale="slaney",
        )
        self.register_buffer("window", torch.hann_window(c.win_length), persistent=False)

    @torch.no_grad()
    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        c = self.codec.config
        frames = logmel.shape[-1]
        mel = torch.exp(logmel.float())
        mel = torch.cat([mel, mel[..., -1:]], dim=-1)  # restore the dropped trailing frame
        spec = self.inverse_mel(mel).clamp(min=0)  # (B, n_fft // 2 + 1, F + 1)
        return torchaudio.functional.griffinlim(
            spec,
            self.window,
            n_fft=c.n_fft,
            hop_length=c.hop_length,
            win_length=c.win_length,
            power=1.0,
            n_iter=self.n_iter,
            momentum=0.99,
            length=frames * c.hop_length,
            rand_init=False,
        )
