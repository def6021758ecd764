"""Networks benchmark: our U-Net and DiT vs diffusers' ``UNet2DModel`` / ``DiTTransformer2DModel``.

Matched configurations (same channels, blocks, attention levels and heads; parameter counts are
reported), forward + backward throughput at 32x32, batch 32, measured side by side in one
process with interleaved rounds. The machine this runs on is shared, so the primary number is the
median *CPU time* per step (``time.process_time``), robust to other processes; the best wall time
is reported too. Torch runs single-threaded by default (``POLYDIFF_BENCH_THREADS``): OpenMP
barriers on an oversubscribed machine make multi-threaded wall times meaningless. Peak memory of
one forward + backward is measured in a fresh subprocess per network (Linux VmHWM reset through
``/proc/self/clear_refs`` after a warm-up step, minus the resident size before the step).
Variants: each library's default (fp32 eager), both NCHW / both channels-last (U-Net),
bf16 autocast (AMX where the CPU has it) and, in
full mode with ``POLYDIFF_BENCH_COMPILE=1``, ``torch.compile``.

    python -m benchmarks.nn.run [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import write_results

ROOT = Path(__file__).resolve().parents[2]

# ----------------------------------------------------------------------------------------------
# Matched configurations
# ----------------------------------------------------------------------------------------------


def unet_config(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(channels=32, mult=(1, 2), blocks=1, attn=(1,), head_dim=16, size=16, batch=4)
    return dict(channels=64, mult=(1, 2, 2), blocks=2, attn=(1, 2), head_dim=32, size=32, batch=32)


def dit_config(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(hidden=64, depth=2, heads=2, patch=2, in_ch=4, size=16, batch=4, classes=10)
    # DiT-S/2 (Peebles & Xie 2023) on a 32x32x4 latent
    return dict(hidden=384, depth=12, heads=6, patch=2, in_ch=4, size=32, batch=32, classes=1000)


def build_unet(side: str, quick: bool, channels_last: bool | None = None) -> torch.nn.Module:
    """``channels_last=None``: each library's default layout (ours NHWC, diffusers NCHW)."""
    c = unet_config(quick)
    if side == "ours":
        from polydiff.nn import UNet

        return UNet(
            dims=2, in_channels=3, model_channels=c["channels"], channel_mult=c["mult"],
            num_res_blocks=c["blocks"], attention_levels=c["attn"], head_dim=c["head_dim"],
            channels_last=channels_last,
        )  # fmt: skip
    from diffusers import UNet2DModel

    levels = len(c["mult"])
    down = tuple("AttnDownBlock2D" if i in c["attn"] else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if i in c["attn"] else "UpBlock2D" for i in reversed(range(levels)))
    return UNet2DModel(
        sample_size=c["size"], in_channels=3, out_channels=3,
        block_out_channels=tuple(c["channels"] * m for m in c["mult"]),
        layers_per_block=c["blocks"], down_block_types=down, up_block_types=up,
        resnet_time_scale_shift="scale_shift", attention_head_dim=c["head_dim"],
        norm_num_groups=32, add_attention=True,
    )  # fmt: skip


def build_dit(side: str, quick: bool) -> torch.nn.Module:
    c = dit_config(quick)
    if side == "ours":
        from polydiff.nn import DiT

        return DiT(
            c["size"], c["patch"], c["in_ch"], hidden=c["hidden"], depth=c["depth"],
            heads=c["heads"], out_channels=2 * c["in_ch"], num_classes=c["classes"],
        )  # fmt: skip
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(
        num_attention_heads=c["heads"], attention_head_dim=c["hidden"] // c["heads"],
        in_channels=c["in_ch"], out_channels=2 * c["in_ch"], num_layers=c["depth"],
        sample_size=c["size"], patch_size=c["patch"], num_embeds_ada_norm=c["classes"],
    )  # fmt: skip


