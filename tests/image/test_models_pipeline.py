"""Image models, the generate pipeline (exact on constant denoisers) and the KL autoencoder."""

from __future__ import annotations

import pytest
import torch

from polydiff.image.autoencoder import (
    AutoencoderConfig,
    KLAutoencoder,
    LatentDataset,
    load_autoencoder,
    load_or_train_autoencoder,
    reconstruction_error,
    save_autoencoder,
    train_autoencoder,
)
from polydiff.image.data import ShapesDataset
from polydiff.image.models import HashedWordEncoder, image_dit, image_unet, num_parameters
from polydiff.image.pipeline import build_cond, generate, generate_grid, nfe


def test_unet_and_dit_conditioning_and_null_mask():
    torch.manual_seed(0)
    net = image_unet("tiny-c16", channels=1, image_size=16, num_classes=10)
    assert net.accepts_null_mask and num_parameters(net) > 10_000
    x, t = torch.randn(4, 1, 16, 16), torch.rand(4)
    y = torch.tensor([1, 2, 3, 4])
    for p in net.parameters():  # zero-initialised outputs would hide the condition
        torch.nn.init.normal_(p, std=0.05)
    a = net(x, t, {"class": y})
    null = net(x, t, {"class": y, "null_mask": torch.ones(4, dtype=torch.bool)})
    other = net(
        x, t, {"class": torch.tensor([0, 0, 0, 0]), "null_mask": torch.ones(4, dtype=torch.bool)}
    )
    assert a.shape == x.shape and torch.allclose(null, other, atol=1e-6)  # null ignores the class
    assert not torch.allclose(a, null, atol=1e-4)
    with pytest.raises(ValueError, match="divisible"):
        image_unet("small-c32", channels=1, image_size=18)
    with pytest.raises(KeyError, match="available"):
        image_unet("huge")
    enc = HashedWordEncoder(16)
    c = enc.encode(["a small red circle at the top left", "a large blue square in the center"])
    dit = image_dit("tiny", channels=4, image_size=8, context_dim=16, pooled_dim=16)
    assert dit(torch.randn(2, 4, 8, 8), torch.rand(2), c).shape == (2, 4, 8, 8)
    assert dit.accepts_null_mask


def test_hashed_encoder_is_deterministic_and_masked():
    enc = HashedWordEncoder(8, seed=1)
    a = enc.encode(["a red circle", "a red circle at the top"])
    b = HashedWordEncoder(8, seed=1).encode(["a red circle"])
    assert a["text"].shape == (2, 6, 8) and a["text_mask"].sum(1).tolist() == [3, 6]
    assert torch.equal(a["text"][0, :3], b["text"][0]) and (a["text"][0, 3:] == 0).all()
    assert torch.allclose(a["text_pooled"][0], b["text"][0].mean(0))


class ConstantClassDenoiser:
    """D(x, sigma, cond) = class image (or the null image for null rows), independent of x."""

    accepts_null_mask = True

    def __init__(self) -> None:
        self.images = torch.linspace(-0.5, 0.5, 3)[:, None, None, None].expand(3, 1, 4, 4)
        self.null = torch.zeros(1, 4, 4)
        self.calls = 0

    def __call__(self, x, sigma, cond=None):
        self.calls += 1
        if cond is None:
            return self.null.expand_as(x).clone()
        out = self.images[cond["class"]].clone()
        null = cond.get("null_mask")
        if null is not None:
            out[null] = self.null
        return out


