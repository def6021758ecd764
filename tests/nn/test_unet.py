"""N-d U-Net: shapes for every dims x conditioning, zero init, gradients, masks, null rows."""

from __future__ import annotations

import pytest
import torch

from polydiff.nn.unet import UNET_SIZES, UNet, unet

CONDS = ["none", "class", "text", "concat", "vector", "all"]


def make(dims: int, kind: str) -> tuple[UNet, torch.Tensor, dict | None]:
    kw: dict = {}
    cond: dict = {}
    b, s = 2, (8,) * dims
    if kind in ("class", "all"):
        kw["num_classes"] = 3
        cond["class"] = torch.tensor([0, 2])
    if kind in ("text", "all"):
        kw.update(context_dim=6, pooled_dim=6)
        cond["text"] = torch.randn(b, 4, 6)
        cond["text_mask"] = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
        cond["text_pooled"] = torch.randn(b, 6)
    if kind in ("concat", "all"):
        kw["concat_channels"] = 2
        cond["concat"] = torch.randn(b, 2, *s)
    if kind in ("vector", "all"):
        kw["cond_dim"] = 5
        cond["vector"] = torch.randn(b, 5)
    net = UNet(
        dims=dims, in_channels=3, out_channels=4, model_channels=8, channel_mult=(1, 2),
        num_res_blocks=1, attention_levels=(1,), num_heads=2, norm_groups=4, **kw,
    )  # fmt: skip
    return net, torch.randn(b, 3, *s), cond or None


def randomise_zero_params(net: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in net.parameters():
            if bool((p == 0).all()):
                p.normal_(0, 0.1)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("kind", CONDS)
def test_shapes_and_zero_init(dims: int, kind: str) -> None:
    net, x, cond = make(dims, kind)
    assert net.accepts_null_mask == (kind != "none")
    out = net(x, torch.rand(2) * 999, cond)
    assert out.shape == (2, 4, *x.shape[2:])
    assert float(out.detach().abs().max()) == 0.0  # zero-initialised output conv


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_gradients_reach_every_parameter(dims: int, assert_grads_reach_all) -> None:
    net, x, cond = make(dims, "all")
    assert_grads_reach_all(net, lambda: net(x, torch.rand(2), cond).pow(2).sum())


def test_null_rows_ignore_every_condition() -> None:
    net, x, cond = make(2, "all")
    randomise_zero_params(net)
    net.eval()
    t = torch.tensor([3.0, 3.0])
    x = torch.cat([x[:1], x[:1]])
    other = {
        k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v
        for k, v in cond.items()
    }
    other["class"] = torch.tensor([1, 1])
    null = torch.tensor([True, True])
    a = net(x, t, {**cond, "null_mask": null})
    b = net(x, t, {**other, "null_mask": null})
    c = net(x, t, {"null_mask": null})  # a fully-null batch may omit the conditions
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    d = net(x, t, cond)
    assert float((d - a).detach().abs().max()) > 1e-4  # the condition matters when not null
    # mixed batch: only row 0 is null
    mixed = net(x, t, {**cond, "null_mask": torch.tensor([True, False])})
    torch.testing.assert_close(mixed[0], a[0])
    torch.testing.assert_close(mixed[1], d[1])


def test_text_mask_hides_padding_tokens() -> None:
    net, x, cond = make(2, "text")
    randomise_zero_params(net)
    out = net(x, torch.ones(2), cond)
    text = cond["text"].clone()
    text[~cond["text_mask"]] = 100.0  # change only padding tokens
    torch.testing.assert_close(net(x, torch.ones(2), {**cond, "text": text}), out)
    text[0, 0] = 100.0  # a real token changes the output
    assert float((net(x, torch.ones(2), {**cond, "text": text}) - out).detach().abs().max()) > 1e-4


def test_vector_film_and_checkpointing_match() -> None:
    net, x, cond = make(1, "vector")
    randomise_zero_params(net)
    out = net(x, torch.ones(2), cond)
    out2 = net(x, torch.ones(2), {"vector": cond["vector"] + 1})
    assert float((out - out2).detach().abs().max()) > 1e-4
    net.use_checkpoint = True
    net.train()
    out.pow(2).sum().backward()
    g = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    net(x, torch.ones(2), cond).pow(2).sum().backward()
    for a, p in zip(g, net.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_errors_name_the_shape() -> None:
    net, _, _ = make(2, "none")
    with pytest.raises(ValueError, match=r"divisible by 2.*\(1, 3, 9, 8\)"):
        net(torch.randn(1, 3, 9, 8), torch.zeros(1))
    with pytest.raises(ValueError, match=r"\(B, 3, S, S\).*\(1, 2, 8, 8\)"):
        net(torch.randn(1, 2, 8, 8), torch.zeros(1))
    cnet, x, _ = make(2, "concat")
    with pytest.raises(KeyError, match="concat"):
        cnet(x, torch.zeros(2))
    with pytest.raises(ValueError, match=r"dims must be"):
        UNet(dims=4)


def test_registry() -> None:
    assert {"tiny", "small", "ddpm-cifar", "adm-64", "dp-1d", "diffuser-1d"} <= set(UNET_SIZES)
    net = unet("tiny", dims=1, in_channels=2, model_channels=8, norm_groups=4)
    assert net(torch.randn(3, 2, 16), torch.zeros(3)).shape == (3, 2, 16)
    with pytest.raises(KeyError, match="available"):
        unet("huge")
