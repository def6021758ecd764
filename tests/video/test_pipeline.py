"""Video tasks through the core on tiny trained runs: image-to-video, prediction,
interpolation, extension; the ablation and frames_independent equal the per-frame network."""

from __future__ import annotations

import copy

import pytest
import torch

from polydiff.nn.spacetime import TemporalAttention, TemporalConv
from polydiff.train.run import open_run, train
from polydiff.video.data import BouncingDigits
from polydiff.video.models import VIDEO_UNET_SIZES, video_unet
from polydiff.video.pipeline import extend, generate, image_to_video, interpolate, predict

TINY = [
    "model.size=tiny",
    "data.image_size=16",
    "data.frames=4",
    "data.dataset.n=16",
    "trainer.max_steps=1",
    "trainer.batch_size=4",
    "trainer.ckpt_every=0",
    "trainer.progress=false",
    "trainer.lr_warmup_steps=0",
    "data.hooks.metrics=null",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("video-runs")
    out = {}
    for name in ("digits_cond", "prediction", "image_to_video"):
        run_dir = train([f"experiment=video/{name}", *TINY, f"run_dir={root / name}"])
        out[name] = open_run(run_dir, ["sampler.steps=3"])
    return out


def _clips(n=2):
    return BouncingDigits(n, 4, 16, 6, 1, split="test", seed=3).videos


def test_image_to_video_keeps_the_frame(runs):
    clips = _clips()
    frame = clips[:, :, 0]
    out = image_to_video(
        runs["digits_cond"], frame, method="inpaint", cond={"class": torch.tensor([1, 2])}
    )
    assert out.shape == (2, 1, 4, 16, 16) and torch.equal(out[:, :, 0], frame)
    concat = image_to_video(runs["image_to_video"], frame, cond={"class": torch.tensor([1, 2])})
    assert concat.shape == (2, 1, 4, 16, 16) and concat.abs().max() <= 1
    with pytest.raises(ValueError, match="method='concat' needs a run trained on first frames"):
        image_to_video(runs["digits_cond"], frame)
    with pytest.raises(ValueError, match=r"frame must have shape \(B, 1, 16, 16\)"):
        image_to_video(runs["digits_cond"], frame[:, :, :8], method="inpaint")


def test_prediction_and_interpolation_keep_known_frames(runs):
    clips = _clips()
    for run in (runs["prediction"], runs["digits_cond"]):  # MCVD conditioning / inpainting
        cond = {"class": torch.tensor([3, 4])} if run is runs["digits_cond"] else None
        pred = predict(run, clips[:, :, :2], cond=cond)
        assert pred.shape == (2, 1, 4, 16, 16) and torch.equal(pred[:, :, :2], clips[:, :, :2])
        mid = interpolate(run, clips[:, :, :1], clips[:, :, 3:], cond=cond)
        assert torch.equal(mid[:, :, 0], clips[:, :, 0]) and torch.equal(
            mid[:, :, 3], clips[:, :, 3]
        )


def test_reconstruction_guidance_changes_the_new_frames(runs):
    run, clips = copy.deepcopy(runs["digits_cond"]), _clips()
    with torch.no_grad():  # after one training step the zero-initialised output still dominates
        for p in run.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    cond = {"class": torch.tensor([3, 4])}
    plain = predict(run, clips[:, :, :2], cond=cond, guidance_scale=0.0, seed=5)
    guided = predict(run, clips[:, :, :2], cond=cond, guidance_scale=5.0, seed=5)
    assert torch.equal(plain[:, :, :2], guided[:, :, :2])
    assert float((plain[:, :, 2:] - guided[:, :, 2:]).abs().max()) > 1e-4


def test_extend_to_three_times_the_length(runs):
    for run in (runs["digits_cond"], runs["prediction"]):
        cond = {"class": torch.tensor([0, 1])} if run is runs["digits_cond"] else None
        first = generate(run, 2, cond, seed=0)
        long = extend(run, 2, 7, overlap=2, cond=cond, seed=0)  # 2 windows, the last one cut
        assert long.shape == (2, 1, 7, 16, 16)
        torch.testing.assert_close(long[:, :, :4], first)  # the first window is a plain sample
    with pytest.raises(ValueError, match=r"overlap must be in \[1, 3\]"):
        extend(runs["digits_cond"], 1, 8, overlap=4)


def test_sizes_ablation_and_frames_independent_equal_the_per_frame_network():
    assert {"tiny", "small", "base", "vdm-64"} <= set(VIDEO_UNET_SIZES)
    torch.manual_seed(0)
    net = video_unet("tiny", channels=1, num_classes=3).eval()
    ablation = video_unet("tiny", channels=1, num_classes=3, temporal=False).eval()
    assert not any(isinstance(m, TemporalAttention) for m in ablation.modules())
    no_conv = video_unet("tiny", channels=1, num_classes=3, temporal=False, temporal_conv=3)
    assert not any(isinstance(m, TemporalConv) for m in no_conv.modules())  # no temporal layer
    x, t = torch.randn(2, 1, 4, 8, 8), torch.tensor([0.3, 0.8])
    cond = {"class": torch.tensor([0, 2])}
    for p in net.parameters():  # zero-initialised outputs would hide differences
        p.data.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
    missing = ablation.load_state_dict(net.state_dict(), strict=False)
    assert not missing.missing_keys and all(".temporal." in k for k in missing.unexpected_keys)
    with torch.no_grad():
        per_frame = torch.cat([net(x[:, :, f : f + 1], t, cond) for f in range(4)], dim=2)
        torch.testing.assert_close(net(x, t, cond, frames_independent=True), per_frame)
        assert float((net(x, t, cond) - per_frame).abs().max()) > 1e-3  # temporal layers mix frames
        alone = torch.cat([ablation(x[:, :, f : f + 1], t, cond) for f in range(4)], dim=2)
        torch.testing.assert_close(ablation(x, t, cond), alone)  # no frame sees another
        for m in net.modules():  # temporal attention zeroed (as at init) = the ablation exactly
            if isinstance(m, TemporalAttention):
                m.attn.to_out.weight.zero_()
                m.attn.to_out.bias.zero_()
        torch.testing.assert_close(net(x, t, cond), ablation(x, t, cond))
    with pytest.raises(KeyError, match="unknown video U-Net size 'huge'"):
        video_unet("huge")


def test_tasks_go_through_the_core(runs, monkeypatch):
    """Inpainting, reconstruction guidance and sampling are the core's functions, called."""
    import polydiff.core.editing
    import polydiff.core.guidance
    import polydiff.train.sampling
    import polydiff.video.pipeline as pipeline

    core = {
        "inpaint": polydiff.core.editing.inpaint,
        "reconstruction_guidance": polydiff.core.guidance.reconstruction_guidance,
        "generate_samples": polydiff.train.sampling.generate,
    }
    calls = dict.fromkeys(core, 0)
    for name, fn in core.items():
        assert getattr(pipeline, name) is fn

        def counted(*args, _name=name, _fn=fn, **kwargs):
            calls[_name] += 1
            return _fn(*args, **kwargs)

        monkeypatch.setattr(pipeline, name, counted)
    frame, y = _clips()[:, :, 0], {"class": torch.tensor([1, 2])}
    image_to_video(runs["image_to_video"], frame, cond=y)  # concat: the core sampler
    assert calls == {"inpaint": 0, "reconstruction_guidance": 0, "generate_samples": 1}
    image_to_video(runs["digits_cond"], frame, method="inpaint", cond=y)
    assert calls == {"inpaint": 1, "reconstruction_guidance": 0, "generate_samples": 1}
    extend(runs["digits_cond"], 2, 6, overlap=2, cond=y, guidance_scale=1.0)  # 1 + 1 windows
    assert calls == {"inpaint": 2, "reconstruction_guidance": 1, "generate_samples": 2}


@pytest.mark.parametrize("size", sorted(VIDEO_UNET_SIZES))
def test_per_frame_network_has_the_video_networks_tensor_names(size):
    """``model.temporal=false`` keeps every block (emptied), so its run warm-starts the video
    network of the same size (the `small` size has a level with temporal attention only)."""
    video = video_unet(size, 1, 16, 10, temporal_conv=3).state_dict()
    frames = video_unet(size, 1, 16, 10, temporal=False).state_dict()
    assert set(frames) <= set(video)
    assert all(".temporal" in k for k in set(video) - set(frames))
    assert all(frames[k].shape == video[k].shape for k in frames)
