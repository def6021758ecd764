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

:func:`locked_phase` gives a magnitude spectrogram the phase of a phase-locked vocoder (Laroche &
Dolson 1999): the phase the Vocos-style vocoder's ``phase="locked"`` head synthesises with.
"""

from __future__ import annotations

import math
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
    "locked_phase",
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


def locked_phase(mag: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """The phase of a phase-locked vocoder for a magnitude spectrogram ``mag`` (B, K, T).

    Laroche & Dolson (1999), "Improved phase vocoder time-scale modification of audio", with the
    instantaneous frequency read from the magnitude alone (as TiFGAN, Marafioti et al. 2019,
    reconstructs the phase of generated magnitudes): in every frame the local maxima of
    ``log|S|`` are the partials; a parabola through the peak bin and its neighbours gives the
    partial's frequency ``omega_p = 2 pi (p + delta) / n_fft`` (Smith & Serra 1987); every bin
    belongs to its nearest peak. A partial's phase at the frame centre advances by the mean of its
    frequencies in the two frames times the hop, ``Theta_t = Theta_{t-1}[p] + hop (omega_{t-1}[p]
    + omega_t[p]) / 2``, and bin ``k`` of its region gets ``Theta_t - pi k``: the phase a
    stationary sinusoid has in a centred, periodic-Hann STFT (``torch.stft(center=True)``), where
    a window of ``n_fft`` samples puts ``omega_k n_fft / 2 = pi k`` between the frame start and
    centre. All bins of one partial share ``Theta``, so a partial between two bins is one
    sinusoid, at its own frequency (not on the ``sample_rate / hop`` grid a per-frame phase
    repeats on). The first frame starts at ``Theta = 0``. No gradient flows through the phase.
    """
    if mag.ndim != 3 or mag.shape[1] != n_fft // 2 + 1:
        raise ValueError(
            f"locked_phase expects a magnitude (B, {n_fft // 2 + 1}, T), got {tuple(mag.shape)}"
        )
    with torch.no_grad():
        a = torch.log(mag.detach().double().clamp(min=1e-7))  # (B, K, T)
        b, k_bins, frames = a.shape
        left = torch.nn.functional.pad(a, (0, 0, 1, 0), value=-1e30)[:, :-1]
        right = torch.nn.functional.pad(a, (0, 0, 0, 1), value=-1e30)[:, 1:]
        peak = (a > left) & (a >= right)
        curv = left - 2 * a + right
        inner = peak & (curv < 0) & (left > -1e29) & (right > -1e29)
        delta = torch.where(inner, 0.5 * (left - right) / curv.where(inner, -1.0), 0.0)
        k = torch.arange(k_bins, dtype=torch.long).view(1, -1, 1).expand(b, -1, frames)
        # nearest peak: the last one at or below k and the first one at or above k
        below = torch.where(peak, k, -1).cummax(dim=1).values
        above = torch.where(peak, k, k_bins).flip(1).cummin(dim=1).values.flip(1)
        take_below = (below >= 0) & ((above >= k_bins) | (k - below <= above - k))
        near = torch.where(take_below, below, above)
        near = torch.where(near >= k_bins, k, near)  # no peak at all: the bin itself
        omega = 2 * math.pi * (near + delta.gather(1, near)) / n_fft  # (B, K, T)
        theta = torch.zeros(b, k_bins, frames, dtype=torch.float64)
        prev = torch.zeros(b, k_bins, dtype=torch.float64)
        prev_omega = omega[..., 0]
        for t in range(frames):
            p = near[..., t]
            if t:
                step = 0.5 * (prev_omega.gather(1, p) + omega[..., t]) * hop_length
                prev = prev.gather(1, p) + step
            theta[..., t] = prev
            prev_omega = omega[..., t]
        phase = theta - math.pi * k
    return torch.remainder(phase, 2 * math.pi).to(mag.dtype)
