"""Video benchmark (issue 16) on bouncing digits, in parts run one at a time.

Every trained number comes from the one recipe path: :func:`benchmarks.common.train_recipe`
(``polydiff train experiment=video/<name> <overrides>``, run directories under
``runs/bench_video/<part>``; a finished run there is reused) and
:func:`polydiff.train.run.evaluate_run` (``polydiff evaluate run=<dir>``), i.e. the metrics of
the recipe's ``VideoHooks``. The tasks that ``evaluate`` does not cover (image-to-video by
inpainting, 3x extension) run :mod:`polydiff.video.pipeline` on those runs and are scored by
the same :class:`~polydiff.video.metrics.VideoEvaluator` the hooks use.

Parts (``--part``, several allowed, run in the order given; each merges into
``results/video.json`` / ``.md``):

- ``cond``: ``video/digits_cond`` (class-to-video, CFG 2, DPM++(2M) 20 NFE): per-frame class
  accuracy, identity consistency, physics residual vs real clips;
- ``ablation``: the same recipe at equal steps with ``model.temporal=false`` (no temporal
  attention: every frame denoised alone);
- ``i2v``: image-to-video by temporal inpainting (:func:`polydiff.core.editing.inpaint`) on the
  ``cond`` run from held-out first frames and their class: first-frame MAE, class accuracy;
- ``prediction``: ``video/prediction`` (MCVD-style masked training, one model for generation,
  prediction and interpolation): PSNR / SSIM best-of-5 vs copy-last-frame and linear
  extrapolation;
- ``extension``: 3x-length clips by autoregressive extension with reconstruction guidance
  (:func:`polydiff.core.guidance.reconstruction_guidance`) on the ``cond`` run (and by MCVD
  conditioning on the ``prediction`` run when it exists): physics of the long clips (per
  training-length window, :func:`~polydiff.video.metrics.windowed_physics_residual`, and whole)
  vs short; ``i2v_warm`` / ``extension_warm``: the same on the ``warm`` run;
- ``cost``: time and peak memory of one factorised space-time block vs full 3-D attention at
  8 / 16 / 32 frames (no training);
- ``joint``: ``data.dataset.image_fraction=0.25`` (joint image-video training, Ho et al. 2022
  sec. 3.1) at the steps and batch size of ``cond`` (equal compute), evaluated like ``cond``;
- ``warm``: a video model warm-started from a per-frame model (VDM, Ho et al. 2022; Make-A-Video,
  Singer et al. 2022; AnimateDiff, Guo et al. 2023; SVD, Blattmann et al. 2023): stage 1 trains
  ``model.temporal=false`` on independent frames (``data.dataset.image_fraction=1``, 8 digits of
  one class per row) in ``runs/bench_video/warm_frames``, stage 2 the full recipe with
  ``model.init_from=<stage 1>`` (spatial layers loaded, temporal layers fresh and the identity at
  step 0) in ``runs/bench_video/warm``; both evaluated like ``cond``; ``warm_tconv``: the same
  with ``model.temporal_conv=3`` (a residual 3-frame convolution before each temporal attention,
  Make-A-Video's pseudo-3-D convolution; zero-initialised, so step 0 is still stage 1).

    python -m benchmarks.video.run --part cond [ablation ...] [--quick]

The sizes are cut to fit one ~25-minute single-thread slot of the shared 2-core machine per
trained model (16x16 canvas, 8x8 digits, tiny network; ``warm``'s stage 2 takes ~85 minutes);
the issue's goals are reported next to what these budgets reach.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import (
    cpu_timer,
    loss_log,
    peak_rss_mb,
    results_dir,
    train_recipe,
    write_results,
)
from polydiff.nn import SpaceTimeBlock
from polydiff.nn.attention import Attention
from polydiff.train.run import evaluate_run, open_run
from polydiff.video.data import BouncingDigits
from polydiff.video.metrics import VideoEvaluator, physics_residual, windowed_physics_residual
from polydiff.video.pipeline import extend, image_to_video

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "runs" / "bench_video"
PARTS = (
    "cond",
    "ablation",
    "i2v",
    "prediction",
    "extension",
    "cost",
    "joint",
    "warm",
    "i2v_warm",
    "extension_warm",
    "warm_tconv",
    "warm_small",
)
# image-to-video and extension run on a trained class-to-video run: the part's source
TASK_SOURCE = {"i2v": "cond", "extension": "cond", "i2v_warm": "warm", "extension_warm": "warm"}

# Full sizes: 16x16 canvas, 8x8 digits, 8 frames, tiny VideoUNet, batch 16 (single thread on
# a shared 2-core machine: ~0.7 CPU s per step, measured). Quick: a smoke run of every part.
SIZE = ["data.image_size=16", "data.digit_size=8", "model.size=tiny"]
QUIET = ["trainer.progress=false", "trainer.num_threads=1", "trainer.log_every=25"]
TRAIN: dict[bool, list[str]] = {
    False: [
        "data.dataset.n=4000",
        "trainer.max_steps=1100",
        "trainer.batch_size=16",
        "trainer.lr_warmup_steps=50",
        "trainer.ckpt_every=100",
    ],
    True: [
        "data.dataset.n=64",
        "trainer.max_steps=4",
        "trainer.batch_size=4",
        "trainer.lr_warmup_steps=1",
        "trainer.ckpt_every=0",
        "trainer.ema_auto_items=4",
        # a small feature net (its own cache entry): the smoke run checks the code path only
        "+data.hooks.feature_steps=20",
        "+data.hooks.clip_steps=20",
    ],
}
EVAL: dict[bool, dict[str, list[str]]] = {
    False: {
        # the experiment's sampler, named so the cached evaluation is per sampler
        "cond": ["evaluate.n=100", "sampler=dpmpp_2m_sde", "sampler.steps=20"],
        "prediction": ["evaluate.n=200", "sampler.steps=20"],  # 20 clips x 5 x (pred, interp)
    },
    True: {"cond": ["evaluate.n=10", "sampler=dpmpp_2m_sde", "sampler.steps=3"],
           "prediction": ["evaluate.n=20", "sampler.steps=3"]},
}  # fmt: skip
TASK_N = {False: 40, True: 4}  # clips for image-to-video and extension
TASK_STEPS = {False: 20, True: 3}
# part -> (experiment, extra overrides, which evaluation)
RECIPES: dict[str, tuple[str, list[str], str]] = {
    "cond": ("video/digits_cond", [], "cond"),
    "ablation": ("video/digits_cond", ["model.temporal=false"], "cond"),
    "joint": ("video/digits_cond", ["data.dataset.image_fraction=0.25"], "cond"),
    # its own model (no equal-steps comparison): 600 steps fit the slot after the ablation
    "prediction": ("video/prediction", ["trainer.max_steps=600"], "prediction"),
}
# warm: (run name, extra overrides) per stage; stage 2 gets model.init_from=<stage 1's run>.
# Measured in the slot (metrics.jsonl, checkpoints included): stage 1 0.317 s per step (no
# temporal layers), stage 2 0.453; ~96 minutes in all. Checkpoints every 500 steps (each also
# scores the EMAs on 256 items: ~11 s, 40% overhead at every 100 steps).
WARM_FRAMES = ("warm_frames", ["model.temporal=false", "data.dataset.image_fraction=1.0",
                               "trainer.max_steps=2500", "trainer.ckpt_every=500"])  # fmt: skip
VIDEO_STEPS = ["trainer.max_steps=11000", "trainer.ckpt_every=500"]
SMALL_FRAMES = ("warm_small_frames", ["model.size=small", *WARM_FRAMES[1][:2],
                "trainer.max_steps=1000", "trainer.ckpt_every=500"])  # fmt: skip
SMALL_VIDEO = ("warm_small", ["model.size=small", "model.temporal_conv=3",
               "trainer.max_steps=1500", "trainer.ckpt_every=500"])  # fmt: skip
# the warm parts: stage 1 (shared, trained once) then their own stage 2
WARM: dict[str, tuple[tuple[str, list[str]], ...]] = {
    "warm": (WARM_FRAMES, ("warm", VIDEO_STEPS)),
    # + a residual 3-frame temporal convolution before each temporal attention (Make-A-Video)
    "warm_tconv": (WARM_FRAMES, ("warm_tconv", ["model.temporal_conv=3", *VIDEO_STEPS])),
    # the `small` network (1.4 M parameters, 1.5x the s/step of tiny side by side) + temporal conv,
    # both stages shorter (equal-step comparison with `warm_tconv` at 1000 video steps)
    "warm_small": (SMALL_FRAMES, SMALL_VIDEO),
}


def _runs(quick: bool) -> Path:
    return RUNS / "quick" if quick else RUNS


def _train_cost(run_dir: Path) -> dict[str, Any]:
    """Steps, measured seconds per step and final loss from the run's ``metrics.jsonl``."""
    rows, rate = loss_log(run_dir)
    if rate is None:
        return {"steps": rows[-1]["step"] if rows else 0}
    return {
        "steps": rows[-1]["step"],
        "wall_s_per_step": round(rate, 3),
        "final_loss": round(float(np.mean([r["loss"] for r in rows[-4:]])), 4),
    }


