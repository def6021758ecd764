"""GAN vocoder: discriminator shapes, HiFi-GAN's losses against their formulas, which player each
loss reaches, the spectral warm-up, training segments, and a tiny run through the CLI path."""

from __future__ import annotations

import math

import pytest
import torch
from auraloss.freq import MultiResolutionSTFTLoss

from polydiff.audio.gan import (
    GANVocoderObjective,
    MultiPeriodDiscriminator,
    MultiResolutionDiscriminator,
    discriminator_loss,
    feature_matching_loss,
    fine_spectral_loss,
    gan_vocoder,
    generator_adversarial_loss,
)
from polydiff.audio.models import random_segment, vocos_vocoder
from polydiff.train.run import evaluate_run, sample_run, train


def test_discriminator_outputs_and_feature_maps():
    wave = torch.randn(2, 1, 1000)  # 1000 % 3, 7, 11 != 0: the periods pad
    scores, feats = MultiPeriodDiscriminator((2, 3, 7), (4, 8))(wave)
    assert len(scores) == len(feats) == 3 and all(s.shape[0] == 2 for s in scores)
    assert [f[0].shape[-1] for f in feats] == [2, 3, 7]  # folded (T / p, p)
    assert all(len(f) == 4 for f in feats)  # 2 strided + 1 + post
    mrd = MultiResolutionDiscriminator(channels=4)
    scores, feats = mrd(torch.randn(2, 1, 2000))
    assert len(scores) == 3 and all(len(f) == 6 for f in feats)
    with pytest.raises(ValueError, match="needs clips of more than 1024 samples, got 1000"):
        mrd(wave)
    with pytest.raises(ValueError, match="at least one of the MPD and the MRD"):
        gan_vocoder(vocos_vocoder("tiny"), "tiny", mpd=False, mrd=False)
    with pytest.raises(KeyError, match="unknown discriminator size 'huge'"):
        gan_vocoder(vocos_vocoder("tiny"), "huge")


def test_lsgan_and_feature_matching_losses_match_the_formulas():
    real = [torch.tensor([[0.5, 1.5]]), torch.tensor([[2.0]])]
    fake = [torch.tensor([[0.0, -1.0]]), torch.tensor([[0.5]])]
    # Eq. 1: sum_k mean (D(x) - 1)^2 + mean D(G(s))^2
    want = ((0.25 + 0.25) / 2 + (0 + 1) / 2) + (1.0 + 0.25)
    assert math.isclose(float(discriminator_loss(real, fake)), want, rel_tol=1e-6)
    # Eq. 2: sum_k mean (D(G(s)) - 1)^2
    assert math.isclose(float(generator_adversarial_loss(fake)), (1 + 4) / 2 + 0.25, rel_tol=1e-6)
    # Eq. 4: sum over sub-discriminators and layers of the mean absolute difference
    rf = [[torch.ones(2, 3), torch.zeros(4)], [torch.full((1,), 2.0)]]
    ff = [[torch.zeros(2, 3), torch.ones(4)], [torch.full((1,), -1.0)]]
    assert math.isclose(float(feature_matching_loss(rf, ff)), 1 + 1 + 3, rel_tol=1e-6)


def _batch():
    torch.manual_seed(0)
    net = gan_vocoder(vocos_vocoder("tiny"), "tiny")
    obj = GANVocoderObjective(segment_frames=5)
    wave = 0.3 * torch.sin(torch.arange(8 * 256.0) * 0.2).repeat(2, 1, 1)  # (2, 1, 2048)
    return net, obj, wave, {"mel": obj.codec(wave)}


def test_each_loss_reaches_only_its_own_player():
    net, obj, wave, cond = _batch()
    terms = obj.terms(net, wave, cond, torch.Generator().manual_seed(0))
    gen, disc = list(net.generator.parameters()), list(net.discriminator.parameters())

    def grads(loss, params):
        g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return sum(float(x.abs().sum()) for x in g if x is not None)

    assert grads(terms["disc"], gen) == 0.0 and grads(terms["disc"], disc) > 0
    for key in ("adv", "fm", "mel"):
        assert grads(terms[key], disc) == 0.0 and grads(terms[key], gen) > 0, key


