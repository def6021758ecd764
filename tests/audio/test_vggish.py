"""VGGish: front end against the AudioSet-release framing, weights loaded without executing code
(safetensors and weights-only state dicts), clear errors, and the FAD on known inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from polydiff.audio.vggish import VGGish, VGGishFrontEnd, load_vggish, vggish_fad
from polydiff.core.metrics import frechet_distance_from_features


@pytest.fixture(scope="module")
def net() -> VGGish:
    torch.manual_seed(0)
    return VGGish().eval()


def test_front_end_framing_and_a_tone_lands_in_its_band():
    fe = VGGishFrontEnd()
    t = torch.arange(32000) / 16000
    tone = 0.5 * torch.sin(2 * math.pi * 1000 * t)[None]
    mel = fe.log_mel(tone)
    assert mel.shape == (1, 1 + (32000 - 400) // 160, 64)  # unpadded 25 ms frames every 10 ms
    # the HTK mel band centred nearest 1 kHz holds the energy
    edges = 700 * (
        10
        ** (np.linspace(2595 * np.log10(1 + 125 / 700), 2595 * np.log10(1 + 7500 / 700), 66) / 2595)
        - 1
    )
    want = int(np.argmin(np.abs(edges[1:-1] - 1000)))
    assert abs(int(mel[0].mean(0).argmax()) - want) <= 1
    ex, clip = fe(torch.cat([tone, 0.5 * tone]))  # 2 s clips: 2 examples each (1.98 s used)
    assert ex.shape == (4, 1, 96, 64) and clip.tolist() == [0, 0, 1, 1]
    assert fe(tone[:, :16384])[0].shape == (1, 1, 96, 64)  # a 1.02 s clip: one example
    with pytest.raises(ValueError, match="at least 0.96 s"):
        fe(tone[:, :8000])


@pytest.mark.slow  # 72 M parameters written and read twice: ~30 s
def test_weights_round_trip_without_pickle(net, tmp_path):
    state = {k: v.clone() for k, v in net.state_dict().items()}
    save_file(state, str(tmp_path / "v.safetensors"))
    torch.save(state, tmp_path / "v.pth")
    wave = torch.randn(2, 16384) * 0.1
    want = net.embed(wave)
    assert want.shape == (2, 128)
    for name in ("v.safetensors", "v.pth"):
        assert torch.allclose(load_vggish(tmp_path / name).embed(wave), want, atol=1e-5)


def test_bad_weight_files_are_named_and_never_unpickled(tmp_path):
    torch.save({"weights": torch.zeros(1), "code": print}, tmp_path / "evil.pth")  # a callable
    with pytest.raises(ValueError, match=r"evil.pth: not a plain torch state dict"):
        load_vggish(tmp_path / "evil.pth")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="other.safetensors: not VGGish weights: missing"):
        load_vggish(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="nope.pth not found"):
        load_vggish(tmp_path / "nope.pth")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="expected VGGish weights as .safetensors, .pth or .pt"):
        load_vggish(tmp_path / "w.npz")


def test_fad_is_the_frechet_distance_of_the_example_embeddings(net):
    g = torch.Generator().manual_seed(0)
    t = torch.arange(16384) / 16000
    f0 = 200 + 400 * torch.rand(4, 1, generator=g)
    a = 0.3 * torch.sin(2 * math.pi * f0 * t)
    b = 0.3 * torch.sin(2 * math.pi * 2 * f0 * t)
    ea, eb = net.embed(a), net.embed(b)
    assert ea.shape == (4, 128)  # one 0.96 s example per 1.02 s clip
    assert vggish_fad(net, a, b) == pytest.approx(
        float(frechet_distance_from_features(ea, eb)), rel=1e-6
    )
    assert abs(vggish_fad(net, a, a)) < 1e-9 + 1e-3 * vggish_fad(net, a, b)