def _evaluate(run_dir: Path, overrides: list[str], tag: str) -> dict[str, Any]:
    """``polydiff evaluate run=<dir> <overrides>`` into ``<run>/eval/bench_<tag>[-<sampler>].json``
    (the sampler when the overrides name one); an existing file of that name (an earlier call of
    this part) is read instead."""
    sampler = next((o.split("=", 1)[1] for o in overrides if o.startswith("sampler=")), None)
    out = run_dir / "eval" / f"bench_{tag}{f'-{sampler}' if sampler else ''}.json"
    if out.is_file():
        return json.loads(out.read_text())
    return evaluate_run(run_dir, [*overrides, f"evaluate.out={out}"])


def _command(experiment: str, train: list[str], evaluate: list[str], run_dir: Path) -> str:
    return (
        f"polydiff train experiment={experiment} {' '.join(train)} run_dir={run_dir} && "
        f"polydiff evaluate run={run_dir} {' '.join(evaluate)}"
    )


def part_recipe(part: str, quick: bool) -> dict[str, Any]:
    """Train (or reuse) the part's recipe and evaluate it through the hooks."""
    experiment, extra, which = RECIPES[part]
    return _recipe(experiment, extra, which, _runs(quick) / part, quick)


def _recipe(
    experiment: str, extra: list[str], which: str, run_dir: Path, quick: bool
) -> dict[str, Any]:
    """Train (or reuse) ``experiment`` with the benchmark sizes plus ``extra`` in ``run_dir``;
    evaluate it with the ``which`` evaluation settings."""
    if quick:  # the smoke sizes of TRAIN[True] for every part
        extra = [o for o in extra if not o.startswith("trainer.")]
    keys = {o.split("=", 1)[0] for o in extra}
    train = [*(o for o in [*SIZE, *TRAIN[quick]] if o.split("=", 1)[0] not in keys), *QUIET, *extra]
    with cpu_timer() as t:
        train_recipe(experiment, train, run_dir=run_dir)
    evaluate = EVAL[quick][which]
    with cpu_timer() as e:
        result = _evaluate(run_dir, evaluate, which)
    rel = run_dir.relative_to(ROOT)
    return {  # as run from the repository root (init_from is given as an absolute path)
        "command": _command(experiment, train, evaluate, rel).replace(f"{ROOT}/", ""),
        "run": str(rel),
        "train": {**_train_cost(run_dir), "cpu_s_this_call": round(t["cpu"], 1)},
        "evaluate_cpu_s_this_call": round(e["cpu"], 1),
        "weights": result.get("weights"),
        "metrics": result["metrics"],
    }


