"""Image editing and adaptation benchmark (issue 8): every capability shown by a number.

Trains tiny models on the built-in data (CPU, minutes) and measures, with the image package's
feature classifier (``polydiff.image.metrics``, digits):

- inpainting: known pixels kept exactly; rate at which the filled image is classified as the
  class of the (hidden) original, replacement vs RePaint vs unguided samples pasted in the hole;
- SDEdit and inversion edits: target-class accuracy after editing, reconstruction error;
- cascade: FID / class accuracy at 32x32 of base 16x16 + SR vs a direct 32x32 model, and the SR
  output's low-res consistency (downsampled vs input), without and with the per-step
  null-space projection onto the low-res input (``superres.consistent_denoiser``);
- ControlNet: IoU of the generated shape vs the outline's filled region (goal >= 0.8), base
  weights unchanged after training;
- adaptation (new concept = digit 9, unseen by the base model, 5 images): rate at which samples
  for the concept token are recognised as 9, and old-class accuracy, before/after LoRA,
  DreamBooth with and without prior preservation, and textual inversion (initialised from the
  nearest existing class);
- IP-Adapter: samples with the null class and a held-out reference image, classified as the
  reference's class, vs without the image prompt.

Every model is a config recipe trained by ``polydiff.train.run.train``
(``configs/experiment/image/editing_{base,sr,shapes,controlnet,ip_adapter}.yaml``; the direct 32x32
baseline is ``editing_base`` at 32x32; the ControlNet and the IP-Adapter load the trained base run
named by ``model.base_run``), with the budget's sizes as overrides recorded in the results; the
adaptation variants are ``polydiff adapt`` jobs (``configs/adapt/`` + overrides,
``polydiff.image.adaptation.fit_adapt_job``) on the base run. Runs live under
``runs/bench/image_editing/<recipe>-<hash of the overrides>`` and a finished one is reused, so
every section shares one trained base. Its class accuracy with CFG is reported first.

    python -m benchmarks.run --only image_editing [--quick]
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import results_dir, train_recipe, write_results
from polydiff.core.guidance import classifier_free_guidance
from polydiff.core.objective import DiffusionObjective
from polydiff.core.samplers import sample
from polydiff.core.schedules import EDMSchedule
from polydiff.image import adaptation, controlnet, editing, superres
from polydiff.image.data import DigitsDataset
from polydiff.train.config import json_safe
from polydiff.train.run import OpenedRun, open_run

ROOT = Path(__file__).resolve().parents[2]
# every recipe this process trained or reused: run directory name -> experiment and overrides
TRAINED: dict[str, dict[str, Any]] = {}
OLD = list(range(9))  # the base models see digits 0-8; 9 is the new concept
TOKEN = 9


@dataclass
class Budget:
    feature_steps: int = 800  # the shipped digits feature net (real test accuracy 0.994)
    base_steps: int = 1200  # shared class-conditional 16x16 digits model (0-8)
    sr_steps: int = 1500
    sr_crop: int = 16  # SR trained on 16x16 crops of 32x32 images (4x cheaper steps)
    direct_steps: int = 600
    direct_batch: int = 32  # 32x32 steps cost 4x: about half the cascade's training compute
    shapes_steps: int = 600  # ControlNet's base (shapes, unconditional)
    control_steps: int = 3000
    control_width: int = 16
    control_batch: int = 32
    adapt_steps: int = 300
    ip_steps: int = 500  # IP-Adapter (base frozen)
    batch: int = 64
    n_eval: int = 144  # 16 per old class
    steps: int = 12  # sampler steps (Heun: 2 * steps - 1 evaluations)
    width: int = 32
    cfg_scale: float = 3.0


QUICK = Budget(
    feature_steps=800, base_steps=400, sr_steps=300, direct_steps=300, shapes_steps=600,
    control_steps=400, adapt_steps=100, ip_steps=200, batch=32, n_eval=64, steps=10, width=16,
)  # fmt: skip


def _objective(drop: float = 0.1) -> DiffusionObjective:
    """The recipes' EDM objective, for measurements (held-out losses) outside training."""
    return DiffusionObjective(EDMSchedule(), "edm", cond_drop_prob=drop)


