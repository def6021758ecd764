"""Guidance, editing and distillation costs and quality, side by side in one run.

1. Classifier-free guidance: one batched call (cond + null_mask rows, batch 2B) vs two calls
   (batch B each) on real small networks (polydiff.nn ResidualMLP and the tiny 2-D UNet, class
   conditional, EDM-wrapped); ms per guided denoiser call and the ratio, outputs checked equal.
2. RePaint on an 8-D Gaussian mixture with 3 observed coordinates (exact conditional known):
   denoiser calls, time and the error of the conditional mean / component weights vs the
   resample count (resample 1 = plain replacement).
3. Progressive distillation of a small MLP teacher on a 2-D ring of Gaussians: sliced
   Wasserstein distance to exact samples of the student at 2^k steps vs the teacher (DDIM) at the
   same step count and at its full count.

    python -m benchmarks.run --only guidance [--quick]
"""

from __future__ import annotations

import time

import torch
from torch import nn

from benchmarks.common import write_results
from polydiff.core.distillation import progressive_distillation
from polydiff.core.editing import inpaint, repaint_schedule
from polydiff.core.guidance import classifier_free_guidance
from polydiff.core.metrics import sliced_wasserstein
from polydiff.core.objective import DiffusionObjective, LogNormal
from polydiff.core.parameterization import EDMParameterization, NetworkDenoiser
from polydiff.core.samplers import sample
from polydiff.core.schedules import EDMSchedule, karras_sigmas
from polydiff.core.toy import GaussianMixture, ring_mixture
from polydiff.nn import ResidualMLP
from polydiff.nn.unet import unet

F64 = torch.float64


def _time(fn, repeats: int) -> float:
    """Best wall time of ``fn()`` in ms over ``repeats`` (after one warm-up call).

    The minimum is the least sensitive to other processes on a shared machine.
    """
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


# ----------------------------------------------------------------------------- 1. CFG cost


def bench_cfg(quick: bool) -> list[dict]:
    torch.manual_seed(0)
    cases = [
        ("ResidualMLP 256x4, D=64", ResidualMLP(64, hidden=256, depth=4, num_classes=10), (64,)),
        ("UNet tiny 2-D, 3x16x16", unet("tiny", num_classes=10), (3, 16, 16)),
    ]
    rows = []
    for name, net, shape in cases:
        net.eval()
        denoiser = NetworkDenoiser(net, EDMParameterization(0.5))
        for batch in (8, 64) if quick else (8, 64, 256):
            if len(shape) == 3 and batch > 64:  # keep the CPU run short
                continue
            g = torch.Generator().manual_seed(batch)
            x = torch.randn(batch, *shape, generator=g)
            sigma = torch.full((batch,), 1.3)
            cond = {"class": torch.randint(0, 10, (batch,), generator=g)}
            one = classifier_free_guidance(denoiser, 4.0, batched=True)
            two = classifier_free_guidance(denoiser, 4.0, batched=False)
            with torch.no_grad():
                diff = (one(x, sigma, cond) - two(x, sigma, cond)).abs().max().item()
                reps = 3 if quick else 10
                t_one = _time(lambda: one(x, sigma, cond), reps)  # noqa: B023
                t_two = _time(lambda: two(x, sigma, cond), reps)  # noqa: B023
            rows.append(
                {
                    "network": name,
                    "batch": batch,
                    "batched_ms": round(t_one, 3),
                    "two_calls_ms": round(t_two, 3),
                    "two_calls_over_batched": round(t_two / t_one, 3),
                    "max_abs_diff": diff,
                }
            )
    return rows


# ----------------------------------------------------------------------------- 2. RePaint


def _exact_conditional(gmm: GaussianMixture, obs: list[int], values: torch.Tensor):
    free = [i for i in range(gmm.dim) if i not in obs]
    mu_o, s_o = gmm.means[:, obs], gmm.stds[:, obs]
    logw = gmm.weights.log() + (-0.5 * ((values - mu_o) / s_o) ** 2 - s_o.log()).sum(1)
    w = torch.softmax(logw, 0)
    return w, (w[:, None] * gmm.means[:, free]).sum(0), free


