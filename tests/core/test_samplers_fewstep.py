"""iPNDM and DEIS tAB (issue #20): checks against LMS, exactness of the weights, observed orders.

No installed peer implements them in sigma space (k-diffusion 0.1 has neither; diffusers'
``DEISMultistepScheduler`` is the log-rho data-prediction variant, its ``IPNDMScheduler`` runs
its own trigonometric time grid), so they are checked against LMS (peer-checked against
k-diffusion): on equal sigma steps the fixed Adams-Bashforth weights of iPNDM are exactly LMS's
Lagrange weights; with a time map affine in sigma DEIS tAB is LMS.

Observed orders on the exact mixture ODE (median over 16 trajectories, 16-128 steps):

- iPNDM's fixed weights are exact only on equal steps and its warm-up is Euler, so on a
  geometric grid its asymptotic order is ``min(order, 2)`` (measured 1.03 / 1.91 / 2.01 / 1.87).
- DEIS tAB integrates its Lagrange basis exactly on any grid; with the warm-up steps refined to
  ``h^2`` (so that the lower-order start does not cap the order) it shows order 1 / 2 / 3
  (measured 1.04 / 1.99 / 3.12); order 4 measures 3.25 on this problem (below 4 by more than
  0.3: asserted > 3, like LMS order 4 which measures 3.2 on the same grids).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from peers import ode_reference
from polydiff.core.samplers import sample
from polydiff.core.samplers.multistep import deis_coefficients
from polydiff.core.schedules import LinearVPSchedule
from polydiff.core.toy import GaussianMixture

STEPS = [16, 32, 64, 128]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mix() -> GaussianMixture:
    g = torch.Generator().manual_seed(0)
    means = torch.randn(4, 2, generator=g, dtype=torch.float64) * 1.5
    return GaussianMixture(means, torch.tensor([0.3, 0.5, 0.4, 0.6]))


def _slope(errors: list[float]) -> float:
    return -float(np.polyfit(np.log(STEPS), np.log(errors), 1)[0])


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_ipndm_is_lms_on_equal_steps(order: int, mix) -> None:
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 4
    for grid in [torch.linspace(4.0, 0.5, 9).double(), torch.linspace(4.0, 0.0, 9).double()]:
        ours = sample(mix, x, grid, "ipndm", order=order)
        torch.testing.assert_close(ours, sample(mix, x, grid, "lms", order=order),
                                   rtol=1e-12, atol=1e-12)  # fmt: skip
    # on a non-uniform grid the fixed weights differ from LMS from the second order on
    karras = torch.tensor([4.0, 2.0, 1.2, 0.8, 0.5], dtype=torch.float64)
    ours = sample(mix, x, karras, "ipndm", order=order)
    diff = (ours - sample(mix, x, karras, "lms", order=order)).abs().max()
    assert (diff == 0) if order == 1 else (diff > 1e-6)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_deis_weights_integrate_polynomials_in_t_exactly(order: int) -> None:
    time = LinearVPSchedule(t_min=0.0)
    nodes = [2.0, 2.6, 3.5, 5.0][:order]  # newest first
    s_from, s_to = 2.0, 1.3
    weights = deis_coefficients(nodes, s_from, s_to, time)
    t_nodes = time.sigma_to_t(torch.tensor(nodes, dtype=torch.float64)).numpy()
    fine = np.linspace(s_from, s_to, 200_001)
    t_fine = time.sigma_to_t(torch.tensor(fine)).numpy()
    for degree in range(order):
        approx = sum(w * t**degree for w, t in zip(weights, t_nodes))
        values = t_fine**degree
        exact = float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(fine)))  # trapezoid
        assert abs(approx - exact) < 1e-8 * (1 + abs(exact)), (degree, approx, exact)


def test_deis_first_order_is_euler_and_errors_name_the_order(mix) -> None:
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 10
    grid = torch.tensor([10.0, 3.0, 1.0, 0.3, 0.0], dtype=torch.float64)
    torch.testing.assert_close(sample(mix, x, grid, "deis", order=1), sample(mix, x, grid, "euler"))
    for name in ["deis", "ipndm"]:
        with pytest.raises(ValueError, match=f"{name} order must be 1, 2, 3 or 4, got 5"):
            sample(mix, x, grid, name, order=5)


@pytest.fixture(scope="module")
def geometric(mix):
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 80
    return x, ode_reference(mix, x, 80.0, 0.05)


@pytest.mark.parametrize(("order", "expected"), [(1, 1.0), (2, 2.0), (3, 2.0), (4, 2.0)])
def test_ipndm_observed_order(order: int, expected: float, mix, geometric) -> None:
    x, exact = geometric
    errors = []
    for n in STEPS:
        grid = torch.linspace(math.log(80.0), math.log(0.05), n + 1).double().exp()
        errors.append((sample(mix, x, grid, "ipndm", order=order) - exact).norm(dim=1).median())
    assert abs(_slope([float(e) for e in errors]) - expected) <= 0.3, errors


@pytest.fixture(scope="module")
def smooth_start(mix):
    """States at sigma 3 on the exact ODE from 80, and their exact solution at sigma 0.5."""
    x80 = torch.randn(16, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 80
    x = ode_reference(mix, x80, 80.0, 3.0)
    return x, ode_reference(mix, x, 3.0, 0.5)


def _refined_t_grid(n: int, order: int) -> torch.Tensor:
    """Uniform in the VP time from sigma 3 to 0.5, the first ``order - 1`` steps of size h^2."""
    time = LinearVPSchedule(t_min=0.0)
    ta, tb = (float(time.sigma_to_t(torch.tensor(s))) for s in (3.0, 0.5))
    h = (ta - tb) / n
    warm = [ta - k * h * h for k in range(order - 1)]
    rest = torch.linspace(ta - (order - 1) * h * h, tb, n + 1).tolist()[1:]
    return time.t_to_sigma(torch.tensor([ta, *warm[1:], *rest], dtype=torch.float64))


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_deis_observed_order(order: int, mix, smooth_start) -> None:
    x, exact = smooth_start
    errors = [
        float((sample(mix, x, _refined_t_grid(n, order), "deis", order=order) - exact)
              .norm(dim=1).median())
        for n in STEPS
    ]  # fmt: skip
    slope = _slope(errors)
    if order < 4:
        assert abs(slope - order) <= 0.3, (errors, slope)
    else:
        assert slope > 3.0, (errors, slope)