def _lock_owner_alive(lock: Path) -> bool:
    """True while the process whose PID the lock file holds runs (a killed trainer's stale lock
    is ignored instead of blocking every other section)."""
    try:
        os.kill(int(lock.read_text().strip() or "0"), 0)
    except (ValueError, ProcessLookupError, FileNotFoundError):
        return False
    except PermissionError:
        return True
    return True


def runs_root(quick: bool) -> Path:
    """Where the benchmark's runs live (``runs/`` is git-ignored)."""
    return ROOT / "runs" / "bench" / ("image_editing-quick" if quick else "image_editing")


def _warmup(steps: int) -> str:
    return f"trainer.lr_warmup_steps={min(100, steps // 10)}"


def train_run(experiment: str, overrides: list[str], quick: bool) -> tuple[Path, float]:
    """``polydiff train experiment=<experiment> <overrides>`` into a run directory named by
    them; a finished run is reused (as is its training time), so every section of a benchmark
    run shares one trained model and a re-run does not retrain what it depends on. Returns
    (run directory, training seconds)."""
    key = hashlib.sha256(json.dumps([experiment, *overrides]).encode()).hexdigest()[:10]
    run_dir = runs_root(quick) / f"{experiment.rsplit('/', 1)[-1]}-{key}"
    record = run_dir.parent / f"{run_dir.name}.seconds"
    lock = run_dir.parent / f"{run_dir.name}.training"  # another process is training it
    while lock.is_file() and not record.is_file() and _lock_owner_alive(lock):
        time.sleep(10)
    if record.is_file():
        TRAINED[run_dir.name] = {"experiment": experiment, "overrides": overrides}
        return run_dir, float(record.read_text())
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(str(os.getpid()))
    try:
        start = time.perf_counter()
        train_recipe(experiment, overrides, run_dir=run_dir)
        seconds = time.perf_counter() - start
    finally:
        lock.unlink(missing_ok=True)
    record.write_text(f"{seconds:.1f}")
    TRAINED[run_dir.name] = {"experiment": experiment, "overrides": overrides}
    print(f"[image_editing] trained {run_dir.name} in {seconds:.0f} s", flush=True)
    return run_dir, seconds


def base_recipe(b: Budget, size: int = 16) -> tuple[str, list[str]]:
    """The shared class-conditional digits base (classes 0-8), or at 32x32 the cascade's direct
    baseline (same recipe, ``direct_steps`` at ``direct_batch``)."""
    steps, batch = (b.base_steps, b.batch) if size == 16 else (b.direct_steps, b.direct_batch)
    return "image/editing_base", [
        f"data.image_size={size}", f"trainer.max_steps={steps}", f"trainer.batch_size={batch}",
        _warmup(steps), f"++model.model_channels={b.width}",
    ]  # fmt: skip


def sr_recipe(b: Budget) -> tuple[str, list[str]]:
    """The 16 -> 32 SR model (class-unconditional), trained on aligned crops."""
    return "image/editing_sr", [
        f"trainer.max_steps={b.sr_steps}", f"trainer.batch_size={b.batch}", _warmup(b.sr_steps),
        f"model.model_channels={b.width}", f"objective.crop={b.sr_crop}",
    ]  # fmt: skip


def shapes_recipe(b: Budget) -> tuple[str, list[str]]:
    return "image/editing_shapes", [
        f"trainer.max_steps={b.shapes_steps}", f"trainer.batch_size={b.control_batch}",
        _warmup(b.shapes_steps), f"model.model_channels={b.control_width}",
    ]  # fmt: skip


def _on_base(
    experiment: str, base_run: Path, *, steps: int, batch: int, width: int
) -> tuple[str, list[str]]:
    """A model trained on top of a frozen trained run (``model.base_run``)."""
    return experiment, [
        f"model.base_run={base_run}", f"trainer.max_steps={steps}",
        f"trainer.batch_size={batch}", _warmup(steps), f"++model.base.model_channels={width}",
    ]  # fmt: skip


def controlnet_recipe(b: Budget, shapes_run: Path) -> tuple[str, list[str]]:
    return _on_base(
        "image/editing_controlnet", shapes_run, steps=b.control_steps, batch=b.control_batch,
        width=b.control_width,
    )  # fmt: skip


