"""Latent-mel diffusion: the mel autoencoder (trained through polydiff.train, cached), latents of
unit variance that decode back to mel images, and a tiny train -> sample -> evaluate run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from polydiff.audio.experiments import AudioHooks, latent_mel_data, mel_autoencoder, mel_data
from polydiff.train.run import evaluate_run, sample_run, train

AE = {"z_channels": 2, "base_channels": 8, "channel_mult": (1, 2, 2), "steps": 3, "batch_size": 4}


def test_mel_autoencoder_is_cached_and_latents_are_unit_variance(tmp_path):
    mels = mel_data("notes", 1, 0, "cpu", "class")
    ae = mel_autoencoder(mels, **AE, cache_dir=str(tmp_path))
    files = list(tmp_path.glob("mel-autoencoder-*.safetensors"))
    assert len(files) == 1
    again = mel_autoencoder(mels, **AE, cache_dir=str(tmp_path))  # from the cache: same weights
    for (k, a), b in zip(ae.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    data = latent_mel_data(AE, str(tmp_path), source="notes", per_class=1, conditioning="class")
    assert data.tensors["x"].shape == (96, 2, 16, 16)
    assert abs(float(data.tensors["x"].std()) - 1.0) < 1e-3  # LDM's measured scale factor
    assert torch.equal(data.tensors["class"], mels.tensors["class"])
    assert data.decode(data.tensors["x"][:2]).shape == (2, 1, 64, 64)
    with pytest.raises(ValueError, match="representation='latent' needs a latent_mel_data"):
        AudioHooks(mels, representation="latent")


def test_notes_latent_recipe_trains_samples_and_scores(tmp_path):
    cache = tmp_path / "cache"
    run = train([
        "experiment=audio/notes_latent", "trainer.max_steps=2", "trainer.batch_size=4",
        "trainer.progress=false", "trainer.ckpt_every=0", "trainer.lr_warmup_steps=0",
        "model.size=audio-tiny", "data.dataset.per_class=1", "data.dataset.autoencoder.steps=2",
        f"data.dataset.cache_dir={cache}", f"data.hooks.cache_dir={cache}",
        "data.hooks.reference.per_class=1", "data.hooks.classifier_steps=2",
        "+data.hooks.classifier_per_class=1", f"run_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    out = sample_run(run, ["sample.n=2", "sampler.steps=2"])
    npz = np.load(out / "samples.npz", allow_pickle=False)
    assert npz["samples"].shape == (2, 64, 64)  # decoded to log-mels (data space)
    assert len(list(out.glob("*.wav"))) == 2
    m = evaluate_run(run, ["evaluate.n=3", "sampler.steps=2"])["metrics"]
    for key in ("fad", "fad_real_floor", "instrument_accuracy", "pitch_accuracy"):
        assert key in m and math.isfinite(m[key]), key
