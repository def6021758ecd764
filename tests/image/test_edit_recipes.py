"""The image editing benchmark's models are recipes (issue 13): a ControlNet / IP-Adapter config
builds on the trained base run named by ``model.base_run`` (its weights, frozen)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from polydiff.image.adaptation import AdaptConfig
from polydiff.image.controlnet import ControlNet
from polydiff.image.experiments import controlnet_on_run, digits_data, ip_adapter_on_run
from polydiff.image.ip_adapter import IPAdapter
from polydiff.image.models import image_unet
from polydiff.train.checkpoint import CheckpointError
from polydiff.train.config import compose
from polydiff.train.run import instantiate, open_run, train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHAPES_BASE = dict(size="tiny", channels=3, model_channels=16, attention_levels=(), num_heads=4)


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("edit")
    return train(
        [
            "experiment=image/editing_shapes", "trainer.max_steps=2", "trainer.batch_size=8",
            "trainer.lr_warmup_steps=0", "data.dataset.n=16", f"runs_root={root}",
        ],
        config_dir=CONFIGS,
    )  # fmt: skip


def test_controlnet_recipe_loads_the_base_run_and_freezes_it(shapes_run: Path) -> None:
    trained = open_run(shapes_run).model.state_dict()
    cfg = compose(["experiment=image/editing_controlnet", f"model.base_run={shapes_run}"], CONFIGS)
    cn = instantiate(cfg.model, "model")
    assert isinstance(cn, ControlNet)
    for k, v in cn.base.state_dict().items():
        assert torch.equal(v, trained[k]), k
    assert not any(p.requires_grad for p in cn.base.parameters())
    assert any(p.requires_grad for p in cn.parameters())
    fresh = image_unet(**SHAPES_BASE)  # untrained: differs from the run (the test can fail)
    assert not all(torch.equal(v, trained[k]) for k, v in fresh.state_dict().items())


def test_a_base_that_does_not_match_the_run_is_one_clear_error(shapes_run: Path) -> None:
    wrong = image_unet(**{**SHAPES_BASE, "model_channels": 32})
    message = r"model.base does not match the network of .*editing_shapes"
    with pytest.raises(ValueError, match=message):
        controlnet_on_run(wrong, base_run=str(shapes_run))


def test_ip_adapter_recipe_and_classes_of_the_base_data() -> None:
    cfg = compose(["experiment=image/editing_ip_adapter"], CONFIGS)
    adapter = instantiate(cfg.model, "model")  # base_run=null: an untrained base (smoke)
    assert isinstance(adapter, IPAdapter) and not any(
        p.requires_grad for p in adapter.net.parameters()
    )
    ds = instantiate(cfg.data.dataset, "data.dataset")
    batch = ds.get_batch([0, 1, 2])
    assert set(batch) == {"x", "class", "image"} and (batch["class"] == 10).all()
    assert int(ds.labels.max()) == 8  # the concept class 9 is never seen by the base
    assert set(digits_data(conditional=True, classes=[1, 2]).tensors["class"].tolist()) == {1, 2}
    with pytest.raises(CheckpointError, match="nonexistent.*not a polydiff run directory"):
        ip_adapter_on_run(image_unet("tiny", channels=1), (1, 16, 16), base_run="/nonexistent")


def test_adapt_split_chooses_the_concept_images() -> None:
    assert AdaptConfig(split="train").split == "train"
    with pytest.raises(ValueError, match="adapt.split"):
        AdaptConfig(split="val")
