"""Progressive and consistency distillation: exact oracles (fast) and a trained MLP (slow).

Measured by ``test_distill_small_mlp_teacher`` (2-D ring of 6, sliced Wasserstein distance to
4000 exact samples; teacher: 3-layer MLP, 128 wide, EDM preconditioning, 3000 Adam steps):
teacher DDIM 4 / 8 / 32 steps 0.40 / 0.25 / 0.081, Heun 32 steps 0.060;
progressive distillation 32 -> 4 steps (3 rounds x 600 steps): 0.090 at 4 DDIM steps (1.11x the
teacher's 32-step DDIM); consistency distillation (Heun teacher, 17 levels, 3000 steps, EMA
0.95): EMA net 1 / 2 / 4 steps 0.078 / 0.068 / 0.060 (1.0x the teacher's 32-step Heun).
"""

import math

import pytest
import torch
from torch import nn

from polydiff.core.distillation import (
    ConsistencyParameterization,
    consistency_denoiser,
    consistency_loss,
    consistency_sample,
    consistency_training,
    progressive_distillation,
    progressive_distillation_loss,
)
from polydiff.core.metrics import sliced_wasserstein
from polydiff.core.objective import DiffusionObjective, LogNormal
from polydiff.core.parameterization import EDMParameterization, NetworkDenoiser
from polydiff.core.samplers import sample
from polydiff.core.schedules import EDMSchedule, karras_sigmas
from polydiff.core.toy import GaussianMixture, ring_mixture

F64 = torch.float64


