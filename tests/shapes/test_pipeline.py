"""Completion keeps the observed points, interpolation end points reconstruct, the command runs."""

from __future__ import annotations

import math

import pytest
import torch

from polydiff.core.schedules import karras_sigmas
from polydiff.shapes import pipeline
from polydiff.train.run import train


def gaussian_denoiser(x, sigma, cond=None):
    """Exact denoiser of N(0, I) data: E[x0 | x] = x / (1 + sigma^2)."""
    s = sigma.view(-1, *([1] * (x.ndim - 1)))
    return x / (1 + s**2)


def test_partial_view_keeps_the_far_side():
    pts = torch.randn(2, 50, 3)
    part = pipeline.partial_view(pts, 10)
    assert part.shape == (2, 10, 3)
    for b in range(2):
        assert part[b, :, 0].min() >= pts[b, :, 0].sort(descending=True).values[9] - 1e-7
    with pytest.raises(ValueError, match="keep"):
        pipeline.partial_view(pts, 0)


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_completion_keeps_observed_points_exactly(eta):
    sigmas = karras_sigmas(8, 0.01, 10.0)
    partial = torch.randn(3, 5, 3)
    gen = torch.Generator().manual_seed(0)
    out = pipeline.complete_points(gaussian_denoiser, partial, 12, sigmas, generator=gen, eta=eta)
    assert out.shape == (3, 12, 3)
    assert torch.equal(out[:, :5], partial)
    assert out[:, 5:].abs().max() > 0.05  # the rest is generated, not zeros
    grid = torch.randn(2, 1, 4, 4, 4)
    mask = torch.zeros_like(grid, dtype=torch.bool)
    mask[..., :2] = True
    g = pipeline.complete_grid(gaussian_denoiser, grid, mask, sigmas, generator=gen, resample=2,
                               jump_length=2)  # fmt: skip
    assert torch.equal(g[mask], grid[mask])


def test_interpolation_end_points_reconstruct_the_inputs():
    sigmas = karras_sigmas(30, 0.002, 20.0)
    a, b = torch.randn(1, 16, 3), torch.randn(1, 16, 3)
    out = pipeline.interpolate(gaussian_denoiser, a, b, sigmas, [0.0, 0.5, 1.0])
    assert out.shape == (3, 16, 3)
    torch.testing.assert_close(out[0], a[0], atol=2e-3, rtol=0)
    torch.testing.assert_close(out[2], b[0], atol=2e-3, rtol=0)
    assert (out[1] - a[0]).abs().mean() > 0.1 and (out[1] - b[0]).abs().mean() > 0.1


def test_nearest_training_shape_matches_brute_force():
    train_pts, part = torch.randn(6, 20, 3), torch.randn(2, 5, 3)
    got = pipeline.nearest_training_shape(part, train_pts)
    for i in range(2):
        scores = [
            min_sq.mean()
            for min_sq in (
                ((part[i][:, None] - t[None]) ** 2).sum(-1).min(1).values for t in train_pts
            )
        ]
        assert int(got[i]) == int(torch.stack(scores).argmin())


def test_complete_command_on_a_tiny_completion_run(tmp_path):
    run = train(
        [
            "experiment=shapes/completion",
            "data.source.per_class=3",
            "data.source.test_per_class=2",
            "data.dataset.num_points=32",
            "trainer.max_steps=2",
            "trainer.batch_size=4",
            "trainer.ckpt_every=2",
            "trainer.lr_warmup_steps=0",
            "trainer.progress=false",
        ],
        run_dir=tmp_path / "run",
    )
    res = pipeline.complete_run(str(run), ["complete.n=3", "complete.steps=3"], out=None)
    assert res["n"] == 3 and res["observed_points"] == 16 and res["points"] == 32
    assert res["observed_points_max_change"] < 1e-5
    assert math.isfinite(res["chamfer_completion"]) and res["chamfer_nearest_training_shape"] >= 0
    assert (run / "complete" / "keep0.5-steps3-r1-seed0" / "completion.png").is_file()
    with pytest.raises(ValueError, match="unknown complete keys"):
        pipeline.complete_run(str(run), [], complete={"nn": 3})


def test_complete_command_on_a_tiny_sdf_run(tmp_path):
    run = train(
        [
            "experiment=shapes/sdf_voxel",
            "data.source.per_class=3",
            "data.source.test_per_class=2",
            "data.source.resolution=8",
            "trainer.max_steps=2",
            "trainer.batch_size=4",
            "trainer.ckpt_every=2",
            "trainer.lr_warmup_steps=0",
            "trainer.progress=false",
        ],
        run_dir=tmp_path / "run",
    )
    res = pipeline.complete_run(str(run), [], complete={"n": 4, "steps": 3, "write_n": 1})
    assert res["n"] == 4 and res["classes"] == {"chair": 2, "table": 2}
    assert res["observed_voxels_max_change"] == 0.0 and res["observed_fraction"] == 0.5
    assert 0.0 <= res["iou_completion"] <= 1.0 and 0.0 <= res["iou_nearest_training_shape"] <= 1.0
