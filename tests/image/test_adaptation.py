"""LoRA, DreamBooth and textual inversion on a tiny class-conditional U-Net.

The "new concept" is class ``TOKEN``, never used before adaptation; each method must lower the
denoising loss of the concept images under the token (fixed noise and levels), and leave what it
promises untouched (frozen base weights, other classes' outputs).
"""

from __future__ import annotations

import copy

import pytest
import torch

from polydiff.core.objective import DiffusionObjective
from polydiff.core.schedules import EDMSchedule, karras_sigmas
from polydiff.image.adaptation import (
    DreamBoothLoss,
    concept_dataset,
    load_token_embedding,
    nearest_class,
    prior_dataset,
    train_dreambooth,
    train_lora,
    train_textual_inversion,
)
from polydiff.nn.lora import load_lora, lora_parameters
from polydiff.nn.unet import UNet

TOKEN, K = 3, 4
OBJ = DiffusionObjective(EDMSchedule(), "edm")


def _net() -> UNet:
    torch.manual_seed(0)
    net = UNet(
        in_channels=1, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
        attention_levels=(1,), num_heads=2, num_classes=K,
    )  # fmt: skip
    for p in net.parameters():  # a "trained" base: no zero-initialised (trivial) outputs
        torch.nn.init.normal_(p, std=0.05)
    return net


