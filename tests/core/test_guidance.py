"""Guidance transforms checked against the exact Gaussian-mixture denoisers."""

import math

import pytest
import torch

from polydiff.core.guidance import (
    autoguidance,
    classifier_free_guidance,
    classifier_guidance,
    dynamic_thresholding,
    guidance_interval,
    perturbed_guidance,
    reconstruction_guidance,
    safety_guidance,
    value_guidance,
)
from polydiff.core.samplers import sample
from polydiff.core.schedules import karras_sigmas
from polydiff.core.toy import GaussianMixture, ring_mixture
from polydiff.core.utils import append_dims

F64 = torch.float64


@pytest.fixture
def gmm() -> GaussianMixture:
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 4, generator=g, dtype=F64) * 1.5
    stds = torch.rand(3, 4, generator=g, dtype=F64) * 0.5 + 0.3
    return GaussianMixture(means, stds, torch.tensor([0.2, 0.3, 0.5]))


def _class_log_prob(gmm: GaussianMixture):
    def log_prob(x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        return gmm.class_log_prob(x, sigma).gather(1, cond["class"][:, None])[:, 0]

    return log_prob


def _heun_sample(denoiser, x, sigmas, cond=None):
    return sample(denoiser, x, sigmas, "heun", cond=cond)


@pytest.mark.parametrize("sigma", [0.02, 0.5, 2.0, 20.0])
def test_classifier_guidance_scale_one_is_exact_conditional(gmm, sigma) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 4, generator=g, dtype=F64) * (1 + sigma)
    sig = torch.full((12,), sigma, dtype=F64)
    y = torch.arange(12) % 3
    # the base is the unconditional denoiser; cond carries the labels for the classifier
    guided = classifier_guidance(lambda x, s, c=None: gmm(x, s), _class_log_prob(gmm), 1.0)
    out = guided(x, sig, {"class": y})
    torch.testing.assert_close(out, gmm(x, sig, {"class": y}), atol=1e-4, rtol=0)
    # float32 inputs work as well (the guidance runs in the input dtype)
    out32 = guided(x.float(), sig.float(), {"class": y})
    torch.testing.assert_close(out32, out.float(), atol=1e-3, rtol=1e-4)


class _Counting:
    def __init__(self, d, accepts: bool) -> None:
        self.d, self.calls, self.accepts_null_mask = d, 0, accepts

    def __call__(self, x, sigma, cond=None):
        self.calls += 1
        return self.d(x, sigma, cond)


def test_cfg_scale_one_batched_and_two_calls(gmm) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(10, 4, generator=g, dtype=F64) * 2
    sig = torch.linspace(0.1, 5.0, 10, dtype=F64)
    cond = {"class": torch.arange(10) % 3}
    cfg1 = classifier_free_guidance(gmm, 1.0)
    torch.testing.assert_close(cfg1(x, sig, cond), gmm(x, sig, cond), rtol=0, atol=0)
    # the formula path at scale 1 (forced through the rescale branch with 0 effect) also agrees
    batched = _Counting(gmm, accepts=True)
    two = _Counting(gmm, accepts=False)
    a = classifier_free_guidance(batched, 3.0)(x, sig, cond)
    b = classifier_free_guidance(two, 3.0)(x, sig, cond)
    assert batched.calls == 1 and two.calls == 2
    # forced two calls on a null-mask denoiser: the second call nulls every row of cond
    forced = _Counting(gmm, accepts=True)
    c2 = classifier_free_guidance(forced, 3.0, batched=False)(x, sig, cond)
    assert forced.calls == 2
    torch.testing.assert_close(c2, a, rtol=0, atol=1e-12)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    expected = gmm(x, sig) + 3.0 * (gmm(x, sig, cond) - gmm(x, sig))
    torch.testing.assert_close(a, expected, rtol=0, atol=1e-12)
    # an existing null_mask row stays unconditional in the conditional half
    null = torch.zeros(10, dtype=torch.bool)
    null[0] = True
    c = classifier_free_guidance(gmm, 3.0)(x, sig, {**cond, "null_mask": null})
    torch.testing.assert_close(c[0], gmm(x, sig)[0])
    # no condition: the plain denoiser
    torch.testing.assert_close(classifier_free_guidance(gmm, 5.0)(x, sig), gmm(x, sig))


