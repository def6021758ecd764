"""Cascaded super-resolution: conditioning, augmentation, sampling plumbing, consistency."""

from __future__ import annotations

import pytest
import torch

from polydiff.core.objective import DiffusionObjective
from polydiff.core.schedules import EDMSchedule, karras_sigmas
from polydiff.core.toy import GaussianMixture
from polydiff.image.superres import (
    NOISE_KEY,
    SuperResolutionLoss,
    cascade_sample,
    consistent_denoiser,
    downsample,
    lowres_consistency,
    lowres_projection,
    sr_condition,
    sr_unet,
    super_resolve,
    upsample,
)


def _oracle(x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
    """A denoiser that knows the answer is the (clean) conditioning image."""
    return cond["concat"]


def test_down_up_and_condition() -> None:
    low = torch.rand(3, 1, 4, 4) * 2 - 1
    up = upsample(low, 8)
    assert up.shape == (3, 1, 8, 8)
    # area downsampling of a constant-by-blocks image is exact
    blocks = low.repeat_interleave(2, -1).repeat_interleave(2, -2)
    assert torch.allclose(downsample(blocks, 4), low, atol=1e-6)
    c = sr_condition(low, 8, 0.0)
    assert torch.equal(c["concat"], up) and torch.equal(c[NOISE_KEY], torch.zeros(3, 1))
    noisy = sr_condition(
        low[:1].expand(4000, 1, 4, 4), 8, 0.5, generator=torch.Generator().manual_seed(0)
    )
    resid = noisy["concat"] - upsample(low[:1].expand(4000, 1, 4, 4), 8)
    assert abs(resid.std().item() - 0.5) < 0.01 and abs(resid.mean().item()) < 0.01
    per_row = sr_condition(low, 8, torch.tensor([0.0, 0.1, 0.2]), extra={"class": torch.ones(3)})
    assert torch.allclose(per_row[NOISE_KEY][:, 0], torch.tensor([0.0, 0.1, 0.2]))
    assert torch.equal(per_row["concat"][0], up[0]) and "class" in per_row
    with pytest.raises(ValueError, match="aug_sigma"):
        sr_condition(low, 8, -1.0)
    with pytest.raises(ValueError, match="not a multiple"):
        downsample(up, 3)


def test_super_resolve_with_an_oracle_reaches_the_condition() -> None:
    # smooth low-res images (like downsampled photographs, not white noise)
    low = upsample(torch.rand(5, 3, 3, 3) * 2 - 1, 8)
    sr = super_resolve(_oracle, low, 16, karras_sigmas(6, 0.01, 10.0), method="euler")
    assert torch.allclose(sr, upsample(low, 16), atol=1e-5)
    stats = lowres_consistency(sr, low)
    # bilinear up then area down is a mild blur: the stated tolerance of the cascade checks
    assert stats["mae"] < 0.1 and stats["psnr"] > 20


def test_sr_unet_and_loss_train_on_the_concat() -> None:
    net = sr_unet(1, "tiny", model_channels=8, channel_mult=(1,), attention_levels=())
    assert net.concat_channels == 1 and net.embed.cond_dim == 1
    loss = SuperResolutionLoss(DiffusionObjective(EDMSchedule(), "edm"), 4, max_aug_sigma=0.3)
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    value = loss(net, x, None, generator=torch.Generator().manual_seed(0))
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)
    assert net.conv_out.weight.grad.abs().sum() > 0  # (zero-initialised output conv)
    with torch.no_grad():
        net.conv_out.weight.add_(0.1)
        t = torch.zeros(6)
        a = net(x, t, sr_condition(downsample(x, 4), 8, 0.1))
        b = net(x, t, sr_condition(-downsample(x, 4), 8, 0.1))
        c = net(x, t, sr_condition(downsample(x, 4), 8, 0.3))
    assert (a - b).abs().max() > 1e-4 and (a - c).abs().max() > 1e-6  # concat and level used
    # an explicit low-res input is used instead of the downsampled x
    with torch.no_grad():
        own = loss(net, x, None, generator=torch.Generator().manual_seed(1))
        same = loss(
            net, x, {"lowres": downsample(x, 4)}, generator=torch.Generator().manual_seed(1)
        )
        other = loss(
            net, x, {"lowres": torch.zeros(6, 1, 2, 2)}, generator=torch.Generator().manual_seed(1)
        )
    assert torch.equal(own, same) and not torch.equal(own, other)


