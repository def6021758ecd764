"""Audio networks: shapes, conditioning, named sizes, and the vocoder-as-denoiser contract."""

from __future__ import annotations

import math

import librosa
import numpy as np
import pytest
import torch

from polydiff.audio.data import PITCHES, midi_to_hz
from polydiff.audio.experiments import VocoderObjective
from polydiff.audio.metrics import median_f0
from polydiff.audio.models import PitchConditionedUNet, audio_unet, diffwave, vocos_vocoder
from polydiff.audio.spectral import harmonic_comb, locked_phase
from polydiff.core.samplers import sample
from polydiff.core.schedules import karras_sigmas


def test_audio_unet_sizes_and_shape_checks():
    net = audio_unet("audio-tiny", num_classes=5)
    x = torch.randn(2, 1, 64, 64)
    assert net(x, torch.rand(2), {"class": torch.tensor([0, 4])}).shape == x.shape
    with pytest.raises(KeyError, match="unknown audio U-Net size 'huge'"):
        audio_unet("huge")
    with pytest.raises(ValueError, match="must be divisible by 8"):
        audio_unet("audio-small", n_mels=60)
    with pytest.raises(ValueError, match="need data.root"):
        audio_unet("audio-tiny", num_classes="auto")


def test_vocos_output_length_and_input_check():
    voc = vocos_vocoder("tiny")
    wave = voc(torch.randn(3, 64, 10) - 5)
    assert wave.shape == (3, 1, 10 * 256) and torch.isfinite(wave).all()
    with pytest.raises(ValueError, match=r"expects log-mel \(B, 64, F\)"):
        voc(torch.randn(3, 80, 10))


def _steady_head(voc, bin_k: int, d: float) -> None:
    """A vocoder whose head ignores its input: one bin (magnitude 1) with phase output ``d``."""
    k = voc.n_fft // 2 + 1
    with torch.no_grad():
        voc.head.weight.zero_()
        voc.head.bias.zero_()
        voc.head.bias[:k] = -30.0  # log-magnitude: silent ...
        voc.head.bias[bin_k] = 0.0  # ... but bin_k
        voc.head.bias[k:] = d


def test_vocos_if_head_synthesises_a_steady_partial_between_bins():
    # a steady input gives the same head output in every frame: the integrated instantaneous
    # frequency (GANSynth) turns it into a steady partial at (k + eps) bins ...
    voc = vocos_vocoder("tiny", phase="if")
    eps = 0.4  # advance 2 pi eps hop / n_fft on top of bin k's own
    _steady_head(voc, 17, float(np.arctanh(2 * eps * voc.hop_length / voc.n_fft)))
    with torch.no_grad():
        wave = voc(torch.zeros(1, 64, 64))[0, 0, 2048:-2048].double()
    spec = torch.fft.rfft(wave * torch.hann_window(len(wave), dtype=torch.float64)).abs()
    peak_hz = float(spec.argmax()) * 16000 / len(wave)
    assert abs(peak_hz - (17 + eps) * 16000 / voc.n_fft) < 2.0  # 271.9 Hz
    # ... while the same constant read as a phase angle (Vocos) repeats every hop: partials only
    # on the sample_rate / hop = 62.5 Hz grid (a direct-phase head on a steady note)
    direct = vocos_vocoder("tiny", phase="direct")
    _steady_head(direct, 17, 0.3)
    with torch.no_grad():
        w = direct(torch.zeros(1, 64, 64))[0, 0, 2048:-2048]
    assert torch.allclose(w[256:], w[:-256], atol=1e-4 * float(w.abs().max()))
    with pytest.raises(ValueError, match="unknown vocoder phase 'cos'"):
        vocos_vocoder("tiny", phase="cos")


def _stft(x: torch.Tensor) -> torch.Tensor:
    w = torch.hann_window(1024, dtype=x.dtype)
    return torch.stft(x, 1024, 256, 1024, w, center=True, return_complex=True)


@pytest.mark.parametrize("hz", [261.63, 440.0, 1107.3])
def test_locked_phase_is_the_stft_phase_of_a_sinusoid_up_to_a_constant(hz):
    # brute force: the true STFT phase of cos(omega n + phi0) on the partial's main lobe is
    # Theta_t - pi k; the locked phase shares one Theta per partial and advances it at the peak's
    # interpolated frequency, so (true - locked) is one constant over the lobe and (nearly) time
    n = torch.arange(16384, dtype=torch.float64)
    spec = _stft(torch.cos(2 * math.pi * hz / 16000 * n + 0.7))
    ph = locked_phase(spec.abs()[None], 1024, 256)[0].double()
    k = round(hz * 1024 / 16000)
    diff = (spec.angle() - ph)[k - 1 : k + 2, 4:-4]  # (3, T)
    wrap = lambda a: torch.angle(torch.exp(1j * a))  # noqa: E731
    assert wrap(diff - diff[1:2]).abs().max() < 1e-3  # one partial (the image term: ~3e-5)
    drift = wrap(torch.diff(diff[1])).abs().max()  # per-hop phase error: frequency error * hop
    assert drift < 2 * math.pi * 0.02 * 256 / 1024  # < 0.02 bins (0.3 Hz)
    with pytest.raises(ValueError, match=r"expects a magnitude \(B, 513, T\)"):
        locked_phase(spec.abs()[None, :100], 1024, 256)


