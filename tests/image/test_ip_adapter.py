"""IP-Adapter (image prompts) on a tiny frozen class-conditional U-Net."""

from __future__ import annotations

import pytest
import torch

from polydiff.core.objective import DiffusionObjective
from polydiff.core.schedules import EDMSchedule
from polydiff.image.ip_adapter import (
    IPAdapter,
    ReferencePairs,
    load_ip_adapter,
    save_ip_adapter,
    train_ip_adapter,
)
from polydiff.nn.unet import UNet

K = 3


def _net() -> UNet:
    torch.manual_seed(0)
    net = UNet(
        in_channels=1, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
        attention_levels=(), num_classes=K,
    )  # fmt: skip
    torch.nn.init.normal_(net.conv_out.weight, std=0.05)  # (default: zero) a non-trivial base
    return net


def _data(n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c: a bright horizontal bar at rows 2c..2c+2 of an 8x8 image."""
    labels = torch.arange(n) % K
    x = -torch.ones(n, 1, 8, 8)
    for i, c in enumerate(labels.tolist()):
        x[i, :, 2 * c + 1 : 2 * c + 3] = 0.8
    return x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)), labels


def test_adapter_starts_as_the_base_and_nulls_rows() -> None:
    net = _net()
    ad = IPAdapter(net, (1, 8, 8), num_tokens=2, token_dim=16)
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 0.3)
    cond = {"class": torch.full((4,), K)}
    ref = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        base = net(x, t, cond)
        assert torch.equal(ad(x, t, cond), base)  # no image: the base exactly
        assert torch.allclose(ad(x, t, {**cond, "image": ref}), base)  # zero-init output
        for p in ad.attn.parameters():
            torch.nn.init.normal_(p, std=0.3)
        with_img = ad(x, t, {**cond, "image": ref})
        null = torch.tensor([True, False, True, False])
        mixed = ad(x, t, {**cond, "image": ref, "null_mask": null})
    assert (with_img - base).abs().amax(dim=(1, 2, 3)).min() > 1e-4
    assert torch.allclose(mixed[null], net(x, t, {**cond, "null_mask": null})[null])
    assert torch.allclose(mixed[~null], with_img[~null], atol=1e-6)
    assert not any(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError, match="cond\\['image'\\]"):
        ad(x, t, {**cond, "image": torch.randn(4, 1, 4, 4)})
    with pytest.raises(ValueError, match="stages"):
        IPAdapter(_net(), (1, 8, 8), stages=("nope",))


def test_reference_pairs_are_other_images_of_the_class() -> None:
    x, y = _data(12)
    ds = ReferencePairs(x, y, null_class=K, seed=0)
    batch = ds.get_batch(list(range(12)))
    assert batch["class"].tolist() == [K] * 12
    for i in range(12):
        j = [k for k in range(12) if torch.equal(x[k], batch["image"][i])][0]
        assert y[j] == y[i] and j != i


@pytest.mark.slow
def test_training_makes_the_prompt_informative(tmp_path) -> None:
    x, y = _data()
    net = _net()
    obj = DiffusionObjective(EDMSchedule(), "edm", cond_drop_prob=0.1)
    ad = IPAdapter(net, (1, 8, 8), num_tokens=2, token_dim=16, feature_size=4)
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    sigma = torch.full((len(x),), 0.5, dtype=torch.float64)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    nul = {"class": torch.full((len(x),), K)}
    ref = ReferencePairs(x, y, K, seed=5).get_batch(list(range(len(x))))["image"]

    def loss(image) -> float:
        c = dict(nul) if image is None else {**nul, "image": image}
        with torch.no_grad():
            return obj.per_sample_loss(ad, x, c, sigma=sigma, noise=noise).mean().item()

    before = loss(ref)
    train_ip_adapter(ad, obj, ReferencePairs(x, y, K), steps=40, lr=1e-2, batch_size=16)
    after, without = loss(ref), loss(None)
    assert after < 0.8 * before and after < 0.8 * without, (before, after, without)
    for k, v in net.state_dict().items():
        assert torch.equal(v, weights[k]), k  # the base is untouched
    path = save_ip_adapter(ad, tmp_path / "ip.safetensors")
    fresh = load_ip_adapter(IPAdapter(_net(), (1, 8, 8), num_tokens=2, token_dim=16,
                                      feature_size=4), path)  # fmt: skip
    t, c = torch.full((3,), 0.2), {"class": torch.full((3,), K), "image": ref[:3]}
    with torch.no_grad():
        assert torch.allclose(fresh(x[:3], t, c), ad(x[:3], t, c), atol=1e-6)
    with pytest.raises(ValueError, match="keys do not match"):
        load_ip_adapter(IPAdapter(_net(), (1, 8, 8), num_tokens=2, token_dim=8), path)
