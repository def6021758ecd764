"""Generic metrics: closed forms for Gaussians, and sane values on identical / disjoint sets."""

import math

import numpy as np
import pytest
import torch

from polydiff.core.metrics import (
    density_coverage,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    kernel_inception_distance,
    mmd,
    one_nn_accuracy,
    precision_recall,
    sliced_wasserstein,
)


def _random_spd(d: int, g: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_closed_form_diagonal_and_scipy() -> None:
    # commuting (diagonal) covariances: FD = |mu1 - mu2|^2 + sum (sqrt(c1) - sqrt(c2))^2
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    c1, c2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = 1.0 + 4.0 + (1 - 3) ** 2 + (2 - 1) ** 2 + 0.0
    fd = frechet_distance(mu1, torch.diag(c1), mu2, torch.diag(c2))
    assert fd.item() == pytest.approx(expected, abs=1e-10)
    # general covariances against scipy's sqrtm
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(0)
    s1, s2 = _random_spd(6, g), _random_spd(6, g)
    m1 = torch.randn(6, generator=g, dtype=torch.float64)
    m2 = torch.randn(6, generator=g, dtype=torch.float64)
    root = scipy_linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    ref = float(((m1 - m2) ** 2).sum()) + np.trace(s1.numpy() + s2.numpy() - 2 * root)
    assert frechet_distance(m1, s1, m2, s2).item() == pytest.approx(ref, rel=1e-8)
    assert frechet_distance(m1, s1, m1, s1).item() == pytest.approx(0.0, abs=1e-9)


def test_frechet_from_features_converges_to_closed_form() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(200_000, 2, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0])
    b = torch.randn(200_000, 2, generator=g, dtype=torch.float64) + torch.tensor([1.0, 0.0])
    # closed form: 1 + (1 - 1)^2 + (2 - 1)^2 = 2
    assert frechet_distance_from_features(a, b).item() == pytest.approx(2.0, abs=0.03)
    mu, cov = feature_statistics(a.reshape(-1, 1, 2))  # any rank is flattened
    assert cov.shape == (2, 2) and mu.shape == (2,)


def test_mmd_and_kid_identical_vs_disjoint() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1000, 8, generator=g)
    x2 = torch.randn(1000, 8, generator=g)
    far = torch.randn(1000, 8, generator=g) + 3.0
    same = mmd(x, x2).item()
    diff = mmd(x, far).item()
    assert abs(same) < 0.02 and diff > 1.0
    assert mmd(x, x2, kernel="rbf").item() < 0.01 < mmd(x, far, kernel="rbf").item()
    opts = {"num_subsets": 10, "subset_size": 500, "generator": g}
    kid_same, kid_std = kernel_inception_distance(x, x2, **opts)
    kid_diff, _ = kernel_inception_distance(x, far, **opts)
    assert abs(kid_same.item()) < 3 * kid_std.item() + 0.01
    assert kid_diff.item() > 100 * max(abs(kid_same.item()), 1e-3)


def test_precision_recall_density_coverage_1nn() -> None:
    g = torch.Generator().manual_seed(3)
    real = torch.randn(1000, 4, generator=g)
    fake = torch.randn(1000, 4, generator=g)
    far = torch.randn(1000, 4, generator=g) + 20.0
    pr = precision_recall(real, fake, k=3)
    assert pr["precision"] > 0.85 and pr["recall"] > 0.85
    assert precision_recall(real, far, k=3) == {"precision": 0.0, "recall": 0.0}
    # mode dropping: fake covers only half the real data -> high precision, low recall
    half = real[real[:, 0] > 0]
    pr_half = precision_recall(real, half, k=3)
    assert pr_half["precision"] > 0.95 and pr_half["recall"] < 0.65
    dc = density_coverage(real, fake, k=5)
    assert 0.8 < dc["density"] < 1.2 and dc["coverage"] > 0.9
    assert density_coverage(real, far) == {"density": 0.0, "coverage": 0.0}
    assert abs(one_nn_accuracy(real, fake) - 0.5) < 0.06
    assert one_nn_accuracy(real, far) == 1.0


def test_sliced_wasserstein_shift_and_unequal_sizes() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4_000, 2, generator=g, dtype=torch.float64)
    shift = torch.tensor([3.0, 0.0], dtype=torch.float64)
    # W2 of a translation along theta is |theta . shift|: E[(theta . s)^2] = |s|^2 / 2 in 2-D
    swd = sliced_wasserstein(x, x + shift, num_projections=500, generator=g).item()
    assert swd == pytest.approx(3.0 / math.sqrt(2), rel=0.05)
    y = torch.randn(1_500, 2, generator=g, dtype=torch.float64)
    assert sliced_wasserstein(x, y, generator=g).item() < 0.08
    assert sliced_wasserstein(x, y + 1.0, generator=g).item() > 0.8


def test_bad_inputs_named() -> None:
    with pytest.raises(ValueError, match="dimensions"):
        mmd(torch.randn(10, 3), torch.randn(10, 4))
    with pytest.raises(ValueError, match="expected"):
        frechet_distance(torch.zeros(2), torch.eye(3), torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(torch.randn(5, 2), torch.randn(5, 2), k=5)
    with pytest.raises(ValueError, match="kernel"):
        mmd(torch.randn(10, 3), torch.randn(10, 3), kernel="laplace")