def test_generate_is_exact_on_constant_denoiser_with_cfg():
    den = ConstantClassDenoiser()
    y = torch.tensor([0, 1, 2, 2])
    out = generate(den, 4, (1, 4, 4), classes=y, steps=5, sampler="euler")
    assert torch.allclose(out, den.images[y], atol=1e-5)
    # CFG: u + s (c - u), clamped to [-1, 1]
    out = generate(den, 4, (1, 4, 4), classes=y, steps=5, sampler="dpmpp_2m", guidance_scale=3.0)
    assert torch.allclose(out, (3.0 * den.images[y]).clamp(-1, 1), atol=1e-5)
    # unconditional
    assert torch.allclose(generate(den, 2, (1, 4, 4), steps=3), torch.zeros(2, 1, 4, 4), atol=1e-6)

    # seeds: the same seed gives the same result (deterministic sampler: any batch size)
    def shrink(x, sigma, cond=None):
        return x / (1 + sigma[:, None, None, None] ** 2)

    a = generate(shrink, 3, (1, 4, 4), steps=4, seed=7, sampler="euler")
    b = generate(shrink, 3, (1, 4, 4), steps=4, seed=7, sampler="euler", batch_size=1)
    c = generate(shrink, 3, (1, 4, 4), steps=4, seed=8, sampler="euler")
    assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, c)
    d = generate(shrink, 3, (1, 4, 4), steps=4, seed=7, sampler="euler_ancestral")
    assert torch.equal(
        d, generate(shrink, 3, (1, 4, 4), steps=4, seed=7, sampler="euler_ancestral")
    )
    assert nfe("heun", 10) == 19 and nfe("dpmpp_2m", 20) == 20


def test_build_cond_and_grid(tmp_path):
    enc = HashedWordEncoder(8)
    c = build_cond(3, prompts="a red circle", text_encoder=enc)
    assert c["text"].shape == (3, 3, 8) and torch.equal(c["text"][0], c["text"][2])
    assert build_cond(2, classes=4)["class"].tolist() == [4, 4]
    with pytest.raises(ValueError, match="text_encoder"):
        build_cond(2, prompts=["a", "b"])
    with pytest.raises(ValueError, match="3 classes for n=2"):
        build_cond(2, classes=[1, 2, 3])
    den = ConstantClassDenoiser()
    path, images = generate_grid(
        tmp_path / "g.png", den, (1, 4, 4), classes=[0, 2], per_row=3, steps=2, scale=1
    )
    assert images.shape == (6, 1, 4, 4) and path.is_file()
    assert torch.allclose(images[3:], den.images[2:3].expand(3, 1, 4, 4), atol=1e-5)


def test_autoencoder_trains_scales_and_round_trips(tmp_path):
    x = ShapesDataset(n=120, size=16, seed=0).images
    cfg = AutoencoderConfig(in_channels=3, z_channels=2, base_channels=8, channel_mult=(1, 2))
    torch.manual_seed(0)
    before = reconstruction_error(KLAutoencoder(cfg).eval(), x)
    log: list[dict] = []
    ae = train_autoencoder(x, cfg, steps=60, batch_size=16, lr=3e-3, log=log)
    after = reconstruction_error(ae, x)
    assert after < 0.5 * before, (before, after)
    z = ae.to_latent(x)
    assert z.shape == (120, 2, 8, 8) and abs(float(z.std()) - 1.0) < 1e-3  # measured scale
    assert log[0]["step"] == 0 and log[-1]["step"] == 59
    path = save_autoencoder(ae, tmp_path / "ae.safetensors")
    ae2 = load_autoencoder(path)
    assert torch.allclose(ae2.to_latent(x[:4]), z[:4], atol=1e-5)
    assert float(ae2.scale_factor) == float(ae.scale_factor)
    # the cache: same images + settings -> the same file, no retraining
    a = load_or_train_autoencoder(x, tmp_path / "c", cfg, steps=2, batch_size=4)
    files = list((tmp_path / "c").glob("kl-ae-*.safetensors"))
    b = load_or_train_autoencoder(x, tmp_path / "c", cfg, steps=2, batch_size=4)
    assert len(files) == 1 and torch.allclose(a.to_latent(x[:2]), b.to_latent(x[:2]), atol=1e-6)
    lat = LatentDataset(ShapesDataset(n=10, size=16), ae, keys=["shape"])
    assert set(lat[0]) == {"x", "shape"} and lat[0]["x"].shape == (2, 8, 8)
    with pytest.raises(ValueError, match="expects"):
        ae.encode(torch.zeros(1, 1, 16, 16))
