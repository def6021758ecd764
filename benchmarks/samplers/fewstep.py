"""Few-step sampling (issue #20): fitted grids + multistep solvers vs k-diffusion at 5 / 10 NFE.

Part 1, exact mixtures: two 64-D Gaussian mixtures with closed-form denoisers. Error = RMS over
all elements of (sampler output - converged solve), the converged solve being the exact
probability-flow ODE solution (DOP853, rtol 1e-10) to sigma_min followed by the clean denoise
every sampler ends with. Sigma range: Stable Diffusion's scaled-linear schedule (0.0292 ..
14.61). Peers: every deterministic k-diffusion sampler on its Karras grid (rho 7) at the largest
step count within the NFE budget; "k-diffusion best" is the best of them per seed. Ours: each
candidate sampler on a grid from ``optimize_sigmas`` with its defaults (a pool of 2048 starts of
its own noise, seed 0, never the evaluation noise; Heun reference on 48 Karras steps;
multi-start stratified pattern search), evaluated on three evaluation seeds of 512 starts each;
the spread is the min..max over seeds. "flips" counts evaluation samples whose per-sample RMS
error exceeds 0.45 (they ended in another mixture component than the converged solve): the
lumpy part of the error.

Diagnostic (not a result of the procedure): at 5 NFE the iPNDM-3 grid is also searched on the
evaluation noise itself against the exact solve (the same pattern search, from the fitted grid
and the best family grids), an estimate of how far any 5-step grid can take that solver.

Part 2, the trained digits model (``--digits-run <dir>``, a run of ``polydiff train
experiment=image/digits_cond``; the committed numbers use /work/runs/digits_cond_1500, 1500
steps, copied first because fits and evaluations are written into the run): FID and class
accuracy at 5 / 7 / 10 NFE with the recipe's CFG through ``polydiff evaluate``, the old default
(dpmpp_2m on the objective's Karras grid), iPNDM-3 on the same grid, and iPNDM-3 on a grid from
``polydiff schedule`` (small fit settings: ``DIGITS_FIT``), against dpmpp_2m at 50 NFE.

    python -m benchmarks.samplers.fewstep [--quick] [--digits-run <dir> [--digits-only]]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import write_results
from peers import k_diffusion_model, load_k_diffusion_sampling, ode_reference
from polydiff.core.samplers import CountingDenoiser, sample, steps_for_evaluations
from polydiff.core.schedules import (
    VPSchedule,
    _grid_from_logs,
    _pattern_search,
    exponential_sigmas,
    karras_sigmas,
    optimize_sigmas,
    optimize_solver,
)
from polydiff.core.toy import GaussianMixture

F64 = torch.float64
BUDGETS = (5, 10)
EVAL_SEEDS = (101, 102, 103)
# k-diffusion's deterministic samplers (name -> our method with the same evaluation count)
K_SAMPLERS = {
    "sample_euler": "euler",
    "sample_heun": "heun",
    "sample_dpm_2": "dpm2",
    "sample_lms": "lms",
    "sample_dpmpp_2m": "dpmpp_2m",
}
# our candidates on fitted grids: label -> (method, options); "fitted" is a fitted solver
# (optimize_solver: grid and weights, from iPNDM-3 on its own fitted grid) with SOLVER_FIT[nfe]
CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    "ipndm3": ("ipndm", {"order": 3}),
    "deis3": ("deis", {"order": 3}),
    "unipc_bh2_2": ("unipc", {"order": 2}),
    "fitted_solver": ("fitted", {"order": 3}),
    # + per-step evaluation sigmas and iterate averaging (optimize_solver options; 5 NFE only)
    "fitted_solver_scales": ("fitted", {"order": 3, "sigma_scales": True, "average": 0.9}),
}
ONLY_AT = {"fitted_solver_scales": (5,)}
# the rare mode flips need a large pool (8192 starts at 5 NFE, where they carry the error);
# full-batch Adam steps: 150 at 10 NFE (the held-out optimum came at 40-120 in trials); 400 at 5
# NFE, where the held-out error was still falling at step 150 (0.31x / 0.33x at 150)
SOLVER_FIT: dict[int, dict[str, Any]] = {5: {"pool": 8192, "iterations": 400},
                                         10: {"pool": 4096, "iterations": 150}}  # fmt: skip
# --solver: iPNDM-3 (their start) and the fitted solvers, no diagnostic
SOLVER_ONLY = ("ipndm3", "fitted_solver", "fitted_solver_scales")


# ``polydiff schedule`` settings for the digits UNet (one fit ~1-5 min on one CPU thread)
DIGITS_FIT = ["sample.n=24", "+schedule.pool=72", "+schedule.reference_steps=20",
              "+schedule.rounds=1", "+schedule.sweeps=4", "+schedule.restarts=1",
              "+schedule.random_starts=8"]  # fmt: skip
# the solver fit on top (its start grid is the one above, found in the run's fit cache): a few
# Adam steps, each a backward pass through NFE guided UNet calls on the pool
DIGITS_SOLVER_FIT = ["+schedule.iterations=40", "+schedule.check_every=4"]


def sd_range() -> tuple[float, float]:
    sd = VPSchedule.scaled_linear(1000, 0.00085, 0.012)
    return float(sd.sigma_min), float(sd.sigma_max)


def mixtures() -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    means = torch.randn(10, 64, generator=g, dtype=F64) * 0.5
    stds = torch.rand(10, 64, generator=g, dtype=F64) * 0.3 + 0.1
    g = torch.Generator().manual_seed(7)
    means2 = torch.randn(6, 64, generator=g, dtype=F64) * 1.0
    stds2 = torch.rand(6, 64, generator=g, dtype=F64) * 0.25 + 0.05
    weights2 = torch.tensor([0.3, 0.25, 0.2, 0.1, 0.1, 0.05], dtype=F64)
    return [
        {"name": "64-D, 10 components (means 0.5 N(0,1), stds 0.1-0.4)",
         "mix": GaussianMixture(means, stds)},
        {"name": "64-D, 6 unequal components (means N(0,1), stds 0.05-0.3)",
         "mix": GaussianMixture(means2, stds2, weights2)},
    ]  # fmt: skip


def _rms(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).square().mean().sqrt())


def _typical(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over samples of the per-sample RMS error: less dominated by the few samples whose
    few-step trajectory ends in another mixture component than the converged one."""
    return float((out - ref).square().mean(1).sqrt().mean())


