"""I3D / FVD: the protocol against brute-force references, with a randomly initialised I3D."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from safetensors.torch import save_file

from polydiff.video.i3d import (
    InceptionI3d,
    frechet_video_distance,
    i3d_embeddings,
    load_i3d,
    preprocess_for_i3d,
    tf_resize_matrix,
)


def test_tf_resize_matrix_is_tf1_legacy_bilinear():
    m = tf_resize_matrix(4, 7)
    for i in range(7):
        s = i * 4 / 7  # TF1 resize_bilinear, align_corners=False, no half-pixel centres
        lo, frac = int(np.floor(s)), s - np.floor(s)
        ref = np.zeros(4)
        ref[lo] += 1 - frac
        ref[min(lo + 1, 3)] += frac
        np.testing.assert_allclose(m[i].numpy(), ref)
    assert torch.allclose(tf_resize_matrix(5, 5), torch.eye(5, dtype=torch.float64))


def test_preprocess_quantises_resizes_and_repeats_grey():
    g = torch.Generator().manual_seed(0)
    v = torch.rand(2, 1, 3, 4, 5, generator=g) * 2 - 1
    out = preprocess_for_i3d(v, resolution=6)
    assert out.shape == (2, 3, 3, 6, 6) and torch.equal(out[:, 0], out[:, 2])
    q = ((v.double() + 1) * 127.5).round()
    ref = tf_resize_matrix(4, 6) @ q[1, 0, 2] @ tf_resize_matrix(5, 6).T
    torch.testing.assert_close(out[1, 1, 2].double(), 2 * ref / 255 - 1, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="expected clips"):
        preprocess_for_i3d(torch.zeros(1, 2, 3, 4, 4))


def test_fvd_is_the_frechet_distance_of_i3d_embeddings(tmp_path):
    torch.manual_seed(0)
    net = InceptionI3d(num_classes=8).eval()
    g = torch.Generator().manual_seed(1)
    real = torch.rand(6, 1, 9, 8, 8, generator=g) * 2 - 1
    fake = (real + 0.5 * torch.randn(real.shape, generator=g)).clamp(-1, 1)
    a = i3d_embeddings(net, real, resolution=32, batch_size=4).numpy()
    b = i3d_embeddings(net, fake, resolution=32, batch_size=4).numpy()
    assert a.shape == (6, 8)
    # brute force: FD = |mu1 - mu2|^2 + tr(C1 + C2 - 2 sqrtm(C1 C2))
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(c1 @ c2).real
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(c1 + c2 - 2 * root)
    got = frechet_video_distance(net, real, fake, resolution=32)
    assert abs(got - ref) < 1e-4 * max(1.0, abs(ref))
    # weights round-trip through a file that cannot execute code
    path = tmp_path / "i3d.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    loaded = load_i3d(path, num_classes=8)
    assert torch.equal(i3d_embeddings(loaded, real[:2], 32), i3d_embeddings(net, real[:2], 32))
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, tmp_path / "i3d.pt")
    assert load_i3d(tmp_path / "i3d.pt", num_classes=8) is not None
    with pytest.raises(ValueError, match="missing keys"):
        save_file({"logits.conv3d.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
        load_i3d(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_i3d(tmp_path / "nope.safetensors")


def test_fvd_refuses_clips_shorter_than_the_network_needs():
    with pytest.raises(ValueError, match="at least 9 frames"):
        i3d_embeddings(InceptionI3d(8), torch.zeros(1, 1, 8, 4, 4))


def test_video_hooks_name_unsupported_evaluate_settings():
    from polydiff.video.experiments import VideoHooks

    hooks = VideoHooks("class", 10)
    with pytest.raises(ValueError, match="evaluate.reference"):
        hooks.evaluate(torch.zeros(2, 1, 8, 16, 16), None, {"reference": "x.npz"})
    assert hooks.evaluate(torch.zeros(2, 1, 8, 16, 16), None, {"reference": None}) == {}
