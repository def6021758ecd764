"""ControlNet: identity at initialisation, locked base after training, outline data and IoU."""

from __future__ import annotations

import functools

import pytest
import torch

from polydiff.core.objective import DiffusionObjective
from polydiff.core.schedules import EDMSchedule
from polydiff.image.controlnet import (
    ControlNet,
    OutlineFillDataset,
    mask_iou,
    outline_map,
    shape_mask,
    unet_forward_with_residuals,
)
from polydiff.nn.unet import UNet


def _base(**kw) -> UNet:
    torch.manual_seed(0)
    net = UNet(
        in_channels=3, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
        attention_levels=(1,), num_heads=2, **kw,
    )  # fmt: skip
    for p in net.parameters():  # a "trained" base: no zero-initialised (trivial) outputs
        torch.nn.init.normal_(p, std=0.05)
    return net


@pytest.fixture(scope="module")
def data() -> OutlineFillDataset:
    return OutlineFillDataset(n=64, size=16, seed=0, colour_class=True)


def test_forward_with_residuals_equals_unet_forward() -> None:
    net = _base(num_classes=4, context_dim=8)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3.0, 500.0])
    cond = {"class": torch.tensor([1, 2]), "text": torch.randn(2, 5, 8)}
    assert torch.equal(unet_forward_with_residuals(net, x, t, cond), net(x, t, cond))
    with pytest.raises(ValueError, match="skip residuals"):
        unet_forward_with_residuals(net, x, t, cond, skip_residuals=[x])


def test_controlnet_is_the_base_at_init_and_checks_its_map(data) -> None:
    base = _base(num_classes=4)
    cn = ControlNet(base, hint_channels=1)
    batch = data.get_batch(range(4))
    cond = {"class": batch["class"], "control": batch["control"]}
    x, t = torch.randn(4, 3, 16, 16), torch.full((4,), 10.0)
    assert torch.equal(cn(x, t, cond), base(x, t, cond))  # zero convolutions: exact identity
    assert cn.accepts_null_mask
    with pytest.raises(KeyError, match="control"):
        cn(x, t, {"class": batch["class"]})
    with pytest.raises(ValueError, match="control map"):
        cn(x, t, {"class": batch["class"], "control": batch["control"][..., :8]})
    # the copy's skip channels match the base's (one zero conv per skip)
    skips, mid = cn.control_residuals(x, t, cond)
    assert len(skips) == len(base.down) + 1 and all(not s.any() for s in skips)
    assert mid.shape[1] == skips[-1].shape[1]
    assert not any(k.startswith("base.") for k in cn.trainable_state_dict())


def test_training_changes_the_copy_only(data) -> None:
    from polydiff.train import Trainer, TrainerConfig

    base = _base(num_classes=4)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    cn = ControlNet(base, hint_channels=1)
    copy_before = {k: v.clone() for k, v in cn.trainable_state_dict().items()}
    objective = DiffusionObjective(EDMSchedule(), "edm")
    cfg = TrainerConfig(
        max_steps=3, batch_size=8, ema_decays=(), progress=False, log_every=0, cpu=True
    )
    trainer = Trainer(cn, objective, data, functools.partial(torch.optim.AdamW, lr=1e-3), cfg)
    trainer.fit()
    assert cn.base.training is False  # the locked model stays in eval mode
    for k, v in base.state_dict().items():
        assert torch.equal(v, before[k]), k  # bit-identical base weights
    changed = [
        k for k, v in cn.trainable_state_dict().items() if not torch.equal(v, copy_before[k])
    ]
    assert any(k.startswith("zero_convs") for k in changed)
    assert any(k.startswith("hint_encoder") for k in changed)
    # after training the map changes the output
    batch = data.get_batch(range(2))
    x, t = torch.randn(2, 3, 16, 16), torch.zeros(2)
    cond = {"class": batch["class"], "control": batch["control"]}
    assert (cn(x, t, cond) - base(x, t, cond)).abs().max() > 1e-6


def test_outline_data_and_iou(data) -> None:
    item = data[0]
    assert item["x"].shape == (3, 16, 16) and item["control"].shape == (1, 16, 16)
    assert set(item["control"].unique().tolist()) <= {-1.0, 1.0}
    masks = data.fill_mask
    assert masks.flatten(1).sum(1).min() >= 4  # every image has a shape
    outline = data.control[:, 0] > 0
    assert not (outline & ~masks).any()  # the outline lies on the shape
    area, rim = masks.flatten(1).sum(1), outline.flatten(1).sum(1)
    assert (rim <= area).all() and (rim[area >= 20] < area[area >= 20]).all()
    # segmentation of the clean images recovers the masks; IoU of a mask with itself is 1
    assert torch.equal(shape_mask(data.images), masks)
    assert torch.equal(mask_iou(masks, masks), torch.ones(len(masks)))
    shifted = torch.roll(masks, 3, dims=-1)
    assert (mask_iou(shifted, masks) < 1).all()
    square = torch.zeros(1, 5, 5, dtype=torch.bool)
    square[0, 1:4, 1:4] = True
    ring = outline_map(square)[0, 0].bool()
    assert int(ring.sum()) == 8 and not ring[2, 2]