def _flips(out: torch.Tensor, ref: torch.Tensor, threshold: float = 0.45) -> int:
    """Samples whose per-sample RMS error exceeds ``threshold`` (another mixture component)."""
    return int(((out - ref).square().mean(1).sqrt() > threshold).sum())


def oracle_grid(
    mix: GaussianMixture, starts: dict, grids: list[torch.Tensor], method: str, **opts: Any
) -> torch.Tensor:
    """Diagnostic: the grid searched on the evaluation noise itself against the exact solve."""
    smin, smax = sd_range()
    x = torch.cat([v[0] for v in starts.values()])
    ref = torch.cat([v[1] for v in starts.values()])

    def objective(logs: list[float]) -> float:
        try:
            out = sample(mix, x, _grid_from_logs(logs, smax), method, **opts)
        except FloatingPointError:
            return float("inf")
        return float((out - ref).square().mean())

    best = (float("inf"), [])
    for grid in grids:
        logs = torch.log(grid[1:-1]).tolist()
        for delta in (0.25, 0.08):
            logs, err = _pattern_search(objective, logs, math.log(smax), math.log(smin),
                                        delta=delta, sweeps=6)  # fmt: skip
        best = min(best, (err, logs))
    return _grid_from_logs(best[1], smax)


def bench_mixtures(quick: bool, labels: tuple[str, ...] = tuple(CANDIDATES)) -> list[dict]:
    k = load_k_diffusion_sampling()
    smin, smax = sd_range()
    n_eval = 128 if quick else 512
    seeds = EVAL_SEEDS[:1] if quick else EVAL_SEEDS
    rows = []
    for prob in mixtures():
        mix = prob["mix"]
        starts = {}
        for seed in seeds:
            x = torch.randn(n_eval, 64, generator=torch.Generator().manual_seed(seed), dtype=F64)
            x = x * smax
            exact = ode_reference(mix, x, smax, smin, rtol=1e-10, atol=1e-10)
            starts[seed] = (x, mix(exact, torch.full((n_eval,), smin, dtype=F64)))
        for budget in BUDGETS:
            peers: dict[str, dict[int, float]] = {}
            typical: dict[str, dict[int, float]] = {}
            flip_counts: dict[str, dict[int, int]] = {}
            for fn, method in K_SAMPLERS.items():
                steps = steps_for_evaluations(method, budget)
                grid = karras_sigmas(steps, smin, smax)
                peers[fn], typical[fn], flip_counts[fn] = {}, {}, {}
                for seed, (x, ref) in starts.items():
                    counter = CountingDenoiser(mix)
                    out = getattr(k, fn)(k_diffusion_model(counter), x, grid, disable=True)
                    assert counter.calls <= budget, (fn, counter.calls, budget)
                    peers[fn][seed], typical[fn][seed] = _rms(out, ref), _typical(out, ref)
                    flip_counts[fn][seed] = _flips(out, ref)
            best = {seed: min(p[seed] for p in peers.values()) for seed in starts}
            best_flips = {seed: flip_counts[min(peers, key=lambda f: peers[f][seed])][seed]
                          for seed in starts}  # fmt: skip
            best_typical = {seed: min(p[seed] for p in typical.values()) for seed in starts}
            for label in labels:
                if budget not in ONLY_AT.get(label, BUDGETS):
                    continue
                method, opts = CANDIDATES[label]
                t0 = time.perf_counter()
                info: dict[str, Any] = {}
                size = {"n_samples": 64, "pool": 256} if quick else {}
                quick_solver = {"iterations": 10} if quick else {}
                if method == "fitted":
                    solver = optimize_solver(
                        mix, budget, shape=(64,), sigma_min=smin, sigma_max=smax, dtype=F64,
                        info=info, **{**SOLVER_FIT.get(budget, {}), **size, **quick_solver},
                        **opts,
                    )  # fmt: skip
                    grid, opts = solver.sigmas, solver.options
                    info.update(opts)  # coefficients (and sigma_scales)
                else:
                    grid = optimize_sigmas(
                        mix, budget, shape=(64,), sampler=method, sigma_min=smin,
                        sigma_max=smax, dtype=F64, info=info, **size, **opts,
                    )  # fmt: skip
                fit_seconds = time.perf_counter() - t0
                karras = karras_sigmas(budget, smin, smax)
                errs, kerrs, typ, flips = {}, {}, {}, {}
                for seed, (x, ref) in starts.items():
                    counter = CountingDenoiser(mix)
                    out = sample(counter, x, grid, method, **opts)
                    errs[seed], typ[seed] = _rms(out, ref), _typical(out, ref)
                    flips[seed] = _flips(out, ref)
                    assert counter.calls <= budget
                    start = {"order": 3} if method == "fitted" else opts  # its start weights
                    kerrs[seed] = _rms(sample(mix, x, karras, method, **start), ref)
                ratios = [errs[s] / best[s] for s in starts]
                oracle = None
                if budget == 5 and label == "ipndm3" and not quick and "deis3" in labels:
                    fams = [karras_sigmas(budget, smin, smax, info["rho"]),
                            exponential_sigmas(budget, smin, smax)]  # fmt: skip
                    og = oracle_grid(mix, starts, [grid, *fams], method, **opts)
                    oracle = {"sigmas": [round(v, 5) for v in og.tolist()],
                              "ratio": {s: _rms(sample(mix, x, og, method, **opts), ref) / best[s]
                                        for s, (x, ref) in starts.items()}}  # fmt: skip
                typ_ratios = [typ[s] / best_typical[s] for s in starts]
                rows.append({
                    "problem": prob["name"], "nfe": budget, "sampler": label,
                    "sigmas": [round(v, 5) for v in grid.tolist()], "fit_seconds": fit_seconds,
                    "fit": {k2: v for k2, v in info.items() if k2 != "key"},
                    "error": errs, "error_karras": kerrs, "k_diffusion_best": best,
                    "k_diffusion": peers, "ratio_mean": statistics.fmean(ratios),
                    "ratio_min": min(ratios), "ratio_max": max(ratios),
                    "typical_error": typ, "k_diffusion_best_typical": best_typical,
                    "typical_ratio_mean": statistics.fmean(typ_ratios),
                    "typical_ratio_min": min(typ_ratios), "typical_ratio_max": max(typ_ratios),
                    "flips": flips, "k_diffusion_best_flips": best_flips, "oracle": oracle,
                })  # fmt: skip
                ratio = rows[-1]["ratio_mean"]
                print(f"  {prob['name'][:12]} nfe {budget} {label}: ratio {ratio:.3f} typical "
                      f"{rows[-1]['typical_ratio_mean']:.3f} "
                      f"({fit_seconds:.0f} s fit)", flush=True)  # fmt: skip
    return rows