@pytest.fixture(scope="module")
def concept() -> torch.Tensor:
    """Five images of a concept: a bright cross on a dark background."""
    x = -torch.ones(5, 1, 8, 8)
    x[:, :, 3:5, :] = 0.8
    x[:, :, :, 3:5] = 0.8
    return x + 0.05 * torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _concept_loss(net, images: torch.Tensor, token: int = TOKEN) -> float:
    """Denoising loss of the concept under the token at fixed levels and noise."""
    n = 16
    x0 = images.repeat(-(-n // len(images)), 1, 1, 1)[:n]
    sigma = torch.logspace(-1.5, 1, n, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    cond = {"class": torch.full((n,), token)}
    with torch.no_grad():
        return OBJ.per_sample_loss(net, x0, cond, sigma=sigma, noise=noise).mean().item()


def test_concept_dataset_repeats() -> None:
    ds = concept_dataset(torch.zeros(3, 1, 8, 8), 2, min_length=10)
    assert len(ds) == 12 and set(ds.tensors["class"].tolist()) == {2}
    with pytest.raises(ValueError, match="non-empty"):
        concept_dataset(torch.zeros(0, 1, 8, 8), 2)


def test_lora_adapts_and_is_saved_alone(concept, tmp_path) -> None:
    net = _net()
    base = {k: v.clone() for k, v in net.state_dict().items()}
    before = _concept_loss(net, concept)
    path = tmp_path / "concept.safetensors"
    train_lora(net, OBJ, concept, TOKEN, rank=4, steps=10, lr=3e-2, batch_size=8, save_to=path)
    after = _concept_loss(net, concept)
    assert after < 0.99 * before, (before, after)  # (a random base: small but exact gains)
    assert lora_parameters(net) and all(p.requires_grad for p in lora_parameters(net))
    for k, v in net.state_dict().items():  # base weights (peft renames them *.base_layer.*)
        key = k.replace(".base_layer", "")
        if "lora_" not in k:
            assert torch.equal(v, base[key]), k
    # the file holds the adapter only, and reproduces the adapted model on a fresh base
    from safetensors.torch import load_file

    saved = load_file(str(path))
    assert saved and all("lora_" in k for k in saved)
    assert sum(v.numel() for v in saved.values()) < 0.25 * sum(v.numel() for v in base.values())
    fresh = load_lora(_net(), path)
    x, t, c = torch.randn(2, 1, 8, 8), torch.zeros(2), {"class": torch.tensor([TOKEN, 0])}
    with torch.no_grad():
        assert torch.allclose(fresh(x, t, c), net(x, t, c), atol=1e-6)


def test_dreambooth_loss_is_the_sum_of_its_terms(concept) -> None:
    net = _net()
    prior, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    x, cond = concept[:4], {"class": torch.full((4,), TOKEN)}
    total = DreamBoothLoss(OBJ, prior_weight=0.5)(
        net, x, {**cond, "prior_x": prior, "prior_class": labels},
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    first = OBJ.loss(net, x, cond, generator=g)
    second = OBJ.loss(net, prior, {"class": labels}, generator=g)
    assert torch.allclose(total, first + 0.5 * second)


def test_dreambooth_trains_all_weights_with_prior_data(concept) -> None:
    net = _net()
    frozen = copy.deepcopy(net).eval()
    sigmas = karras_sigmas(4, 0.01, 20.0)
    prior, labels = prior_dataset(OBJ.denoiser(frozen), (1, 8, 8), [0, 1, 2], 32, sigmas)
    assert prior.shape == (32, 1, 8, 8) and labels.tolist()[:4] == [0, 1, 2, 0]
    before = _concept_loss(net, concept)
    train_dreambooth(
        net, OBJ, concept, TOKEN, prior, labels, prior_weight=1.0, steps=10, lr=3e-3,
        batch_size=8,
    )  # fmt: skip
    assert _concept_loss(net, concept) < 0.97 * before
    changed = [k for k, v in net.state_dict().items() if not torch.equal(v, frozen.state_dict()[k])]
    assert any("conv_in" in k for k in changed) and any("down" in k for k in changed)
    # LoRA takes the same prior data (DreamBooth-LoRA); too few prior rows are named
    lora = train_lora(copy.deepcopy(frozen), OBJ, concept, TOKEN, prior, labels, steps=2)
    assert lora_parameters(lora)
    with pytest.raises(ValueError, match="prior images"):
        train_lora(copy.deepcopy(frozen), OBJ, concept, TOKEN, prior[:4], labels[:4], steps=1)


def test_textual_inversion_learns_only_the_embedding(concept, tmp_path) -> None:
    net = _net()
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    before = _concept_loss(net, concept)
    path = tmp_path / "token.safetensors"
    model = train_textual_inversion(
        net, OBJ, concept, TOKEN, init_from=0, steps=10, lr=5e-2, batch_size=8, save_to=path
    )
    after = _concept_loss(model, concept)
    assert after < 0.999 * before, (before, after)
    for k, v in net.state_dict().items():
        assert torch.equal(v, weights[k]), k  # every network weight bit-identical
    x, t = torch.randn(3, 1, 8, 8), torch.full((3,), 0.5)
    others = {"class": torch.tensor([0, 1, 2])}
    token = {"class": torch.full((3,), TOKEN)}
    with torch.no_grad():
        assert torch.equal(model(x, t, others), net(x, t, others))  # old classes untouched
        # nulled rows ignore the learned token (classifier-free guidance still works)
        nulled = {**token, "null_mask": torch.ones(3, dtype=torch.bool)}
        assert torch.equal(model(x, t, nulled), net(x, t, nulled))
        adapted = model(x, t, token)
    reloaded = load_token_embedding(model.remove(), path)
    with torch.no_grad():
        assert torch.equal(reloaded(x, t, token), adapted)
    with pytest.raises(ValueError, match="not a class index"):
        train_textual_inversion(_net(), OBJ, concept, K + 3, steps=1)


class _ClassDistance:
    """A stub objective: the concept is 'class 2' (loss grows with the distance to it)."""

    def per_sample_loss(self, net, x0, cond, sigma, noise):
        assert sigma.shape == (len(x0),) and noise.shape == x0.shape
        return (cond["class"].double() - 2).abs() + 0 * sigma


def test_nearest_class_initialises_textual_inversion(concept) -> None:
    net = _net()
    assert nearest_class(net, _ClassDistance(), concept) == 2
    assert nearest_class(net, _ClassDistance(), concept, classes=[0, 3]) == 3
    # with the real objective: one of the candidates, used as the initial embedding
    chosen = nearest_class(net, OBJ, concept, classes=[0, 1, 2])
    assert chosen in (0, 1, 2)
    model = train_textual_inversion(
        net, OBJ, concept, TOKEN, init_from="nearest", steps=1, lr=0.0, batch_size=8
    )
    assert model.init_from == chosen
    assert torch.equal(model.embedding, net.embed.label.table.weight[chosen])
    with pytest.raises(ValueError, match="init_from"):
        train_textual_inversion(_net(), OBJ, concept, TOKEN, init_from="closest", steps=1)