def test_cfg_rescale_matches_conditional_std(gmm) -> None:
    x = torch.randn(6, 1, 2, 2, dtype=F64)  # any rank: 4 features per sample
    sig = torch.full((6,), 1.0, dtype=F64)
    cond = {"class": torch.zeros(6, dtype=torch.long)}
    full = classifier_free_guidance(gmm, 7.0, rescale=1.0)(x, sig, cond)
    cstd = gmm(x, sig, cond).reshape(6, -1).std(1)
    torch.testing.assert_close(full.reshape(6, -1).std(1), cstd)
    plain = classifier_free_guidance(gmm, 7.0)(x, sig, cond)
    half = classifier_free_guidance(gmm, 7.0, rescale=0.5)(x, sig, cond)
    torch.testing.assert_close(half, 0.5 * (full + plain))
    with pytest.raises(ValueError, match="rescale"):
        classifier_free_guidance(gmm, 2.0, rescale=1.5)


def test_cfg_purity_grows_with_scale() -> None:
    gmm = ring_mixture(4, radius=1.0, std=0.45)
    sigmas = karras_sigmas(24, 0.01, 20.0)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(2000, 2, generator=g, dtype=F64)
    cond = {"class": torch.zeros(2000, dtype=torch.long)}
    purity = []
    for scale in (0.0, 1.0, 1.5, 3.0):
        x = _heun_sample(classifier_free_guidance(gmm, scale), noise * sigmas[0], sigmas, cond)
        purity.append((gmm.class_log_prob(x).argmax(1) == 0).double().mean().item())
    assert purity[0] == pytest.approx(0.25, abs=0.05)  # unconditional
    assert purity[1] > purity[0] + 0.3 and purity[2] > purity[1] + 0.02, purity
    assert purity[3] >= purity[2] and purity[3] > 0.99, purity


def test_safety_guidance_is_exact_restricted_mixture(gmm) -> None:
    # unsafe = component 0; steering with the exact classifier = the mixture of components 1, 2
    safe = GaussianMixture(gmm.means[1:], gmm.stds[1:], gmm.weights[1:])

    def unsafe_logit(x, sigma, cond):  # log p(unsafe | x) - log p(safe | x), exact
        logr = gmm.class_log_prob(x, sigma)
        return logr[:, 0] - torch.logsumexp(logr[:, 1:], dim=1)

    g = torch.Generator().manual_seed(4)
    x = torch.randn(16, 4, generator=g, dtype=F64) * 2
    for sigma in (0.1, 1.0, 10.0):
        sig = torch.full((16,), sigma, dtype=F64)
        out = safety_guidance(gmm, unsafe_logit, 1.0)(x, sig)
        torch.testing.assert_close(out, safe(x, sig), atol=1e-4, rtol=0)
    # with a threshold, confidently safe rows are left alone
    sig = torch.full((16,), 0.1, dtype=F64)
    gated = safety_guidance(gmm, unsafe_logit, 1.0, threshold=0.5)(x, sig)
    p_unsafe = torch.sigmoid(unsafe_logit(x, sig, None))
    low = p_unsafe < 0.5
    torch.testing.assert_close(gated[low], gmm(x, sig)[low])
    torch.testing.assert_close(gated[~low], safe(x, sig)[~low], atol=1e-4, rtol=0)


def test_autoguidance_and_perturbed_formulas(gmm) -> None:
    x = torch.randn(8, 4, dtype=F64)
    sig = torch.full((8,), 0.7, dtype=F64)
    weak = GaussianMixture(gmm.means * 0.8, gmm.stds * 1.5, gmm.weights)
    out = autoguidance(gmm, weak, 2.5)(x, sig)
    torch.testing.assert_close(out, weak(x, sig) + 2.5 * (gmm(x, sig) - weak(x, sig)))
    torch.testing.assert_close(autoguidance(gmm, weak, 1.0)(x, sig), gmm(x, sig))
    pag = perturbed_guidance(gmm, weak, 0.5)(x, sig)
    torch.testing.assert_close(pag, gmm(x, sig) + 0.5 * (gmm(x, sig) - weak(x, sig)))
    torch.testing.assert_close(perturbed_guidance(gmm, weak, 0.0)(x, sig), gmm(x, sig))


def test_value_guidance_gradient_and_stopgrad(gmm) -> None:
    target = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=F64)

    def value(x, sigma, cond):  # maximise -|x - target|^2 / 2, gradient target - x
        return -0.5 * ((x - target) ** 2).sum(-1)

    x = torch.randn(8, 4, dtype=F64)
    sig = torch.tensor([0.05, 0.05, 0.5, 0.5, 1.0, 1.0, 3.0, 3.0], dtype=F64)
    guided = value_guidance(gmm, value, 0.3, sigma_min=0.1)
    expected = gmm(x, sig) + 0.3 * append_dims(sig**2 * (sig >= 0.1), 2) * (target - x)
    torch.testing.assert_close(guided(x, sig), expected)
    # through the denoised plan: gradient is J_D^T (target - D(x)), checked by finite differences
    through_d = value_guidance(gmm, value, 1.0, through="denoised")
    xi = x[:1]
    si = sig[4:5]
    jac = torch.autograd.functional.jacobian(lambda z: gmm(z, si)[0], xi)[:, 0, :]  # (4, 4)
    grad = jac.T @ (target - gmm(xi, si)[0])
    torch.testing.assert_close(through_d(xi, si)[0], gmm(xi, si)[0] + si**2 * grad)


