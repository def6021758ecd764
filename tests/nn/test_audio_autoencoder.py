"""polydiff.nn.autoencoder: the KL autoencoder shared by image and audio (latent mels)."""

from __future__ import annotations

import torch

from polydiff.image import autoencoder as image_autoencoder
from polydiff.nn.autoencoder import AutoencoderConfig, KLAutoencoder, vae_loss


def test_image_reexports_the_nn_classes():
    assert image_autoencoder.KLAutoencoder is KLAutoencoder
    assert image_autoencoder.AutoencoderConfig is AutoencoderConfig
    assert image_autoencoder.vae_loss is vae_loss


def test_one_channel_mel_shapes_and_scale_factor():
    torch.manual_seed(0)
    ae = KLAutoencoder(AutoencoderConfig(in_channels=1, z_channels=4, base_channels=8,
                                         channel_mult=(1, 2, 2)))  # fmt: skip
    x = torch.randn(3, 1, 64, 64)
    mean, logvar = ae.encode(x)
    assert mean.shape == logvar.shape == (3, 4, 16, 16) and ae.downsample == 4
    recon, _, _ = ae(x, generator=torch.Generator().manual_seed(0))
    assert recon.shape == x.shape
    scale = ae.measure_scale_factor(x)
    assert abs(float(ae.to_latent(x).std()) - 1.0) < 1e-4 and scale > 0


def test_vae_loss_matches_its_formula():
    g = torch.Generator().manual_seed(0)
    x, recon = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    mean, logvar = torch.randn(2, 3, 2, 2, generator=g), torch.randn(2, 3, 2, 2, generator=g)
    loss, parts = vae_loss(recon, x, mean, logvar, kl_weight=0.5)
    rec = sum(
        abs(a - b) + (a - b) ** 2 for a, b in zip(recon.flatten().tolist(), x.flatten().tolist())
    )
    kl = sum(0.5 * (m * m + torch.tensor(v).exp().item() - 1 - v)
             for m, v in zip(mean.flatten().tolist(), logvar.flatten().tolist()))  # fmt: skip
    assert abs(parts["recon"] - rec / 32) < 1e-5 and abs(parts["kl"] - kl / 24) < 1e-5
    assert abs(float(loss) - (rec / 32 + 0.5 * kl / 24)) < 1e-5
