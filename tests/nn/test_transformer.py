"""Transformer denoisers: DiT over 2-D/3-D patches, sequences with masks, set equivariance, MoE."""

from __future__ import annotations

import pytest
import torch
from timm.layers import Mlp

from polydiff.nn.transformer import (
    DIT_SIZES,
    DiT,
    MoEFeedForward,
    TransformerDenoiser,
    dit,
    load_balancing_loss,
)


def randomise_zero_params(net: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in net.parameters():
            if bool((p == 0).all()):
                p.normal_(0, 0.1)


def tiny_dit(input_size, **kw) -> DiT:
    return DiT(input_size, patch_size=2, in_channels=3, hidden=32, depth=2, heads=2, **kw)


@pytest.mark.parametrize("input_size", [8, (4, 6), (4, 4, 6)])
@pytest.mark.parametrize("kind", ["none", "class", "text"])
def test_dit_shapes_zero_init_grads(input_size, kind, assert_grads_reach_all) -> None:
    kw, cond = {}, None
    if kind == "class":
        kw, cond = {"num_classes": 4}, {"class": torch.tensor([0, 3])}
    if kind == "text":
        kw = {"context_dim": 5, "pooled_dim": 5}
        cond = {"text": torch.randn(2, 3, 5), "text_pooled": torch.randn(2, 5)}
    net = tiny_dit(input_size, out_channels=6, **kw)
    assert net.accepts_null_mask == (kind != "none")
    size = (input_size,) * 2 if isinstance(input_size, int) else input_size
    x = torch.randn(2, 3, *size)
    out = net(x, torch.rand(2) * 999, cond)
    assert out.shape == (2, 6, *size)
    assert float(out.detach().abs().max()) == 0.0  # adaLN-Zero + zero final linear
    assert_grads_reach_all(net, lambda: net(x, torch.rand(2), cond).pow(2).sum())


@pytest.mark.parametrize("size", [(4, 6), (4, 2, 6)])
def test_unpatchify_inverts_patch_order(size) -> None:
    net = tiny_dit(size)
    p, b, c = 2, 2, 3
    x = torch.randn(b, c, *size)
    grid = [s // p for s in size]
    if len(size) == 2:
        tok = x.reshape(b, c, grid[0], p, grid[1], p).permute(0, 2, 4, 3, 5, 1)
    else:
        tok = x.reshape(b, c, grid[0], p, grid[1], p, grid[2], p).permute(0, 2, 4, 6, 3, 5, 7, 1)
    torch.testing.assert_close(net._unpatchify(tok.reshape(b, -1, c * p ** len(size)), grid), x)


def test_dit_null_rows_and_errors() -> None:
    net = tiny_dit(8, num_classes=4, context_dim=5)
    randomise_zero_params(net)
    x, t = torch.randn(1, 3, 8, 8).expand(2, -1, -1, -1), torch.ones(2)
    null = torch.tensor([True, True])
    a = net(x, t, {"class": torch.tensor([0, 1]), "text": torch.randn(2, 3, 5), "null_mask": null})
    torch.testing.assert_close(a[0], a[1])
    torch.testing.assert_close(a, net(x, t, {"null_mask": null}))
    with pytest.raises(ValueError, match=r"divisible by patch_size=2.*|\(B, 3, 8, 8\)"):
        net(torch.randn(1, 3, 7, 8), torch.ones(1), {"null_mask": torch.tensor([True])})
    with pytest.raises(ValueError, match=r"\(B, 3, 8, 8\).*\(1, 2, 8, 8\)"):
        net(torch.randn(1, 2, 8, 8), torch.ones(1))


def test_dit_registry_matches_paper_size() -> None:
    assert {"DiT-S/2", "DiT-B/4", "DiT-XL/2", "DiT-T/2"} <= set(DIT_SIZES)
    with torch.device("meta"):  # count parameters without allocating them
        net = dit("DiT-S/2", input_size=32, in_channels=4, out_channels=8, num_classes=1000)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n / 33.0e6 - 1) < 0.02  # DiT-S/2: 33M parameters (Peebles & Xie 2023, table 1)
    with pytest.raises(KeyError, match="available"):
        dit("DiT-Z/2")


def seq_net(**kw) -> TransformerDenoiser:
    net = TransformerDenoiser(4, hidden=32, depth=2, heads=2, **kw)
    randomise_zero_params(net)
    return net.eval()


@pytest.mark.parametrize("pos", ["sinusoidal", "learned", "none"])
def test_sequence_shapes(pos) -> None:
    net = TransformerDenoiser(
        4, out_dim=5, hidden=32, depth=1, heads=2, pos_embedding=pos, max_len=16, cond_dim=3
    )
    out = net(torch.randn(2, 10, 4), torch.rand(2), {"vector": torch.randn(2, 3)})
    assert out.shape == (2, 10, 5)
    assert net.accepts_null_mask


def test_causal_mask_hides_the_future() -> None:
    net = seq_net(causal=True)
    x = torch.randn(2, 8, 4)
    y = x.clone()
    y[:, 5:] = torch.randn(2, 3, 4)
    a, b = net(x, torch.ones(2)), net(y, torch.ones(2))
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert float((a[:, 5:] - b[:, 5:]).detach().abs().max()) > 1e-4


def test_seq_mask_hides_padding() -> None:
    net = seq_net()
    x = torch.randn(2, 8, 4)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, 6:] = False
    y = x.clone()
    y[0, 6:] = 50.0
    a = net(x, torch.ones(2), {"seq_mask": mask})
    b = net(y, torch.ones(2), {"seq_mask": mask})
    torch.testing.assert_close(a[0, :6], b[0, :6])
    torch.testing.assert_close(a[1], b[1])