def ip_adapter_recipe(b: Budget, base_run: Path) -> tuple[str, list[str]]:
    return _on_base(
        "image/editing_ip_adapter", base_run, steps=b.ip_steps, batch=b.batch, width=b.width
    )


def adapt_overrides(b: Budget) -> dict[str, list[str]]:
    """``polydiff adapt`` settings of each adaptation variant (``configs/adapt/`` + overrides):
    5 training images of the concept, LoRA / DreamBooth with and without prior preservation,
    textual inversion initialised from the nearest class."""
    common = [
        f"adapt.steps={b.adapt_steps}", f"adapt.batch_size={min(b.batch, 16)}", "adapt.split=train",
        f"adapt.sample_steps={b.steps}", f"adapt.guidance_scale={b.cfg_scale}",
    ]  # fmt: skip
    return {
        "lora": ["adapt=lora", "adapt.prior_weight=0", *common],
        "lora_prior": ["adapt=lora", *common],
        "textual_inversion": ["adapt=textual_inversion", "adapt.lr=3e-2", *common],
        "dreambooth_no_prior": [
            "adapt=dreambooth",
            "adapt.prior_weight=0",
            "adapt.lr=5e-4",
            *common,
        ],
        "dreambooth_prior": ["adapt=dreambooth", "adapt.lr=5e-4", *common],
    }


def opened(experiment: str, overrides: list[str], quick: bool) -> tuple[OpenedRun, float]:
    """Train (or reuse) the recipe and open it with its EMA weights (``sample.ema``)."""
    run_dir, seconds = train_run(experiment, overrides, quick)
    run = open_run(run_dir)
    run.model.eval().requires_grad_(False)
    return run, seconds


def _sigmas(steps: int) -> torch.Tensor:
    return EDMSchedule().sigmas_for(steps).float()


