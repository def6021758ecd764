"""Audio metrics on waveforms: pitch, spectral distances, and a classifier for accuracy / FAD.

- :func:`median_f0` / :func:`pitch_accuracy`: ``librosa.pyin`` (Mauch & Dixon 2014) median f0 of
  the voiced frames; a note is right when within 50 cents of the requested pitch.
- :func:`mrstft_distance`: multi-resolution STFT distance with auraloss' default settings
  (``MultiResolutionSTFTLoss``: FFT 1024/2048/512, hop 120/240/50, window 600/1200/240; spectral
  convergence + L1 log-magnitude, Yamamoto et al. 2020, Eq. 3-5), per item.
- :func:`log_spectral_distance`: LSD = mean over frames of
  ``sqrt(mean_k (10 log10 P(k) - 10 log10 P'(k))^2)`` over the bins inside the mel band.
- :func:`mel_cepstral_distortion`: MCD (Kubichek 1993) =
  ``10 / ln 10 * sqrt(2 sum_{d>=1} (c_d - c'_d)^2)`` averaged over frames, ``c`` the MFCCs of
  torchaudio (natural-log mels, orthonormal DCT-II), ``c_0`` (energy) excluded.
- :class:`AudioClassifier`: a small CNN on log-mels trained on the built-in data; its logits
  give instrument / pitch / event accuracy and its penultimate features a Frechet audio distance
  (Kilgour et al. 2019, with this domain network instead of VGGish).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import librosa
import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from auraloss.freq import MultiResolutionSTFTLoss
from safetensors.torch import load_file, save_file
from torch import nn

from polydiff.core.fileio import atomic_path, atomic_write_text

from .spectral import MelConfig, MelSpectrogramCodec, mel_config

__all__ = [
    "AudioClassifier",
    "cache_root",
    "PYIN_FMAX",
    "PYIN_FMIN",
    "cents",
    "load_or_train_classifier",
    "log_spectral_distance",
    "median_f0",
    "mel_cepstral_distortion",
    "mrstft_distance",
    "pitch_accuracy",
    "train_classifier",
]

PYIN_FMIN, PYIN_FMAX = 65.0, 2100.0  # C2 .. C7


# ------------------------------------------------------------------------------ pitch
def median_f0(wave: torch.Tensor | np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """Median pyin f0 (Hz) of the voiced frames of each row of ``wave`` (N, L); NaN if none.

    pyin runs with frame 1024, hop 512 and a 20-cent pitch grid (``resolution=0.2``): a
    quantisation error of at most 10 cents, well inside the 50-cent tolerance, at 1/20 the cost.
    """
    w = np.asarray(wave.detach().cpu() if isinstance(wave, torch.Tensor) else wave, np.float32)
    w = w.reshape(-1, w.shape[-1])
    f0, voiced, _ = librosa.pyin(
        w, fmin=PYIN_FMIN, fmax=PYIN_FMAX, sr=sample_rate, frame_length=1024, hop_length=512,
        resolution=0.2,
    )  # fmt: skip
    f0 = np.where(voiced, f0, np.nan)
    out = np.full(len(w), np.nan)
    for i in range(len(w)):
        if np.isfinite(f0[i]).any():
            out[i] = np.nanmedian(f0[i])
    return out


def cents(f: np.ndarray | float, ref: np.ndarray | float) -> np.ndarray:
    """``1200 log2(f / ref)`` (NaN where f is NaN)."""
    return 1200.0 * np.log2(np.asarray(f, np.float64) / np.asarray(ref, np.float64))


def pitch_accuracy(
    wave: torch.Tensor, target_hz: Sequence[float] | np.ndarray, sample_rate: int = 16000,
    tolerance_cents: float = 50.0,
) -> dict[str, float]:  # fmt: skip
    """Fraction of clips whose median f0 is within ``tolerance_cents`` of ``target_hz``, and the
    median absolute error in cents (unvoiced clips count as wrong)."""
    err = np.abs(cents(median_f0(wave, sample_rate), np.asarray(target_hz)))
    ok = np.where(np.isfinite(err), err <= tolerance_cents, False)
    return {
        "pitch_accuracy": float(ok.mean()),
        "pitch_error_cents": float(np.nanmedian(err)) if np.isfinite(err).any() else 1e9,
        "voiced_fraction": float(np.isfinite(err).mean()),
    }


# ------------------------------------------------------------------------------ distances
_MRSTFT: MultiResolutionSTFTLoss | None = None


def mrstft_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-item MR-STFT distance (auraloss defaults) between ``a`` and reference ``b`` (N, L)."""
    global _MRSTFT
    if _MRSTFT is None:
        _MRSTFT = MultiResolutionSTFTLoss()
    a, b = a.reshape(len(a), 1, -1).float(), b.reshape(len(b), 1, -1).float()
    if a.shape != b.shape:
        raise ValueError(f"mrstft_distance: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    with torch.no_grad():
        return torch.stack([_MRSTFT(a[i : i + 1], b[i : i + 1]) for i in range(len(a))])


def _power_spectrogram(wave: torch.Tensor, cfg: MelConfig) -> torch.Tensor:
    spec = torchaudio.transforms.Spectrogram(
        n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length, power=2.0
    )
    return spec(wave.reshape(len(wave), -1).float())  # (N, n_fft // 2 + 1, frames)


def log_spectral_distance(
    a: torch.Tensor, b: torch.Tensor, preset: str | MelConfig = "cpu", eps: float = 1e-10
) -> torch.Tensor:
    """Per-item LSD (dB) between ``a`` and ``b`` (N, L) on the STFT bins of the mel band."""
    cfg = mel_config(preset)
    pa, pb = _power_spectrogram(a, cfg), _power_spectrogram(b, cfg)
    freqs = torch.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    band = (freqs >= cfg.f_min) & (freqs <= cfg.f_max)
    diff = 10 * torch.log10(pa[:, band] + eps) - 10 * torch.log10(pb[:, band] + eps)
    return diff.pow(2).mean(dim=1).sqrt().mean(dim=-1)  # mean over frames of the RMS over bins


def mel_cepstral_distortion(
    a: torch.Tensor, b: torch.Tensor, preset: str | MelConfig = "cpu", n_mfcc: int = 13
) -> torch.Tensor:
    """Per-item MCD (dB) between ``a`` and ``b`` (N, L), c_0 excluded."""
    cfg = mel_config(preset)
    mfcc = torchaudio.transforms.MFCC(
        sample_rate=cfg.sample_rate, n_mfcc=n_mfcc, log_mels=True,
        melkwargs=dict(n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length,
                       n_mels=cfg.n_mels, f_min=cfg.f_min, f_max=cfg.f_max),
    )  # fmt: skip
    ca, cb = mfcc(a.reshape(len(a), -1).float()), mfcc(b.reshape(len(b), -1).float())
    d = (ca[:, 1:] - cb[:, 1:]).pow(2).sum(dim=1)  # (N, frames)
    return (10.0 / math.log(10.0) * (2.0 * d).sqrt()).mean(dim=-1)


# ------------------------------------------------------------------------------ classifier
def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where trained metric / first-stage networks are cached (``~/.cache/polydiff/audio``)."""
    return Path(cache_dir) if cache_dir else Path.home() / ".cache" / "polydiff" / "audio"


class AudioClassifier(nn.Module):
    """CNN on normalised log-mels ``(B, n_mels, F)``: 4 conv blocks, global pooling, a feature
    layer (``features``) and one linear head per label set (``heads``)."""

    def __init__(self, head_sizes: Sequence[int], width: int = 16, feature_dim: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for i in range(4):  # 64x64 -> 32 -> 16 -> 8, widths 16, 32, 64, 64
            cout = width * 2 ** min(i, 2)
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
            layers += [nn.MaxPool2d(2)] if i < 3 else []
            cin = cout
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(cin * 2, feature_dim)
        self.heads = nn.ModuleList([nn.Linear(feature_dim, k) for k in head_sizes])
        self.register_buffer("stats", torch.tensor([0.0, 1.0]))  # log-mel mean, std

    def features(self, logmel: torch.Tensor) -> torch.Tensor:
        x = ((logmel - self.stats[0]) / self.stats[1])[:, None]  # (B, 1, M, F)
        h = self.body(x)  # (B, C, M/8, F/8)
        h = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.proj(h)  # (B, D)

    def forward(self, logmel: torch.Tensor) -> list[torch.Tensor]:
        f = F.silu(self.features(logmel))
        return [head(f) for head in self.heads]


def _augment(wave: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random gain, small noise and a shift of up to 20 ms (robustness to vocoder artefacts)."""
    b = len(wave)
    gain = torch.empty(b, 1).uniform_(0.5, 1.2, generator=gen)
    noise = torch.randn(wave.shape, generator=gen) * torch.empty(b, 1).uniform_(
        0, 0.01, generator=gen
    )
    shift = int(torch.randint(-320, 321, (1,), generator=gen))
    return torch.roll(wave, shift, dims=-1) * gain + noise


def train_classifier(
    wave: torch.Tensor, labels: Sequence[torch.Tensor], preset: str | MelConfig = "cpu",
    steps: int = 300, batch_size: int = 32, lr: float = 3e-3, seed: int = 0,
) -> AudioClassifier:  # fmt: skip
    """Train an :class:`AudioClassifier` with one head per label tensor (cross-entropy sum)."""
    codec = MelSpectrogramCodec(preset)
    torch.manual_seed(seed)
    net = AudioClassifier([int(y.max()) + 1 for y in labels])
    with torch.no_grad():
        mel = torch.cat([codec(wave[i : i + 256]) for i in range(0, len(wave), 256)])
    net.stats.copy_(torch.stack([mel.mean(), mel.std()]))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(wave), (batch_size,), generator=gen)
        with torch.no_grad():
            x = codec(_augment(wave[idx], gen))
        loss = sum(F.cross_entropy(out, y[idx]) for out, y in zip(net(x), labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def load_or_train_classifier(
    key: dict, wave_fn, labels_fn, cache_dir: str | Path | None, steps: int = 300,
    preset: str | MelConfig = "cpu",
) -> AudioClassifier:  # fmt: skip
    """The classifier for ``key`` (a JSON-able description of its data) from ``cache_dir``,
    else trained on ``wave_fn()`` / ``labels_fn()`` and cached (safetensors + JSON)."""
    key = {**key, "steps": steps, "preset": str(preset), "version": 2}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root(cache_dir) / f"classifier-{digest}.safetensors"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        net = AudioClassifier(meta["head_sizes"])
        net.load_state_dict(load_file(str(path)))
        return net.eval()
    labels = labels_fn()
    net = train_classifier(wave_fn(), labels, preset, steps=steps)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    atomic_write_text(
        meta_path,
        json.dumps({"key": key, "head_sizes": [h.out_features for h in net.heads]}, indent=1),
    )
    return net
