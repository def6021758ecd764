"""A U-Net size name means one network across the project (issue 13), and runs trained under
the image package's old names still open and sample identically (config version 1 -> 2)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from polydiff.image.models import IMAGE_UNET_SIZES, image_unet
from polydiff.nn.unet import UNET_SIZES, unet
from polydiff.train.config import ConfigError
from polydiff.train.run import CONFIG_VERSION, RENAMED_SIZES_V2, open_run, sample_run, train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _layout(net) -> dict:
    return {k: v.shape for k, v in net.state_dict().items()}


def test_every_image_unet_size_is_the_nn_network_of_that_name() -> None:
    assert set(IMAGE_UNET_SIZES) <= set(UNET_SIZES)
    assert {"tiny-c16", "small-c32", "tiny", "small"} <= set(IMAGE_UNET_SIZES)
    for name, layout in IMAGE_UNET_SIZES.items():
        assert layout is UNET_SIZES[name], name  # one table, not a copy that can drift
    for name in ("tiny-c16", "small-c32"):  # the image factory builds exactly that network
        assert _layout(image_unet(name, channels=3)) == _layout(unet(name, in_channels=3)), name
    # the old image names now denote other networks: the migration maps them to the same one
    old_image_layouts = {  # the image package's table before config version 2
        "tiny": dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                     attention_levels=(1,), num_heads=2),
        "small": dict(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                      attention_levels=(2,), num_heads=4),
        "base": dict(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
                     attention_levels=(1, 2), num_heads=4),
    }  # fmt: skip
    renames = RENAMED_SIZES_V2["polydiff.image.models.image_unet"]
    assert set(renames) == set(old_image_layouts)
    for old, layout in old_image_layouts.items():
        assert _layout(unet(renames[old], in_channels=1)) == _layout(
            unet("tiny", in_channels=1, **layout)
        ), old
    with pytest.raises(KeyError, match="available"):
        image_unet("base")


def _old_style(run_dir: Path, size: str) -> Path:
    """A copy of ``run_dir`` whose config.yaml is written the version-1 way (image size name,
    no ``config_version``)."""
    old = run_dir.parent / f"{run_dir.name}-v1"
    shutil.copytree(run_dir, old)
    saved = yaml.safe_load((old / "config.yaml").read_text())
    assert saved.pop("config_version") == CONFIG_VERSION
    saved["model"]["size"] = size
    (old / "config.yaml").write_text(yaml.safe_dump(saved))
    return old


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sizes")
    return train(
        [
            "experiment=image/digits_cond", "trainer=tiny", "trainer.max_steps=2",
            "trainer.batch_size=8", "trainer.ckpt_every=0", f"runs_root={root}",
        ],
        config_dir=CONFIGS,
    )  # fmt: skip


def test_a_run_written_with_an_old_size_name_opens_and_samples_identically(
    tiny_run: Path, capsys
) -> None:
    saved = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert saved["config_version"] == CONFIG_VERSION and saved["model"]["size"] == "tiny-c16"
    old = _old_style(tiny_run, "tiny")
    capsys.readouterr()
    run = open_run(old)
    err = [line for line in capsys.readouterr().err.splitlines() if "model.size" in line]
    assert len(err) == 1 and "'tiny' is now called 'tiny-c16'" in err[0] and str(old) in err[0]
    assert run.cfg.model.size == "tiny-c16"
    settings = ["sample.n=3", "sampler.steps=3"]
    a = sample_run(tiny_run, settings, out=tiny_run.parent / "new")
    b = sample_run(old, settings, out=tiny_run.parent / "old")
    with (
        np.load(a / "samples.npz", allow_pickle=False) as fa,
        np.load(b / "samples.npz", allow_pickle=False) as fb,
    ):
        assert np.array_equal(fa["samples"], fb["samples"])
    # the run directory itself is not rewritten by opening it
    assert "config_version" not in yaml.safe_load((old / "config.yaml").read_text())
    capsys.readouterr()
    open_run(tiny_run)  # a current run: no rename to report (ema=auto may name its choice)
    assert "model.size" not in capsys.readouterr().err


def test_unknown_config_versions_are_refused(tiny_run: Path) -> None:
    for version, match in ((CONFIG_VERSION + 1, "newer polydiff"), ("two", "integer >= 1")):
        run = tiny_run.parent / f"v{version}"
        shutil.copytree(tiny_run, run)
        saved = yaml.safe_load((run / "config.yaml").read_text())
        saved["config_version"] = version
        (run / "config.yaml").write_text(yaml.safe_dump(saved))
        with pytest.raises(ConfigError, match=match):
            open_run(run)
