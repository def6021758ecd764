"""One tiny train -> sample -> export -> evaluate run per audio experiment, through the CLI path
(``polydiff.train.run``), plus the pipeline tasks and own-data folders on a tiny notes run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from polydiff.audio import pipeline
from polydiff.audio.models import PitchConditionedUNet
from polydiff.train.run import evaluate_run, job_settings, open_run, sample_run, train

TINY = [
    "trainer.max_steps=2",
    "trainer.batch_size=4",
    "trainer.progress=false",
    "trainer.ckpt_every=0",
    "trainer.lr_warmup_steps=0",
    "data.dataset.per_class=1",
]
UNET_TINY = "model.size=audio-tiny"  # the mel U-Net's; vocoders / DiffWave: their own "tiny"
MEL = [
    "data.hooks.reference.per_class=1",
    "data.hooks.classifier_steps=2",
    "+data.hooks.classifier_per_class=1",
]


def _train(tmp_path: Path, experiment: str, *extra: str) -> Path:
    cache = f"data.hooks.cache_dir={tmp_path / 'cache'}"
    unet = "mel" in experiment or "events" in experiment
    extras = [*extra, cache, UNET_TINY] if unet else [*extra, "model.size=tiny"]
    return train([f"experiment={experiment}", *TINY, *extras, f"run_dir={tmp_path / 'run'}"])


def _check_outputs(out: Path, n: int, data_shape: tuple[int, ...]) -> None:
    npz = np.load(out / "samples.npz", allow_pickle=False)
    assert npz["samples"].shape == (n, *data_shape) and np.isfinite(npz["samples"]).all()
    wavs = sorted(out.glob("*.wav"))
    assert len(wavs) == n
    wave, sr = soundfile.read(wavs[0])
    assert sr == 16000 and wave.shape == (16384,)
    assert (out / "mels.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def notes_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("notes"), "audio/notes_mel", *MEL)


def test_notes_mel_train_sample_evaluate(notes_run, capsys):
    assert isinstance(pipeline.load(notes_run).run.model, PitchConditionedUNet)
    out = sample_run(notes_run, ["sample.n=3", "sampler.steps=2"])
    _check_outputs(out, 3, (64, 64))
    assert "real-time factor" in capsys.readouterr().out
    res = evaluate_run(notes_run, ["evaluate.n=4", "sampler.steps=2"])
    m = res["metrics"]
    keys = ("fad", "fad_real_floor", "fad_vocoder_floor", "instrument_accuracy",
            "pitch_accuracy", "vocoder_rtf")  # fmt: skip
    for key in keys:
        assert key in m and math.isfinite(m[key]), key
    assert 0 <= m["pitch_accuracy"] <= 1 and m["fad_real_floor"] < m["fad"]
    assert m["fad_real_floor"] < m["fad_vocoder_floor"]  # Griffin-Lim's artefacts cost FAD


def test_pipeline_inpaint_continue_sdedit(notes_run):
    mr = pipeline.load(notes_run, ["sampler.steps=2"])
    real = mr.hooks.dataset.clips.wave[:2]
    mel = mr.mel(real)
    out = pipeline.inpaint_span(mr, mel, 20, 40, classes=[0, 1])
    keep = torch.ones(64, dtype=torch.bool)
    keep[20:40] = False
    assert torch.allclose(out[..., keep], mel[..., keep], atol=1e-4)  # known frames exact
    assert (out[..., ~keep] - mel[..., ~keep]).abs().mean() > 1e-3  # the span was regenerated
    cont = pipeline.continue_audio(mr, mel, 32, classes=[0, 1])
    assert torch.allclose(cont[..., :32], mel[..., :32], atol=1e-4)
    edited = pipeline.audio_to_audio(mr, mel, 0.5, classes=[5, 6])
    assert edited.shape == mel.shape and torch.isfinite(edited).all()
    gen = pipeline.generate(mr, 2, classes=[3, 4])
    assert gen.shape == (2, 64, 64) and mr.vocode(gen).shape == (2, 16384)
    with pytest.raises(ValueError, match="class-conditional: pass classes"):
        pipeline.generate(mr, 2)
    with pytest.raises(ValueError, match=r"need 0 <= start < end <= 64"):
        pipeline.inpaint_span(mr, mel, 40, 20, classes=[0, 1])


@pytest.mark.slow  # MiniLM + the events classifier: ~6 s CPU
def test_events_text_to_audio(tmp_path):
    run = _train(tmp_path, "audio/events_text", *MEL)
    out = sample_run(run, ["sample.n=2", "sampler.steps=2"])
    _check_outputs(out, 2, (64, 64))
    prompts = np.load(out / "samples.npz", allow_pickle=False)["prompts"]
    assert len(prompts) == 2 and all(p.split()[0] in ("one", "two", "three") for p in prompts)
    m = evaluate_run(run, ["evaluate.n=3", "sampler.steps=2"])["metrics"]
    assert {"event_accuracy", "count_class_accuracy", "both_accuracy", "fad"} <= set(m)


def test_vocoder_run_scores_against_griffin_lim(tmp_path):
    run = _train(tmp_path, "audio/vocoder")
    out = sample_run(run, ["sample.n=2"])
    _check_outputs(out, 2, (16384,))
    m = evaluate_run(run, ["evaluate.n=2"])["metrics"]
    for key in ("mrstft", "griffinlim_mrstft", "lsd", "mcd", "pitch_accuracy", "griffinlim_rtf"):
        assert key in m and math.isfinite(m[key]), key
    with pytest.raises(ValueError, match="reference set has 96"):
        evaluate_run(run, ["evaluate.n=97", "evaluate.overwrite=true"])


def test_a_trained_run_takes_the_vocoder_at_sample_time(notes_run, tmp_path):
    # the saved config holds vocoder: griffinlim resolved at training time; audio.vocoder=<run>
    # at evaluate time must reach the hooks (and the job's settings), not be silently dropped
    voc = _train(tmp_path, "audio/vocoder")
    run = open_run(notes_run, [f"audio.vocoder={voc}"])
    assert run.hooks.vocoder_spec == str(voc) and run.hook_settings["vocoder"] == str(voc)
    assert job_settings(run, "evaluate")["hooks"]["vocoder"] == str(voc)
    assert open_run(notes_run).hooks.vocoder_spec == "griffinlim"
    mr = pipeline.load(notes_run, [f"audio.vocoder={voc}", "sampler.steps=2"])
    assert mr.vocode(pipeline.generate(mr, 1, classes=[0])).shape == (1, 16384)


@pytest.mark.slow  # waveform networks at 16384 samples: ~4 s CPU each
@pytest.mark.parametrize("experiment", ["audio/diffwave_vocoder", "audio/diffwave_uncond"])
def test_diffwave_runs(tmp_path, experiment):
    run = _train(tmp_path, experiment)
    out = sample_run(run, ["sample.n=2", "sampler.steps=2"])
    _check_outputs(out, 2, (16384,))


def _class_folder(root: Path, classes: int = 3, per_class: int = 2) -> Path:
    t = np.arange(16000) / 16000
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            tone = 0.4 * np.sin(2 * np.pi * (300 + 200 * c + 10 * i) * t)
            soundfile.write(root / f"class{c}" / f"{i}.wav", tone.astype(np.float32), 16000)
    return root


def test_own_folder_in_one_line_reads_classes(tmp_path):
    root = _class_folder(tmp_path / "data")
    run = train(["experiment=audio/notes_mel", "data=audio_folder", f"data.root={root}",
                 *TINY[:-1], UNET_TINY, f"run_dir={tmp_path / 'run'}"])  # fmt: skip
    cfg = json.loads(json.dumps(__import__("omegaconf").OmegaConf.load(run / "config.yaml")
                                .data.dataset.root))  # fmt: skip
    assert cfg == str(root)
    mr = pipeline.load(run, ["sampler.steps=2"])
    assert mr.hooks.dataset.num_classes == 3 and mr.run.model.embed.num_classes == 3
    assert not isinstance(mr.run.model, PitchConditionedUNet)  # the notes' comb: notes only
    out = sample_run(run, ["sample.n=3", "sampler.steps=2"])
    assert len(list(out.glob("*.wav"))) == 3
    with pytest.raises(Exception, match=rf"data.num_classes=5 but {root} has 3 classes"):
        train(["experiment=audio/notes_mel", "data=audio_folder", f"data.root={root}",
               "data.num_classes=5", *TINY[:-1], UNET_TINY,
               f"run_dir={tmp_path / 'run2'}"])  # fmt: skip
