"""Video benchmark (issue 16): bouncing digits class-to-video with / without temporal attention,
image-to-video by temporal inpainting, 3x-length extension, and the cost of factorised vs full
3-D attention.

Every trained number comes from the recipe path: ``train_recipe("video/digits_cond", overrides)``
then :func:`polydiff.train.run.evaluate_run`, i.e.::

    polydiff train experiment=video/digits_cond <OVERRIDES> && polydiff evaluate run=<dir>

(``OVERRIDES`` are written into the results). Image-to-video and extension run
:mod:`polydiff.video.pipeline` on the same trained run. The recipe sizes are cut to fit the
shared 2-core machine (16x16 canvas, 8x8 digits, tiny network, few steps): the goals of the
issue are stated next to what these budgets reach.

    python -m benchmarks.video.run [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import cpu_timer, peak_rss_mb, train_recipe, write_results
from polydiff.nn import SpaceTimeBlock
from polydiff.nn.attention import Attention
from polydiff.train.run import evaluate_run, open_run
from polydiff.video.data import BouncingDigits
from polydiff.video.metrics import VideoEvaluator, physics_residual
from polydiff.video.pipeline import extend, image_to_video

EXPERIMENT = "video/digits_cond"


def recipe_overrides(quick: bool) -> list[str]:
    steps = 10 if quick else 150
    return [
        "data.image_size=16",
        "data.digit_size=8",
        "data.dataset.n=2000",
        "model.size=tiny",
        f"trainer.max_steps={steps}",
        "trainer.batch_size=16",
        "trainer.ckpt_every=0",
        "trainer.log_every=50",
        "trainer.progress=false",
        "trainer.lr_warmup_steps=20",
        "trainer.num_threads=1",
    ]


def eval_overrides(quick: bool) -> list[str]:
    return [f"evaluate.n={10 if quick else 80}", "sampler.steps=20"]


def _train_and_evaluate(tag: str, extra: list[str], quick: bool, root: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    overrides = [*recipe_overrides(quick), *extra]
    with cpu_timer() as t:
        run = train_recipe(EXPERIMENT, overrides, run_dir=root / tag)
    with cpu_timer() as e:
        result = evaluate_run(run, eval_overrides(quick))
    return {
        "command": f"polydiff train experiment={EXPERIMENT} {' '.join(overrides)} && "
        f"polydiff evaluate run=<dir> {' '.join(eval_overrides(quick))}",
        "train_cpu_s": round(t["cpu"], 1),
        "evaluate_cpu_s": round(e["cpu"], 1),
        "metrics": result["metrics"],
        "run": str(run),
    }


def _tasks_on_run(run_dir: Path, quick: bool) -> dict[str, Any]:
    """Image-to-video by temporal inpainting and 3x extension on the trained class model."""
    run = open_run(run_dir, ["sampler.steps=20"])
    c, f, h, w = run.sample_shape
    n = 4 if quick else 20
    ev = VideoEvaluator(None, f, h, 8)
    held = BouncingDigits(n, f, h, 8, 1, split="test", seed=4242)
    labels = torch.as_tensor(held.labels[:, 0])
    clips = image_to_video(
        run, held.videos[:, :, 0], method="inpaint", cond={"class": labels}, seed=1
    )
    i2v = ev.evaluate(clips, labels)
    i2v["first_frame_mae"] = float((clips[:, :, 0] - held.videos[:, :, 0]).abs().mean() / 2)
    long = extend(run, n, 3 * f, overlap=2, cond={"class": torch.arange(n) % 10},
                  guidance_scale=1.0, seed=2)  # fmt: skip
    short = physics_residual(long[:, :, :f])
    real_long = physics_residual(BouncingDigits(n, 3 * f, h, 8, 1, split="test", seed=7).videos)
    full = physics_residual(long)
    return {
        "image_to_video_inpaint": i2v,
        "extension_3x": {
            "frames": 3 * f,
            "physics_residual": _finite(np.nanmean(full)),
            "physics_residual_first_window": _finite(np.nanmean(short)),
            "physics_residual_real_3x": _finite(np.nanmean(real_long)),
        },
    }


def attention_cost(frames_list=(8, 16, 32), channels: int = 32, side: int = 8) -> list[dict]:
    """Forward time of one factorised space-time block vs one full 3-D self-attention over all
    F*H*W tokens, and the size of their attention logits (elements, computed)."""
    torch.manual_seed(0)
    block = SpaceTimeBlock(channels, num_heads=4, norm_groups=8).eval()
    full = Attention(channels, heads=4).eval()
    out = []
    for f in frames_list:
        h = torch.randn(2 * f, channels, side, side)
        tokens = h.view(2, f, channels, side * side).permute(0, 1, 3, 2).reshape(2, -1, channels)
        times = {}
        with torch.no_grad():
            for name, fn in (
                ("factorised", lambda h=h, f=f: block(h, f)),
                ("full_3d", lambda tokens=tokens: full(tokens)),
            ):
                fn()
                t0 = time.perf_counter()
                for _ in range(3):
                    fn()
                times[name] = (time.perf_counter() - t0) / 3
        n = side * side
        out.append({
            "frames": f,
            "factorised_s": round(times["factorised"], 4),
            "full_3d_s": round(times["full_3d"], 4),
            "ratio_full_over_factorised": round(times["full_3d"] / times["factorised"], 2),
            "logits_factorised": 2 * 4 * (f * n * n + n * f * f),
            "logits_full_3d": 2 * 4 * (f * n) ** 2,
        })  # fmt: skip
    return out


def _finite(x: float) -> float | None:
    """Strict JSON: NaN (no finite value to average) becomes None."""
    return float(x) if np.isfinite(x) else None


def _fmt(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.3f}"


def _markdown(res: dict) -> str:
    t, a = res["temporal"]["metrics"], res["no_temporal"]["metrics"]
    rows = ["| metric | temporal attention | no temporal attention (ablation) | goal |",
            "|---|---|---|---|"]  # fmt: skip
    for key, goal in (
        ("class_accuracy", ">= 0.95"),
        ("identity_consistency", ">= 0.95"),
        ("physics_residual", "<= 1.5 x real"),
        ("physics_residual_real", "(floor)"),
        ("frame_fid", ""),
    ):
        rows.append(f"| {key} | {_fmt(t.get(key))} | {_fmt(a.get(key))} | {goal} |")
    i2v, ext = res["tasks"]["image_to_video_inpaint"], res["tasks"]["extension_3x"]
    lines = [
        "# video (bouncing digits, 16x16, 8 frames, tiny VideoUNet)",
        "",
        f"Command: `{res['temporal']['command']}` (ablation adds `model.temporal=false`).",
        "",
        *rows,
        "",
        f"Image-to-video (temporal inpainting): first-frame MAE {_fmt(i2v['first_frame_mae'])} "
        f"(goal <= 0.02), class accuracy {_fmt(i2v.get('class_accuracy'))}.",
        f"3x extension ({ext['frames']} frames): physics residual {_fmt(ext['physics_residual'])} "
        f"vs first window {_fmt(ext['physics_residual_first_window'])} (goal <= 2x), real 3x "
        f"clips {_fmt(ext['physics_residual_real_3x'])}.",
        "",
        "| frames | factorised s | full 3-D s | ratio | logits factorised | logits full |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["attention_cost"]:
        lines.append(
            f"| {r['frames']} | {r['factorised_s']} | {r['full_3d_s']} | "
            f"{r['ratio_full_over_factorised']} | {r['logits_factorised']} | "
            f"{r['logits_full_3d']} |"
        )
    lines += ["", "Goals and whether they are met: see `goals` in video.json."]
    return "\n".join(lines) + "\n"


def _goals(res: dict) -> dict[str, bool]:
    t, a = res["temporal"]["metrics"], res["no_temporal"]["metrics"]
    ext = res["tasks"]["extension_3x"]
    inf = float("inf")
    ext_long, ext_short = ext["physics_residual"], ext["physics_residual_first_window"]
    return {
        "class_accuracy>=0.95": t.get("class_accuracy", 0) >= 0.95,
        "identity_consistency>=0.95": t.get("identity_consistency", 0) >= 0.95,
        "physics<=1.5x_real": t.get("physics_residual", inf) <= 1.5 * t["physics_residual_real"],
        "ablation_worse_on_physics": a.get("physics_residual", -inf)
        > t.get("physics_residual", inf),
        "i2v_first_frame_mae<=0.02": res["tasks"]["image_to_video_inpaint"]["first_frame_mae"]
        <= 0.02,
        "extension_physics<=2x_short": ext_long is not None
        and ext_short is not None
        and ext_long <= 2 * ext_short,
    }


def run(quick: bool = False) -> dict:
    """Train the two recipes, evaluate them, run the tasks and the cost table; write results."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    # finished runs there are reused (train_recipe resumes), so a re-run only redoes what failed
    root = Path("runs") / "bench" / ("video-quick" if quick else "video")
    parts = {"temporal": [], "no_temporal": ["model.temporal=false"]}
    # the two recipes train side by side in 1-thread processes (the machine is shared)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        futures = {
            tag: pool.submit(_train_and_evaluate, tag, extra, quick, root)
            for tag, extra in parts.items()
        }
        res: dict[str, Any] = {tag: f.result() for tag, f in futures.items()}
    res["tasks"] = _tasks_on_run(Path(res["temporal"]["run"]), quick)
    res["attention_cost"] = attention_cost((8, 16) if quick else (8, 16, 32))
    res["goals"] = _goals(res)
    res["peak_rss_mb"] = round(peak_rss_mb(), 1)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    write_results("video", res, _markdown(res), quick=quick)
    return res


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(args.quick), indent=1, default=str))
