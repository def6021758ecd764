"""Audio networks: shapes, conditioning, named sizes, and the vocoder-as-denoiser contract."""

from __future__ import annotations

import pytest
import torch

from polydiff.audio.experiments import VocoderObjective
from polydiff.audio.models import audio_unet, diffwave, vocos_vocoder
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
