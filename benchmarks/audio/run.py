"""Audio benchmark: vocoders vs Griffin-Lim, class- and text-conditional mel diffusion, DiffWave.

Every number comes from the recipe path: ``polydiff train experiment=audio/<name>`` (through
:func:`benchmarks.common.train_recipe`) then ``polydiff evaluate run=<dir> <overrides>``
(:func:`polydiff.train.run.evaluate_run`); the overrides of each row are stored in the results.

Parts (``python -m benchmarks.audio.run --part NAME`` runs one and writes a part file;
``--collect`` merges them into ``results/audio.json`` / ``audio.md``; :func:`run` does all):

- ``vocoder``: Vocos-style vocoder vs Griffin-Lim (32 iterations) on held-out real mels:
  MR-STFT (auraloss), LSD, MCD, pitch accuracy, real-time factor;
- ``vocoder_gan``: the recipe ``audio/vocoder_gan`` (phase-locked head on the mel's least-squares
  inverse) scored the same way; ``vocoder_gan_direct`` / ``_if`` / ``_noprior``: the same recipe
  with Vocos' direct-phase head, GANSynth's integrated-IF head, the locked head without the prior;
- ``diffwave_vocoder``: the same scores for DiffWave as a mel-conditioned vocoder (20 NFE);
- ``notes`` / ``notes_latent``: class-conditional notes (mels / latent mels) at 20 NFE, CFG 2
  and unguided: pitch accuracy (pyin, 50 cents), instrument accuracy, FAD on the notes
  classifier vs its real-vs-real floor, through Griffin-Lim; ``notes_vocoder`` /
  ``notes_latent_vocoder``: the same runs through the vocoder_gan part's vocoder (trained on the
  notes; ``events_vocoder``: the events run through it, off its training domain);
- ``events``: text-to-audio on events with and without CFG: caption-attribute accuracy, FAD;
- ``diffwave_uncond``: unconditional waveform diffusion: FAD;
and training CPU-minutes of each recipe (quality per CPU-minute).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import cpu_timer, peak_rss_mb, results_dir, train_recipe, write_results
from polydiff.audio.experiments import load_vocoder, timed_vocode, wave_data
from polydiff.audio.models import num_parameters
from polydiff.train.run import evaluate_run, open_run

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "runs" / "bench" / "audio"
PARTS = (
    "vocoder",
    "vocoder_gan",
    "diffwave_vocoder",
    "notes",
    "notes_latent",
    "events",
    "diffwave_uncond",
    "notes_vocoder",
    "notes_latent_vocoder",
    "events_vocoder",
    "vocoder_gan_direct",
    "vocoder_gan_if",
    "vocoder_gan_noprior",
)
# the vocoder head ablation: audio/vocoder_gan with another head, trained and scored the same way
HEAD_VARIANTS: dict[str, list[str]] = {
    "vocoder_gan_direct": ["model.generator.phase=direct", "model.generator.mel_prior=null"],
    "vocoder_gan_if": ["model.generator.phase=if", "model.generator.mel_prior=null"],
    "vocoder_gan_noprior": ["model.generator.mel_prior=null"],
}
# staged parts: (tag, train overrides) in order; a stage resumes the previous one's run (constant
# LR), so stage k equals one run of `polydiff train experiment=<e> <its overrides>`
STAGES: dict[str, list[tuple[str, list[str]]]] = {
    # the recipe's spectral warm-up (objective.adv_start_step=3000), then the recipe as committed
    "vocoder_gan": [
        ("spectral3000", ["trainer.max_steps=3000"]),
        ("recipe", []),
    ],
    "notes_latent": [
        ("steps1200", ["trainer.max_steps=1200"]),
        ("steps2400", ["trainer.max_steps=2400"]),
    ],
    # audio/notes_mel: ~6 CPU-min, then the recipe as committed (~10 CPU-min, as notes_latent)
    "notes": [("steps450", ["trainer.max_steps=450"]), ("recipe", [])],
    "events": [("steps600", ["trainer.max_steps=600"])],
}
STAGE_EVAL = ["evaluate.n=48"]  # per stage; the last stage of a guided part also unguided
# the notes: every (instrument, pitch) class once (sample_cond draws arange(n) % 96; the vocoder
# reference holds one held-out note per class); events: the config's evaluate.n
PART_EVAL = {
    "notes": ["evaluate.n=96"],
    "notes_latent": ["evaluate.n=96"],
    "vocoder_gan": ["evaluate.n=96"],
    "events": [],
    **{part: ["evaluate.n=96"] for part in HEAD_VARIANTS},
}
TRAIN = ["trainer.progress=false"]
# quick smoke runs: a few steps, few samples
QUICK_TRAIN = ["trainer.max_steps=4", "trainer.ckpt_every=0"]
# the smallest network of each part's model table (the mel U-Net's are "audio-*" names)
# parts that score another part's run vocoded by the vocoder_gan part's run (no training)
VOCODED = {
    "notes_vocoder": "notes",
    "notes_latent_vocoder": "notes_latent",
    "events_vocoder": "events",  # off the vocoder's training domain (notes): noise, chirps, hits
}
UNET_PARTS = ("notes", "notes_latent", *VOCODED, "events")
QUICK_EVAL = {
    "vocoder": ["evaluate.n=4"],
    "vocoder_gan": ["evaluate.n=4"],
    "diffwave_vocoder": ["evaluate.n=2", "sampler.steps=2"],
    "notes": ["evaluate.n=8", "sampler.steps=4"],
    "notes_latent": ["evaluate.n=8", "sampler.steps=4"],
    "notes_vocoder": ["evaluate.n=8", "sampler.steps=4"],
    "notes_latent_vocoder": ["evaluate.n=8", "sampler.steps=4"],
    "events_vocoder": ["evaluate.n=6", "sampler.steps=4"],
    "events": ["evaluate.n=6", "sampler.steps=4"],
    "diffwave_uncond": ["evaluate.n=4", "sampler.steps=2"],
    **{part: ["evaluate.n=4"] for part in HEAD_VARIANTS},
}
EXPERIMENT = {
    "vocoder": "audio/vocoder",
    "vocoder_gan": "audio/vocoder_gan",
    "notes_latent": "audio/notes_latent",
    "diffwave_vocoder": "audio/diffwave_vocoder",
    "notes": "audio/notes_mel",
    "events": "audio/events_text",
    "diffwave_uncond": "audio/diffwave_uncond",
    "notes_vocoder": "audio/notes_mel",
    "notes_latent_vocoder": "audio/notes_latent",
    "events_vocoder": "audio/events_text",
    **{part: "audio/vocoder_gan" for part in HEAD_VARIANTS},
}


def _run_dir(part: str, quick: bool) -> Path:
    part = VOCODED.get(part, part)  # e.g. the notes run, vocoded by the vocoder
    return RUNS / ("quick" if quick else "full") / part


def _train(part: str, quick: bool, extra: list[str] | None = None) -> dict[str, Any]:
    quick_size = f"model.size={'audio-tiny' if part in UNET_PARTS else 'tiny'}"
    overrides = [*TRAIN, *([*QUICK_TRAIN, quick_size] if quick else []), *(extra or [])]
    with cpu_timer() as t:
        run_dir = train_recipe(EXPERIMENT[part], overrides, run_dir=_run_dir(part, quick))
    run = open_run(run_dir)
    return {
        "experiment": EXPERIMENT[part],
        "train_overrides": overrides,
        "run_dir": str(run_dir),
        "train_cpu_minutes": round(t["cpu"] / 60, 2),
        "train_wall_minutes": round(t["wall"] / 60, 2),
        "parameters": num_parameters(run.model),
        "steps": int(run.cfg.trainer.max_steps),
    }


def _evaluate(run_dir: Path, overrides: list[str], tag: str) -> dict[str, Any]:
    out = run_dir / "eval" / f"bench-{tag}.json"
    args = [*overrides, "evaluate.overwrite=true"]
    with cpu_timer() as t:
        res = evaluate_run(run_dir, args, out=out)
    return {
        "overrides": args,
        "metrics": res["metrics"],
        "eval_cpu_minutes": round(t["cpu"] / 60, 2),
    }


def _vocoder_rtf(run_dir: Path, n: int) -> float:
    ref = wave_data("notes", 1, 1, "cpu", True)
    _, rtf = timed_vocode(load_vocoder(str(run_dir)), ref.tensors["mel"][:n], 16000)
    return rtf


def run_part(part: str, quick: bool = False) -> dict[str, Any]:
    """Train (or reuse) the part's run and evaluate it; returns the part's results."""
    if part not in PARTS:
        raise ValueError(f"unknown audio benchmark part {part!r}; valid: {list(PARTS)}")
    q = QUICK_EVAL[part] if quick else []
    if part in STAGES:
        return _run_stages(part, quick, q)
    # notes_vocoder / notes_latent_vocoder reuse the notes / notes_latent run at its last stage
    reuse = part in VOCODED and not quick
    res = _train(part, quick, STAGES[VOCODED[part]][-1][1] if reuse else HEAD_VARIANTS.get(part))
    run_dir = Path(res["run_dir"])
    if part in ("vocoder", "diffwave_vocoder", *HEAD_VARIANTS):
        res["eval"] = _evaluate(run_dir, q or PART_EVAL.get(part, []), "default")
        res["rtf_clips"] = 4 if quick else 16
        res["rtf"] = _vocoder_rtf(run_dir, res["rtf_clips"])
    elif part in VOCODED:  # after vocoder_gan and the vocoded part: its run vocoded by it
        if not _part_file("vocoder_gan", quick).is_file():
            raise FileNotFoundError("run the vocoder_gan part first (--part vocoder_gan)")
        voc = _run_dir("vocoder_gan", quick)
        ev = [*(q or PART_EVAL[VOCODED[part]]), f"audio.vocoder={voc}"]
        key = "eval_cfg2_vocoder" if part.startswith("notes") else "eval_vocoder"  # events: CFG 3
        res[key] = _evaluate(run_dir, ev, "cfg-voc")
    else:
        res["eval"] = _evaluate(run_dir, q, "default")
    res["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return res


def _run_stages(part: str, quick: bool, q: list[str]) -> dict[str, Any]:
    """Train a part in stages, evaluating after each one (the learning curve at this budget).

    A stage already in the part file with the same tag and train overrides is kept as it is
    (``reused``): its run has since been resumed past it, and a stage is one run to its step.
    """
    res: dict[str, Any] = {"stages": {}}
    old_file = _part_file(part, quick)
    old = json.loads(old_file.read_text()).get("stages", {}) if old_file.is_file() else {}
    cpu = 0.0
    for tag, extra in STAGES[part]:
        prev = old.get(tag)
        if not quick and prev is not None and prev["train_overrides"] == [*TRAIN, *extra]:
            res["stages"][tag] = {**prev, "reused": True}
            res.update({k: v for k, v in prev.items() if not k.startswith("eval")})
            cpu = prev["train_cpu_minutes"]
            continue
        if quick:  # a smoke run: each stage a couple of steps more
            n = 2 * (1 + list(STAGES[part]).index((tag, extra)))
            extra = [f"trainer.max_steps={n}"]
            if part == "vocoder_gan":
                extra.append(f"objective.adv_start_step={n // 2 + 1}")
            if part == "notes_latent":
                extra.append("data.dataset.autoencoder.steps=4")
        stage = _train(part, quick, extra)
        cpu = stage["train_cpu_minutes"] = round(cpu + stage["train_cpu_minutes"], 2)  # cumulative
        evq = q or PART_EVAL.get(part, STAGE_EVAL)
        stage["eval"] = _evaluate(Path(stage["run_dir"]), evq, tag)
        if part.startswith(("notes", "events")) and tag == STAGES[part][-1][0]:
            unguided = [*evq, "guidance=none", "guidance.scale=1.0"]
            stage["eval_unguided"] = _evaluate(Path(stage["run_dir"]), unguided, f"{tag}-none")
        if part.startswith("vocoder"):
            stage["rtf_clips"] = 4 if quick else 16
            stage["rtf"] = _vocoder_rtf(Path(stage["run_dir"]), stage["rtf_clips"])
        res["stages"][tag] = stage
        res.update({k: v for k, v in stage.items() if not k.startswith("eval")})
    res["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return res


def _part_file(part: str, quick: bool) -> Path:
    return RUNS / ("quick" if quick else "full") / "parts" / f"{part}.json"


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown(parts: dict[str, dict[str, Any]]) -> str:
    """The results table (one row per evaluated variant)."""
    lines = [
        "# audio",
        "",
        "Reproduce a row: `polydiff train experiment=<experiment> <train overrides>` then "
        "`polydiff evaluate run=<dir> <eval overrides>`.",
        "",
    ]
    for part, res in parts.items():
        head = f"## {part}: `{res['experiment']}` ({res['steps']} steps, "
        if part in VOCODED:  # no training of its own
            cost = f"the {VOCODED[part]} part's run, vocoded by the vocoder_gan part's"
        else:
            cost = f"{res['parameters']:,} parameters, {res['train_cpu_minutes']} CPU-min"
        lines.append(head + cost + ")")
        lines.append("")
        if res.get("carried_over"):
            lines += ["(carried over from the previous results file: not re-run here)", ""]
        if "rtf" in res:
            clips = res.get("rtf_clips", 16)
            lines.append(f"real-time factor (wall s per audio s, {clips} clips): {res['rtf']:.4f}")
            lines.append("")
        evals = {k: v for k, v in res.items() if k.startswith("eval") and isinstance(v, dict)}
        for tag, stage in res.get("stages", {}).items():
            evals[
                f"{tag} ({stage['steps']} steps, {stage['train_cpu_minutes']} CPU-min "
                f"cumulative, train `{' '.join(stage['train_overrides'][1:]) or '-'}`)"
            ] = stage["eval"]
            if "eval_unguided" in stage:
                evals[f"{tag} unguided"] = stage["eval_unguided"]
        for key, ev in evals.items():
            ov = " ".join(o for o in ev["overrides"] if o != "evaluate.overwrite=true") or "-"
            lines.append(f"- {key} (`{ov}`): " + ", ".join(
                f"{k} {_fmt(v)}" for k, v in ev["metrics"].items()))  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def collect(quick: bool = False) -> Path:
    """Merge the part files into ``results/audio.json`` and ``audio.md``.

    A part without a part file here (its runs were made on another machine or in an earlier
    checkout) keeps its entry of the existing results file, marked ``carried_over``.
    """
    parts = {}
    old_file = results_dir(quick) / "audio.json"
    previous = json.loads(old_file.read_text()).get("parts", {}) if old_file.is_file() else {}
    for part in PARTS:
        f = _part_file(part, quick)
        if f.is_file():
            parts[part] = json.loads(f.read_text())
        elif part in previous:
            parts[part] = {**previous[part], "carried_over": True}
    if not parts:
        raise FileNotFoundError(f"no part results under {RUNS} and no {old_file}")
    return write_results("audio", {"parts": parts}, markdown(parts), quick=quick)


def run(quick: bool = False) -> dict:
    """Every part in this process (vocoder first: the notes part then also uses it)."""
    t0 = time.perf_counter()
    parts = {}
    for part in PARTS:
        parts[part] = run_part(part, quick)
        path = _part_file(part, quick)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(parts[part], indent=1))
    collect(quick)
    return {"parts": parts, "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", choices=PARTS, help="run one part and write its part file")
    ap.add_argument("--collect", action="store_true", help="merge part files into results/")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.collect:
        print(collect(args.quick))
    elif args.part:
        res = run_part(args.part, args.quick)
        path = _part_file(args.part, args.quick)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=1))
        print(json.dumps(res, indent=1))
    else:
        print(json.dumps(run(args.quick), indent=1, default=str))


if __name__ == "__main__":
    main()
