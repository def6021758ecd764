"""EMA maths: warm-up, EDM2 power-function profiles and post-hoc reconstruction, EMA specs."""

from __future__ import annotations

import numpy as np
import pytest

from polydiff.train.ema import (
    gamma_to_sigma_rel,
    parse_ema_spec,
    posthoc_coefficients,
    power_beta,
    sigma_rel_to_gamma,
    warmup_decay,
)


def test_sigma_rel_gamma_pairs_of_the_paper():
    # Karras et al. 2024, sec. 3.1: sigma_rel 0.05 <-> gamma 16.97, 0.10 <-> gamma 6.94
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=5e-3)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=5e-3)
    for s in (0.01, 0.05, 0.1, 0.2, 0.28):
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(s)) == pytest.approx(s, rel=1e-10)
    with pytest.raises(ValueError, match="sigma_rel"):
        sigma_rel_to_gamma(0.3)


def test_warmup_decay_formula():
    assert warmup_decay(0.999, 0) == 0.0
    assert warmup_decay(0.999, 7) == pytest.approx(1 - 8 ** (-2 / 3))  # = 0.75
    assert warmup_decay(0.9, 10**6) == 0.9
    # weight left on the first weights after 1500 updates: ~0 (was 0.999^1500 = 22%)
    left = np.prod([warmup_decay(0.999, t) for t in range(1, 1500)])
    assert left < 1e-12 < 0.999**1500


def _track(theta: np.ndarray, sigma_rel: float, every: int) -> dict[int, float]:
    """Brute force: the power-function EMA of a scalar sequence (theta_1..theta_T)."""
    e, out = 0.0, {}
    for t in range(1, len(theta) + 1):
        b = power_beta(sigma_rel, t)
        e = b * e + (1 - b) * theta[t - 1]
        if t % every == 0 or t == len(theta):
            out[t] = e
    return out


def test_posthoc_reconstruction_against_brute_force():
    rng = np.random.default_rng(0)
    n = 2000
    theta = np.cumsum(rng.normal(size=n)) * 0.1 + np.sin(np.arange(n) / 150)
    snaps = {s: _track(theta, s, 100) for s in (0.05, 0.10)}
    steps = sorted(snaps[0.05])
    ins = [(t, s) for s in (0.05, 0.10) for t in steps]
    values = np.array([snaps[s][t] for t, s in ins])
    for stored in (0.05, 0.10):  # a stored profile reconstructs to itself
        c = posthoc_coefficients([t for t, _ in ins], [s for _, s in ins], n, stored)
        assert c @ values == pytest.approx(snaps[stored][n], abs=1e-9)
        assert np.abs(c).max() == pytest.approx(1.0, abs=1e-6)
    for out in (0.07, 0.15):  # others match the EMA that was never tracked
        c = posthoc_coefficients([t for t, _ in ins], [s for _, s in ins], n, out)
        truth = _track(theta, out, n)[n]
        spread = abs(snaps[0.05][n] - snaps[0.10][n])
        assert abs(c @ values - truth) < 0.01 * spread, (out, c @ values, truth)
        assert c.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (True, ("first", None)),
        (False, ("model", None)),
        (None, ("model", None)),
        ("true", ("first", None)),
        ("False", ("model", None)),
        ("0.999", ("decay", 0.999)),
        (0.99, ("decay", 0.99)),
        ("sigma_rel:0.05", ("sigma_rel", 0.05)),
    ],
)
def test_parse_ema_spec(spec, expected):
    assert parse_ema_spec(spec) == expected


@pytest.mark.parametrize("spec", ["abc", "1.5", "-0.1", "nan", "sigma_rel:x", "sigma_rel:0.5", 2])
def test_parse_ema_spec_names_the_bad_value(spec):
    with pytest.raises(ValueError, match=r"ema=.*expected"):
        parse_ema_spec(spec)
