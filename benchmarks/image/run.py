"""Image benchmark: quality vs training time (pixel vs latent), sampler x NFE on digits.

1. Class-conditional digits (16x16) with the same U-Net family in pixel space and in the
   latent space of a KL autoencoder (f=2, 2x8x8 latents, scale factor measured from data),
   trained in stages; after each stage class accuracy and FID (built-in feature net) of
   guided samples at 20 NFE, against cumulative training seconds (autoencoder time included).
2. Sampler x NFE (5/10/20/50) table on the trained pixel model, with guidance.
3. Goal: class-conditional digits reach >= 95% class accuracy at 20 NFE with guidance.

Writes ``benchmarks/results/image.json`` and ``image.md``.

    python -m benchmarks.image.run [--quick]
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch

from polydiff.core.objective import DiffusionObjective
from polydiff.core.schedules import EDMSchedule
from polydiff.image.autoencoder import AutoencoderConfig, reconstruction_error, train_autoencoder
from polydiff.image.data import DigitsDataset
from polydiff.image.experiments import InMemoryDataset
from polydiff.image.metrics import ImageEvaluator
from polydiff.image.models import image_unet, num_parameters
from polydiff.image.pipeline import generate
from polydiff.train import Trainer, TrainerConfig

RESULTS = Path(__file__).resolve().parent.parent / "results"
GUIDANCE = 3.0
SAMPLERS = ("euler", "heun", "dpmpp_2m", "unipc")


def _trainer(net, data, steps: int, batch_size: int, lr: float, seed: int = 0) -> Trainer:
    objective = DiffusionObjective(EDMSchedule(sigma_data=0.5), "edm", "edm", cond_drop_prob=0.1)
    cfg = TrainerConfig(
        max_steps=steps,
        batch_size=batch_size,
        lr_schedule="constant",
        lr_warmup_steps=min(50, steps // 10),
        ema_decays=(0.99,),
        log_every=max(1, steps // 5),
        progress=False,
        cpu=True,
        seed=seed,
    )
    opt = functools.partial(torch.optim.AdamW, lr=lr, weight_decay=0.0)
    return Trainer(net, objective, data, opt, cfg)


def _score(trainer, shape, ev, labels, decode=None, method="dpmpp_2m", steps=20) -> dict:
    den = trainer.objective.denoiser(trainer.sampling_model())
    t0 = time.perf_counter()
    x = generate(
        den,
        len(labels),
        shape,
        sampler=method,
        steps=steps,
        guidance_scale=GUIDANCE,
        classes=labels,
        seed=123,
        batch_size=250,
        autoencoder=decode,
    )
    secs = time.perf_counter() - t0
    return {
        "class_accuracy": round(ev.class_accuracy(x, labels), 4),
        "fid": round(ev.fid(x), 3),
        "sample_seconds": round(secs, 2),
    }


def _steps_for_nfe(method: str, nfe: int) -> int | None:
    """Sampler steps giving ``nfe`` denoiser evaluations (Heun: 2 per step, last one Euler)."""
    if method == "heun":
        return (nfe + 1) // 2 if nfe >= 3 else None
    return nfe


def run(quick: bool = False) -> dict:
    torch.manual_seed(0)
    stages = (60, 120) if quick else (300, 600, 900, 1500)
    size = "tiny"  # what a shared 2-core CPU allows; "small" for a real machine
    n_per_class = 10 if quick else 30
    batch = 64
    labels = torch.arange(10).repeat_interleave(n_per_class)
    ev = ImageEvaluator("digits")
    digits = DigitsDataset(size=16, split="train")
    data = InMemoryDataset(x=digits.images, **{"class": digits.labels})

    # ---- pixel space
    net = image_unet(size, channels=1, image_size=16, num_classes=10)
    tr = _trainer(net, data, stages[-1], batch, 3e-3)
    pixel, elapsed = [], 0.0
    for stop in stages:
        t0 = time.perf_counter()
        tr.fit(until=stop)
        elapsed += time.perf_counter() - t0
        pixel.append(
            {"steps": stop, "train_seconds": round(elapsed, 1)}
            | _score(tr, (1, 16, 16), ev, labels)
        )
        print("pixel", pixel[-1], flush=True)
    pixel_trainer = tr

    # ---- latent space (KL autoencoder f=2, 2x8x8 latents)
    t0 = time.perf_counter()
    ae_cfg = AutoencoderConfig(in_channels=1, z_channels=2, base_channels=16, channel_mult=(1, 2))
    ae = train_autoencoder(digits.images, ae_cfg, steps=60 if quick else 600, batch_size=64)
    ae_seconds = time.perf_counter() - t0
    test = DigitsDataset(size=16, split="test").images
    ae_info = {
        "train_seconds": round(ae_seconds, 1),
        "recon_mse_test": round(reconstruction_error(ae, test), 5),
        "scale_factor": round(float(ae.scale_factor), 4),
        "latent_shape": [2, 8, 8],
        "recon_class_accuracy": round(
            ev.class_accuracy(ae.to_image(ae.to_latent(test)), DigitsDataset(16, "test").labels), 4
        ),
    }
    lat = InMemoryDataset(x=ae.to_latent(digits.images), **{"class": digits.labels})
    lnet = image_unet(size, channels=2, image_size=8, num_classes=10)
    tr = _trainer(lnet, lat, stages[-1], batch, 3e-3)
    latent, elapsed = [], ae_seconds
    for stop in stages:
        t0 = time.perf_counter()
        tr.fit(until=stop)
        elapsed += time.perf_counter() - t0
        latent.append(
            {"steps": stop, "train_seconds": round(elapsed, 1)}
            | _score(tr, (2, 8, 8), ev, labels, ae)
        )
        print("latent", latent[-1], flush=True)

    # ---- sampler x NFE on the trained pixel model
    nfes = (5, 10, 20) if quick else (5, 10, 20, 50)
    table = []
    for method in SAMPLERS:
        for nfe in nfes:
            steps = _steps_for_nfe(method, nfe)
            if steps is None:
                continue
            row = {"sampler": method, "nfe": nfe, "steps": steps}
            row |= _score(pixel_trainer, (1, 16, 16), ev, labels, method=method, steps=steps)
            table.append(row)
            print(row, flush=True)

    goal_row = next(r for r in table if r["sampler"] == "dpmpp_2m" and r["nfe"] == 20)
    result = {
        "quick": quick,
        "model": {
            "pixel": f"UNet-{size} {num_parameters(net) / 1e6:.2f}M on 1x16x16",
            "latent": f"UNet-{size} {num_parameters(lnet) / 1e6:.2f}M on 2x8x8 latents",
        },
        "guidance_scale": GUIDANCE,
        "eval_samples": len(labels),
        "reference_fid_real_vs_real": round(ev.fid(digits.images[:500]), 3),
        "pixel": pixel,
        "latent": latent,
        "autoencoder": ae_info,
        "sampler_nfe": table,
        "goal": {
            "target": "class-conditional digits >= 95% class accuracy at 20 NFE with guidance",
            "class_accuracy": goal_row["class_accuracy"],
            "fid": goal_row["fid"],
            "met": goal_row["class_accuracy"] >= 0.95,
        },
    }
    result["markdown"] = markdown(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "image.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "image.md").write_text(result["markdown"])
    return result


def markdown(r: dict) -> str:
    lines = [
        "## image: class-conditional digits (16x16), pixel vs latent, sampler x NFE",
        "",
        *(
            ["**Quick smoke run** (tiny models, a few hundred steps): not converged.", ""]
            if r.get("quick")
            else []
        ),
        f"Models: {r['model']['pixel']}; {r['model']['latent']}. EDM objective, 10% label "
        f"dropout, CFG scale {r['guidance_scale']}, DPM-Solver++(2M) 20 NFE unless stated; "
        f"{r['eval_samples']} samples, class accuracy and FID from the built-in digits feature "
        f"net (real-vs-real FID floor {r['reference_fid_real_vs_real']}).",
        "",
        "| space | steps | train s | class acc | FID |",
        "|---|---:|---:|---:|---:|",
    ]
    for space in ("pixel", "latent"):
        for row in r[space]:
            lines.append(
                f"| {space} | {row['steps']} | {row['train_seconds']} | "
                f"{row['class_accuracy']:.3f} | {row['fid']:.2f} |"
            )
    a = r["autoencoder"]
    lines += [
        "",
        f"Autoencoder: {a['train_seconds']} s (included in latent train s), test recon MSE "
        f"{a['recon_mse_test']}, scale factor {a['scale_factor']}, class accuracy of "
        f"reconstructions {a['recon_class_accuracy']}.",
        "",
        "| sampler | NFE | class acc | FID | sample s |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in r["sampler_nfe"]:
        lines.append(
            f"| {row['sampler']} | {row['nfe']} | {row['class_accuracy']:.3f} | {row['fid']:.2f} | "
            f"{row['sample_seconds']} |"
        )
    g = r["goal"]
    lines += [
        "",
        f"Goal ({g['target']}): class accuracy {g['class_accuracy']:.3f}, FID {g['fid']:.2f} -> "
        f"{'met' if g['met'] else 'NOT met'}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    out = run(quick=args.quick)
    print(out["markdown"])