def bench_digits(run_dir: Path, quick: bool, karras_rows: bool = False) -> list[dict[str, Any]]:
    """FID / class accuracy through ``polydiff evaluate``: old default vs iPNDM-3 on a grid from
    ``polydiff schedule`` vs a fitted solver from ``polydiff schedule sampler=fitted`` (and
    iPNDM-3 on the Karras grid with ``karras_rows``), and dpmpp_2m at 50 NFE."""
    from polydiff.train.run import evaluate_run
    from polydiff.train.schedule_fit import schedule_run

    n = 100 if quick else 400
    out_root = run_dir / "eval" / "fewstep"
    common = [f"evaluate.n={n}", "evaluate.overwrite=true"]
    rows: list[dict[str, Any]] = []

    def evaluate(label: str, nfe: int, overrides: list[str], **extra: Any) -> None:
        t0 = time.perf_counter()
        res = evaluate_run(run_dir, [*overrides, *common],
                           out=out_root / f"{label.split()[0]}-{nfe}.json")  # fmt: skip
        rows.append({"setting": label, "nfe": nfe, "overrides": overrides,
                     "metrics": res["metrics"], "checkpoint_step": res.get("checkpoint_step"),
                     "n": n, "seconds": time.perf_counter() - t0, **extra})  # fmt: skip
        print(f"  digits {label} {nfe}: {res['metrics']}", flush=True)
        partial = {"mixtures": [], "digits": rows, "partial": True}  # kept if interrupted
        name = "samplers_fewstep_digits" if karras_rows else "samplers_fewstep_solver_digits"
        write_results(name, partial, markdown([], rows), quick=quick)

    for nfe in (5, 50, 10, 7):
        evaluate("dpmpp_2m (old default)", nfe, ["sampler=dpmpp_2m", f"sampler.steps={nfe}"])
        if nfe == 50:
            continue
        ipndm = ["sampler=ipndm", f"sampler.steps={nfe}", "sampler.order=3"]
        if karras_rows:
            evaluate("ipndm3_karras (objective grid)", nfe, ipndm)
        t0 = time.perf_counter()
        fit = schedule_run(run_dir, [*ipndm, *DIGITS_FIT])
        evaluate("ipndm3_fitted (polydiff schedule)", nfe, [*fit["use"].split(" "),
                 "sampler.order=3"], sigmas=fit["sigmas"], fit=fit["fit"],
                 fit_seconds=time.perf_counter() - t0)  # fmt: skip
        t0 = time.perf_counter()
        solver = ["sampler=fitted", f"sampler.steps={nfe}", "sampler.order=3"]
        fit = schedule_run(run_dir, [*solver, *DIGITS_FIT, *DIGITS_SOLVER_FIT])
        evaluate("fitted_solver (polydiff schedule)", nfe, fit["use"].split(" "),
                 sigmas=fit["sigmas"], coefficients=fit["coefficients"], fit=fit["fit"],
                 fit_seconds=time.perf_counter() - t0)  # fmt: skip
    return rows