def inputs(model: str, quick: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    c = unet_config(quick) if model == "unet" else dit_config(quick)
    ch = 3 if model == "unet" else c["in_ch"]
    b = c["batch"]
    return {
        "x": torch.randn(b, ch, c["size"], c["size"], generator=g),
        "t": torch.randint(0, 1000, (b,), generator=g).float(),
        "y": torch.randint(0, c.get("classes", 1), (b,), generator=g),
    }


def forward_fn(model: str, side: str, net: torch.nn.Module) -> Callable[..., torch.Tensor]:
    if model == "unet":
        if side == "ours":
            return lambda x, t, y: net(x, t)
        return lambda x, t, y: net(x, t).sample
    if side == "ours":
        return lambda x, t, y: net(x, t, {"class": y})
    return lambda x, t, y: net(x, timestep=t, class_labels=y).sample


BUILD = {"unet": build_unet, "dit": build_dit}

# ----------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------


def prepare(model: str, side: str, variant: str, quick: bool) -> Callable[[], tuple[float, float]]:
    """Build one (model, side, variant); return a closure running one forward + backward and
    returning its (wall, cpu) seconds."""
    torch.manual_seed(0)
    layout = {"nchw": False, "channels_last": True}.get(variant)
    net = (
        build_unet(side, quick, layout) if model == "unet" else BUILD[model](side, quick)
    ).train()
    data = inputs(model, quick)
    if layout is not None and side == "theirs":
        fmt = torch.channels_last if layout else torch.contiguous_format
        net = net.to(memory_format=fmt)
        data["x"] = data["x"].contiguous(memory_format=fmt)
    fn = forward_fn(model, side, net)
    if variant == "compile":
        fn = torch.compile(fn)
    autocast = variant == "bf16"

    def step() -> tuple[float, float]:
        net.zero_grad(set_to_none=True)
        wall, cpu = time.perf_counter(), time.process_time()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with ctx:
            out = fn(data["x"], data["t"], data["y"])
        out.float().pow(2).mean().backward()
        return time.perf_counter() - wall, time.process_time() - cpu

    return step


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def peak_step_memory(step: Callable[[], Any]) -> dict[str, float]:
    """Peak RSS (MB) of one already-warmed-up ``step`` above the resident size before it."""
    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        exact = True
    except OSError:
        exact = False
    base = _status_kb("VmRSS")
    step()
    return {"peak_mb": max(_status_kb("VmHWM") - base, 0) / 1024, "exact": exact}


def memory_child(spec: dict[str, Any]) -> dict[str, float]:
    """In a fresh process: :func:`peak_step_memory` of one (model, side, variant)."""
    import diffusers  # noqa: F401  (both sides pay the same imports)

    import polydiff.nn  # noqa: F401

    step = prepare(spec["model"], spec["side"], spec["variant"], spec["quick"])
    step()  # warm-up: lazy library loading, oneDNN primitive caches
    return peak_step_memory(step)


def measure_memory(model: str, side: str, variant: str, quick: bool) -> dict[str, float]:
    spec = json.dumps({"model": model, "side": side, "variant": variant, "quick": quick})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.nn.run", "--memory-child", spec],
        capture_output=True, text=True, cwd=ROOT, env=env, check=False,
    )  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"memory child {spec} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_side_by_side(
    model: str, variant: str, quick: bool, rounds: int
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, float]] | None]:
    """Interleave ours/theirs forward+backward steps (after one warm-up each): wall and CPU s.

    In quick mode the peak memory is measured here too (in-process), else None.
    """
    steps = {side: prepare(model, side, variant, quick) for side in ("ours", "theirs")}
    for step in steps.values():
        step()  # warm-up (and compilation)
    times: dict[str, dict[str, list[float]]] = {s: {"wall": [], "cpu": []} for s in steps}
    for r in range(rounds):
        order = ("ours", "theirs") if r % 2 == 0 else ("theirs", "ours")
        for side in order:
            wall, cpu = steps[side]()
            times[side]["wall"].append(wall)
            times[side]["cpu"].append(cpu)
    memory = {side: peak_step_memory(step) for side, step in steps.items()} if quick else None
    return times, memory


