"""Few-step students: progressive distillation and consistency models (torch only).

The student is a network ``net(x, t, cond)`` wrapped as a denoiser (any
:class:`~polydiff.core.parameterization.NetworkDenoiser`, or :func:`consistency_denoiser`); the
losses only see denoisers, so teacher and student can have different parameterisations.

- :func:`progressive_distillation_loss` / :func:`progressive_distillation`: Salimans & Ho 2022,
  Alg. 2: the student's one DDIM step from sigma_i must land where two teacher DDIM steps
  (sigma_i -> sigma_mid -> sigma_next) land; its x0 target is solved from the DDIM update. Each
  round halves the number of steps (the student grid is every other point of the teacher's).
- :func:`consistency_loss` / :func:`consistency_training`: consistency distillation (CD, with a
  teacher ODE step) and consistency training (CT, with the same noise at both levels)
  (Song et al. 2023, Alg. 2 and 3), an EMA target network, and :func:`consistency_sample`, the
  multistep consistency sampler (Alg. 1).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from polydiff.core.parameterization import ConsistencyParameterization, NetworkDenoiser
from polydiff.core.samplers._base import Generator, as_grid, ddim_step, noise_like
from polydiff.core.utils import Cond, Denoiser, append_dims

__all__ = [
    "ConsistencyParameterization",
    "consistency_denoiser",
    "consistency_loss",
    "consistency_sample",
    "consistency_training",
    "progressive_distillation",
    "progressive_distillation_loss",
]

_F64 = torch.float64

# sample_data(batch_size, generator) -> (x0, cond)
DataSampler = Callable[[int, torch.Generator | None], tuple[torch.Tensor, Cond]]
# make_denoiser(net) -> Denoiser
DenoiserFactory = Callable[[nn.Module], Denoiser]


def _edm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM loss weight (sigma^2 + sd^2) / (sigma sd)^2 (Karras et al. 2022, eq. 8 / table 1)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def _grid(sigmas: torch.Tensor, name: str) -> torch.Tensor:
    return torch.tensor(as_grid(sigmas, strict=True, name=name), dtype=_F64)


# ------------------------------------------------------------------------ progressive distillation


def progressive_distillation_loss(
    student: Denoiser,
    teacher: Denoiser,
    x0: torch.Tensor,
    teacher_sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    generator: torch.Generator | None = None,
    sigma_data: float = 0.5,
) -> torch.Tensor:
    """Progressive distillation loss (Salimans & Ho 2022, Alg. 2), scalar.

    ``teacher_sigmas``: the teacher's 2N-step grid (2N + 1 values, may end in 0); the student
    samples the N-step grid ``teacher_sigmas[::2]``. For a random student step i per sample:
    ``x = x0 + s eps``, two teacher DDIM steps give ``x''`` at ``s_next``, and the student's x0
    target ``(x'' - s_next / s * x) / (1 - s_next / s)`` makes one DDIM step land on ``x''``.
    Loss: EDM-weighted MSE of the student's x0 (weight ``(s^2 + sd^2) / (s sd)^2``).
    """
    grid = _grid(teacher_sigmas, "teacher_sigmas").to(x0.device)
    if (grid.numel() - 1) % 2:
        raise ValueError(
            f"teacher_sigmas must hold an even number of steps, got {grid.numel() - 1}"
        )
    n_student = (grid.numel() - 1) // 2
    b = x0.shape[0]
    i = torch.randint(0, n_student, (b,), generator=generator, device=x0.device)
    s, s_mid, s_next = grid[2 * i], grid[2 * i + 1], grid[2 * i + 2]  # (B,) each
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    x = x0 + append_dims(s.to(x0.dtype), x0.ndim) * eps
    with torch.no_grad():
        x_mid = ddim_step(x, teacher(x, s.to(x.dtype), cond), s, s_mid)
        d_mid = teacher(x_mid, s_mid.to(x.dtype), cond)
        # DDIM from s_mid to s_next; a step into sigma 0 lands on the denoised value
        x_next = torch.where(
            append_dims(s_next > 0, x.ndim), ddim_step(x_mid, d_mid, s_mid, s_next), d_mid
        )
        ratio = append_dims((s_next / s).to(x.dtype), x.ndim)
        target = (x_next - ratio * x) / (1 - ratio)
    err = (student(x, s.to(x.dtype), cond) - target).square().flatten(1).mean(1)  # (B,)
    return (_edm_weight(s, sigma_data).to(err.dtype) * err).mean()


def _batches(sample_data: DataSampler, batch_size: int, generator) -> Iterator[tuple]:
    while True:
        yield sample_data(batch_size, generator)


def progressive_distillation(
    teacher_net: nn.Module,
    make_denoiser: DenoiserFactory,
    sample_data: DataSampler,
    sigmas: torch.Tensor,
    *,
    rounds: int,
    iterations: int,
    make_optimizer: Callable[[Iterator[nn.Parameter]], torch.optim.Optimizer],
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    sigma_data: float = 0.5,
    callback: Callable[[dict], None] | None = None,
) -> tuple[nn.Module, torch.Tensor]:
    """Run ``rounds`` of progressive distillation; returns (student net, its sigma grid).

    ``sigmas``: the teacher's N-step grid (N divisible by 2**rounds). Each round copies the current
    teacher into a student, trains it for ``iterations`` optimizer steps of
    :func:`progressive_distillation_loss`, then makes it the teacher; the grid becomes
    ``sigmas[::2 ** rounds]``. ``sample_data(batch, generator) -> (x0, cond)``.
    """
    grid = _grid(sigmas, "sigmas")
    if (grid.numel() - 1) % (2**rounds):
        raise ValueError(f"{grid.numel() - 1} steps cannot be halved {rounds} times")
    teacher = teacher_net
    data = _batches(sample_data, batch_size, generator)
    for r in range(rounds):
        student = copy.deepcopy(teacher)
        student.train()
        frozen = copy.deepcopy(teacher).eval().requires_grad_(False)
        teacher_d, student_d = make_denoiser(frozen), make_denoiser(student)
        opt = make_optimizer(student.parameters())
        for it in range(iterations):
            x0, cond = next(data)
            loss = progressive_distillation_loss(
                student_d,
                teacher_d,
                x0,
                grid,
                cond=cond,
                generator=generator,
                sigma_data=sigma_data,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if callback is not None:
                callback(
                    {"round": r, "iteration": it, "loss": loss.item(), "steps": len(grid) // 2}
                )
        teacher, grid = student.eval(), grid[::2]
    return teacher, grid


# ------------------------------------------------------------------------ consistency models


def consistency_denoiser(
    net: nn.Module, sigma_min: float = 0.002, sigma_data: float = 0.5
) -> NetworkDenoiser:
    """``net(x, t, cond)`` as a consistency function with ``f(x, sigma_min) = x``."""
    return NetworkDenoiser(net, ConsistencyParameterization(sigma_min, sigma_data))


def _heun_ode_step(teacher: Denoiser, x: torch.Tensor, s, s_next, cond: Cond) -> torch.Tensor:
    """Per-sample Heun step of the PF-ODE from s to s_next > 0 (s, s_next (B,) float64)."""
    sv, nv = append_dims(s.to(x.dtype), x.ndim), append_dims(s_next.to(x.dtype), x.ndim)
    d1 = (x - teacher(x, s.to(x.dtype), cond)) / sv
    x_euler = x + (nv - sv) * d1
    d2 = (x_euler - teacher(x_euler, s_next.to(x.dtype), cond)) / nv
    return x + (nv - sv) * (d1 + d2) / 2


def consistency_loss(
    student: Denoiser,
    target: Denoiser,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    teacher: Denoiser | None = None,
    cond: Cond = None,
    generator: torch.Generator | None = None,
    metric: str = "l2",
    huber_c: float | None = None,
) -> torch.Tensor:
    """Consistency distillation / training loss (Song et al. 2023, eq. 7 and 10), scalar.

    ``sigmas``: decreasing grid of discretisation levels (all > 0, the last = sigma_min). For a
    random adjacent pair ``s > s'`` per sample and ``x = x0 + s z``: with a ``teacher`` (CD) the
    partner ``x'`` is one Heun step of the teacher's PF-ODE from s to s'; without one (CT) it is
    ``x0 + s' z`` with the same z. Loss ``d(f_student(x, s), stopgrad f_target(x', s'))`` with
    ``metric`` "l2" (mean squared error) or "pseudo_huber" (Song & Dhariwal 2023,
    ``sqrt(|a-b|^2 + c^2) - c``, ``c = 0.00054 sqrt(dim)`` by default).
    """
    grid = _grid(sigmas, "sigmas").to(x0.device)
    if grid[-1] <= 0:
        raise ValueError("consistency grids must stay above 0 (end at sigma_min)")
    b = x0.shape[0]
    i = torch.randint(0, grid.numel() - 1, (b,), generator=generator, device=x0.device)
    s, s_prev = grid[i], grid[i + 1]  # s > s_prev
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    x = x0 + append_dims(s.to(x0.dtype), x0.ndim) * z
    with torch.no_grad():
        if teacher is None:
            x_prev = x0 + append_dims(s_prev.to(x0.dtype), x0.ndim) * z
        else:
            x_prev = _heun_ode_step(teacher, x, s, s_prev, cond)
        y = target(x_prev, s_prev.to(x0.dtype), cond)
    out = student(x, s.to(x0.dtype), cond)
    sq = (out - y).square().flatten(1)
    if metric == "l2":
        return sq.mean(1).mean()
    if metric == "pseudo_huber":
        c = huber_c if huber_c is not None else 0.00054 * math.sqrt(sq.shape[1])
        return ((sq.sum(1) + c**2).sqrt() - c).mean()
    raise ValueError(f"metric must be 'l2' or 'pseudo_huber', got {metric!r}")


@torch.no_grad()
def _ema_update(target: nn.Module, online: nn.Module, decay: float) -> None:
    for pt, po in zip(target.parameters(), online.parameters()):
        pt.lerp_(po, 1.0 - decay)
    for bt, bo in zip(target.buffers(), online.buffers()):
        bt.copy_(bo)


def consistency_training(
    student_net: nn.Module,
    make_denoiser: DenoiserFactory,
    sample_data: DataSampler,
    sigmas: torch.Tensor,
    *,
    iterations: int,
    make_optimizer: Callable[[Iterator[nn.Parameter]], torch.optim.Optimizer],
    teacher: Denoiser | None = None,
    ema_decay: float = 0.95,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    metric: str = "l2",
    callback: Callable[[dict], None] | None = None,
) -> tuple[nn.Module, nn.Module]:
    """Consistency distillation (``teacher`` given) or training; returns (online, target) nets.

    The target network is an EMA (``ema_decay``) of the online student, updated after every
    optimizer step (Song et al. 2023, Alg. 2 / 3); sample with the target network through
    ``make_denoiser`` (e.g. :func:`consistency_denoiser`) and :func:`consistency_sample`.
    """
    online = student_net
    online.train()
    target_net = copy.deepcopy(online).eval().requires_grad_(False)
    student_d, target_d = make_denoiser(online), make_denoiser(target_net)
    opt = make_optimizer(online.parameters())
    data = _batches(sample_data, batch_size, generator)
    for it in range(iterations):
        x0, cond = next(data)
        loss = consistency_loss(
            student_d,
            target_d,
            x0,
            sigmas,
            teacher=teacher,
            cond=cond,
            generator=generator,
            metric=metric,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _ema_update(target_net, online, ema_decay)
        if callback is not None:
            callback({"iteration": it, "loss": loss.item()})
    return online.eval(), target_net


def consistency_sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Cond = None,
    generator: Generator = None,
    callback: Callable[[dict], None] | None = None,
    sigma_min: float = 0.002,
) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1).

    ``x`` enters as ``noise * sigmas[0]``; ``x0 = f(x, sigmas[0])``, then for every later
    ``sigma > sigma_min`` of the grid: ``x = x0 + sqrt(sigma^2 - sigma_min^2) z``,
    ``x0 = f(x, sigma)`` (zeros and levels <= sigma_min in the grid are skipped).
    One denoiser call per level; the same signature as the core samplers.
    """
    levels = [float(s) for s in sigmas]
    if not levels or levels[0] <= sigma_min:
        raise ValueError(f"sigmas[0] must exceed sigma_min={sigma_min}")
    b = x.shape[0]
    x0 = denoiser(x, torch.full((b,), levels[0], dtype=x.dtype, device=x.device), cond)
    for i, s in enumerate(levels[1:], start=1):
        if s <= sigma_min:
            continue
        x = x0 + math.sqrt(s**2 - sigma_min**2) * noise_like(x, generator)
        x0 = denoiser(x, torch.full((b,), s, dtype=x.dtype, device=x.device), cond)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": s, "denoised": x0})
    return x0
