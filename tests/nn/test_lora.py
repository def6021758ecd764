"""LoRA through peft: zero-init leaves outputs unchanged, merge/unmerge, adapter save/load."""

from __future__ import annotations

import pytest
import torch

from polydiff.nn import DiT, UNet
from polydiff.nn.lora import (
    add_lora,
    load_lora,
    lora_parameters,
    merge_lora,
    save_lora,
    unmerge_lora,
)

pytest.importorskip("peft")


def make_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    net = UNet(
        dims=2, in_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
        num_heads=2, norm_groups=4, context_dim=5,
    )  # fmt: skip
    with torch.no_grad():  # non-trivial base weights everywhere (zero-init convs included)
        for p in net.parameters():
            if bool((p == 0).all()):
                p.normal_(0, 0.1)
    return net.eval()


def inputs() -> tuple[torch.Tensor, torch.Tensor, dict]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, 8, generator=g)
    return x, torch.tensor([0.3, 0.8]), {"text": torch.randn(2, 3, 5, generator=g)}


def perturb_lora(net) -> None:
    with torch.no_grad():
        for p in lora_parameters(net):
            p.normal_(0, 0.2)


@pytest.mark.parametrize("include_convs", [False, True])
def test_zero_init_unchanged_and_only_adapters_train(include_convs: bool) -> None:
    net = make_unet()
    x, t, cond = inputs()
    before = net(x, t, cond).detach()
    n_base = sum(p.numel() for p in net.parameters())
    add_lora(net, rank=2, include_convs=include_convs)
    torch.testing.assert_close(net(x, t, cond), before, rtol=0, atol=0)
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    names = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    expected = {"to_q", "to_k", "to_v", "to_out"} | (
        {"in_conv", "out_conv"} if include_convs else set()
    )
    assert names == expected
    assert sum(p.numel() for p in lora_parameters(net)) < 0.5 * n_base
    perturb_lora(net)
    assert float((net(x, t, cond) - before).detach().abs().max()) > 1e-4


def test_merge_then_unmerge_restores_weights() -> None:
    net = add_lora(make_unet(), rank=2, include_convs=True)
    perturb_lora(net)
    x, t, cond = inputs()
    with torch.no_grad():
        adapted = net(x, t, cond)
        base = {n: p.clone() for n, p in net.named_parameters() if "base_layer" in n}
        merge_lora(net)
        merged = net(x, t, cond)
        changed = [
            n
            for n, p in net.named_parameters()
            if "base_layer" in n and not torch.equal(p, base[n])
        ]
        unmerge_lora(net)
        restored = net(x, t, cond)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)  # merged == adapter path
    assert changed  # merge really folded B A into W
    for n, p in net.named_parameters():
        if "base_layer" in n:
            torch.testing.assert_close(p, base[n], atol=1e-6, rtol=0)
    torch.testing.assert_close(restored, adapted, atol=1e-5, rtol=1e-5)


def test_save_load_round_trip(tmp_path) -> None:
    net = DiT(8, 2, 3, hidden=32, depth=2, heads=2, context_dim=5)
    with torch.no_grad():
        for p in net.parameters():
            if bool((p == 0).all()):
                p.normal_(0, 0.1)
    fresh = DiT(8, 2, 3, hidden=32, depth=2, heads=2, context_dim=5)
    fresh.load_state_dict(net.state_dict())
    add_lora(net, rank=4, alpha=8)
    perturb_lora(net)
    path = save_lora(net, tmp_path / "adapter.safetensors")
    x, t, cond = inputs()
    expected = net(x, t, cond).detach()
    assert path.stat().st_size < 0.25 * sum(p.numel() * 4 for p in fresh.parameters())
    load_lora(fresh, path)
    torch.testing.assert_close(fresh(x, t, cond), expected)
    with pytest.raises(ValueError, match="does not fit|no module"):
        load_lora(make_unet(), path)  # a different network


def test_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="no module"):
        add_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="add_lora first"):
        merge_lora(make_unet())
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_lora(make_unet(), tmp_path / "missing.safetensors")