@torch.no_grad()
def _generate(denoiser, shape, cond, steps: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = len(next(iter(cond.values()))) if cond else shape[0]
    sig = _sigmas(steps)
    x = torch.randn((n, *shape[-3:]), generator=g) * sig[0]
    return sample(denoiser, x, sig, "heun", cond=cond, generator=g).clamp(-1, 1)


def _null(n: int) -> dict[str, torch.Tensor]:
    return {"class": torch.zeros(n, dtype=torch.long), "null_mask": torch.ones(n, dtype=torch.bool)}


def _labels(n: int) -> torch.Tensor:
    return torch.as_tensor(OLD).repeat(-(-n // len(OLD)))[:n]


# ------------------------------------------------------------------------------ sections


def section_inpainting(base, evaluator, b: Budget) -> dict[str, Any]:
    test = DigitsDataset(size=16, split="test", classes=OLD)
    x, y = test.images[: b.n_eval], test.labels[: b.n_eval]
    n = len(x)
    D = _objective().denoiser(base)
    known = editing.box_mask(16, top=8, left=0, height=8, width=16)  # bottom half unknown
    sig = _sigmas(b.steps)
    out: dict[str, Any] = {"n": n, "mask": "bottom half unknown", "cond": "null (unconditional)"}
    out["original_acc"] = evaluator.class_accuracy(x, y)
    for name, kw in {
        "replacement": {"method": "replacement"},
        "repaint": {"method": "repaint", "jump_length": 2, "resample": 3},
    }.items():
        t0 = time.perf_counter()
        filled = editing.inpaint(
            D, x, known, sig, cond=_null(n), generator=torch.Generator().manual_seed(0), **kw
        )
        k = known.expand_as(x)
        out[name] = {
            "consistent_rate": evaluator.class_accuracy(filled, y),
            "known_max_abs_diff": float((filled[k] - x[k]).abs().max()),
            "seconds": time.perf_counter() - t0,
        }
    free = _generate(D, x.shape, _null(n), b.steps, seed=1)
    pasted = torch.where(known, x, free)
    out["unguided_pasted_rate"] = evaluator.class_accuracy(pasted, y)
    out["unguided_sample_rate"] = evaluator.class_accuracy(free, y)
    return out


def section_edits(base, evaluator, b: Budget) -> dict[str, Any]:
    test = DigitsDataset(size=16, split="test", classes=OLD)
    x, y = test.images[: b.n_eval], test.labels[: b.n_eval]
    target = (y + 1) % len(OLD)
    D = classifier_free_guidance(_objective().denoiser(base), b.cfg_scale)
    sig = _sigmas(b.steps)
    out: dict[str, Any] = {
        "n": len(x),
        "edit": "class y -> (y + 1) mod 9",
        "cfg_scale": b.cfg_scale,
    }
    for strength in (0.4, 0.7):
        edited = editing.img2img(
            D, x, sig, strength, cond={"class": target}, generator=torch.Generator().manual_seed(0)
        )
        out[f"sdedit_{strength}"] = {
            "target_acc": evaluator.class_accuracy(edited, target),
            "source_acc": evaluator.class_accuracy(edited, y),
            "mean_abs_change": float((edited - x).abs().mean()),
        }
    inv = editing.invert(
        D, x, sig, cond={"class": y}, method="ddpm", generator=torch.Generator().manual_seed(0)
    )
    back = editing.regenerate(D, inv, cond={"class": y})
    edited = editing.regenerate(D, inv, cond={"class": target}).clamp(-1, 1)
    out["ddpm_inversion"] = {
        "reconstruction_max_abs": float((back - x).abs().max()),
        "target_acc": evaluator.class_accuracy(edited, target),
        "mean_abs_change": float((edited - x).abs().mean()),
    }
    return out


def section_superres(base, evaluator, b: Budget, quick: bool) -> dict[str, Any]:
    train32 = DigitsDataset(size=32, split="train", classes=OLD)
    test32 = DigitsDataset(size=32, split="test", classes=OLD)
    out: dict[str, Any] = {"sr_crop": b.sr_crop, "aug_sigma_train_max": 0.4}
    # SR model 16 -> 32 with conditioning augmentation (unconditional on the class)
    sr_run, t_sr = opened(*sr_recipe(b), quick)
    D_sr = sr_run.objective.denoiser(sr_run.model)
    # low-res consistency on real inputs, without and with the per-step projection
    real = test32.images[: b.n_eval]
    low = superres.downsample(real, 16)
    for tag, consistency in (("sr_on_real_lowres", False), ("sr_on_real_lowres_projected", True)):
        up = superres.super_resolve(
            D_sr, low, 32, _sigmas(b.steps), generator=torch.Generator().manual_seed(0),
            consistency=consistency,
        ).clamp(-1, 1)  # fmt: skip
        err = (up - real).pow(2).mean()
        out[tag] = {
            **superres.lowres_consistency(up, low),
            "psnr_vs_true_32": float(10 * torch.log10(4.0 / err)),
            "fid": evaluator.fid(up),
        }
    bilinear = superres.upsample(low, 32)
    out["bilinear_on_real_lowres"] = {
        **superres.lowres_consistency(bilinear, low),
        "psnr_vs_true_32": float(10 * torch.log10(4.0 / (bilinear - real).pow(2).mean())),
        "fid": evaluator.fid(bilinear),
    }
    out["tolerance_mae"] = 0.05
    # cascade vs direct 32x32 model
    direct_run, t_direct = opened(*base_recipe(b, 32), quick)
    direct = direct_run.model
    labels = _labels(b.n_eval)
    cfg_base = classifier_free_guidance(_objective().denoiser(base), b.cfg_scale)
    cfg_direct = classifier_free_guidance(_objective().denoiser(direct), b.cfg_scale)
    for tag, consistency in (("cascade_32", False), ("cascade_32_projected", True)):
        high, low_s = superres.cascade_sample(
            cfg_base, D_sr, len(labels), base_shape=(1, 16, 16), size=32,
            base_sigmas=_sigmas(b.steps), sr_sigmas=_sigmas(b.steps),
            aug_sigma=0.1, cond={"class": labels}, generator=torch.Generator().manual_seed(3),
            consistency=consistency,
        )  # fmt: skip
        high = high.clamp(-1, 1)
        out[tag] = {
            "fid": evaluator.fid(high),
            "class_acc": evaluator.class_accuracy(high, labels),
            "lowres_consistency": superres.lowres_consistency(high, low_s),
        }
    bilinear = superres.upsample(low_s, 32)
    out["base16_bilinear_32"] = {
        "fid": evaluator.fid(bilinear),
        "class_acc": evaluator.class_accuracy(bilinear, labels),
    }
    direct_samples = _generate(cfg_direct, (1, 32, 32), {"class": labels}, b.steps, seed=3)
    out["direct_32"] = {
        "fid": evaluator.fid(direct_samples),
        "class_acc": evaluator.class_accuracy(direct_samples, labels),
    }
    out["real_train_32_fid"] = evaluator.fid(train32.images[: len(labels)])  # same n: the floor
    out["train_seconds"] = {"sr": t_sr, "direct": t_direct}
    out["n"] = len(labels)
    out["cfg_scale"] = b.cfg_scale
    return out


def section_controlnet(b: Budget, quick: bool) -> dict[str, Any]:
    shapes, t_base = opened(*shapes_recipe(b), quick)
    cn_run, t_cn = opened(*controlnet_recipe(b, shapes.run_dir), quick)
    base, cn, obj = shapes.model, cn_run.model, shapes.objective
    trained = base.state_dict()
    unchanged = all(torch.equal(v, trained[k]) for k, v in cn.base.state_dict().items())
    test = controlnet.OutlineFillDataset(n=b.n_eval, size=16, seed=123)
    cond = {"control": test.control}
    samples = _generate(obj.denoiser(cn), test.images.shape, cond, b.steps, seed=0)
    free = _generate(obj.denoiser(base), test.images.shape, None, b.steps, seed=0)
    iou = controlnet.mask_iou(controlnet.shape_mask(samples), test.fill_mask)
    iou_free = controlnet.mask_iou(controlnet.shape_mask(free), test.fill_mask)
    return {
        "n": len(iou),
        "iou_mean": float(iou.mean()),
        "iou_median": float(iou.median()),
        "frac_iou_ge_0.8": float((iou >= 0.8).float().mean()),
        "base_iou_mean (no control)": float(iou_free.mean()),
        "goal": 0.8,
        "base_weights_unchanged": unchanged,
        "train_seconds": {"base": t_base, "controlnet": t_cn},
    }


def section_adaptation(base, evaluator, b: Budget, base_dir: Path) -> dict[str, Any]:
    obj = _objective(0.0)  # the held-out loss with the condition always given
    old = _labels(b.n_eval)
    token = torch.full((b.n_eval,), TOKEN)
    held = DigitsDataset(size=16, split="test", classes=[TOKEN]).images[:32]
    held_sigma = torch.logspace(-1.5, 1.0, len(held), dtype=torch.float64)
    held_noise = torch.randn(held.shape, generator=torch.Generator().manual_seed(11))

    def measure(model: nn.Module) -> dict[str, float]:
        D = classifier_free_guidance(_objective().denoiser(model), b.cfg_scale)
        new = _generate(D, (1, 16, 16), {"class": token}, b.steps, seed=5)
        prior = _generate(D, (1, 16, 16), {"class": old}, b.steps, seed=6)
        with torch.no_grad():  # denoising loss of held-out 9s under the token, fixed draws
            loss = obj.per_sample_loss(
                model, held, {"class": torch.full((len(held),), TOKEN)}, sigma=held_sigma,
                noise=held_noise,
            )  # fmt: skip
        return {
            "concept_rate": evaluator.class_accuracy(new, token),
            "old_class_acc": evaluator.class_accuracy(prior, old),
            "heldout_concept_loss": float(loss.mean()),
        }

    out: dict[str, Any] = {
        "concept": "digit 9 (unseen in training), 5 training-split images",
        "n": b.n_eval,
    }
    out["before"] = measure(base)
    for name, overrides in adapt_overrides(b).items():  # `polydiff adapt run=<base> ...`
        t0 = time.perf_counter()
        job = adaptation.fit_adapt_job(base_dir, overrides)
        out[name] = {**measure(job.model.eval()), "seconds": time.perf_counter() - t0}
        out[name]["adapt_overrides"] = overrides
        if "init_from" in job.info:  # textual inversion's start
            out[name]["init_from"] = job.info["init_from"]
    return out


def section_ip_adapter(base_dir: Path, evaluator, b: Budget, quick: bool) -> dict[str, Any]:
    """Image prompts: an IP-Adapter on the frozen base, trained with the null class and a
    reference = another training image of the same class; samples with the null class and a
    held-out reference image should be classified as the reference's class."""
    train16 = DigitsDataset(size=16, split="train", classes=OLD)
    test16 = DigitsDataset(size=16, split="test", classes=OLD)
    null = 10  # the class table's null row: the class path carries nothing
    ip_run, seconds = opened(*ip_adapter_recipe(b, base_dir), quick)
    trained = ip_run.model
    n = min(b.n_eval, len(test16.labels))
    refs, labels = test16.images[:n], test16.labels[:n]
    nul = torch.full((n,), null)
    out: dict[str, Any] = {"n": n, "train_seconds": seconds, "cfg_scale": b.cfg_scale}
    plain = _objective().denoiser(trained)
    D = classifier_free_guidance(plain, b.cfg_scale)
    x = _generate(D, (1, 16, 16), {"class": nul, "image": refs}, b.steps, seed=7)
    out["image_prompt_rate"] = evaluator.class_accuracy(x, labels)
    x1 = _generate(plain, (1, 16, 16), {"class": nul, "image": refs}, b.steps, seed=7)
    out["image_prompt_rate_no_cfg"] = evaluator.class_accuracy(x1, labels)
    free = _generate(plain, (1, 16, 16), {"class": nul}, b.steps, seed=7)
    out["no_prompt_rate"] = evaluator.class_accuracy(free, labels)
    out["mean_abs_diff_to_reference"] = float((x - refs).abs().mean())  # not a copy
    out["nearest_train_abs_diff"] = float(
        torch.cdist(x.flatten(1), train16.images.flatten(1)).min(1).values.mean()
    )
    return out


# ------------------------------------------------------------------------------ runner


def _markdown(res: dict[str, Any]) -> str:
    s = res["sections"]
    rows = ["| capability | metric | value |", "|---|---|---|"]

    def add(cap: str, metric: str, value: Any) -> None:
        v = f"{value:.3f}" if isinstance(value, float) else str(value)
        rows.append(f"| {cap} | {metric} | {v} |")

    if "base16_quality" in res:
        q = res["base16_quality"]
        add("base 16x16 digits (0-8)", f"class acc, CFG {q['cfg_scale']:g}", q["class_acc_cfg"])
        add("base 16x16 digits (0-8)", "FID", q["fid"])
    if "inpainting" in s and "error" not in s["inpainting"]:
        p = s["inpainting"]
        for m in ("replacement", "repaint"):
            add(f"inpaint ({m})", "filled classified as original class", p[m]["consistent_rate"])
            add(f"inpaint ({m})", "known pixels max abs diff", p[m]["known_max_abs_diff"])
        add("inpaint (unguided pasted)", "classified as original class", p["unguided_pasted_rate"])
        add("real test digits", "classifier accuracy", p["original_acc"])
    if "edits" in s and "error" not in s["edits"]:
        p = s["edits"]
        for k in ("sdedit_0.4", "sdedit_0.7"):
            add(k, "target class acc", p[k]["target_acc"])
        add("ddpm inversion edit", "target class acc", p["ddpm_inversion"]["target_acc"])
        add(
            "ddpm inversion",
            "reconstruction max abs",
            p["ddpm_inversion"]["reconstruction_max_abs"],
        )
    if "superres" in s and "error" not in s["superres"]:
        p = s["superres"]
        for k in ("cascade_32", "cascade_32_projected", "direct_32", "base16_bilinear_32"):
            if k in p:
                add(k, "FID (digits feature net)", p[k]["fid"])
                add(k, "class acc", p[k]["class_acc"])
            if "lowres_consistency" in p.get(k, {}):
                add(k, "downsampled MAE vs its 16x16 sample", p[k]["lowres_consistency"]["mae"])
        for k, name in (
            ("sr_on_real_lowres", "SR on real 16x16"),
            ("sr_on_real_lowres_projected", "SR + projection on real 16x16"),
            ("bilinear_on_real_lowres", "bilinear on real 16x16"),
        ):
            if k in p:
                add(name, "downsampled MAE (tol 0.05)", p[k]["mae"])
                if "psnr_vs_true_32" in p[k]:
                    add(name, "PSNR vs true 32x32 (dB)", p[k]["psnr_vs_true_32"])
                    add(name, "FID", p[k]["fid"])
        add("real train 32x32 (same n)", "FID", p["real_train_32_fid"])
    if "controlnet" in s and "error" not in s["controlnet"]:
        p = s["controlnet"]
        add("ControlNet", "IoU mean (goal 0.8)", p["iou_mean"])
        add("ControlNet", "share IoU >= 0.8", p["frac_iou_ge_0.8"])
        add("base, no control", "IoU mean", p["base_iou_mean (no control)"])
        add("ControlNet", "base weights unchanged", p["base_weights_unchanged"])
    if "adaptation" in s and "error" not in s["adaptation"]:
        p = s["adaptation"]
        for k in (
            "before", "lora", "lora_prior", "textual_inversion", "dreambooth_no_prior",
            "dreambooth_prior",
        ):  # fmt: skip
            if k in p:
                add(f"adapt: {k}", "concept recognised as 9", p[k]["concept_rate"])
                add(f"adapt: {k}", "old-class acc", p[k]["old_class_acc"])
                if "heldout_concept_loss" in p[k]:
                    add(f"adapt: {k}", "held-out 9s denoising loss", p[k]["heldout_concept_loss"])
    if "ip_adapter" in s and "error" not in s["ip_adapter"]:
        p = s["ip_adapter"]
        add("IP-Adapter (null class + image prompt)", "classified as the reference's class",
            p["image_prompt_rate"])  # fmt: skip
        add("IP-Adapter, no CFG", "classified as the reference's class",
            p["image_prompt_rate_no_cfg"])  # fmt: skip
        add("no prompt (null class)", "classified as the reference's class", p["no_prompt_rate"])
    for name, recipe in sorted(res.get("recipes", {}).items()):
        add("recipe", name, f"`polydiff train experiment={recipe['experiment']} "
            f"{' '.join(recipe['overrides'])}`")  # fmt: skip
    if res.get("rerun_sections"):
        add("run", "sections re-run alone (same budget and cached models)",
            ", ".join(res["rerun_sections"]))  # fmt: skip
    for name, sec in s.items():
        if "note" in sec and not name.endswith("_first_run"):
            add(name, "note", sec["note"])
        if "error" in sec:
            add(name, "error", sec["error"].splitlines()[-1][:80])
    return "\n".join(rows) + "\n"


def _write(res: dict[str, Any]) -> str:
    md = _markdown(res)
    write_results("image_editing", json_safe(res), md, quick=bool(res.get("quick")))
    return md


SECTIONS = ("inpainting", "edits", "adaptation", "controlnet", "ip_adapter", "superres")
# process groups for workers > 1 (each group shares one process; the cached models are shared)
GROUPS = (("inpainting", "edits"), ("adaptation",), ("controlnet", "ip_adapter"), ("superres",))


def run_sections(
    b: Budget, names: list[str], quality: bool = True, log: Any = None, quick: bool = False
) -> dict[str, Any]:
    """Run the named sections in this process; returns ``{"sections": ..., extras}`` (the base's
    training seconds and, with ``quality``, its class accuracy / FID with CFG)."""
    import traceback

    from polydiff.image.metrics import ImageEvaluator

    torch.manual_seed(0)
    torch.set_num_threads(1)  # the box is shared
    res: dict[str, Any] = {"sections": {}}
    built: dict[str, Any] = {}

    def evaluator() -> ImageEvaluator:  # built on first use (the ControlNet section needs none)
        if "evaluator" not in built:
            built["evaluator"] = ImageEvaluator(
                "digits", feature_steps=b.feature_steps,
                reference=DigitsDataset(size=32, split="test", classes=OLD).images,
            )  # fmt: skip
        return built["evaluator"]

    def base() -> nn.Module:  # class-conditional digits 0-8 at 16x16, shared by 4 sections
        if "base" not in built:
            run, res["base16_train_seconds"] = opened(*base_recipe(b), quick)
            built["base"], built["base_dir"] = run.model, run.run_dir
            res["base16_run"] = {"experiment": base_recipe(b)[0], "overrides": base_recipe(b)[1]}
            if quality:
                D = classifier_free_guidance(_objective().denoiser(built["base"]), b.cfg_scale)
                labels = _labels(b.n_eval)
                x = _generate(D, (1, 16, 16), {"class": labels}, b.steps, seed=0)
                res["base16_quality"] = {
                    "class_acc_cfg": evaluator().class_accuracy(x, labels),
                    "fid": evaluator().fid(x), "cfg_scale": b.cfg_scale, "n": len(labels),
                }  # fmt: skip
        return built["base"]

    def base_dir() -> Path:
        base()
        return built["base_dir"]

    sections = {
        "inpainting": lambda: section_inpainting(base(), evaluator(), b),
        "edits": lambda: section_edits(base(), evaluator(), b),
        "adaptation": lambda: section_adaptation(base(), evaluator(), b, base_dir()),
        "controlnet": lambda: section_controlnet(b, quick),
        "ip_adapter": lambda: section_ip_adapter(base_dir(), evaluator(), b, quick),
        "superres": lambda: section_superres(base(), evaluator(), b, quick),
    }
    for name in names:
        start = time.perf_counter()
        try:
            res["sections"][name] = sections[name]()
        except Exception:  # one broken section must not hide the others
            res["sections"][name] = {"error": traceback.format_exc()}
        res["sections"][name]["section_seconds"] = time.perf_counter() - start
        res["recipes"] = {**res.get("recipes", {}), **TRAINED}
        print(f"[image_editing] {name}: {json.dumps(res['sections'][name], default=str)[:400]}",
              flush=True)  # fmt: skip
        if log is not None:
            log(res)
    return res


def _worker(budget: dict[str, Any], names: list[str], quality: bool, quick: bool) -> dict[str, Any]:
    return run_sections(Budget(**budget), names, quality, quick=quick)


def run(
    quick: bool = False,
    only: list[str] | None = None,
    budget: Budget | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Run every section (or ``only`` some) and write ``benchmarks/results/image_editing.*``.

    ``workers`` (default: env ``IMAGE_EDITING_WORKERS`` or 1) > 1 runs the section groups
    :data:`GROUPS` in that many processes (single-threaded each), the models shared through the
    cache; the numbers do not depend on it.
    """
    import os

    b = budget or (QUICK if quick else Budget())
    workers = int(workers or os.environ.get("IMAGE_EDITING_WORKERS", "1"))
    names = [n for n in SECTIONS if not only or n in only]
    res: dict[str, Any] = {"quick": quick, "budget": asdict(b), "sections": {}}
    previous = results_dir(quick) / "image_editing.json"
    if only and previous.is_file():  # re-running some sections keeps the others' numbers
        old = json.loads(previous.read_text())
        if old.get("budget") == res["budget"]:
            res = {**old, "sections": {k: v for k, v in old["sections"].items() if k not in only}}
            res["rerun_sections"] = sorted(set(old.get("rerun_sections", [])) | set(only))
    res["workers"] = workers
    t0 = time.perf_counter()

    def merge(part: dict[str, Any]) -> None:
        res["sections"].update(part["sections"])
        res["recipes"] = {**res.get("recipes", {}), **part.get("recipes", {})}
        res.update({k: v for k, v in part.items() if k not in ("sections", "recipes")})
        _write(res)

    if workers <= 1:
        merge(run_sections(b, names, log=lambda part: merge({**part}), quick=quick))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        groups = [[n for n in g if n in names] for g in GROUPS]
        groups = [g for g in groups if g]
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(groups)), mp_context=ctx) as pool:
            futures = [
                pool.submit(_worker, asdict(b), g, quality=(i == 0), quick=quick)
                for i, g in enumerate(groups)
            ]
            for fut in as_completed(futures):
                merge(fut.result())
    res["seconds"] = time.perf_counter() - t0
    res["markdown"] = _write(res)
    return res


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated sections")
    args = parser.parse_args()
    out = run(args.quick, [s for s in args.only.split(",") if s] or None)
    print(out["markdown"])