def test_cascade_with_exact_base() -> None:
    # base: a mixture over 4x4 images; SR: the oracle; the cascade's high-res output
    # downsamples back to the base samples within the blur tolerance
    gmm = GaussianMixture(torch.tensor([[0.5] * 16, [-0.5] * 16]), 0.1)
    high, low = cascade_sample(
        gmm, _oracle, 8, (1, 4, 4), 8, karras_sigmas(10, 0.01, 10.0), karras_sigmas(4, 0.01, 5.0),
        aug_sigma=0.0, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert high.shape == (8, 1, 8, 8) and low.shape == (8, 1, 4, 4)
    assert lowres_consistency(high, low)["mae"] < 0.05


def test_lowres_projection_is_the_null_space_projection() -> None:
    g = torch.Generator().manual_seed(0)
    x0, low = torch.randn(3, 2, 8, 8, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    p = lowres_projection(x0, low)
    assert torch.allclose(downsample(p, 4), low, atol=1e-6)  # A p = y
    assert torch.allclose(lowres_projection(p, low), p, atol=1e-6)  # idempotent
    # the null-space part (I - A^+ A) x0 is kept: p - x0 is constant on each 2x2 block
    d = p - x0
    assert torch.allclose(d, d[..., ::2, ::2].repeat_interleave(2, -1).repeat_interleave(2, -2))
    # an image that already matches is unchanged
    assert torch.allclose(lowres_projection(x0, downsample(x0, 4)), x0, atol=1e-6)
    with pytest.raises(ValueError, match="does not match"):
        lowres_projection(x0, torch.zeros(3, 2, 3, 3))


def test_consistency_makes_any_sr_model_match_its_input() -> None:
    # an untrained SR network (random output conv): far from the input without the projection,
    # exact with it (up to the final clamp, which a [-1, 1] input rarely triggers)
    torch.manual_seed(0)
    net = sr_unet(1, "tiny", model_channels=8, channel_mult=(1,), attention_levels=())
    torch.nn.init.normal_(net.conv_out.weight, std=0.3)
    D = SuperResolutionLoss(DiffusionObjective(EDMSchedule(), "edm"), 4).denoiser(net)
    low = upsample(torch.rand(4, 1, 2, 2) * 2 - 1, 4)
    sig = karras_sigmas(6, 0.01, 10.0)
    kw = {"generator": torch.Generator().manual_seed(0), "method": "heun"}
    free = super_resolve(D, low, 8, sig, **kw)
    kw["generator"] = torch.Generator().manual_seed(0)
    fixed = super_resolve(D, low, 8, sig, consistency=True, **kw)
    assert lowres_consistency(free, low)["mae"] > 0.1
    assert lowres_consistency(fixed, low)["mae"] < 1e-5
    wrapped = consistent_denoiser(_oracle, low)
    cond = sr_condition(low, 8)
    x = torch.randn(4, 1, 8, 8)
    out = wrapped(x, torch.ones(4), cond)  # the wrapper projects whatever D predicts
    assert torch.allclose(downsample(out, 4), low, atol=1e-6)
    assert not torch.allclose(downsample(_oracle(x, None, cond), 4), low, atol=1e-3)


def test_crop_training_uses_aligned_patches() -> None:
    loss = SuperResolutionLoss(DiffusionObjective(EDMSchedule(), "edm"), 4, crop=4)
    x = torch.arange(64.0).reshape(1, 1, 8, 8).repeat(5, 1, 1, 1)
    low = downsample(x, 4)
    xc, lc = loss._random_crop(x, low, torch.Generator().manual_seed(0), "cpu")
    assert xc.shape == (5, 1, 4, 4) and lc.shape == (5, 1, 2, 2)
    assert torch.allclose(downsample(xc, 2), lc)  # the low-res crop is the crop's degradation
    assert len({int(c[0, 0, 0]) for c in xc}) > 1  # offsets vary per row
    assert all(int(c[0, 0, 0]) % 2 == 0 and (int(c[0, 0, 0]) // 8) % 2 == 0 for c in xc)
    net = sr_unet(1, "tiny", model_channels=8, channel_mult=(1,), attention_levels=())
    value = loss(net, x / 64, None, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(value)
    with pytest.raises(ValueError, match="multiple of the factor"):
        SuperResolutionLoss(loss.objective, 4, crop=3)(net, x, None)


@pytest.mark.slow
def test_trained_sr_model_meets_the_consistency_tolerance() -> None:
    """A 16 -> 32 digits SR model trained here (crops, augmentation): its samples, downsampled,
    match the low-res input within the stated tolerance (MAE 0.05) with the per-step projection,
    and the projection does not cost fidelity to the true 32x32 image."""
    import functools

    from polydiff.image.data import DigitsDataset
    from polydiff.train import TensorDictDataset, Trainer, TrainerConfig

    torch.manual_seed(0)
    train = DigitsDataset(size=32, split="train").images
    net = sr_unet(1, "tiny", model_channels=16, attention_levels=())
    loss = SuperResolutionLoss(
        DiffusionObjective(EDMSchedule(), "edm"), 16, max_aug_sigma=0.4, crop=16
    )
    cfg = TrainerConfig(
        max_steps=400, batch_size=32, ema_decays=(0.99,), progress=False, cpu=True,
        lr_warmup_steps=40, num_threads=1, log_every=400,
    )  # fmt: skip
    trainer = Trainer(
        net, loss, TensorDictDataset(train), functools.partial(torch.optim.AdamW, lr=3e-3), cfg
    )
    trainer.fit()
    D = loss.denoiser(trainer.sampling_model().eval())
    real = DigitsDataset(size=32, split="test").images[:32]
    low = downsample(real, 16)
    sig = EDMSchedule().sigmas_for(12).float()
    out = {}
    for consistency in (False, True):
        up = super_resolve(
            D, low, 32, sig, generator=torch.Generator().manual_seed(0), consistency=consistency
        ).clamp(-1, 1)
        psnr = float(10 * torch.log10(4.0 / (up - real).pow(2).mean()))
        out[consistency] = {**lowres_consistency(up, low), "psnr_true": psnr}
    assert out[True]["mae"] < 0.05, out  # the stated tolerance
    assert out[True]["mae"] < 0.5 * out[False]["mae"], out
    assert out[True]["psnr_true"] > 20 and out[True]["psnr_true"] > out[False]["psnr_true"] - 0.5