def test_locked_phase_keeps_the_pitch_a_per_frame_phase_loses():
    # the mallet failure of the direct head: a pure 261.6 Hz tone whose every frame gets the same
    # phase repeats every hop (62.5 Hz grid, pyin reads ~250 Hz); with the locked phase it stays
    n = torch.arange(16384, dtype=torch.float64)
    mag = _stft(torch.sin(2 * math.pi * 261.63 / 16000 * n)).abs()[None]
    w = torch.hann_window(1024, dtype=torch.float64)

    def f0(phase: torch.Tensor) -> float:
        wave = torch.istft(torch.polar(mag, phase), 1024, 256, 1024, w, center=True)
        return float(median_f0(wave.float(), 16000)[0])

    cents = lambda f: 1200 * abs(math.log2(f / 261.63))  # noqa: E731
    assert cents(f0(locked_phase(mag, 1024, 256))) < 20
    assert cents(f0(torch.full_like(mag, 0.3))) > 50
    voc = vocos_vocoder("tiny", phase="locked")  # magnitude-only head: K outputs
    assert voc.head.out_features == 513
    wave = voc(torch.randn(2, 64, 12) - 5)
    assert wave.shape == (2, 1, 12 * 256) and torch.isfinite(wave).all()
    wave.pow(2).mean().backward()
    assert voc.head.weight.grad.abs().sum() > 0  # through the magnitude (the phase is constant)


def test_locked_head_with_the_mel_prior_starts_from_the_least_squares_inverse():
    # a zero head: log|S| = log(lstsq inverse of the Slaney filterbank applied to the mel), phase
    # locked; checked against torch.linalg.lstsq on torchaudio's filterbank
    import torchaudio

    voc = vocos_vocoder("tiny", phase="locked", mel_prior="cpu")
    with torch.no_grad():
        voc.head.weight.zero_()
        voc.head.bias.zero_()
    logmel = torch.log(torch.rand(1, 64, 8) + 1e-3)
    fb = torchaudio.functional.melscale_fbanks(513, 0.0, 8000.0, 64, 16000, "slaney", "slaney")
    mel = torch.exp(torch.cat([logmel, logmel[..., -1:]], -1))[0].double()  # (64, 9)
    lin = torch.linalg.lstsq(fb.T.double(), mel, driver="gelsd").solution.clamp(min=1e-5)
    w = torch.hann_window(1024, dtype=torch.float64)
    phase = locked_phase(lin[None], 1024, 256)
    ref = torch.istft(torch.polar(lin[None], phase), 1024, 256, 1024, w, center=True, length=2048)
    with torch.no_grad():
        out = voc(logmel)[0].double()
    assert torch.allclose(out, ref, atol=1e-4 * float(ref.abs().max()))
    with pytest.raises(ValueError, match="mel_prior preset 'cpu' has n_mels / n_fft / hop"):
        vocos_vocoder("tiny", n_mels=80, phase="locked", mel_prior="cpu")


def test_diffwave_mel_conditioning_and_null_mask():
    torch.manual_seed(0)
    net = diffwave("tiny", n_mels=64)
    torch.nn.init.normal_(net.out.weight)  # zero-initialised output: make it see its inputs
    x, t = torch.randn(2, 1, 2048), torch.rand(2)
    mel = torch.randn(2, 64, 8)
    a = net(x, t, {"mel": mel})
    assert a.shape == x.shape
    b = net(x, t, {"mel": mel + 1})
    assert not torch.allclose(a, b)  # the mel matters
    null = torch.tensor([True, True])
    assert torch.allclose(
        net(x, t, {"mel": mel, "null_mask": null}), net(x, t, {"mel": mel + 1, "null_mask": null})
    )  # dropped rows ignore it (classifier-free guidance)
    with pytest.raises(KeyError, match="pass cond\\['mel'\\]"):
        net(x, t, None)
    uncond = diffwave("tiny")
    assert uncond(x, t).shape == x.shape and not uncond.accepts_null_mask