def part_warm(part: str, quick: bool) -> dict[str, Any]:
    """Stage 1: the per-frame network on independent frames; stage 2: the video recipe
    warm-started from it (``model.init_from``). Each stage is trained (or reused) and evaluated
    like ``cond``; the part's ``metrics`` are stage 2's, its cost the sum of both."""
    stages: dict[str, Any] = {}
    init: list[str] = []
    for name, extra in WARM[part]:
        run_dir = _runs(quick) / name
        stages[name] = _recipe("video/digits_cond", [*extra, *init], "cond", run_dir, quick)
        init = [f"model.init_from={run_dir}"]
    trains = [st["train"] for st in stages.values()]
    minutes = [t["steps"] * t["wall_s_per_step"] / 60 for t in trains if "wall_s_per_step" in t]
    return {
        "command": " && ".join(st["command"] for st in stages.values()),
        "stages": stages,
        "train": {
            "steps": " + ".join(str(t["steps"]) for t in trains),
            "wall_min": round(sum(minutes), 1) if len(minutes) == len(trains) else None,
        },
        "metrics": stages[WARM[part][-1][0]]["metrics"],
    }


def _need_run(part: str, quick: bool) -> Path:
    run_dir = _runs(quick) / part
    if not (run_dir / "checkpoints").is_dir():
        raise SystemExit(
            f"benchmarks.video: {run_dir} holds no trained run; run --part {part} first"
        )
    return run_dir