def test_spectral_warm_up_then_adversarial_terms():
    net, _, wave, cond = _batch()
    obj = GANVocoderObjective(segment_frames=None, adv_start_step=2, stft_weight=1.0)
    net.train()
    first = obj.terms(net, wave, cond)
    assert int(net.steps) == 1 and float(first["disc"]) == 0.0 and float(first["mrstft"]) > 0
    obj.terms(net, wave, cond)
    third = obj.terms(net, wave, cond)
    assert int(net.steps) == 3 and float(third["disc"]) > 0 and float(third["fm"]) > 0
    with torch.no_grad():  # held-out scoring: not a training step, spectral terms only
        held_out = obj.terms(net, wave, cond)
    assert int(net.steps) == 3 and float(held_out["disc"]) == 0.0 and float(held_out["mel"]) > 0
    loss = obj.loss(net, wave, cond)
    assert torch.isfinite(loss) and loss.requires_grad
    with pytest.raises(TypeError, match="needs a GANVocoder model"):
        obj.loss(vocos_vocoder("tiny"), wave, cond)


def test_random_segment_keeps_mel_and_wave_aligned():
    wave = torch.arange(2 * 4 * 8.0).reshape(2, 1, 32)  # 4 frames of hop 8
    mel = torch.arange(2 * 3 * 4.0).reshape(2, 3, 4)
    w, m = random_segment(wave, mel, 2, torch.Generator().manual_seed(3))
    assert w.shape == (2, 1, 16) and m.shape == (2, 3, 2)
    for b in range(2):
        start = int(m[b, 0, 0] - mel[b, 0, 0])
        assert torch.equal(m[b], mel[b, :, start : start + 2])
        assert torch.equal(w[b], wave[b, :, 8 * start : 8 * start + 16])
    assert random_segment(wave, mel, None, None)[1] is mel


def test_vocoder_gan_recipe_trains_samples_and_scores(tmp_path):
    run = train([
        "experiment=audio/vocoder_gan", "trainer.max_steps=2", "trainer.batch_size=2",
        "trainer.progress=false", "trainer.ckpt_every=0", "trainer.lr_warmup_steps=0",
        "model.size=tiny", "model.generator.size=tiny", "objective.adv_start_step=1",
        "data.dataset.per_class=1", f"run_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    out = sample_run(run, ["sample.n=2"])
    assert len(list(out.glob("*.wav"))) == 2
    m = evaluate_run(run, ["evaluate.n=2"])["metrics"]
    assert {"mrstft", "griffinlim_mrstft", "pitch_accuracy"} <= set(m)


def test_fine_spectral_loss_sees_a_partial_20_cents_off_and_ignores_its_phase():
    t = torch.arange(4096) / 16000.0
    env = torch.exp(-5 * t)  # a decaying mallet-like partial at C4

    def tone(cents: float, phase: float = 0.0) -> torch.Tensor:
        return (env * torch.sin(2 * math.pi * 261.6 * 2 ** (cents / 1200) * t + phase))[None, None]

    ref = tone(0.0)
    same = float(fine_spectral_loss(tone(0.0, 1.0), ref))
    off = [float(fine_spectral_loss(tone(c), ref)) for c in (20.0, 40.0, 70.0)]
    assert same < 1e-3 and 0.3 < off[0] < off[1] < off[2]  # monotone in the pitch error
    # the MR-STFT loss (auraloss defaults) barely tells 20 cents from a phase shift
    mr = MultiResolutionSTFTLoss()
    assert float(mr(tone(20.0), ref)) < 1.5 * float(mr(tone(0.0, 1.0), ref))
    obj = GANVocoderObjective(segment_frames=None, fine_weight=1.0, fine_n_fft=2048)
    net, _, wave, cond = _batch()
    assert float(obj.terms(net, wave, cond)["fine"]) > 0
    with pytest.raises(ValueError, match="at least n_fft=8192 samples"):
        fine_spectral_loss(ref, ref, 8192)
