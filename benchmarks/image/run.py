"""Image benchmark: quality vs training time (pixel vs latent), sampler x NFE, shapes prompts.

1. Class-conditional digits (16x16) with the same U-Net family in pixel space and in the
   latent space of a KL autoencoder (f=2, 2x8x8 latents, scale factor measured from data),
   trained in stages; after each stage class accuracy and FID (built-in feature net) of
   guided samples at 20 NFE, against cumulative training seconds (autoencoder time included).
2. Sampler x NFE (5/10/20/50) table on the trained pixel model, with guidance.
3. Goal: class-conditional digits reach >= 95% class accuracy at 20 NFE with guidance.
4. Shapes text-to-image: attribute accuracy (shape / colour / size / position read back by the
   shapes feature net) of samples for every caption, unguided vs classifier-free guidance.

Single-threaded torch (the benchmark machine is a shared 2-core box).

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
from polydiff.image.data import DigitsDataset, ShapesDataset, all_shape_specs
from polydiff.image.experiments import InMemoryDataset
from polydiff.image.metrics import ImageEvaluator
from polydiff.image.models import image_unet, num_parameters
from polydiff.image.pipeline import generate
from polydiff.train import Trainer, TrainerConfig

RESULTS = Path(__file__).resolve().parent.parent / "results"
GUIDANCE = 3.0
SAMPLERS = ("euler", "heun", "dpmpp_2m", "unipc")
SHAPES_STEPS = 2000
SHAPES_GUIDANCE = (1.0, 3.0, 5.0)


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


def shapes_text_to_image(quick: bool = False, evaluator: ImageEvaluator | None = None) -> dict:
    """Text-to-image on procedural shapes: does "a small red circle at the top left" yield one?

    Pixel U-Net at 16x16 (the shapes autoencoder's f=4 latents lose the outline of small shapes:
    its reconstructions keep only ~57% of small shapes recognisable), MiniLM caption tokens by
    cross-attention plus the pooled vector, 10% caption dropout. Samples for every one of the
    120 captions, scored by the shapes feature net's attribute heads with and without guidance.
    """
    from polydiff.image.experiments import text_encoder

    ev = evaluator if evaluator is not None else ImageEvaluator("shapes")
    enc = text_encoder("minilm", 384)
    train = ShapesDataset(n=2400, size=16, seed=0)
    captions = [s.caption for s in all_shape_specs()]  # the 120 attribute combinations
    codes = enc.encode(captions)  # one padded length for the whole data set
    row = {c: i for i, c in enumerate(captions)}
    idx = torch.tensor([row[c] for c in train.captions])
    data = InMemoryDataset(x=train.images, **{k: v[idx] for k, v in codes.items()})
    net = image_unet("tiny", channels=3, image_size=16, context_dim=384, pooled_dim=384)
    steps = 150 if quick else SHAPES_STEPS
    tr = _trainer(net, data, steps, 64, 3e-3)
    t0 = time.perf_counter()
    tr.fit()
    train_seconds = time.perf_counter() - t0
    per_caption = 1 if quick else 3
    prompts = captions * per_caption
    real = ShapesDataset(n=len(prompts), size=16, seed=40_000)
    rows = [
        {"guidance": "real 16x16 images (ceiling)", "scale": None}
        | _attr(ev, real.images, real.captions)
    ]
    den = tr.objective.denoiser(tr.sampling_model())
    for scale in SHAPES_GUIDANCE:
        t0 = time.perf_counter()
        x = generate(
            den,
            len(prompts),
            (3, 16, 16),
            sampler="dpmpp_2m",
            steps=20,
            guidance_scale=scale,
            prompts=prompts,
            text_encoder=enc,
            seed=7,
            batch_size=120,
        )
        secs = time.perf_counter() - t0
        tag = "none" if scale == 1.0 else f"CFG {scale:g}"
        rows.append(
            {"guidance": tag, "scale": scale}
            | _attr(ev, x, prompts)
            | {"sample_seconds": round(secs, 2)}
        )
        print("shapes", rows[-1], flush=True)
    return {
        "model": f"UNet-tiny {num_parameters(net) / 1e6:.2f}M on 3x16x16, MiniLM text (384-d)",
        "train_steps": steps,
        "train_seconds": round(train_seconds, 1),
        "train_images": len(train),
        "eval_samples": len(prompts),
        "rows": rows,
    }


def _attr(ev: ImageEvaluator, images: torch.Tensor, captions: list[str]) -> dict:
    acc = ev.attribute_accuracy(images, captions)
    return {f"acc_{k}": round(v, 4) for k, v in acc.items()} | {"fid": round(ev.fid(images), 3)}


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    start = time.perf_counter()
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
            actual = 2 * steps - 1 if method == "heun" else steps  # last Heun step is Euler
            row = {"sampler": method, "nfe": actual, "steps": steps}
            row |= _score(pixel_trainer, (1, 16, 16), ev, labels, method=method, steps=steps)
            table.append(row)
            print(row, flush=True)

    goal_row = next(r for r in table if r["sampler"] == "dpmpp_2m" and r["nfe"] == 20)

    # ---- shapes text-to-image: attribute accuracy, guided vs unguided
    shapes = shapes_text_to_image(quick)
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
        "shapes_text": shapes,
        "goal": {
            "target": "class-conditional digits >= 95% class accuracy at 20 NFE with guidance",
            "class_accuracy": goal_row["class_accuracy"],
            "fid": goal_row["fid"],
            "met": goal_row["class_accuracy"] >= 0.95,
        },
    }
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    result["markdown"] = markdown(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "image.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "image.md").write_text(result["markdown"])
    return result


LOW_NFE_NOTE = (
    "Heun (and less so DPM++(2M) / UniPC) at 5-9 NFE with CFG 3 is expected to fail, not a bu"
    "g: our Heun equals k-diffusion's sample_heun bit for bit on this network, and the same c"
    "ollapse happens with an exact Gaussian-mixture denoiser (tests/core/test_low_nfe.py). A "
    "Heun step is the Euler step plus (s_i/s_(i+1) - 1)/2 times the change of the guided x0 p"
    "rediction across the step; on a 3-5 step Karras grid that factor is 2-15 at high noise, "
    "and the guided prediction D_u + 3 (D_c - D_u) overshoots the class mean there, so the co"
    "rrection throws samples past the data mean. Guidance only below sigma 5 (guidance interv"
    "al) restores it: Heun 9 NFE 0.08 -> 0.90, DPM++(2M) 5 NFE 0.37 -> 0.95 (side run, same r"
    "ecipe)."
)


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
        LOW_NFE_NOTE,
    ]
    sh = r.get("shapes_text")
    if sh:
        lines += [
            "",
            "### shapes text-to-image: do the prompted shape / colour / size / position come out?",
            "",
            f"{sh['model']}, {sh['train_steps']} steps ({sh['train_seconds']} s) on "
            f"{sh['train_images']} 16x16 shapes, 10% caption dropout; DPM-Solver++(2M) 20 steps; "
            f"{sh['eval_samples']} samples covering all 120 captions. Attribute accuracy from the "
            "shapes feature net's heads (inputs resized to 32x32); FID on its features against "
            "32x32 shapes. The first row scores real 16x16 renders of the same captions: the "
            "ceiling at this resolution (small shapes are a few pixels wide).",
            "",
            "| guidance | shape | colour | size | position | all four | FID |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in sh["rows"]:
            lines.append(
                f"| {row['guidance']} | {row['acc_shape']:.3f} | {row['acc_colour']:.3f} | "
                f"{row['acc_size']:.3f} | {row['acc_position']:.3f} | {row['acc_all']:.3f} | "
                f"{row['fid']:.2f} |"
            )
    if "total_seconds" in r:
        lines += ["", f"Total benchmark time {r['total_seconds']:.0f} s (1 torch thread)."]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    out = run(quick=args.quick)
    print(out["markdown"])
