"""Sampler accuracy vs NFE and per-step overhead, polydiff side by side with its peers.

1. Accuracy at NFE 5 / 10 / 20 / 50 on two exact Gaussian mixtures (2-D ring of 8, and a 64-D
   mixture of 10 components with diagonal stds): the error to the exact probability-flow ODE
   solution (DOP853 at rtol 1e-10, then the final clean denoise; ODE solvers only) and the
   sliced Wasserstein distance of the samples to exact mixture samples (every sampler), for
   every polydiff sampler and, on the very same sigma grid, start and denoiser, k-diffusion's
   and diffusers' implementation wherever they have the method. Grid: the Karras grid of
   Stable Diffusion's scaled-linear schedule (sigma 0.029 .. 14.6, + 0), i.e. what diffusers'
   ``use_karras_sigmas=True`` produces; DDIM / DDPM rows use diffusers' "trailing" timesteps.
   The adaptive solvers pick the tightest tolerance whose NFE fits the budget.
2. Per-step overhead with a trivial denoiser (``0 * x``, 1x4x16x16): our ``sample`` vs diffusers'
   scheduler loop (``set_timesteps`` + ``scale_model_input`` + ``step``) for DDIM, Euler,
   DPM++ 2M and UniPC over 50 steps, as a ratio (goal: ours <= 0.5x).

    python -m benchmarks.run --only samplers [--quick]
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import write_results
from peers import (
    generator_noise_sampler,
    k_diffusion_model,
    load_k_diffusion_sampling,
    ode_reference,
    paired_noise_sampler,
    run_diffusers_scheduler,
    scheduler_sigmas,
)
from polydiff.core.samplers import DETERMINISTIC, SAMPLERS, sample
from polydiff.core.toy import GaussianMixture, ring_mixture

F64 = torch.float64
BUDGETS = [5, 10, 20, 50]
SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}

# rows of the accuracy table: label -> (polydiff method, options)
OURS: dict[str, tuple[str, dict]] = {name: (name, {}) for name in SAMPLERS}
OURS["dpmpp_3m (eta=0)"] = ("dpmpp_3m_sde", {"eta": 0.0})
OURS["unipc (order 3)"] = ("unipc", {"order": 3})
OURS["adaptive (batch step)"] = ("adaptive", {"per_sample": False})
ODE_ROWS = set(DETERMINISTIC) | {"dpmpp_3m (eta=0)", "unipc (order 3)", "adaptive (batch step)"}
DDIM_GRID_ROWS = {"ddim", "ddpm"}

# k-diffusion function per row (same grid, same start; noise from the same generator)
K_DIFFUSION = {
    "ddim": "sample_euler",
    "euler": "sample_euler",
    "euler_ancestral": "sample_euler_ancestral",
    "heun": "sample_heun",
    "dpm2": "sample_dpm_2",
    "dpm2_ancestral": "sample_dpm_2_ancestral",
    "lms": "sample_lms",
    "dpmpp_2s_ancestral": "sample_dpmpp_2s_ancestral",
    "dpmpp_sde": "sample_dpmpp_sde",
    "dpmpp_2m": "sample_dpmpp_2m",
    "dpmpp_2m_sde": "sample_dpmpp_2m_sde",
    "dpmpp_3m_sde": "sample_dpmpp_3m_sde",
    "dpmpp_3m (eta=0)": "sample_dpmpp_3m_sde",
    "adaptive": "sample_dpm_adaptive",
}
# diffusers scheduler (class, config) per row; one model evaluation per step
DIFFUSERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {"clip_sample": False, "timestep_spacing": "trailing"}),
    "ddpm": ("DDPMScheduler", {"clip_sample": False, "timestep_spacing": "trailing"}),
    "euler": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    "lms": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpmpp_2m_sde": (
        "DPMSolverMultistepScheduler",
        {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"},
    ),
    "dpmpp_3m (eta=0)": (
        "DPMSolverMultistepScheduler",
        {"use_karras_sigmas": True, "solver_order": 3},
    ),
    "unipc": ("UniPCMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc (order 3)": ("UniPCMultistepScheduler", {"use_karras_sigmas": True, "solver_order": 3}),
}
TOLERANCES = [0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4, 1e-4]


class Counter:
    """Wraps a denoiser and counts its calls."""

    def __init__(self, denoiser: Callable[..., torch.Tensor]) -> None:
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x, sigma, cond=None):
        self.calls += 1
        return self.denoiser(x, sigma, cond)


def _scheduler(row: str, steps: int):
    import diffusers

    cls, config = DIFFUSERS[row]
    sched = getattr(diffusers, cls)(**SD_BETAS, **config)
    sched.set_timesteps(steps)
    return sched


@functools.cache
def _grid(row: str, steps: int) -> torch.Tensor:
    """The sigma grid of ``steps`` steps every implementation of ``row`` shares."""
    if row in DDIM_GRID_ROWS:
        return scheduler_sigmas(_scheduler("ddim", steps))
    return scheduler_sigmas(_scheduler("unipc", steps))  # Karras, SD range, + 0


# ----------------------------------------------------------------------------- problems


def problems(quick: bool) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    means = torch.randn(10, 64, generator=g, dtype=F64) * 0.5
    stds = torch.rand(10, 64, generator=g, dtype=F64) * 0.3 + 0.1
    return [
        {"name": "2-D ring of 8", "mix": ring_mixture(8, radius=2.0, std=0.1),
         "n": 800 if quick else 4000, "n_ode": 64 if quick else 256},
        {"name": "64-D mixture of 10", "mix": GaussianMixture(means, stds),
         "n": 300 if quick else 2000, "n_ode": 32 if quick else 128},
    ]  # fmt: skip


class Reference:
    """Exact ODE states at any sigma_min of the grids (solved incrementally, cached)."""

    def __init__(self, mix: GaussianMixture, x: torch.Tensor, sigma_max: float) -> None:
        self.mix, self.states = mix, {sigma_max: x}

    def final(self, sigma_min: float) -> torch.Tensor:
        """Exact ODE solution at ``sigma_min``, then the clean denoise every sampler ends with."""
        key = round(sigma_min, 12)
        if key not in self.states:
            start = min(s for s in self.states if s > key)
            self.states[key] = ode_reference(
                self.mix, self.states[start], start, key, rtol=1e-10, atol=1e-10
            )
        x = self.states[key]
        return self.mix(x, torch.full((x.shape[0],), sigma_min, dtype=F64))


# ------------------------------------------------------------------------ implementations


def run_ours(row: str, mix, x, steps: int, seed: int) -> tuple[torch.Tensor, int]:
    method, options = OURS[row]
    counter = Counter(mix)
    out = sample(counter, x, _grid(row, steps), method,
                 generator=torch.Generator().manual_seed(seed), **options)  # fmt: skip
    return out, counter.calls


def run_k_diffusion(row: str, mix, x, steps: int, seed: int) -> tuple[torch.Tensor, int]:
    k = load_k_diffusion_sampling()
    counter = Counter(mix)
    fn = getattr(k, K_DIFFUSION[row])
    noise = generator_noise_sampler(x, torch.Generator().manual_seed(seed))
    options: dict[str, Any] = {"disable": True}
    if row == "dpmpp_sde":  # same two Brownian increments as ours, without a (slow) BrownianTree
        options["noise_sampler"] = paired_noise_sampler(x, torch.Generator().manual_seed(seed))
    elif "noise_sampler" in inspect.signature(fn).parameters:
        options["noise_sampler"] = noise
    if row == "dpmpp_3m (eta=0)":
        options["eta"] = 0.0
    out = fn(k_diffusion_model(counter), x, _grid(row, steps), **options)
    return out, counter.calls


def run_diffusers(row: str, mix, x, steps: int, seed: int) -> tuple[torch.Tensor, int]:
    counter = Counter(mix)
    sched = _scheduler(row, steps)
    kwargs = {"generator": torch.Generator().manual_seed(seed)}
    if row not in ("ddim", "ddpm", "dpmpp_2m_sde"):
        kwargs = {}
    return run_diffusers_scheduler(sched, counter, x, step_kwargs=kwargs), counter.calls


def adaptive_ladder(
    row: str, impl: str, mix, x, max_nfe: int
) -> list[tuple[float, torch.Tensor, int]]:
    """``(tolerance, output, nfe)`` down the tolerance ladder until the NFE exceeds ``max_nfe``."""
    runs = []
    sigmas = _grid("adaptive", 10)
    for tol in TOLERANCES:
        counter = Counter(mix)
        if impl == "polydiff":
            out = sample(counter, x, sigmas, "adaptive", rtol=tol, atol=tol, **OURS[row][1])
        else:
            k = load_k_diffusion_sampling()
            smin, smax = float(sigmas[-2]), float(sigmas[0])
            out = k.sample_dpm_adaptive(k_diffusion_model(counter), x, smin, smax,
                                        rtol=tol, atol=tol, disable=True)  # fmt: skip
            # k-diffusion stops at sigma_min without the final denoise: add it (one call)
            out = counter(out, torch.full((x.shape[0],), smin, dtype=F64))
        if counter.calls > max_nfe:
            break
        runs.append((tol, out, counter.calls))
    return runs


RUNNERS = {"polydiff": run_ours, "k-diffusion": run_k_diffusion, "diffusers": run_diffusers}


@functools.cache
def nfe_of(row: str, impl: str, steps: int) -> float:
    """Denoiser calls of ``steps`` steps (counted on a 1-sample batch; inf if the peer fails)."""
    x = torch.zeros(1, 2, dtype=F64) + float(_grid(row, steps)[0])
    try:
        return RUNNERS[impl](row, ring_mixture(4), x, steps, 0)[1]
    except Exception:  # k-diffusion's 2M/3M SDE crash on a one-step grid (h unbound)
        return math.inf


@functools.cache
def steps_for(row: str, impl: str, budget: int) -> int | None:
    """Largest step count whose NFE fits the budget (NFE is affine in the steps)."""
    per_step = nfe_of(row, impl, 3) - nfe_of(row, impl, 2)
    steps = 1
    if math.isfinite(per_step) and per_step > 0:
        steps = max(1, int((budget - nfe_of(row, impl, 2)) // per_step) + 2)
    while steps > 1 and nfe_of(row, impl, steps) > budget:
        steps -= 1
    while nfe_of(row, impl, steps + 1) <= budget:
        steps += 1
    return steps if nfe_of(row, impl, steps) <= budget else None


# ------------------------------------------------------------------------------ accuracy


def bench_accuracy(quick: bool) -> list[dict]:
    rows = []
    for prob in problems(quick):
        mix, n, n_ode = prob["mix"], prob["n"], prob["n_ode"]
        gen = torch.Generator().manual_seed(1)
        exact = SlicedW2(mix.sample(5000 if quick else 20000, generator=gen, dtype=F64), n)
        floor = exact(mix.sample(n, generator=gen, dtype=F64))
        sigma_max = float(_grid("euler", 10)[0])
        x = torch.randn(n, mix.dim, generator=gen, dtype=F64) * sigma_max
        ref = Reference(mix, x[:n_ode], sigma_max)
        for row in OURS:
            impls = ["polydiff"] + ["k-diffusion"] * (row in K_DIFFUSION)
            impls += ["diffusers"] * (row in DIFFUSERS)
            for impl in impls:
                adaptive = row.startswith("adaptive")
                ladder = adaptive_ladder(row, impl, mix, x, max(BUDGETS)) if adaptive else []
                for budget in BUDGETS:
                    rows.append(_measure(prob["name"], row, impl, budget, mix, x, ref, exact,
                                         ladder))  # fmt: skip
                    rows[-1]["swd_floor"] = floor
            print(f"  {prob['name']}: {row} done", flush=True)
    return rows


class SlicedW2:
    """Sliced W2 to a fixed exact sample (same 128 directions for every run, reference sorted once;
    the estimator of ``polydiff.core.metrics.sliced_wasserstein``, sets compared by quantiles)."""

    def __init__(self, reference: torch.Tensor, n: int) -> None:
        theta = torch.randn(reference.shape[1], 128, generator=torch.Generator().manual_seed(0),
                            dtype=F64)  # fmt: skip
        self.theta = theta / theta.norm(dim=0, keepdim=True)  # (D, P)
        ref = (reference @ self.theta).sort(0).values  # (M, P)
        levels = (torch.arange(n, dtype=F64) + 0.5) / n * (ref.shape[0] - 1)
        lo = levels.floor().long()
        w = (levels - lo)[:, None]
        self.ref = ref[lo] * (1 - w) + ref[(lo + 1).clamp_max(ref.shape[0] - 1)] * w  # (n, P)

    def __call__(self, x: torch.Tensor) -> float:
        proj = (x.to(F64) @ self.theta).sort(0).values  # (n, P)
        return ((proj - self.ref) ** 2).mean().sqrt().item()


def _measure(problem, row, impl, budget, mix, x, ref, exact, ladder) -> dict:
    record = {"problem": problem, "sampler": row, "impl": impl, "nfe_budget": budget}
    start = time.perf_counter()
    if row.startswith("adaptive"):
        fits = [run for run in ladder if run[2] <= budget]
        if not fits:
            return {**record, "nfe": None}
        tol, out, nfe = fits[-1]
        record.update(tolerance=tol)
        sigma_min = float(_grid(row, 10)[-2])
    else:
        steps = steps_for(row, impl, budget)
        if steps is None:
            return {**record, "nfe": None}
        out, nfe = RUNNERS[impl](row, mix, x, steps, seed=2)
        record.update(steps=steps)
        sigma_min = float(_grid(row, steps)[-2])
    record.update(nfe=nfe, seconds=time.perf_counter() - start, swd=exact(out))
    if row in ODE_ROWS:
        n_ode = ref.states[max(ref.states)].shape[0]
        err = (out[:n_ode] - ref.final(sigma_min)).norm(dim=1)
        record["ode_rmse"] = (err / math.sqrt(mix.dim)).mean().item()
    return record


# ------------------------------------------------------------------------------ overhead


def bench_overhead(quick: bool) -> list[dict]:
    import diffusers

    steps, repeats = 50, 5 if quick else 15
    x = torch.randn(1, 4, 16, 16)

    def trivial(x, sigma, cond=None):
        return x * 0

    def theirs(sched) -> torch.Tensor:
        sched.set_timesteps(steps)
        s = x * sched.init_noise_sigma
        for t in sched.timesteps:
            s = sched.step(sched.scale_model_input(s, t) * 0, t, s, return_dict=False)[0]
        return s

    rows = []
    for method, cls in [("ddim", "DDIMScheduler"), ("euler", "EulerDiscreteScheduler"),
                        ("dpmpp_2m", "DPMSolverMultistepScheduler"),
                        ("unipc", "UniPCMultistepScheduler")]:  # fmt: skip
        sched = getattr(diffusers, cls)(**SD_BETAS)
        sched.set_timesteps(steps)
        sigmas = scheduler_sigmas(sched)
        ours = _best(functools.partial(sample, trivial, x * float(sigmas[0]), sigmas, method),
                     repeats)  # fmt: skip
        peer = _best(functools.partial(theirs, sched), repeats)
        rows.append({"method": method, "diffusers_scheduler": cls, "steps": steps,
                     "ours_us_per_step": 1e6 * ours / steps,
                     "diffusers_us_per_step": 1e6 * peer / steps,
                     "ratio_ours_over_diffusers": ours / peer})  # fmt: skip
    return rows


def _best(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# ------------------------------------------------------------------------------ reporting


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.3g}"


def summarise(accuracy: list[dict]) -> list[dict]:
    """At NFE 10: our most accurate ODE solver vs the most accurate peer one, per problem."""
    out = []
    for problem in dict.fromkeys(r["problem"] for r in accuracy):
        cands = [r for r in accuracy if r["problem"] == problem and r["nfe_budget"] == 10
                 and r.get("ode_rmse") is not None]  # fmt: skip
        ours = min((r for r in cands if r["impl"] == "polydiff"), key=lambda r: r["ode_rmse"])
        peers = min((r for r in cands if r["impl"] != "polydiff"), key=lambda r: r["ode_rmse"])
        out.append({"problem": problem, "nfe_budget": 10,
                    "ours_best": ours["sampler"], "ours_ode_rmse": ours["ode_rmse"],
                    "peer_best": f"{peers['impl']} {peers['sampler']}",
                    "peer_ode_rmse": peers["ode_rmse"],
                    "ratio_ours_over_peer": ours["ode_rmse"] / peers["ode_rmse"]})  # fmt: skip
    return out


def markdown(accuracy: list[dict], summary: list[dict], overhead: list[dict]) -> str:
    lines = ["### At 10 NFE: our most accurate ODE solver vs the most accurate peer", "",
             "| problem | ours | ODE RMSE | best peer | ODE RMSE | ours / peer |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for s in summary:
        lines.append(f"| {s['problem']} | {s['ours_best']} | {_fmt(s['ours_ode_rmse'])} | "
                     f"{s['peer_best']} | {_fmt(s['peer_ode_rmse'])} | "
                     f"{_fmt(s['ratio_ours_over_peer'])} |")  # fmt: skip
    lines += ["", "### Per-step overhead, trivial denoiser (1x4x16x16, 50 steps)", "",
              "| method | diffusers scheduler | ours us/step | diffusers us/step "
              "| ours / diffusers |",
              "|---|---|---|---|---|"]  # fmt: skip
    for r in overhead:
        lines.append(f"| {r['method']} | {r['diffusers_scheduler']} | "
                     f"{r['ours_us_per_step']:.1f} | {r['diffusers_us_per_step']:.1f} | "
                     f"{r['ratio_ours_over_diffusers']:.3f} |")  # fmt: skip
    for problem in dict.fromkeys(r["problem"] for r in accuracy):
        floor = next(r["swd_floor"] for r in accuracy if r["problem"] == problem)
        titles = [
            ("ode_rmse", "error to the exact ODE solution (RMSE per coord)"),
            ("swd", f"sliced W2 to exact samples (floor {floor:.3g})"),
        ]
        for metric, title in titles:
            lines += ["", f"### {problem}: {title} vs NFE", "",
                      "| sampler | impl | " + " | ".join(f"NFE {b}" for b in BUDGETS) + " |",
                      "|---|---|" + "---|" * len(BUDGETS)]  # fmt: skip
            for row in OURS:
                if metric == "ode_rmse" and row not in ODE_ROWS:
                    continue
                for impl in ["polydiff", "k-diffusion", "diffusers"]:
                    cells = [r for r in accuracy if r["problem"] == problem and
                             r["sampler"] == row and r["impl"] == impl]  # fmt: skip
                    if not cells:
                        continue
                    vals = [_fmt(c.get(metric)) + ("" if c.get("nfe") in (None, c["nfe_budget"])
                            else f" ({c['nfe']})") for c in cells]  # fmt: skip
                    lines.append(f"| {row} | {impl} | " + " | ".join(vals) + " |")
    lines += ["", "Cells show the value at the largest step count whose NFE fits the budget "
              "(actual NFE in parentheses when below it; — when even one step does not fit). "
              "DDIM/DDPM use diffusers' trailing grid, all others the Karras grid of SD's "
              "schedule; k-diffusion's dpm_adaptive gets the final denoise added (+1 NFE). "
              "Stochastic peers draw from the same generator as ours (k-diffusion's dpmpp_sde: "
              "the same two Brownian increments instead of its BrownianTree), so the SWD "
              "differences between implementations are mostly Monte-Carlo noise."
              ]  # fmt: skip
    return "\n".join(lines) + "\n"


def run(quick: bool = False) -> dict:
    """Run both benchmarks; write ``results/samplers.json`` and ``results/samplers.md`` (quick
    runs: ``results/quick/``) through ``benchmarks.common.write_results``. The few-step part
    (fitted grids, issue #20) is ``benchmarks/samplers/fewstep.py``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        overhead = bench_overhead(quick)
        accuracy = bench_accuracy(quick)
        summary = summarise(accuracy)
        result = {"quick": quick, "summary": summary, "overhead": overhead,
                  "accuracy": accuracy, "seconds": time.perf_counter() - start}  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    table = markdown(accuracy, summary, overhead)
    write_results("samplers", result, table, quick=quick)
    return {**result, "markdown": table}


if __name__ == "__main__":
    import sys

    print(run(quick="--quick" in sys.argv)["markdown"])