def _evaluator(run: Any) -> VideoEvaluator:
    """The evaluator the run's hooks use (same held-out spec and feature net)."""
    h = run.hooks
    return VideoEvaluator(h.cache_dir, h.frames, h.size, h.digit_size,
                          feature_steps=h.feature_steps, clip_steps=h.clip_steps)  # fmt: skip


def part_i2v(quick: bool, source: str = "cond") -> dict[str, Any]:
    """Image-to-video by temporal inpainting on the ``source`` run: held-out first frames (test
    split, digits never trained on) and their class; first-frame MAE in [0, 1] pixels."""
    run_dir = _need_run(source, quick)
    steps = TASK_STEPS[quick]
    run = open_run(run_dir, [f"sampler.steps={steps}"])
    n = TASK_N[quick]
    held = run.hooks.heldout(n)
    labels = torch.as_tensor(held.labels[:, 0])
    with cpu_timer() as t:
        clips = image_to_video(
            run, held.videos[:, :, 0], method="inpaint", cond={"class": labels}, seed=1
        )
    metrics = _evaluator(run).evaluate(clips, labels)
    metrics["first_frame_mae"] = float((clips[:, :, 0] - held.videos[:, :, 0]).abs().mean() / 2)
    rel = run_dir.relative_to(ROOT)
    return {
        "source": source,
        "command": f"polydiff.video.pipeline.image_to_video(open_run('{rel}', "
        f"['sampler.steps={steps}']), <{n} held-out first frames>, method='inpaint', "
        "cond={'class': <their labels>}, seed=1)",
        "method": "inpaint (polydiff.core.editing.inpaint, DDIM eta 0 on the run's sigmas, CFG)",
        "n": n,
        "cpu_s": round(t["cpu"], 1),
        "metrics": metrics,
    }