def bench_repaint(quick: bool) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    gmm = GaussianMixture(
        torch.randn(5, 8, generator=g, dtype=F64) * 1.5,
        torch.rand(5, 8, generator=g, dtype=F64) * 0.4 + 0.2,
    )
    x_obs = gmm.sample(1, generator=g, dtype=F64)[0]
    obs = [0, 1, 2]
    w, mean, free = _exact_conditional(gmm, obs, x_obs[obs])
    n, steps = (500, 50) if quick else (2000, 50)
    sigmas = karras_sigmas(steps, 0.005, 40.0)
    known = torch.zeros(8, dtype=F64)
    known[obs] = x_obs[obs]
    mask = torch.zeros(8, dtype=torch.bool)
    mask[obs] = True
    rows = []
    for resample in (1, 2, 5, 10) if quick else (1, 2, 5, 10, 20, 40):
        path = repaint_schedule(steps, 5, resample)
        calls = sum(b == a + 1 for a, b in zip(path, path[1:]))
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, 8, generator=gen, dtype=F64) * sigmas[0]
        start = time.perf_counter()
        out = inpaint(gmm, x, sigmas, known=known.expand(n, -1), mask=mask, generator=gen,
                      resample=resample, jump_length=5)  # fmt: skip
        elapsed = time.perf_counter() - start
        weights = torch.bincount(gmm.class_log_prob(out).argmax(1), minlength=5) / n
        rows.append(
            {
                "resample": resample,
                "jump_length": 5,
                "denoiser_calls": calls,
                "seconds": round(elapsed, 3),
                "mean_abs_err": round((out[:, free].mean(0) - mean).abs().max().item(), 4),
                "weight_err": round((weights - w).abs().max().item(), 4),
            }
        )
    return rows


# ----------------------------------------------------------------------------- 3. distillation


class _MLP(nn.Module):
    """Small MLP ``net(x (B, 2), t (B,))`` with random Fourier features of t."""

    def __init__(self, hidden: int = 128, depth: int = 3) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(16) * 4.0)
        layers: list[nn.Module] = [nn.Linear(2 + 32, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, 2))

    def forward(self, x, t, cond=None):
        a = t[:, None].float() * self.freqs[None]
        return self.net(torch.cat([x, a.sin(), a.cos()], 1))


def bench_distillation(quick: bool) -> list[dict]:
    torch.manual_seed(0)
    gmm, sd = ring_mixture(6, radius=2.0, std=0.25), 1.4
    g = torch.Generator().manual_seed(0)
    teacher_iters, round_iters = (1500, 200) if quick else (3000, 600)

    def data(n, gen):
        return gmm.sample(n, generator=gen), None

    def edm(net):
        return NetworkDenoiser(net, EDMParameterization(sd))

    teacher = _MLP()
    d_teacher = edm(teacher)
    opt = torch.optim.Adam(teacher.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, teacher_iters)
    # EDM training (Karras et al. 2022, eq. 8) with a log-normal sigma centred at -0.6
    objective = DiffusionObjective(EDMSchedule(sigma_data=sd), "edm", "edm", LogNormal(-0.6, 1.2))
    for _ in range(teacher_iters):
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
    rows = []
    with torch.no_grad():
        teacher_full = swd(sample(d_teacher, noise, base, "ddim"))
    net, grid = teacher, base
    for r in range(5):  # 32 -> 16 -> 8 -> 4 -> 2 -> 1
        net, grid = progressive_distillation(
            net, edm, data, grid, rounds=1, iterations=round_iters,
            make_optimizer=lambda p: torch.optim.Adam(p, lr=5e-4), batch_size=512, generator=g,
            sigma_data=sd,
        )  # fmt: skip
        steps = len(grid) - 1
        with torch.no_grad():
            student = swd(sample(edm(net), noise, grid, "ddim"))
            teacher_same = swd(sample(d_teacher, noise, base[:: 2 ** (r + 1)], "ddim"))
        rows.append(
            {
                "steps": steps,
                "student_swd": round(student, 4),
                "teacher_ddim_same_steps_swd": round(teacher_same, 4),
                "teacher_ddim_32_steps_swd": round(teacher_full, 4),
                "student_over_teacher_32": round(student / teacher_full, 3),
            }
        )
    return rows


# ----------------------------------------------------------------------------- report


def _table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append(
            "| "
            + " | ".join(
                f"{row[k]:.3g}" if isinstance(row[k], float) else str(row[k]) for k in keys
            )
            + " |"
        )
    return "\n".join(lines)


def run(quick: bool = False) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = {
        "quick": quick,
        "cfg": bench_cfg(quick),
        "repaint": bench_repaint(quick),
        "distillation": bench_distillation(quick),
    }
    markdown = "\n\n".join(
        [
            "### Classifier-free guidance: one batched call vs two calls (ms per guided call)",
            _table(result["cfg"]),
            "### RePaint on an 8-D mixture (3 coords observed, 50 steps, jump 5): cost and error",
            _table(result["repaint"]),
            "### Progressive distillation on a 2-D ring (sliced Wasserstein to exact samples)",
            _table(result["distillation"]),
        ]
    )
    result["markdown"] = markdown
    write_results("guidance", result, markdown, quick=quick)
    return result


if __name__ == "__main__":
    print(run(quick=True)["markdown"])
