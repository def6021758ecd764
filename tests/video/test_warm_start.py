"""Warm-starting a video U-Net from a trained per-frame run (``model.init_from``): spatial
layers loaded, temporal layers fresh (VDM, Make-A-Video, AnimateDiff, SVD)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from polydiff.train.checkpoint import CheckpointError
from polydiff.train.config import compose
from polydiff.train.run import instantiate, open_run, train
from polydiff.video.models import video_unet


@pytest.fixture(scope="session")
def common(tiny_run: list[str]) -> list[str]:
    """A tiny class-to-video run (``tiny_run`` of conftest.py) with the benchmark's 8x8 digits."""
    return [
        "experiment=video/digits_cond",
        *tiny_run,
        "data.digit_size=8",
        "trainer.num_threads=1",
        "trainer.ema_auto_items=4",  # the EMA choice at the checkpoint: a few items, not 256
    ]


@pytest.fixture(scope="module")
def frames_run(tmp_path_factory, common):
    """Stage 1: the per-frame network (no temporal layers) on independent frames only."""
    root = tmp_path_factory.mktemp("warm")
    return train([
        *common, "model.temporal=false", "data.dataset.image_fraction=1.0",
        f"run_dir={root / 'frames'}",
    ])  # fmt: skip


def _inputs(frames: int = 4) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, frames, 16, 16, generator=g)
    return x, torch.tensor([0.1, 0.5, 0.9]), {"class": torch.tensor([1, 4, 7])}


@pytest.mark.parametrize("temporal_conv", [0, 3])
def test_init_from_loads_spatial_weights_and_starts_as_the_per_frame_net(
    frames_run, capsys, temporal_conv
):
    source = open_run(frames_run, ema=True).model
    warm = video_unet("tiny", 1, 16, 10, init_from=str(frames_run), temporal_conv=temporal_conv)
    warm.eval()
    line = capsys.readouterr().out.strip().splitlines()[-1]
    src, dst = source.state_dict(), warm.state_dict()
    fresh = [k for k in dst if k not in src]
    assert fresh and all(".temporal." in k or ".temporal_conv." in k for k in fresh)
    assert any(".temporal_conv." in k for k in fresh) == bool(temporal_conv)
    assert f"loaded {len(src)} tensors, {len(fresh)} left fresh ({len(fresh)} of them" in line
    for key, value in src.items():
        assert torch.equal(dst[key], value), key
    x, t, cond = _inputs()
    with torch.no_grad():  # zero temporal output projections: frames do not mix at step 0
        torch.testing.assert_close(warm(x, t, cond), source(x, t, cond), rtol=0, atol=1e-6)
        mixed = warm(x.flip(2), t, cond).flip(2)  # and the frames are still treated alone
        torch.testing.assert_close(mixed, source(x, t, cond), rtol=0, atol=1e-6)


def test_init_from_refuses_other_shapes_and_names(frames_run):
    with pytest.raises(ValueError, match=r"tensor 'embed\.time\.mlp\.0\.weight' has shape "
                                         r"\(64, 16\) there but \(32, 8\) here"):  # fmt: skip
        video_unet("tiny", 1, 16, 10, init_from=str(frames_run), model_channels=8)
    with pytest.raises(ValueError, match=r"its tensor 'embed\.\S+' has no tensor of that name"):
        video_unet("tiny", 1, 16, None, init_from=str(frames_run))  # no class embedding here
    with pytest.raises(CheckpointError, match="not a polydiff run directory"):
        video_unet("tiny", 1, 16, 10, init_from=str(frames_run / "missing"))


def test_config_with_init_from_instantiates_and_trains(frames_run, tmp_path, common):
    overrides = [*common, f"model.init_from={frames_run}"]
    net = instantiate(compose(overrides).model, "model")
    source = open_run(frames_run, ema=True).model.state_dict()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in source.items())
    run = train([*overrides, f"run_dir={tmp_path / 'video'}"])  # stage 2 on clips
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    x, t, cond = _inputs()
    with torch.no_grad():
        assert torch.isfinite(open_run(run).model(x, t, cond)).all()


def test_a_warm_started_run_reopens_and_resumes_without_its_source(
    frames_run, tmp_path, capsys, common
):
    # the checkpoint holds every weight: sample / evaluate / resume never read init_from's run
    # (it may be gone), and its config keeps init_from as provenance
    run = train([*common, f"model.init_from={frames_run}", f"run_dir={tmp_path / 'video'}"])
    capsys.readouterr()
    opened = open_run(run)
    train([*common, f"model.init_from={frames_run}", "trainer.max_steps=3",
           f"run_dir={run}"])  # fmt: skip
    assert "init_from" not in capsys.readouterr().out  # the source was not opened
    assert opened.cfg.model.init_from == str(frames_run)
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3
