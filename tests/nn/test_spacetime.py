"""Space-time blocks and the video U-Net: T5 buckets, frame independence, shapes, null rows."""

from __future__ import annotations

import pytest
import torch

from polydiff.nn.spacetime import TemporalConv, VideoUNet, t5_relative_position_bucket


def randomise_zero_params(net: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in net.parameters():
            if bool((p == 0).all()):
                p.normal_(0, 0.1)


def make(**kw) -> VideoUNet:
    return VideoUNet(
        3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_heads=2, norm_groups=4,
        num_buckets=8, max_distance=16, **kw,
    )  # fmt: skip


def test_t5_buckets_known_values() -> None:
    # bidirectional, 32 buckets, max distance 128: exact below 8, log-spaced, saturating at 15/31
    rel = torch.tensor([0, -1, -7, -8, -20, -127, -500, 1, 7, 8, 20, 500])
    expected = torch.tensor([0, 1, 7, 8, 10, 15, 15, 17, 23, 24, 26, 31])
    torch.testing.assert_close(t5_relative_position_bucket(rel, True, 32, 128), expected)


@pytest.mark.slow
@pytest.mark.peers
def test_t5_buckets_match_transformers() -> None:
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    rel = torch.arange(-200, 201)[None]
    for bidirectional in (True, False):
        ours = t5_relative_position_bucket(rel, bidirectional, 32, 128)
        ref = t5.T5Attention._relative_position_bucket(rel, bidirectional, 32, 128)
        torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("kind", ["none", "class", "text", "concat", "vector"])
def test_shapes_zero_init(kind: str) -> None:
    kw, cond = {}, {}
    if kind == "class":
        kw, cond = {"num_classes": 3}, {"class": torch.tensor([0, 2])}
    if kind == "text":
        kw = {"context_dim": 5}
        cond = {
            "text": torch.randn(2, 3, 5),
            "text_mask": torch.tensor([[1, 1, 0], [1, 0, 0]]).bool(),
        }
    if kind == "concat":
        kw, cond = {"concat_channels": 1}, {"concat": torch.randn(2, 1, 3, 8, 8)}
    if kind == "vector":
        kw, cond = {"cond_dim": 4}, {"vector": torch.randn(2, 4)}
    net = make(out_channels=2, **kw)
    assert net.accepts_null_mask == (kind != "none")
    out = net(torch.randn(2, 3, 3, 8, 8), torch.rand(2), cond or None)
    assert out.shape == (2, 2, 3, 8, 8)
    assert float(out.detach().abs().max()) == 0.0


def test_gradients_reach_every_parameter(assert_grads_reach_all) -> None:
    net = make(num_classes=3, context_dim=5, concat_channels=1)
    x = torch.randn(2, 3, 3, 8, 8)
    cond = {"class": torch.tensor([0, 1]), "text": torch.randn(2, 2, 5), "concat": x[:, :1]}
    assert_grads_reach_all(net, lambda: net(x, torch.rand(2), cond).pow(2).sum())


@pytest.mark.parametrize("temporal_conv", [0, 3])
def test_frames_independent_processes_frames_separately(temporal_conv: int) -> None:
    net = make(num_classes=3, temporal_conv=temporal_conv).eval()
    randomise_zero_params(net)
    x, t = torch.randn(2, 3, 4, 8, 8), torch.tensor([0.2, 0.9])
    cond = {"class": torch.tensor([1, 2])}
    per_frame = torch.cat([net(x[:, :, f : f + 1], t, cond) for f in range(4)], dim=2)
    torch.testing.assert_close(net(x, t, cond, frames_independent=True), per_frame)
    torch.testing.assert_close(
        net(x, t, {**cond, "frames_independent": torch.tensor(True)}), per_frame
    )
    joint = net(x, t, cond)
    assert float((joint - per_frame).detach().abs().max()) > 1e-4  # temporal attention mixes frames
    # per-sample switch: sample 0 image-like, sample 1 video
    mixed = net(x, t, cond, frames_independent=torch.tensor([True, False]))
    torch.testing.assert_close(mixed[0], per_frame[0])
    torch.testing.assert_close(mixed[1], joint[1])


def test_temporal_conv_is_a_zero_padded_stencil_over_frames() -> None:
    layer = TemporalConv(4, 3, norm_groups=2)
    h = torch.randn(2 * 5, 4, 3, 3)  # (B*F, C, H, W), 5 frames
    torch.testing.assert_close(layer(h, 5), h)  # zero-initialised: the identity
    with torch.no_grad():  # per channel: central difference z[t+1] - z[t-1], plus 0.5
        layer.conv.weight.zero_()
        for c in range(4):
            layer.conv.weight[c, c, :, 0, 0] = torch.tensor([-1.0, 0.0, 1.0])
        layer.conv.bias.fill_(0.5)
    z = torch.nn.functional.silu(layer.norm(h)).view(2, 5, 4, 3, 3)
    pad = torch.nn.functional.pad(z, (0, 0, 0, 0, 0, 0, 1, 1))  # zero frames at both ends
    expected = h.view(2, 5, 4, 3, 3) + pad[:, 2:] - pad[:, :-2] + 0.5
    torch.testing.assert_close(layer(h, 5), expected.view(10, 4, 3, 3))
    out = layer(h, 5, independent=torch.tensor([True, False]))  # image rows: centre tap only
    torch.testing.assert_close(out[:5], h[:5] + 0.5)
    torch.testing.assert_close(out[5:], expected.view(10, 4, 3, 3)[5:])
    with pytest.raises(ValueError, match=r"temporal_conv .* must be odd and >= 1, got 2"):
        TemporalConv(4, 2, norm_groups=2)


def test_temporal_conv_at_init_is_the_network_without_it() -> None:
    plain, conv = make(num_classes=3).eval(), make(num_classes=3, temporal_conv=3).eval()
    randomise_zero_params(plain)
    missing = conv.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(".temporal_conv." in k for k in missing)
    x, t, cond = (
        torch.randn(2, 3, 4, 8, 8),
        torch.tensor([0.2, 0.9]),
        {"class": torch.tensor([0, 1])},
    )
    torch.testing.assert_close(conv(x, t, cond), plain(x, t, cond))


def test_temporal_attention_mixes_frames_and_null_rows() -> None:
    net = make(context_dim=5).eval()
    randomise_zero_params(net)
    x = torch.randn(1, 3, 4, 8, 8)
    y = x.clone()
    y[:, :, 0] += 1.0
    cond = {"text": torch.randn(1, 2, 5)}
    a, b = net(x, torch.ones(1), cond), net(y, torch.ones(1), cond)
    assert float((a[:, :, 3] - b[:, :, 3]).detach().abs().max()) > 1e-5  # frame 0 reaches frame 3
    null = {"null_mask": torch.tensor([True])}
    torch.testing.assert_close(net(x, torch.ones(1), {**cond, **null}), net(x, torch.ones(1), null))


def test_errors() -> None:
    net = make()
    with pytest.raises(ValueError, match=r"divisible by 2.*\(1, 3, 2, 7, 8\)"):
        net(torch.randn(1, 3, 2, 7, 8), torch.zeros(1))
    with pytest.raises(ValueError, match=r"frames_independent"):
        net(torch.randn(1, 3, 2, 8, 8), torch.zeros(1), frames_independent=torch.ones(3).bool())
