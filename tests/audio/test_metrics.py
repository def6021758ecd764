"""Audio metrics on known signals and against brute-force numpy references on small inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import torch
import torchaudio

from polydiff.audio.data import INSTRUMENTS, midi_to_hz, synth_note
from polydiff.audio.metrics import (
    cents,
    log_spectral_distance,
    median_f0,
    mel_cepstral_distortion,
    mrstft_distance,
    pitch_accuracy,
)
from polydiff.audio.spectral import mel_config

SR = 16000


def _note(midi: int, seed: int = 0, instrument: int = 2) -> np.ndarray:
    return synth_note(INSTRUMENTS[instrument], midi, np.random.default_rng(seed))


def _stft_np(x: np.ndarray, n_fft: int, hop: int, win: int) -> np.ndarray:
    """Brute-force centred STFT (reflect padding, periodic Hann centred in n_fft): (K, frames)."""
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    window = np.zeros(n_fft)
    window[(n_fft - win) // 2 : (n_fft - win) // 2 + win] = w
    xp = np.pad(x, n_fft // 2, mode="reflect")
    frames = 1 + (len(xp) - n_fft) // hop
    k = np.arange(n_fft // 2 + 1)
    basis = np.exp(-2j * np.pi * np.outer(k, np.arange(n_fft)) / n_fft)  # explicit DFT
    return np.stack([basis @ (xp[i * hop : i * hop + n_fft] * window) for i in range(frames)], 1)


def test_pyin_scores_a_440_hz_note_and_pitch_shifted_copies():
    a4 = _note(69)
    f0 = median_f0(torch.from_numpy(a4)[None])[0]
    assert abs(cents(f0, 440.0)) < 15  # 5-cent detune + 10-cent pyin grid
    # resampling by 2^(-k/12) and playing at the same rate shifts the pitch up by k semitones
    for k in (-5, 3, 7):
        rate = round(16000 * 2 ** (-k / 12) / 100) * 100  # a rate with gcd 100: a short kernel
        shifted = torchaudio.functional.resample(torch.from_numpy(a4), 16000, rate)
        fk = median_f0(shifted[None])[0]
        assert abs(cents(fk, f0) - cents(16000, rate)) < 25, (k, fk, f0)  # two 20-cent grids
        assert abs(cents(fk, f0) - 100 * k) < 25
    acc = pitch_accuracy(torch.from_numpy(a4)[None].repeat(2, 1), [440.0, 440.0 * 2 ** (1 / 12)])
    assert acc["pitch_accuracy"] == 0.5 and acc["voiced_fraction"] == 1.0


def test_pyin_on_every_instrument_within_50_cents():
    for i in range(len(INSTRUMENTS)):
        for midi in (60, 83):
            f0 = median_f0(torch.from_numpy(_note(midi, seed=i, instrument=i))[None])[0]
            assert abs(cents(f0, midi_to_hz(midi))) < 50, (INSTRUMENTS[i].name, midi, f0)


def test_silence_is_unvoiced_and_counts_as_wrong():
    acc = pitch_accuracy(torch.zeros(1, 16384), [440.0])
    assert acc["pitch_accuracy"] == 0.0 and acc["voiced_fraction"] == 0.0


def _mrstft_np(x: np.ndarray, y: np.ndarray) -> float:
    """auraloss MultiResolutionSTFTLoss (defaults) written out: mean over 3 resolutions of
    ||Y| - |X||_F / ||Y||_F + mean |log|Y| - log|X||, with |.| = sqrt(max(re^2 + im^2, 1e-8))."""
    total = 0.0
    for n_fft, hop, win in ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240)):
        mx = np.sqrt(np.maximum(np.abs(_stft_np(x, n_fft, hop, win)) ** 2, 1e-8))
        my = np.sqrt(np.maximum(np.abs(_stft_np(y, n_fft, hop, win)) ** 2, 1e-8))
        sc = np.linalg.norm(my - mx) / np.linalg.norm(my)
        total += sc + np.mean(np.abs(np.log(my) - np.log(mx)))
    return total / 3


def test_mrstft_zero_on_itself_and_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3000)).astype(np.float32)
    y = (0.7 * x + 0.3 * rng.standard_normal((2, 3000))).astype(np.float32)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    assert torch.allclose(mrstft_distance(xt, xt), torch.zeros(2), atol=1e-6)
    got = mrstft_distance(xt, yt)
    for i in range(2):
        assert got[i].item() == pytest.approx(_mrstft_np(x[i], y[i]), rel=1e-4)
    assert got.min() > 0.1


def test_log_spectral_distance_matches_brute_force_in_mel_band():
    cfg = mel_config("cpu", f_min=1000.0, f_max=6000.0)
    rng = np.random.default_rng(1)
    a = rng.standard_normal(4096)
    b = a + 0.5 * rng.standard_normal(4096)
    pa = np.abs(_stft_np(a, 1024, 256, 1024)) ** 2
    pb = np.abs(_stft_np(b, 1024, 256, 1024)) ** 2
    freqs = np.arange(513) * SR / 1024
    band = (freqs >= 1000) & (freqs <= 6000)
    d = 10 * np.log10(pa[band] + 1e-10) - 10 * np.log10(pb[band] + 1e-10)
    ref = np.mean(np.sqrt(np.mean(d**2, axis=0)))
    got = log_spectral_distance(torch.tensor(a)[None], torch.tensor(b)[None], cfg)
    assert got.item() == pytest.approx(ref, rel=1e-4)
    same = log_spectral_distance(torch.tensor(a)[None], torch.tensor(a)[None], cfg)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_mel_cepstral_distortion_matches_brute_force():
    cfg = mel_config("cpu")
    rng = np.random.default_rng(2)
    a = rng.standard_normal(4096)
    b = a + 0.3 * rng.standard_normal(4096)
    fb = torchaudio.functional.melscale_fbanks(513, 0.0, 8000.0, 64, SR).numpy()  # (513, 64)

    def mfcc(x: np.ndarray) -> np.ndarray:  # torchaudio MFCC: power mel, log(+1e-6), DCT-II ortho
        mel = fb.T @ (np.abs(_stft_np(x, 1024, 256, 1024)) ** 2)  # (64, frames)
        return scipy.fft.dct(np.log(mel + 1e-6), type=2, norm="ortho", axis=0)[:13]

    ca, cb = mfcc(a), mfcc(b)
    per_frame = [
        10 / math.log(10) * math.sqrt(2 * sum((ca[d, t] - cb[d, t]) ** 2 for d in range(1, 13)))
        for t in range(ca.shape[1])
    ]
    got = mel_cepstral_distortion(torch.tensor(a)[None], torch.tensor(b)[None], cfg)
    assert got.item() == pytest.approx(float(np.mean(per_frame)), rel=1e-3)
    same = mel_cepstral_distortion(torch.tensor(a)[None], torch.tensor(a)[None], cfg)
    assert same.item() == pytest.approx(0.0, abs=1e-4)