def markdown(mix_rows: list[dict], digit_rows: list[dict]) -> str:
    lines = ["## samplers: few-step sampling (fitted grids, issue #20)", ""]
    if mix_rows:
        lines += [
            "RMS error to the converged solve on exact 64-D mixtures; ratio = ours (fitted grid, "
            "fitted on its own noise) / k-diffusion's best deterministic sampler on its Karras "
            "grid, per evaluation seed (mean, min..max over seeds).", "",
            "| mixture | NFE | sampler | k-diffusion best | ours Karras | ours fitted | ratio "
            "(min..max) | typical-error ratio (min..max) | flips k-diff / ours (3 x 512) |",
            "|---|---:|---|---:|---:|---:|---|---|---|",
        ]  # fmt: skip
    for r in mix_rows:
        kb = statistics.fmean(r["k_diffusion_best"].values())
        lines.append(
            f"| {r['problem'][:28]} | {r['nfe']} | {r['sampler']} | {kb:.4f} | "
            f"{statistics.fmean(r['error_karras'].values()):.4f} | "
            f"{statistics.fmean(r['error'].values()):.4f} | **{r['ratio_mean']:.2f}** "
            f"({r['ratio_min']:.2f}..{r['ratio_max']:.2f}) | {r['typical_ratio_mean']:.2f} "
            f"({r['typical_ratio_min']:.2f}..{r['typical_ratio_max']:.2f}) | "
            f"{sum(r.get('k_diffusion_best_flips', {}).values())} / "
            f"{sum(r.get('flips', {}).values())} |"
        )
    for r in mix_rows:
        if r.get("oracle"):
            o = list(r["oracle"]["ratio"].values())
            lines.append(
                f"\nDiagnostic, {r['problem'][:28]}, {r['nfe']} NFE {r['sampler']}: a grid "
                "searched on the evaluation noise itself (not the procedure; how far any grid "
                f"takes this solver): ratio {statistics.fmean(o):.2f} "
                f"({min(o):.2f}..{max(o):.2f}), sigmas {r['oracle']['sigmas']}"
            )
    if digit_rows:
        step, n = digit_rows[0].get("checkpoint_step"), digit_rows[0].get("n")
        lines += ["", f"Trained digits (digits_cond recipe, checkpoint step {step}), CFG, {n} "
                  "samples, through polydiff evaluate; 'vs 50' = FID / FID of dpmpp_2m at 50 "
                  "NFE - 1:", "", "| setting | NFE | FID | vs 50 | class acc | precision | "
                  "recall |", "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        ref = next((r["metrics"]["fid"] for r in digit_rows if r["nfe"] == 50), None)
        for r in sorted(digit_rows, key=lambda r: r["nfe"]):
            m = r["metrics"]
            rel = f"{m['fid'] / ref - 1:+.0%}" if ref and r["nfe"] != 50 else ""
            lines.append(
                f"| {r['setting']} | {r['nfe']} | {m['fid']:.2f} | {rel} | "
                f"{m['class_accuracy']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def run(
    quick: bool = False,
    digits_run: str | None = None,
    mixtures: bool = True,
    solver_only: bool = False,
) -> dict[str, Any]:
    """Both parts (``samplers_fewstep``), or only the digits part (``samplers_fewstep_digits``);
    ``solver_only``: the mixtures for iPNDM-3 and the fitted solver (``samplers_fewstep_solver``)
    and the digits part without the Karras-grid iPNDM rows (``samplers_fewstep_solver_digits``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        labels = SOLVER_ONLY if solver_only else tuple(CANDIDATES)
        mix_rows = bench_mixtures(quick, labels) if mixtures else []
        digit_rows = (bench_digits(Path(digits_run), quick, karras_rows=not solver_only)
                      if digits_run else [])  # fmt: skip
        result = {"mixtures": mix_rows, "digits": digit_rows,
                  "seconds": time.perf_counter() - start}  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    text = markdown(mix_rows, digit_rows)
    name = "samplers_fewstep" + ("_solver" if solver_only else "")
    name += "" if mixtures else "_digits"
    write_results(name, result, text, quick=quick)
    return {**result, "markdown": text}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--digits-run", default=None)
    parser.add_argument("--digits-only", action="store_true")
    parser.add_argument("--solver", action="store_true", help="iPNDM-3 and the fitted solver")
    args = parser.parse_args()
    out = run(args.quick, args.digits_run, mixtures=not args.digits_only, solver_only=args.solver)
    print(out["markdown"])