def test_set_transformer_is_permutation_equivariant() -> None:
    net = seq_net(pos_embedding="none", num_classes=3)
    x = torch.randn(2, 12, 4)
    perm = torch.randperm(12)
    cond = {"class": torch.tensor([0, 2])}
    t = torch.tensor([0.3, 0.7])
    out = net(x, t, cond)
    torch.testing.assert_close(net(x[:, perm], t, cond), out[:, perm])
    # and it is not trivially constant across tokens
    assert float((out[:, 0] - out[:, 1]).detach().abs().max()) > 1e-4


def test_moe_routes_each_token_to_k_experts() -> None:
    moe = MoEFeedForward(8, 16, num_experts=4, top_k=2)
    x = torch.randn(3, 5, 8)
    assert moe(x).shape == x.shape
    idx = moe.last_expert_index
    assert idx.shape == (15, 2)
    assert bool((idx[:, 0] != idx[:, 1]).all())
    # the output is the gate-weighted sum of the two chosen experts
    flat = x.reshape(-1, 8)
    probs = moe.router(flat).softmax(-1)
    i = 7
    e0, e1 = idx[i].tolist()
    g = probs[i, [e0, e1]] / probs[i, [e0, e1]].sum()
    ref = g[0] * moe.experts[e0](flat[i]) + g[1] * moe.experts[e1](flat[i])
    torch.testing.assert_close(moe(x).reshape(-1, 8)[i], ref)


def test_balancing_loss_minimal_at_uniform_routing() -> None:
    e, n = 4, 64
    uniform = torch.full((n, e), 1 / e)
    index = torch.arange(n).remainder(e)[:, None]
    assert float(load_balancing_loss(uniform, index)) == pytest.approx(1.0)
    # routing whose assignment fractions match the router probabilities q: E * sum q^2 >= 1,
    # with equality only at uniform q (Cauchy-Schwarz)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        counts = torch.multinomial(torch.ones(e), 100, replacement=True, generator=gen).bincount(
            minlength=e
        )
        q = counts / 100
        index = torch.repeat_interleave(torch.arange(e), counts)[:, None]
        loss = float(load_balancing_loss(q.expand(100, e), index))
        assert loss == pytest.approx(e * float((q * q).sum()), rel=1e-5)
        assert loss >= 1.0
    collapsed = torch.zeros(n, e)
    collapsed[:, 0] = 1.0
    assert float(load_balancing_loss(collapsed, torch.zeros(n, 1, dtype=torch.long))) == e


def test_single_expert_equals_plain_ffn() -> None:
    moe = MoEFeedForward(8, 16, num_experts=1, top_k=1)
    mlp = Mlp(8, 16, act_layer=lambda: torch.nn.GELU(approximate="tanh"))
    mlp.load_state_dict(moe.experts[0].state_dict())
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(moe(x), mlp(x))


def test_model_aux_loss() -> None:
    net = TransformerDenoiser(4, hidden=16, depth=2, heads=2, num_experts=4, top_k=1)
    net(torch.randn(2, 6, 4), torch.rand(2))
    total = net.aux_loss
    parts = [b.mlp.aux_loss for b in net.blocks]
    assert total.ndim == 0 and float(total.detach()) > 0
    torch.testing.assert_close(total, parts[0] + parts[1])
    net.aux_loss.backward()
    assert net.blocks[0].mlp.router.weight.grad is not None
    plain = TransformerDenoiser(4, hidden=16, depth=1, heads=2)
    assert float(plain.aux_loss) == 0.0


def test_attention_combines_padding_causal_and_bias() -> None:
    from polydiff.nn.attention import Attention, combine_masks

    b, n, h = 2, 5, 2
    pad = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    bias = torch.randn(1, h, n, n)
    mask = combine_masks(b, n, n, pad, bias, causal=True)
    assert mask.shape == (b, h, n, n)
    allowed = pad[:, None, None, :] & torch.ones(n, n, dtype=torch.bool).tril()
    torch.testing.assert_close(
        mask[allowed.expand(b, h, n, n)], bias.expand(b, h, n, n)[allowed.expand(b, h, n, n)]
    )
    assert bool(torch.isinf(mask[~allowed.expand(b, h, n, n)]).all())
    # the attention output equals a manual softmax with that mask
    attn = Attention(8, heads=h)
    x = torch.randn(b, n, 8)
    out = attn(x, key_padding_mask=pad, attn_mask=bias, causal=True)
    q, k, v = (m(x).view(b, n, h, 4).transpose(1, 2) for m in (attn.to_q, attn.to_k, attn.to_v))
    w = (q @ k.transpose(-1, -2) / 2.0 + mask).softmax(-1)
    ref = attn.to_out((w @ v).transpose(1, 2).reshape(b, n, 8))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
