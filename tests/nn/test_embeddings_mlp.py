"""Embeddings (sinusoidal, Fourier, class with null) and the residual MLP denoiser."""

from __future__ import annotations

import math

import pytest
import torch

from polydiff.nn.embeddings import (
    ClassEmbedding,
    ConditionEmbedding,
    FourierFeatures,
    timestep_embedding,
)
from polydiff.nn.mlp import ResidualMLP


def test_timestep_embedding_matches_transformer_formula() -> None:
    t = torch.tensor([0.0, 1.0, 37.0])
    emb = timestep_embedding(t, 8, max_period=10000.0)
    assert emb.shape == (3, 8)
    for i in range(4):
        freq = 10000.0 ** (-i / 4)
        torch.testing.assert_close(emb[:, i], torch.cos(t * freq))
        torch.testing.assert_close(emb[:, 4 + i], torch.sin(t * freq))
    # t = 0: cos part ones, sin part zeros
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert timestep_embedding(t, 7).shape == (3, 7)


def test_fourier_features_unit_norm_and_formula() -> None:
    ff = FourierFeatures(16, scale=16.0)
    t = torch.tensor([-1.2, 0.0, 0.7])
    out = ff(t)
    # each (cos, sin) pair has unit norm: |out|^2 = dim / 2
    torch.testing.assert_close(out.pow(2).sum(-1), torch.full((3,), 8.0))
    torch.testing.assert_close(out[:, 0], torch.cos(2 * math.pi * ff.freqs[0] * t))
    assert float(ff.freqs.std()) > 5.0  # N(0, 16^2)


def test_class_embedding_null_mask() -> None:
    emb = ClassEmbedding(5, 4)
    y = torch.tensor([0, 3, 4])
    null = torch.tensor([False, True, False])
    out = emb(y, null)
    torch.testing.assert_close(out[0], emb.table.weight[0])
    torch.testing.assert_close(out[1], emb.table.weight[5])  # null class
    torch.testing.assert_close(out[2], emb.table.weight[4])
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        emb(torch.tensor([6]))


def test_condition_embedding_null_rows_ignore_condition() -> None:
    ce = ConditionEmbedding(16, freq_dim=16, num_classes=3, cond_dim=5, pooled_dim=6)
    t = torch.tensor([1.0, 1.0])
    cond = {
        "class": torch.tensor([0, 2]),
        "vector": torch.randn(2, 5),
        "text_pooled": torch.randn(2, 6),
    }
    null = {"null_mask": torch.tensor([True, True])}
    other = {
        "class": torch.tensor([1, 1]),
        "vector": torch.randn(2, 5),
        "text_pooled": torch.randn(2, 6),
    }
    a = ce(t, {**cond, **null})
    b = ce(t, {**other, **null})
    torch.testing.assert_close(a, b)  # null rows do not depend on the condition
    c = ce(t, null)  # fully-null batch may omit the conditions
    torch.testing.assert_close(a, c)
    assert not torch.allclose(ce(t, cond), ce(t, other))
    with pytest.raises(KeyError, match="class"):
        ce(t, None)


@pytest.mark.parametrize("num_classes,cond_dim", [(None, None), (4, None), (None, 3), (4, 3)])
def test_residual_mlp_shapes_zero_init_and_grads(
    num_classes, cond_dim, assert_grads_reach_all
) -> None:
    net = ResidualMLP(2, hidden=32, depth=2, num_classes=num_classes, cond_dim=cond_dim)
    assert net.accepts_null_mask == (num_classes is not None or cond_dim is not None)
    x, t = torch.randn(5, 2), torch.rand(5) * 999
    cond = {}
    if num_classes:
        cond["class"] = torch.randint(0, 4, (5,))
    if cond_dim:
        cond["vector"] = torch.randn(5, 3)
    cond = cond or None
    out = net(x, t, cond)
    assert out.shape == (5, 2)
    assert float(out.detach().abs().max()) == 0.0  # zero-initialised output layer
    assert_grads_reach_all(net, lambda: net(x, t, cond).pow(2).sum())
    if cond is not None:
        null = {**cond, "null_mask": torch.tensor([True, False, True, False, True])}
        out_null = net(x, t, null)
        other = {k: v.flip(0) for k, v in cond.items()}
        out_other = net(x, t, {**other, "null_mask": null["null_mask"]})
        torch.testing.assert_close(out_null[::2], out_other[::2])


def test_residual_mlp_bad_shape_message() -> None:
    net = ResidualMLP(3, hidden=16, depth=1)
    with pytest.raises(ValueError, match=r"\(B, 3\).*\(4, 2\)"):
        net(torch.randn(4, 2), torch.zeros(4))
    with pytest.raises(ValueError, match=r"t must be"):
        net(torch.randn(4, 3), torch.zeros(3))