def _extension_on(run_dir: Path, quick: bool, classes: bool) -> dict[str, Any]:
    steps = TASK_STEPS[quick]
    run = open_run(run_dir, [f"sampler.steps={steps}"])
    c, f, h, w = run.sample_shape
    n = TASK_N[quick]
    cond = {"class": torch.arange(n) % 10} if classes else None
    with cpu_timer() as t:
        long = extend(run, n, 3 * f, overlap=2, cond=cond, guidance_scale=1.0, seed=2)
    ev = _evaluator(run)
    _, frame_classes, _ = ev.predict(long)
    real_long = BouncingDigits(n, 3 * f, h, run.hooks.digit_size, 1, split="test", seed=7)
    out = {
        "frames": 3 * f,
        "overlap": 2,
        "n": n,
        "cpu_s": round(t["cpu"], 1),
        "physics_residual": _finite(np.nanmean(physics_residual(long))),
        "physics_residual_first_window": _finite(np.nanmean(physics_residual(long[:, :, :f]))),
        "physics_residual_real_3x": _finite(np.nanmean(physics_residual(real_long.videos))),
        # each training-length window scored like a short clip (the seams included)
        "physics_residual_windowed": _finite(np.nanmean(windowed_physics_residual(long, f))),
        "physics_residual_windowed_real_3x": _finite(
            np.nanmean(windowed_physics_residual(real_long.videos, f))
        ),
        "identity_consistency": float(
            (frame_classes == frame_classes[:, :1]).all(1).double().mean()
        ),
    }
    if classes:
        out["class_accuracy"] = float((frame_classes == cond["class"][:, None]).double().mean())
    rel = run_dir.relative_to(ROOT)
    out["command"] = (
        f"polydiff.video.pipeline.extend(open_run('{rel}', ['sampler.steps={steps}']), {n}, "
        f"{3 * f}, overlap=2, cond={'<class arange(n) % 10>' if classes else None}, "
        "guidance_scale=1.0, seed=2)"
    )
    return out


def part_extension(quick: bool, source: str = "cond") -> dict[str, Any]:
    """3x-length extension: on the ``source`` run by replacement + reconstruction guidance (Ho
    et al. 2022 sec. 3.1), on the ``prediction`` run (if trained) by MCVD conditioning."""
    out: dict[str, Any] = {
        "source": source,
        "reconstruction_guidance": _extension_on(_need_run(source, quick), quick, True),
    }
    pred = _runs(quick) / "prediction"
    if source == "cond" and (pred / "checkpoints").is_dir():
        out["mcvd"] = _extension_on(pred, quick, False)
    return out


