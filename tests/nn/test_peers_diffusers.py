"""Numerical cross-checks against diffusers: our U-Net equals ``UNet2DModel`` at a matched
configuration with the same weights, and DiT's sin-cos positions equal diffusers' (DiT layout)."""

from __future__ import annotations

import pytest
import torch

from polydiff.nn import UNet
from polydiff.nn.transformer import sincos_pos_embed

pytestmark = [pytest.mark.peers, pytest.mark.slow]  # diffusers import alone takes ~10 s
diffusers = pytest.importorskip("diffusers")

RES = {"in_norm": "norm1", "in_conv": "conv1", "emb_proj": "time_emb_proj", "out_norm": "norm2",
       "out_conv": "conv2", "skip": "conv_shortcut"}  # fmt: skip
ATTN = {"norm": "group_norm", "attn.to_q": "to_q", "attn.to_k": "to_k", "attn.to_v": "to_v",
        "attn.to_out": "to_out.0"}  # fmt: skip


def module_pairs(levels: int, blocks: int, attn: tuple[int, ...]) -> list[tuple[str, str, dict]]:
    """(our prefix, diffusers prefix, submodule name map) for every block of the two U-Nets."""
    pairs = [("embed.time.mlp.0", "time_embedding.linear_1", {}),
             ("embed.time.mlp.2", "time_embedding.linear_2", {}),
             ("conv_in", "conv_in", {}), ("norm_out", "conv_norm_out", {}),
             ("conv_out", "conv_out", {})]  # fmt: skip
    k = 0
    for i in range(levels):
        for j in range(blocks):
            pairs.append((f"down.{k}.0", f"down_blocks.{i}.resnets.{j}", RES))
            if i in attn:
                pairs.append((f"down.{k}.1", f"down_blocks.{i}.attentions.{j}", ATTN))
            k += 1
        if i != levels - 1:
            pairs.append((f"down.{k}.0.conv", f"down_blocks.{i}.downsamplers.0.conv", {}))
            k += 1
    pairs += [("mid.0", "mid_block.resnets.0", RES), ("mid.1", "mid_block.attentions.0", ATTN),
              ("mid.2", "mid_block.resnets.1", RES)]  # fmt: skip
    k = 0
    for i in reversed(range(levels)):
        u = levels - 1 - i
        for j in range(blocks + 1):
            pairs.append((f"up.{k}.0", f"up_blocks.{u}.resnets.{j}", RES))
            if i in attn:
                pairs.append((f"up.{k}.1", f"up_blocks.{u}.attentions.{j}", ATTN))
            if i and j == blocks:
                pos = 2 if i in attn else 1
                pairs.append((f"up.{k}.{pos}.conv", f"up_blocks.{u}.upsamplers.0.conv", {}))
            k += 1
    return pairs


def test_unet_equals_diffusers_unet2d_with_same_weights() -> None:
    # additive time embedding: with scale_shift, diffusers drops the GroupNorm of the middle
    # attention block (ADM keeps it), so only the "default" variant maps one to one
    mult, blocks, attn = (1, 2), 1, (1,)
    ours = UNet(dims=2, in_channels=3, model_channels=32, channel_mult=mult,
                num_res_blocks=blocks, attention_levels=attn, head_dim=16,
                scale_shift_norm=False)  # fmt: skip
    theirs = diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 64),
        layers_per_block=blocks, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), resnet_time_scale_shift="default",
        attention_head_dim=16, norm_num_groups=32,
    )  # fmt: skip
    n_ours, n_theirs = (sum(p.numel() for p in m.parameters()) for m in (ours, theirs))
    src = dict(theirs.named_parameters())
    state = {}
    for our_prefix, their_prefix, names in module_pairs(len(mult), blocks, attn):
        for name, _ in ours.get_submodule(our_prefix).named_parameters():
            sub, leaf = (name.rsplit(".", 1) + [""])[:2] if "." in name else ("", name)
            mapped = names.get(sub, sub) if names else sub
            key = ".".join(x for x in (their_prefix, mapped, leaf) if x)
            state[f"{our_prefix}.{name}"] = src.pop(key)
    assert not src, f"diffusers parameters left unmapped: {sorted(src)[:5]}"
    ours.load_state_dict({k: v.detach() for k, v in state.items()})
    assert n_ours == n_theirs
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 8, 8, generator=g), torch.tensor([3.0, 870.0])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t), theirs(x, t).sample, atol=1e-4, rtol=1e-4)


def test_dit_positions_equal_diffusers() -> None:
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    ref = get_2d_sincos_pos_embed(64, 6, base_size=6, interpolation_scale=1.0, output_type="pt")
    torch.testing.assert_close(sincos_pos_embed([6, 6], 64), ref.float(), atol=1e-5, rtol=0)