# Kernels that do the same arithmetic on the same shapes in both implementations (matched
# architectures): convolutions, matrix products and fused attention, forward and backward.
SHARED_KERNELS = (
    "aten::mkldnn_convolution", "aten::convolution_backward", "aten::mm", "aten::addmm",
    "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
)  # fmt: skip


def speedup_ceiling(model: str, quick: bool) -> dict[str, float]:
    """Amdahl bound on ``throughput_ratio``: diffusers' step time over the time its step spends in
    :data:`SHARED_KERNELS` (profiled, default variant). Even an implementation whose every other
    op (norms, activations, copies, adds) cost nothing could not be faster than this."""
    from torch.profiler import ProfilerActivity, profile

    step = prepare(model, "theirs", "default", quick)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    shared = sum(e.self_cpu_time_total for e in events if e.key in SHARED_KERNELS)
    return {"shared_share": shared / total, "ceiling": total / max(shared, 1e-9)}


def param_counts(model: str, quick: bool) -> dict[str, float]:
    ours, theirs = BUILD[model]("ours", quick), BUILD[model]("theirs", quick)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    out = {"ours": n_ours, "theirs": n_theirs, "ratio": n_ours / n_theirs}
    if model == "dit":
        # diffusers' DiT gives every block its own timestep+label embedder; ours has one.
        # The backbones (everything but the condition embedders) are identical in size.
        emb_ours = sum(p.numel() for p in ours.embed.parameters())
        emb_theirs = sum(p.numel() for n, p in theirs.named_parameters() if ".norm1.emb." in n)
        out.update(
            ours_backbone=n_ours - emb_ours,
            theirs_backbone=n_theirs - emb_theirs,
            backbone_ratio=(n_ours - emb_ours) / (n_theirs - emb_theirs),
        )
    return out


# ----------------------------------------------------------------------------------------------
# Runner
# ----------------------------------------------------------------------------------------------


def variants_for(model: str, quick: bool) -> list[str]:
    names = ["default", "bf16"]
    if model == "unet":
        names[1:1] = ["nchw", "channels_last"]
    if quick:
        names = names[:2]
    if not quick and os.environ.get("POLYDIFF_BENCH_COMPILE") == "1":
        names.append("compile")
    return names


def run(quick: bool = False) -> dict[str, Any]:
    """Run the networks benchmark; writes ``benchmarks/results/nn.json`` and ``nn.md``."""
    rounds = 5
    threads = int(os.environ.get("POLYDIFF_BENCH_THREADS", "1"))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(quick, rounds, threads)
    finally:
        torch.set_num_threads(previous_threads)


def _run(quick: bool, rounds: int, threads: int) -> dict[str, Any]:
    result: dict[str, Any] = {
        "quick": quick,
        "threads": threads,
        "amx_bf16": "amx_bf16" in Path("/proc/cpuinfo").read_text(),
        "configs": {"unet": unet_config(quick), "dit": dit_config(quick)},
    }
    for model in ("unet", "dit"):
        batch = result["configs"][model]["batch"]
        entry: dict[str, Any] = {"params": param_counts(model, quick), "variants": {}}
        entry["ceiling"] = speedup_ceiling(model, quick)
        for variant in variants_for(model, quick):
            print(f"[nn] {model} {variant} ...", flush=True)
            try:
                times, mem = time_side_by_side(model, variant, quick, rounds)
            except Exception as err:  # e.g. no compiler for torch.compile
                entry["variants"][variant] = {"error": f"{type(err).__name__}: {err}"[:300]}
                continue
            cpu = {side: statistics.median(v["cpu"]) for side, v in times.items()}
            wall = {side: min(v["wall"]) for side, v in times.items()}
            if mem is None:  # full mode: a fresh process per network
                mem = {s: measure_memory(model, s, variant, quick) for s in ("ours", "theirs")}
            entry["variants"][variant] = {
                "ours_cpu_s": cpu["ours"],
                "theirs_cpu_s": cpu["theirs"],
                "ours_samples_per_cpu_s": batch / cpu["ours"],
                "theirs_samples_per_cpu_s": batch / cpu["theirs"],
                "throughput_ratio": cpu["theirs"] / cpu["ours"],  # > 1: ours faster
                "ours_best_wall_s": wall["ours"],
                "theirs_best_wall_s": wall["theirs"],
                "wall_ratio": wall["theirs"] / wall["ours"],
                "ours_peak_mb": mem["ours"]["peak_mb"],
                "theirs_peak_mb": mem["theirs"]["peak_mb"],
                "memory_ratio": mem["ours"]["peak_mb"] / max(mem["theirs"]["peak_mb"], 1e-9),
                "memory_exact": mem["ours"]["exact"] and mem["theirs"]["exact"],
                "times": times,
            }
        result[model] = entry
    result["markdown"] = markdown(result)
    write_results("nn", result, result["markdown"], quick=quick)
    return result