class TinyMLP(nn.Module):
    """``net(x (B, 2), t (B,), cond) -> (B, 2)`` with random Fourier features of t."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(16) * 4.0)
        layers: list[nn.Module] = [nn.Linear(dim + 32, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, dim))

    def forward(self, x, t, cond=None):
        a = t[:, None].float() * self.freqs[None]
        return self.net(torch.cat([x, a.sin(), a.cos()], 1))


# ------------------------------------------------------------------ exact oracles (fast)


def test_progressive_target_makes_one_step_equal_two_teacher_steps() -> None:
    gmm = ring_mixture(4, radius=1.0, std=0.3)
    grid = karras_sigmas(8, 0.01, 20.0)  # teacher: 8 steps; student: grid[::2]
    teacher_two_steps = {}

    def oracle_student(x, sigma, cond=None):
        # the x0 whose DDIM step s -> s_next lands where two teacher DDIM steps land
        out = torch.empty_like(x)
        for b in range(x.shape[0]):
            k = int((grid - sigma[b]).abs().argmin())
            s, s_mid, s_next = (float(v) for v in grid[k : k + 3])
            xb = x[b : b + 1]
            d1 = gmm(xb, torch.tensor([s], dtype=F64))
            x_mid = d1 + s_mid / s * (xb - d1)
            d2 = gmm(x_mid, torch.tensor([s_mid], dtype=F64))
            x_next = d2 + s_next / s_mid * (x_mid - d2) if s_next > 0 else d2
            teacher_two_steps[b] = x_next
            out[b] = (x_next - s_next / s * xb) / (1 - s_next / s)
        return out

    x0 = gmm.sample(64, generator=torch.Generator().manual_seed(0), dtype=F64)
    g = torch.Generator().manual_seed(1)
    loss = progressive_distillation_loss(oracle_student, gmm, x0, grid, generator=g)
    assert loss.item() < 1e-20
    # and a student that is just the teacher has a positive loss
    assert progressive_distillation_loss(gmm, gmm, x0, grid, generator=g).item() > 1e-4
    with pytest.raises(ValueError, match="even"):
        progressive_distillation_loss(gmm, gmm, x0, karras_sigmas(7, 0.01, 20.0))


def _gaussian_flow(mu: float, s0: float, sigma_min: float):
    """Exact consistency function of N(mu, s0^2): the PF-ODE scales x - mu by sqrt(s0^2 + s^2)."""

    def f(x, sigma, cond=None):
        scale = math.sqrt(s0**2 + sigma_min**2) / torch.sqrt(s0**2 + sigma.to(F64) ** 2)
        return mu + (x - mu) * scale[:, None].to(x.dtype)

    return f


def test_consistency_losses_vanish_at_the_exact_flow() -> None:
    mu, s0, sigma_min = 0.7, 0.4, 0.002
    gauss = GaussianMixture(torch.tensor([[mu, mu]], dtype=F64), s0)
    f = _gaussian_flow(mu, s0, sigma_min)
    x0 = gauss.sample(512, generator=torch.Generator().manual_seed(0), dtype=F64)
    grid = karras_sigmas(40, sigma_min, 80.0)[:-1]
    g = torch.Generator().manual_seed(1)
    cd = consistency_loss(f, f, x0, grid, teacher=gauss, generator=g).item()
    wrong = consistency_loss(gauss, gauss, x0, grid, teacher=gauss, generator=g).item()
    assert cd < 1e-6 and cd < 1e-3 * wrong  # the denoiser itself is not self-consistent
    # CT (same noise at both levels) is consistent only as the grid is refined: O(h^2)
    ct = [
        consistency_loss(f, f, x0, karras_sigmas(n, sigma_min, 80.0)[:-1], generator=g).item()
        for n in (20, 80)
    ]
    assert ct[1] < ct[0] / 8, ct
    hub = consistency_loss(f, f, x0, grid, teacher=gauss, generator=g, metric="pseudo_huber")
    hub_wrong = consistency_loss(
        gauss, gauss, x0, grid, teacher=gauss, generator=g, metric="pseudo_huber"
    )
    assert 0 <= hub.item() < 0.01 * hub_wrong.item()
    with pytest.raises(ValueError, match="above 0"):
        consistency_loss(f, f, x0, karras_sigmas(5, 0.01, 1.0))


def test_consistency_sampler_and_boundary_condition() -> None:
    mu, s0 = 0.7, 0.4
    f = _gaussian_flow(mu, s0, 0.002)
    noise = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    for steps in ([80.0], [80.0, 1.0, 0.3]):
        x = consistency_sample(
            f, noise * 80.0, torch.tensor(steps), generator=torch.Generator().manual_seed(3)
        )
        assert x.mean().item() == pytest.approx(mu, abs=0.02)
        assert x.std().item() == pytest.approx(math.sqrt(s0**2 + 0.002**2), rel=0.02)
    # any network wrapped as a consistency function is the identity at sigma_min
    net = TinyMLP()
    fn = consistency_denoiser(net, sigma_min=0.002, sigma_data=0.5)
    x = torch.randn(8, 2)
    torch.testing.assert_close(fn(x, torch.full((8,), 0.002)), x)
    c_skip, c_out, _ = ConsistencyParameterization(0.002, 0.5).scalings(torch.tensor([80.0]))
    assert c_skip.item() < 1e-4 and c_out.item() == pytest.approx(0.5, rel=1e-3)


def test_training_loops_reduce_their_losses_quickly() -> None:
    # a few steps on the exact mixture teacher; checks the loop wiring, not the final quality
    gmm = ring_mixture(4, radius=1.0, std=0.3)

    def data(n, gen):
        return gmm.sample(n, generator=gen), None

    losses = []
    net = TinyMLP(hidden=64, depth=2)
    consistency_training(
        net,
        lambda m: consistency_denoiser(m, 0.002, 1.0),
        data,
        karras_sigmas(10, 0.002, 20.0)[:-1],
        iterations=150,
        make_optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
        teacher=lambda x, s, c=None: gmm(x, s).float(),
        batch_size=128,
        generator=torch.Generator().manual_seed(0),
        callback=lambda info: losses.append(info["loss"]),
    )
    assert len(losses) == 150
    assert sum(losses[-20:]) < 0.5 * sum(losses[:20])


# ------------------------------------------------------------------ trained MLP (slow)


@pytest.mark.slow
def test_distill_small_mlp_teacher() -> None:
    torch.manual_seed(0)
    gmm, sd = ring_mixture(6, radius=2.0, std=0.25), 1.4
    g = torch.Generator().manual_seed(0)

    def data(n, gen):
        return gmm.sample(n, generator=gen), None

    def edm(net):
        return NetworkDenoiser(net, EDMParameterization(sd))

    teacher = TinyMLP()
    d_teacher = edm(teacher)
    opt = torch.optim.Adam(teacher.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 3000)
    # EDM training (Karras et al. 2022, eq. 8) with a log-normal sigma centred at -0.6
    objective = DiffusionObjective(EDMSchedule(sigma_data=sd), "edm", "edm", LogNormal(-0.6, 1.2))
    for _ in range(3000):
        x0, _ = data(512, g)
        loss = objective.loss(teacher, x0, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    teacher.eval()
    ref = gmm.sample(4000, generator=torch.Generator().manual_seed(99)).double()
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(5)) * 80.0

    def swd(x):
        return sliced_wasserstein(
            x.double(), ref, generator=torch.Generator().manual_seed(1)
        ).item()

    base = karras_sigmas(32, 0.002, 80.0)
    with torch.no_grad():
        teacher_ddim = swd(sample(d_teacher, noise, base, "ddim"))
        teacher_heun = swd(sample(d_teacher, noise, base, "heun"))
        teacher_ddim4 = swd(sample(d_teacher, noise, base[::8], "ddim"))
    student, grid = progressive_distillation(
        teacher, edm, data, base, rounds=3, iterations=600,
        make_optimizer=lambda p: torch.optim.Adam(p, lr=5e-4), batch_size=512, generator=g,
        sigma_data=sd,
    )  # fmt: skip
    assert len(grid) == 5
    with torch.no_grad():
        pd4 = swd(sample(edm(student), noise, grid, "ddim"))
    cm = TinyMLP()
    cm.load_state_dict(teacher.state_dict())
    _, target = consistency_training(
        cm, lambda m: consistency_denoiser(m, 0.002, sd), data, karras_sigmas(18, 0.002, 80.0)[:-1],
        iterations=3000, make_optimizer=lambda p: torch.optim.Adam(p, lr=2e-4), teacher=d_teacher,
        batch_size=512, generator=g,
    )  # fmt: skip
    with torch.no_grad():
        f = consistency_denoiser(target, 0.002, sd)
        cd4 = swd(consistency_sample(f, noise, torch.tensor([80.0, 1.5, 0.5, 0.1])))
    print(f"teacher ddim32 {teacher_ddim:.3f} heun32 {teacher_heun:.3f} ddim4 {teacher_ddim4:.3f}")
    print(f"progressive 4-step {pd4:.3f}, consistency 4-step {cd4:.3f}")
    assert pd4 < 1.5 * teacher_ddim and pd4 < 0.5 * teacher_ddim4
    assert cd4 < 1.5 * teacher_heun
