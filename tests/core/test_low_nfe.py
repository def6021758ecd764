"""Why guided Heun collapses at low NFE (benchmarks/results/image.md: Heun 5/9 NFE class acc ~0.07).

Pinned on an exact class-conditional Gaussian mixture (no model error), so the collapse is the
algorithm, not the network: one Heun step from sigma0 to sigma1 equals the Euler (DDIM) step plus

    (sigma0 - sigma1) / (2 sigma1) * (D(x_euler, sigma1) - D(x, sigma0)),

i.e. the change of the x0 prediction across the step amplified by (ratio - 1) / 2 where
ratio = sigma0 / sigma1 (Karras rho=7 grids: 31.8 for 3 steps, 4.6 / 7.0 / 14.8 / 85 for 5).
With classifier-free guidance at high sigma, D(x, sigma0) = D_u + w (D_c - D_u) overshoots the
class mean by (w - 1)(mu_c - mu) (the class posterior is still flat), the guided denoiser at the
Euler point pulls back to mu_c, and the amplified difference throws the sample to the far side of
the data mean: class accuracy drops *below chance*. Euler never extrapolates (its update is a
convex combination of x and D), more steps shrink the ratio, and switching guidance off at high
sigma (guidance interval) removes the overshoot.

On the digits UNet-tiny (900 steps, CFG 3, 300 samples) the same: Heun 3 / 5 steps class acc
0.070 / 0.077 (benchmark 0.067 / 0.070), 10 steps 0.997, Euler 5 steps 1.000; k-diffusion's
sample_heun gives identical samples (max |diff| 0). There the last Heun step also amplifies the
network's untrained residual at sigma_min = 0.002 by (ratio - 1) / 2 = 628 (3 steps).
"""

from __future__ import annotations

import pytest
import torch

from polydiff.core.guidance import classifier_free_guidance, guidance_interval
from polydiff.core.samplers import sample
from polydiff.core.schedules import karras_sigmas
from polydiff.core.toy import GaussianMixture

K, D, N = 10, 64, 100


@pytest.fixture(scope="module")
def mixture() -> GaussianMixture:
    """10 classes in 64-d, means in {-1, 1}^64 (binary 'images'), std 0.1."""
    g = torch.Generator().manual_seed(0)
    means = torch.randint(0, 2, (K, D), generator=g).double() * 2 - 1
    return GaussianMixture(means, 0.1)


def _accuracy(gm: GaussianMixture, denoiser, method: str, steps: int, sigma_max: float = 80.0):
    labels = torch.arange(K).repeat_interleave(N // K)  # (N,)
    noise = torch.randn(N, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigmas = karras_sigmas(steps, 0.002, sigma_max)
    x = sample(denoiser, noise * sigmas[0], sigmas, method, cond={"class": labels})
    return (gm.class_log_prob(x).argmax(-1) == labels).double().mean().item()


def test_heun_step_is_euler_plus_amplified_denoiser_change(mixture: GaussianMixture) -> None:
    """Heun = Euler + (s0 - s1) / (2 s1) * (D(x_e, s1) - D(x, s0)), exactly (float64)."""
    den = classifier_free_guidance(mixture, 3.0)
    cond = {"class": torch.arange(K)}
    s0, s1 = 80.0, float(karras_sigmas(3, 0.002, 80.0)[1])  # 80 -> 2.515 (ratio 31.8)
    x = torch.randn(K, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * s0
    heun = sample(den, x, torch.tensor([s0, s1], dtype=torch.float64), "heun", cond=cond)
    euler = sample(den, x, torch.tensor([s0, s1], dtype=torch.float64), "euler", cond=cond)
    d0 = den(x, torch.full((K,), s0, dtype=torch.float64), cond)
    d1 = den(euler, torch.full((K,), s1, dtype=torch.float64), cond)
    torch.testing.assert_close(heun, euler + (s0 - s1) / (2 * s1) * (d1 - d0), rtol=0, atol=1e-9)
    # the guided x0 prediction moves by ~(w - 1) = 2 class-mean distances across this step
    change = (d1 - d0).norm(dim=1) / (mixture.means - mixture.mean()).norm(dim=1)
    assert change.median() > 1.5


def test_the_first_guided_heun_step_lands_on_the_wrong_side(mixture: GaussianMixture) -> None:
    """80 -> 2.515 (3-step grid): after Euler every sample is still its class at sigma 2.515,
    after Heun none is (the amplified correction crosses the data mean)."""
    den = classifier_free_guidance(mixture, 3.0)
    labels = torch.arange(K).repeat_interleave(N // K)  # (N,)
    sigmas = karras_sigmas(3, 0.002, 80.0)[:2]
    noise = torch.randn(N, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for method, expected in (("euler", 1.0), ("heun", 0.0)):
        x = sample(den, noise * 80.0, sigmas, method, cond={"class": labels})
        post = mixture.class_log_prob(x, float(sigmas[1]))  # (N, K)
        assert (post.argmax(-1) == labels).double().mean().item() == expected, method


def test_guided_heun_collapses_below_chance_at_low_nfe(mixture: GaussianMixture) -> None:
    cfg = classifier_free_guidance(mixture, 3.0)
    assert _accuracy(mixture, cfg, "euler", 5) == 1.0  # 5 NFE
    assert _accuracy(mixture, cfg, "heun", 3) < 0.05  # 5 NFE: anti-class, chance is 0.1
    assert _accuracy(mixture, cfg, "heun", 5) < 0.05  # 9 NFE
    assert _accuracy(mixture, cfg, "heun", 10) == 1.0  # 19 NFE: step ratios <= ~2 at high sigma
    # smaller sigma_max alone does not help (the ratio, not sigma_max, matters)
    assert _accuracy(mixture, cfg, "heun", 3, sigma_max=10.0) < 0.05
    # the exact unguided ODE keeps the class at 3 Heun steps
    assert _accuracy(mixture, mixture, "heun", 3) == 1.0


def test_guidance_interval_restores_low_nfe_heun(mixture: GaussianMixture) -> None:
    """No guidance above sigma 5 (Kynkaanniemi et al. 2024): no overshoot to amplify."""
    den = guidance_interval(classifier_free_guidance(mixture, 3.0), mixture, 0.0, 5.0)
    assert _accuracy(mixture, den, "heun", 3) == 1.0
    assert _accuracy(mixture, den, "heun", 5) == 1.0