def markdown(result: dict[str, Any]) -> str:
    peers = {"unet": "diffusers UNet2DModel", "dit": "diffusers DiTTransformer2DModel"}
    lines = [
        "| network | vs | variant | params ours / theirs | samples per CPU-s ours / theirs "
        "| throughput ratio | best wall ratio | peak MB ours / theirs | memory ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model in ("unet", "dit"):
        entry = result[model]
        p = entry["params"]
        params = f"{p['ours'] / 1e6:.2f}M / {p['theirs'] / 1e6:.2f}M"
        if "backbone_ratio" in p:
            params += f" (backbone {p['ours_backbone'] / 1e6:.2f}M / "
            params += f"{p['theirs_backbone'] / 1e6:.2f}M)"
        for variant, v in entry["variants"].items():
            head = f"| {model} | {peers[model]} | {variant} | {params} "
            if "error" in v:
                lines.append(head + f"| error: {v['error']} | | | | |")
                continue
            lines.append(
                head
                + f"| {v['ours_samples_per_cpu_s']:.2f} / {v['theirs_samples_per_cpu_s']:.2f} "
                + f"| **{v['throughput_ratio']:.2f}x** | {v['wall_ratio']:.2f}x "
                + f"| {v['ours_peak_mb']:.0f} / {v['theirs_peak_mb']:.0f} "
                + f"| {v['memory_ratio']:.2f} |"
            )
    u, d = result["configs"]["unet"], result["configs"]["dit"]
    lines += ["", "| network | diffusers' step time in shared kernels | ceiling on the ratio |"]
    lines += ["|---|---|---|"]
    for model in ("unet", "dit"):
        c = result[model].get("ceiling")
        if c:
            lines.append(f"| {model} | {c['shared_share']:.0%} | {c['ceiling']:.2f}x |")
    lines += [
        "",
        "Shared kernels = convolutions, matrix products and fused attention (forward and "
        "backward), which do identical arithmetic on identical shapes in both matched "
        "implementations; the ceiling is diffusers' step time over that part (Amdahl): no eager "
        "fp32 implementation of the same architecture can beat it without faster kernels.",
        "",
        f"Forward + backward, batch {u['batch']} at {u['size']}x{u['size']}x3 (U-Net) and batch "
        f"{d['batch']} at {d['size']}x{d['size']}x{d['in_ch']} (DiT), {result['threads']} "
        "thread(s). Throughput ratio = theirs / ours median CPU seconds per step (> 1: ours "
        "faster); best wall ratio likewise from the fastest wall-clock step. Peak MB = peak RSS of "
        "one step above the resident size (fresh process per network; in-process in quick "
        f"mode). AMX-bf16: {result['amx_bf16']}. Variants: default = each library as built "
        "(our U-Net keeps NHWC by default, diffusers NCHW); nchw / channels_last = both sides "
        "in that layout; bf16 = default under CPU bf16 autocast; compile = torch.compile.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return 0
    result = run(quick=args.quick)
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
