"""Video metrics against brute-force references on small inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from polydiff.video.data import BouncingDigits, bounce
from polydiff.video.metrics import (
    VideoEvaluator,
    _ls_residual,
    _unfolded_time,
    centroids,
    copy_last_baseline,
    fit_bounce,
    linear_baseline,
    load_feature_net,
    perturb_time,
    physics_residual,
    prediction_scores,
    psnr,
    ssim,
    windowed_physics_residual,
)


def test_ssim_matches_skimage_and_psnr_the_formula():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 2, 16, 13, generator=g, dtype=torch.float64)
    b = (a + 0.2 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(a, b)
    for i in range(3):
        ref = np.mean([
            structural_similarity(a[i, c].numpy(), b[i, c].numpy(), data_range=1.0,
                                  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
            for c in range(2)
        ])  # fmt: skip
        assert abs(float(ours[i]) - ref) < 1e-6
    assert torch.allclose(ssim(a, a), torch.ones(3, dtype=torch.float64))
    mse = ((a - b) ** 2).reshape(3, -1).mean(1)
    torch.testing.assert_close(psnr(a, b), 10 * torch.log10(1 / mse))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(a[..., :8, :8], b[..., :8, :8])


def test_unfolded_time_least_squares_matches_lstsq():
    rng = np.random.default_rng(0)
    t = np.arange(9, dtype=float)
    p = rng.normal(size=9)
    bounces = np.array([[2.3, 6.1], [0.5, 7.5]])
    s = _unfolded_time(t, bounces)
    # brute force: the direction flips at each bounce, continuously
    for row, (b1, b2) in zip(s, bounces):
        ref = np.where(t <= b1, t, np.where(t <= b2, 2 * b1 - t, 2 * b1 - 2 * b2 + t))
        np.testing.assert_allclose(row, ref)
        design = np.stack([np.ones_like(t), ref], 1)
        _, res, *_ = np.linalg.lstsq(design, p, rcond=None)
        assert abs(_ls_residual(p, row[None])[0] - res[0]) < 1e-9


def test_fit_bounce_recovers_exact_reflected_motion():
    t = np.arange(12, dtype=float)
    p = bounce(4.0, 2.3, 1.0, 15.0, t)  # bounces at t = 4.65 and t = 10.74
    sq, times = fit_bounce(p, max_bounces=2)
    assert sq < 1e-8
    np.testing.assert_allclose(times, [(15 - 4) / 2.3, (15 - 4 + 14) / 2.3], atol=1e-3)
    line = 3.0 - 0.7 * t
    assert fit_bounce(line)[0] < 1e-12 and fit_bounce(line)[1].size == 0
    rng = np.random.default_rng(1)
    assert fit_bounce(rng.uniform(0, 20, size=12))[0] > 10  # no motion model fits noise


def test_centroids_match_a_loop():
    g = torch.Generator().manual_seed(0)
    v = torch.rand(2, 1, 3, 5, 6, generator=g) * 2 - 1
    got = centroids(v, threshold=0.2)
    for n in range(2):
        for f in range(3):
            w = np.maximum((v[n, 0, f].double().numpy() + 1) / 2 - 0.2, 0)
            ys, xs = np.mgrid[:5, :6]
            np.testing.assert_allclose(
                got[n, f], [(w * ys).sum() / w.sum(), (w * xs).sum() / w.sum()]
            )
    empty = -torch.ones(1, 1, 2, 4, 4)
    assert np.isnan(centroids(empty)).all()


def test_physics_residual_zero_on_real_clips_large_on_shuffled():
    ds = BouncingDigits(n=16, frames=8, size=32, seed=5)
    real = physics_residual(ds.videos)
    assert real.max() < 0.1  # the threshold on faint pixels is the only error
    g = torch.Generator().manual_seed(0)
    shuffled = torch.stack([v[:, torch.randperm(8, generator=g)] for v in ds.videos])
    assert np.nanmean(physics_residual(shuffled)) > 10 * real.mean() + 0.5


def test_prediction_scores_best_of_k_brute_force():
    g = torch.Generator().manual_seed(0)
    n, k = 3, 2
    ref = (torch.rand(n, 1, 5, 12, 12, generator=g) * 2 - 1).repeat_interleave(k, 0)
    samples = (ref + 0.3 * torch.randn(ref.shape, generator=g)).clamp(-1, 1)
    out = prediction_scores(samples, ref, k, known=slice(0, 2))
    best = []
    for c in range(n):
        vals = []
        for j in range(k):
            i = c * k + j
            fr = [
                psnr((samples[i, :, f][None] + 1) / 2, (ref[i, :, f][None] + 1) / 2)
                for f in (2, 3, 4)
            ]
            vals.append(float(torch.stack(fr).mean()))
        best.append(max(vals))
    assert abs(out["psnr_best_of_2"] - float(np.mean(best))) < 1e-9
    assert {"ssim_best_of_2", "copy_last_psnr", "linear_psnr", "linear_ssim"} <= set(out)
    inter = prediction_scores(samples, ref, k, known=(slice(0, 1), slice(4, 5)))
    assert "copy_last_psnr" not in inter and inter["psnr_best_of_2"] > 0


def test_baselines():
    clip = torch.linspace(-1, 1, 5)[None, None, :, None, None].expand(1, 1, 5, 12, 12).clone()
    np.testing.assert_allclose(
        linear_baseline(clip, 2)[0, 0, :, 0, 0], clip[0, 0, :, 0, 0], atol=1e-6
    )
    copy = copy_last_baseline(clip, 2)
    assert torch.equal(copy[0, 0, 2:], clip[0, 0, 1:2].expand(3, 12, 12))


def test_feature_net_cached_by_hash(tmp_path):
    kw = dict(frames=3, size=16, steps=2, clip_steps=2, n=16, batch_size=8)
    a = load_feature_net(tmp_path, **kw)
    files = list(tmp_path.glob("videonet-*.safetensors"))
    assert len(files) == 1
    b = load_feature_net(tmp_path, **kw)  # from the cache
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    load_feature_net(tmp_path, **{**kw, "steps": 3})
    assert len(list(tmp_path.glob("videonet-*.safetensors"))) == 2
    clips = torch.rand(2, 1, 3, 16, 16) * 2 - 1
    assert a.clip_features(clips).shape == (2, 64 + 32)


def test_perturb_time_breaks_every_row():
    g = torch.Generator().manual_seed(0)
    seq = torch.arange(8.0)[None, :, None].repeat(200, 1, 2)
    out = perturb_time(seq, g)
    assert not (out == seq).all(2).all(1).any()  # no row left unchanged
    # a perturbed track keeps the original's velocity nowhere: it is either not a constant
    # velocity motion (second differences) or a frozen, still one (freezing from frame 1)
    accel = (out[:, 2:] - 2 * out[:, 1:-1] + out[:, :-2]).abs().amax((1, 2))
    still = (out == out[:, :1]).all(2).all(1)
    assert ((accel > 0) | still).all() and (accel > 0).float().mean() > 0.8


@pytest.mark.slow
def test_evaluator_on_real_clips(tmp_path):
    ev = VideoEvaluator(tmp_path, frames=8, size=16, digit_size=8, feature_steps=800)
    real = BouncingDigits(n=200, frames=8, size=16, digit_size=8, split="test", seed=1)
    out = ev.evaluate(real.videos, torch.as_tensor(real.labels[:, 0]))
    assert out["class_accuracy"] >= 0.98 and out["class_accuracy_real"] >= 0.98
    assert out["identity_consistency"] > 0.9
    assert out["physics_residual"] < 0.1 and out["frame_fid"] < 5
    g = torch.Generator().manual_seed(0)
    shuffled = torch.stack([v[:, torch.randperm(8, generator=g)] for v in real.videos])
    bad_time = ev.evaluate(shuffled, torch.as_tensor(real.labels[:, 0]))
    assert bad_time["clip_fd_builtin"] > 2 * out["clip_fd_builtin"]
    noise = torch.rand_like(real.videos) * 2 - 1
    bad = ev.evaluate(noise, torch.as_tensor(real.labels[:, 0]))
    assert bad["frame_fid"] > 10 * max(out["frame_fid"], 0.1) and bad["class_accuracy"] < 0.5
    assert math.isfinite(bad["physics_residual"])


def test_windowed_physics_scores_long_real_clips_like_short_ones():
    ds = BouncingDigits(6, 24, 16, 8, 1, split="test", seed=7)
    win = windowed_physics_residual(ds.videos, 8)
    starts = [0, 4, 8, 12, 16]  # stride 4, the last window ends at frame 24
    ref = np.mean([physics_residual(ds.videos[:, :, s : s + 8]) for s in starts], axis=0)
    np.testing.assert_allclose(win, ref)
    assert win.mean() < 0.1  # the short clips' floor, where the whole-clip fit is not
    shuffled = ds.videos[:, :, torch.randperm(24, generator=torch.Generator().manual_seed(0))]
    assert windowed_physics_residual(shuffled, 8).mean() > 10 * win.mean() + 0.5
    with pytest.raises(ValueError, match=r"window must be in \[2, 24\]"):
        windowed_physics_residual(ds.videos, 30)