def test_reconstruction_guidance_lowers_error() -> None:
    g = torch.Generator().manual_seed(5)
    means = torch.randn(6, 8, generator=g, dtype=F64) * 2
    gmm = GaussianMixture(means, 0.4)
    a = torch.randn(3, 8, generator=g, dtype=F64)  # linear measurement of 3 of 8 dims' worth
    x_true = gmm.sample(1, generator=g, dtype=F64).expand(256, 8)
    y = x_true @ a.T
    sigmas = karras_sigmas(40, 0.01, 20.0)
    noise = torch.randn(256, 8, generator=g, dtype=F64) * sigmas[0]
    plain = _heun_sample(gmm, noise, sigmas)
    err_plain = (plain - x_true).norm(dim=1).mean().item()
    guided = reconstruction_guidance(gmm, lambda x0: x0 @ a.T, y, scale=2.0)
    out = _heun_sample(guided, noise, sigmas)
    err = (out - x_true).norm(dim=1).mean().item()
    meas_err = (out @ a.T - y).norm(dim=1).mean().item()
    assert err < 0.5 * err_plain, (err, err_plain)
    assert meas_err < 0.2 * (plain @ a.T - y).norm(dim=1).mean().item()
    dps = reconstruction_guidance(gmm, lambda x0: x0 @ a.T, y, scale=1.0, normalize=True)
    assert (_heun_sample(dps, noise, sigmas) - x_true).norm(dim=1).mean().item() < err_plain


def test_interval_and_composition(gmm) -> None:
    x = torch.randn(4, 4, dtype=F64)
    sig = torch.tensor([0.1, 1.0, 3.0, 10.0], dtype=F64)
    cond = {"class": torch.tensor([0, 1, 2, 0])}
    cfg = classifier_free_guidance(gmm, 3.0)
    both = guidance_interval(cfg, gmm, 0.5, 5.0)(x, sig, cond)
    inside = torch.tensor([False, True, True, False])
    torch.testing.assert_close(both[inside], cfg(x, sig, cond)[inside])
    torch.testing.assert_close(both[~inside], gmm(x, sig, cond)[~inside])
    # dynamic thresholding of the guided denoiser keeps x0 in [-1, 1]
    thresh = dynamic_thresholding(cfg, 0.9)
    out = thresh(x * 5, sig, cond)
    assert out.abs().max() <= 1.0 + 1e-12
    assert thresh.accepts_null_mask is False  # CFG itself does not take a null mask


def test_dynamic_thresholding_values() -> None:
    def big(x, sigma, cond=None):
        return x

    x = torch.tensor([[0.1, -0.5, 0.9, 0.2], [3.0, -4.0, 2.0, 1.0]], dtype=F64)
    out = dynamic_thresholding(big, 1.0)(x, torch.ones(2, dtype=F64))
    torch.testing.assert_close(out[0], x[0])  # inside [-1, 1]: unchanged
    torch.testing.assert_close(out[1], x[1] / 4.0)  # s = max |x0| = 4: rescaled
    capped = dynamic_thresholding(big, 1.0, max_value=2.0)(x, torch.ones(2, dtype=F64))
    torch.testing.assert_close(capped[1], x[1].clamp(-2, 2) / 2.0)
    with pytest.raises(ValueError, match="percentile"):
        dynamic_thresholding(big, 0.0)
    assert math.isfinite(out.sum().item())


def test_value_guidance_raises_return_of_trajectories() -> None:
    # plans of shape (B, horizon 8, state 2) from a 16-D mixture; value = mean final-state x
    g = torch.Generator().manual_seed(6)
    gmm = GaussianMixture(torch.randn(6, 16, generator=g, dtype=F64) * 1.5, 0.4)

    def value(x, sigma, cond):  # (B, 8, 2) -> (B,)
        return x[:, -1, 0]

    sigmas = karras_sigmas(20, 0.01, 20.0)
    noise = torch.randn(512, 8, 2, generator=g, dtype=F64) * sigmas[0]
    plain = sample(gmm, noise, sigmas, "heun")
    returns = [value(plain, None, None).mean().item()]
    for scale in (0.5, 2.0):
        guided = value_guidance(gmm, value, scale, through="denoised", sigma_min=0.05)
        returns.append(value(sample(guided, noise, sigmas, "heun"), None, None).mean().item())
    assert returns[0] < returns[1] < returns[2], returns
