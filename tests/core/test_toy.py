"""The Gaussian-mixture ground truth is itself checked: Tweedie, normalisation, sampling."""

import math

import pytest
import torch

from polydiff.core.toy import (
    GaussianMixture,
    checkerboard,
    ring_mixture,
    swiss_roll,
    two_moons,
)


@pytest.fixture
def gmm() -> GaussianMixture:
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 4, generator=g, dtype=torch.float64) * 2
    stds = torch.rand(3, 4, generator=g, dtype=torch.float64) * 0.5 + 0.2
    return GaussianMixture(means, stds, torch.tensor([0.2, 0.3, 0.5]))


@pytest.mark.parametrize("sigma", [0.05, 0.7, 5.0])
def test_score_is_autograd_of_log_prob_and_tweedie(gmm: GaussianMixture, sigma: float) -> None:
    x = torch.randn(16, 4, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(gmm.log_prob(x, sigma).sum(), x)
    torch.testing.assert_close(gmm.score(x, sigma), grad, rtol=1e-10, atol=1e-10)
    # Tweedie: E[x0 | x] = x + sigma^2 * score
    d = gmm.denoiser(x.detach(), torch.full((16,), sigma, dtype=torch.float64))
    torch.testing.assert_close(d, x.detach() + sigma**2 * grad, rtol=1e-10, atol=1e-10)


def test_log_prob_normalised_in_2d() -> None:
    gmm = ring_mixture(4, radius=1.0, std=0.3)
    lin = torch.linspace(-4, 4, 401, dtype=torch.float64)
    xx, yy = torch.meshgrid(lin, lin, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], -1)
    for sigma in (0.0, 0.5):
        mass = gmm.log_prob(pts, sigma).exp().sum() * (lin[1] - lin[0]) ** 2
        assert abs(mass.item() - 1.0) < 1e-3


def test_denoiser_is_posterior_mean_by_monte_carlo(gmm: GaussianMixture) -> None:
    # E[x0 | x] estimated by importance weighting prior samples with the likelihood N(x; x0, s^2)
    g = torch.Generator().manual_seed(1)
    x0 = gmm.sample(400_000, generator=g, dtype=torch.float64)
    sigma = 1.0
    x = torch.tensor([[0.5, -0.3, 1.0, 0.2]], dtype=torch.float64)
    logw = -0.5 * ((x - x0) ** 2).sum(-1) / sigma**2
    w = torch.softmax(logw, 0)
    mc = (w[:, None] * x0).sum(0)
    exact = gmm.denoiser(x, torch.tensor([sigma], dtype=torch.float64))[0]
    torch.testing.assert_close(mc, exact, atol=2e-2, rtol=0)


def test_class_conditional_and_null_mask(gmm: GaussianMixture) -> None:
    x = torch.randn(6, 4, dtype=torch.float64)
    sigma = torch.full((6,), 0.8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    cond_d = gmm.denoiser(x, sigma, {"class": y})
    for i in range(6):
        single = gmm.conditional(int(y[i])).denoiser(x[i : i + 1], sigma[i : i + 1])
        torch.testing.assert_close(cond_d[i : i + 1], single)
    null = torch.tensor([True, False, True, False, False, False])
    mixed = gmm.denoiser(x, sigma, {"class": y, "null_mask": null})
    torch.testing.assert_close(mixed[null], gmm.denoiser(x, sigma)[null])
    torch.testing.assert_close(mixed[~null], cond_d[~null])
    # Bayes: responsibilities sum to one and give the unconditional denoiser as a mixture
    logr = gmm.class_log_prob(x, sigma)
    torch.testing.assert_close(logr.exp().sum(-1), torch.ones(6, dtype=torch.float64))


def test_sample_moments_and_any_rank(gmm: GaussianMixture) -> None:
    x = gmm.sample(200_000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(x.mean(0), gmm.mean(), atol=2e-2, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), gmm.covariance(), atol=5e-2, rtol=0)
    # a (B, 1, 2, 2) tensor is accepted when it holds D=4 features per sample
    x4 = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    out = gmm.denoiser(x4, torch.ones(3, dtype=torch.float64))
    assert out.shape == x4.shape
    torch.testing.assert_close(out.reshape(3, 4), gmm.denoiser(x4.reshape(3, 4), torch.ones(3)))


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture(torch.zeros(2, 2), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="sigma"):
        ring_mixture().log_prob(torch.zeros(2, 2), torch.tensor([1.0, 2.0, 3.0]))


def test_2d_sets() -> None:
    g = torch.Generator().manual_seed(0)
    for fn in (two_moons, swiss_roll, checkerboard):
        pts = fn(5000, generator=g)
        assert pts.shape == (5000, 2) and torch.isfinite(pts).all()
        assert pts.abs().max() < 3.5
    board = checkerboard(20000, generator=g)
    cells = ((board + 2.0) // 1.0).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()  # only dark squares
    assert math.isclose(board[:, 0].mean().item(), 0.0, abs_tol=0.05)