def test_vocoder_objective_trains_and_one_step_sampling_returns_the_vocoder_output():
    torch.manual_seed(0)
    voc = vocos_vocoder("tiny")
    obj = VocoderObjective()
    wave = 0.3 * torch.sin(torch.arange(2048.0) * 0.2).repeat(2, 1, 1)  # (2, 1, 2048)
    mel = obj.codec(wave)
    opt = torch.optim.Adam(voc.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = obj.loss(voc, wave, {"mel": mel})
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    den = obj.denoiser(voc)
    x = torch.randn(2, 1, 2048) * 80
    out = sample(den, x, karras_sigmas(1, 0.002, 80.0), "dpmpp_2m", cond={"mel": mel})
    with torch.no_grad():
        assert torch.equal(out, voc(mel))


# ------------------------------------------------------------------------------ pitch conditioning
def _comb_reference(f0: float, n_mels: int = 64, sr: int = 16000, f_max: float = 8000.0):
    """Brute force with librosa's Slaney filters on a 1 Hz grid: for every filter, the largest
    peak-relative response to a partial k * f0 below f_max."""
    fb = librosa.filters.mel(sr=sr, n_fft=sr, n_mels=n_mels, fmin=0.0, fmax=f_max)  # (M, 8001)
    out = np.zeros(n_mels)
    for m in range(n_mels):
        peak = fb[m].max()
        k = 1
        while k * f0 < f_max:
            out[m] = max(out[m], fb[m, int(round(k * f0))] / peak)
            k += 1
    return out


def test_harmonic_comb_matches_brute_force_and_separates_semitones():
    f0 = midi_to_hz(torch.tensor(PITCHES, dtype=torch.float64))
    comb = harmonic_comb(f0)
    assert comb.shape == (len(PITCHES), 64) and comb.min() >= 0 and comb.max() <= 1
    for i in (0, 1, 9, 23):  # C4, C#4, A4, B5
        ref = _comb_reference(float(f0[i]))
        np.testing.assert_allclose(comb[i].numpy(), ref, atol=1e-4)
    # adjacent semitones light different filters (the fundamental alone would not: 16 of 24)
    assert (comb[1:] - comb[:-1]).abs().sum(1).min() > 1.0
    with pytest.raises(ValueError, match=r"f0 must lie in \(0, 8000.0\) Hz"):
        harmonic_comb(torch.tensor([9000.0]))


def test_pitch_conditioned_unet_sees_the_comb_and_the_factors_and_drops_them_for_null_rows():
    torch.manual_seed(0)
    net = audio_unet("audio-tiny", num_classes=96, pitch_map=True)
    assert isinstance(net, PitchConditionedUNet)
    for p in net.parameters():  # zero-initialised layers (output, residual branches): wake them
        if not p.any():
            torch.nn.init.normal_(p, std=0.1)
    seen = {}
    net.conv_in.register_forward_hook(lambda m, a, o: seen.__setitem__("in", a[0].detach()))
    x, t = torch.randn(3, 1, 64, 64), torch.rand(3)
    y = torch.tensor([0, 25, 95])  # (instrument, pitch) = (0, 0), (1, 1), (3, 23)
    out = net(x, t, {"class": y})
    assert out.shape == x.shape
    comb = harmonic_comb(midi_to_hz(torch.tensor(PITCHES, dtype=torch.float64)))
    for row, p in enumerate((0, 1, 23)):  # channel 1 = the pitch's comb on every frame
        assert torch.allclose(seen["in"][row, 1], comb[p][:, None].expand(64, 64))
    # the same pitch under another instrument: the same comb, another output (one-hot factor)
    assert not torch.allclose(net(x, t, {"class": torch.tensor([24, 25, 95])})[0], out[0])
    null = torch.tensor([True, False, True])
    a = net(x, t, {"class": y, "null_mask": null})
    b = net(x, t, {"class": torch.tensor([50, 25, 3]), "null_mask": null})
    assert torch.allclose(a[null], b[null], atol=1e-6)  # null rows ignore every label factor
    assert torch.allclose(a[1], out[1], atol=1e-6)
    assert (seen["in"][null][:, 1] == 0).all()
    with pytest.raises(ValueError, match="num_classes must be a positive multiple of 24"):
        audio_unet("audio-tiny", num_classes=10, pitch_map=True)
    with pytest.raises(ValueError, match="not captions"):
        audio_unet("audio-tiny", num_classes=96, pooled_dim=384, pitch_map=True)


def test_pitch_conditioned_unet_folds_the_comb_onto_a_latent_grid():
    net = audio_unet("audio-tiny", n_mels=16, frames=16, in_channels=4, num_classes=96,
                     pitch_map=True)  # fmt: skip
    assert net.fold == 4 and net.conv_in.in_channels == 4 + 4
    comb = harmonic_comb(midi_to_hz(torch.tensor(PITCHES, dtype=torch.float64)))
    for j in range(4):
        for r in (0, 5, 15):  # channel j of row r is mel bin 4 r + j
            assert torch.equal(net.comb[:, j, r], comb[:, 4 * r + j])
    x = torch.randn(2, 4, 16, 16)
    assert net(x, torch.rand(2), {"class": torch.tensor([3, 50])}).shape == x.shape
    with pytest.raises(ValueError, match="whose 12 rows divide the 64 mels"):
        audio_unet("audio-tiny", n_mels=12, frames=16, num_classes=96, pitch_map=True)