def _peak_bytes(fn: Any) -> int:
    """Peak of the CPU tensor memory allocated inside ``fn()``: the torch profiler's memory
    timeline (every allocation and free, by category), summed over categories."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:  # fmt: skip
        fn()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated for CUDA; CPU has no other
        path = Path(tmp) / "memory.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    return max((sum(row) for row in sizes), default=0)


def part_cost(quick: bool, channels: int = 32, side: int = 8, batch: int = 2) -> dict[str, Any]:
    """Forward time and peak memory of one factorised space-time block (spatial attention per
    frame + temporal attention per pixel, :class:`polydiff.nn.SpaceTimeBlock`) vs one full 3-D
    self-attention over all F*H*W tokens, and the attention-logit elements each implies."""
    torch.manual_seed(0)
    block = SpaceTimeBlock(channels, num_heads=4, norm_groups=8).eval()
    full = Attention(channels, heads=4).eval()
    rows = []
    for f in (8, 16) if quick else (8, 16, 32):
        h = torch.randn(batch * f, channels, side, side)  # (B F, C, H, W)
        tokens = h.view(batch, f, channels, side * side).permute(0, 1, 3, 2)
        tokens = tokens.reshape(batch, f * side * side, channels)  # (B, F H W, C)
        fns = {"factorised": lambda h=h, f=f: block(h, f), "full_3d": lambda t=tokens: full(t)}
        row: dict[str, Any] = {"frames": f}
        with torch.no_grad():
            for name, fn in fns.items():
                fn()
                times = []
                for _ in range(2 if quick else 7):  # the fastest call: least disturbed by load
                    t0 = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t0)
                row[f"{name}_s"] = round(min(times), 5)
                row[f"{name}_peak_mb"] = round(_peak_bytes(fn) / 2**20, 2)
        n = side * side
        row["ratio_time_full_over_factorised"] = round(row["full_3d_s"] / row["factorised_s"], 2)
        row["logits_factorised"] = batch * 4 * (f * n * n + n * f * f)
        row["logits_full_3d"] = batch * 4 * (f * n) ** 2
        rows.append(row)
    return {
        "setting": f"batch {batch}, {channels} channels, {side}x{side} pixels, 4 heads, forward, "
        "1 thread, fastest of 7 calls; peak: tensor memory allocated during the call (torch "
        "profiler); full 3-D attention runs torch's CPU flash kernel, which never holds the "
        "logits",
        "rows": rows,
    }


def _finite(x: float) -> float | None:
    """Strict JSON: NaN (no finite value to average) becomes None."""
    return float(x) if np.isfinite(x) else None


def _fmt(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.3f}"


def _goals(parts: dict[str, Any]) -> dict[str, bool]:
    """Each goal of the issue whose part has been run: met or not."""
    goals: dict[str, bool] = {}
    inf = float("inf")
    for part, prefix in (("cond", ""), *((w, f"{w}_") for w in WARM)):
        if part not in parts:
            continue
        m = parts[part]["metrics"]
        goals[f"{prefix}class_accuracy>=0.95"] = m.get("class_accuracy", 0) >= 0.95
        goals[f"{prefix}identity_consistency>=0.95"] = m.get("identity_consistency", 0) >= 0.95
        goals[f"{prefix}physics<=1.5x_real"] = m.get("physics_residual", inf) <= 1.5 * m.get(
            "physics_residual_real", 0
        )
    if "cond" in parts:
        m = parts["cond"]["metrics"]
        if "ablation" in parts:
            a = parts["ablation"]["metrics"]
            goals["ablation_worse_on_physics"] = a.get("physics_residual", -inf) > m.get(
                "physics_residual", inf
            )
    for part, prefix in (("i2v", "i2v"), ("i2v_warm", "warm_i2v")):
        if part in parts:
            m = parts[part]["metrics"]
            goals[f"{prefix}_first_frame_mae<=0.02"] = m["first_frame_mae"] <= 0.02
            goals[f"{prefix}_class_accuracy>=0.95"] = m.get("class_accuracy", 0) >= 0.95
    if "prediction" in parts:
        m = parts["prediction"]["metrics"]
        psnr = m.get("predict_psnr_best_of_5", -inf)
        goals["prediction_psnr>copy_last"] = psnr > m.get("predict_copy_last_psnr", inf)
        goals["prediction_psnr>linear"] = psnr > m.get("predict_linear_psnr", inf)
    for part, prefix in (("extension", "extension"), ("extension_warm", "warm_extension")):
        if part not in parts:
            continue
        e = parts[part]["reconstruction_guidance"]
        # per training-length window (the whole-clip fit scores real 3x clips ~16x their short
        # floor: it runs out of bounces), when measured; else the whole clip
        long = e.get("physics_residual_windowed", e["physics_residual"])
        short = e["physics_residual_first_window"]
        goals[f"{prefix}_physics<=2x_short"] = (
            long is not None and short is not None and long <= 2 * short
        )
    return goals


def _markdown(res: dict[str, Any]) -> str:
    parts = res["parts"]
    lines = [
        "# video (bouncing digits, 16x16, 8x8 digits, 8 frames, tiny VideoUNet)",
        "",
        "Parts: `python -m benchmarks.video.run --part <name>`; every trained model through "
        "`polydiff train experiment=... && polydiff evaluate run=<dir>` (commands below).",
        "",
    ]
    recipe_parts = [p for p in ("cond", "ablation", "joint", *WARM) if p in parts]
    if recipe_parts:
        head = {"cond": "temporal attention", "ablation": "no temporal attention",
                "joint": "joint image-video", "warm": "warm-started",
                "warm_tconv": "warm-started + temporal conv",
                "warm_small": "warm-started small + temporal conv"}  # fmt: skip
        lines += [
            "| metric | " + " | ".join(head[p] for p in recipe_parts) + " | goal |",
            "|---|" + "---|" * len(recipe_parts) + "---|",
        ]
        for key, goal in (
            ("class_accuracy", ">= 0.95"),
            ("class_accuracy_real", "(ceiling)"),
            ("identity_consistency", ">= 0.95"),
            ("identity_consistency_real", "(ceiling)"),
            ("physics_residual", "<= 1.5 x real"),
            ("physics_residual_real", "(floor)"),
            ("physics_empty_fraction", ""),
            ("frame_fid", ""),
            ("frame_fid_real", "(floor)"),
            ("clip_fd_builtin", ""),
            ("clip_fd_builtin_real", "(floor)"),
        ):
            vals = " | ".join(_fmt(parts[p]["metrics"].get(key)) for p in recipe_parts)
            lines.append(f"| {key} | {vals} | {goal} |")
        steps = " | ".join(str(parts[p]["train"].get("steps")) for p in recipe_parts)
        lines += [f"| training steps | {steps} | |", ""]
        for p in recipe_parts:
            lines.append(f"- {p}: `{parts[p]['command']}`")
        lines.append("")
    if "warm" in parts:
        w = parts["warm"]
        s1, s2 = (w["stages"][name] for name, _ in WARM["warm"])
        m1 = s1["metrics"]
        lines += [
            f"Warm start: stage 1 (per-frame network, independent frames, {s1['train']['steps']} "
            f"steps at {s1['train'].get('wall_s_per_step')} s) alone: class accuracy "
            f"{_fmt(m1.get('class_accuracy'))}, identity {_fmt(m1.get('identity_consistency'))}, "
            f"physics {_fmt(m1.get('physics_residual'))}, frame FID {_fmt(m1.get('frame_fid'))}, "
            f"clip FD {_fmt(m1.get('clip_fd_builtin'))}; stage 2 (video recipe from it, "
            f"{s2['train']['steps']} steps at {s2['train'].get('wall_s_per_step')} s): the "
            f"warm-started column. Training wall minutes, both stages: {w['train']['wall_min']}.",
            "",
        ]
    for part in ("i2v", "i2v_warm"):
        if part not in parts:
            continue
        m = parts[part]["metrics"]
        lines += [
            f"Image-to-video by temporal inpainting on the {parts[part].get('source', 'cond')} "
            f"run ({parts[part]['n']} "
            f"held-out first frames): first-frame MAE {_fmt(m['first_frame_mae'])} (goal <= "
            f"0.02), class accuracy {_fmt(m.get('class_accuracy'))} (goal: kept), identity "
            f"consistency {_fmt(m.get('identity_consistency'))}, physics residual "
            f"{_fmt(m.get('physics_residual'))} (real {_fmt(m.get('physics_residual_real'))}).",
            f"`{parts[part]['command']}`",
            "",
        ]
    if "prediction" in parts:
        p = parts["prediction"]
        m = p["metrics"]
        lines += [
            "Prediction (2 known frames -> 6) and interpolation (2 + 2 known -> 4), MCVD "
            "masked training, best of 5 samples per held-out clip:",
            "",
            "| task | PSNR best-of-5 | copy last frame | linear extrapolation | SSIM best-of-5 "
            "| SSIM copy last | SSIM linear |",
            # baselines are defined for prediction only (n/a for interpolation)
            "|---|---|---|---|---|---|---|",
        ]
        for task in ("predict", "interpolate"):
            cells = [
                m.get(f"{task}_{name}")
                for name in ("psnr_best_of_5", "copy_last_psnr", "linear_psnr", "ssim_best_of_5",
                             "copy_last_ssim", "linear_ssim")
            ]  # fmt: skip
            lines.append(f"| {task} | " + " | ".join(_fmt(c) for c in cells) + " |")
        lines += [
            "",
            f"Steps {p['train'].get('steps')}; `{p['command']}`",
            "",
        ]
    for part in ("extension", "extension_warm"):
        if part not in parts:
            continue
        for kind in ("reconstruction_guidance", "mcvd"):
            e = parts[part].get(kind)
            if e is None:
                continue
            windowed = (
                f"per {e['frames'] // 3}-frame window {_fmt(e['physics_residual_windowed'])} "
                f"(real 3x clips {_fmt(e['physics_residual_windowed_real_3x'])}; the goal's "
                "measure), whole clip "
                if "physics_residual_windowed" in e
                else ""
            )
            lines += [
                f"3x extension on the {parts[part].get('source', 'cond')} run ({kind}, "
                f"{e['frames']} frames, {e['n']} clips): physics residual {windowed}"
                f"{_fmt(e['physics_residual'])} vs its first window "
                f"{_fmt(e['physics_residual_first_window'])} (goal <= 2x), real 3x clips "
                f"{_fmt(e['physics_residual_real_3x'])}; identity consistency over all frames "
                f"{_fmt(e['identity_consistency'])}"
                + (f", class accuracy {_fmt(e['class_accuracy'])}" if "class_accuracy" in e else "")
                + ".",
                f"`{e['command']}`",
                "",
            ]
    if "cost" in parts:
        c = parts["cost"]
        lines += [
            f"Cost ({c['setting']}):",
            "",
            "| frames | factorised s | full 3-D s | ratio | factorised peak MB | full 3-D peak MB "
            "| logits factorised | logits full |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in c["rows"]:
            lines.append(
                f"| {r['frames']} | {r['factorised_s']} | {r['full_3d_s']} | "
                f"{r['ratio_time_full_over_factorised']} | {r['factorised_peak_mb']} | "
                f"{r['full_3d_peak_mb']} | {r['logits_factorised']} | {r['logits_full_3d']} |"
            )
        lines.append("")
    goals = res.get("goals", {})
    if goals:
        lines += ["Goals:", ""]
        lines += [f"- {k}: {'met' if v else 'NOT met'}" for k, v in goals.items()]
    return "\n".join(lines) + "\n"


def run(parts: tuple[str, ...], quick: bool = False) -> dict[str, Any]:
    """Run ``parts`` one after the other; merge them into ``results/video.json`` / ``.md``."""
    torch.set_num_threads(1)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"benchmarks.video: unknown part(s) {unknown}; expected some of {PARTS}")
    previous = results_dir(quick) / "video.json"
    done: dict[str, Any] = {}
    for part in parts:
        t0 = time.perf_counter()
        if part in RECIPES:
            done[part] = part_recipe(part, quick)
        elif part in ("i2v", "i2v_warm"):
            done[part] = part_i2v(quick, TASK_SOURCE[part])
        elif part in ("extension", "extension_warm"):
            done[part] = part_extension(quick, TASK_SOURCE[part])
        elif part in WARM:
            done[part] = part_warm(part, quick)
        else:
            done[part] = part_cost(quick)
        done[part]["wall_s"] = round(time.perf_counter() - t0, 1)
        done[part]["date"] = time.strftime("%Y-%m-%d %H:%M")
        # parts of other invocations (read now: another part may have finished meanwhile)
        old = json.loads(previous.read_text()).get("parts", {}) if previous.is_file() else {}
        merged = {**old, **done}
        res = {"parts": merged, "goals": _goals(merged), "peak_rss_mb": round(peak_rss_mb(), 1)}
        write_results("video", res, _markdown(res), quick=quick)  # after every part
    return res


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", required=True, choices=PARTS)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    out = run(tuple(args.part), args.quick)
    print(json.dumps({p: out["parts"][p] for p in args.part}, indent=1, default=str))
    print(json.dumps(out["goals"], indent=1))
