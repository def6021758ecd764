"""Built-in audio sets and the folder loader: round trips; bad files named or skipped."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile
import torch

from polydiff.audio import data as D
from polydiff.audio.experiments import mel_data
from polydiff.audio.spectral import GriffinLimVocoder, MelSpectrogramCodec, mel_config

SR = 16000


def _tone(hz: float, seconds: float = 0.5, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_notes_are_seeded_labelled_and_in_range():
    a = D.synth_notes(per_class=1, seed=3, instruments=2)
    b = D.synth_notes(per_class=1, seed=3, instruments=2)
    assert a.wave.shape == (2 * 24, D.NUM_SAMPLES)
    assert torch.equal(a.wave, b.wave)
    assert not torch.equal(a.wave, D.synth_notes(per_class=1, seed=4, instruments=2).wave)
    assert a.wave.abs().max() <= 0.9 + 1e-6 and a.wave.abs().amax(dim=1).min() >= 0.5 - 1e-6
    assert sorted(a.labels.tolist()) == list(range(48))
    assert a.captions[0] == "a bright plucked note at C4"
    assert a.class_names[24 + 9] == "a soft bowed note at A4"
    assert D.note_name(69) == "A4" and D.midi_to_hz(69) == 440.0


def test_events_captions_match_labels():
    ev = D.synth_events(per_class=1, seed=0)
    assert len(ev) == 15 and ev.wave.shape[1] == D.NUM_SAMPLES
    for y, cap in zip(ev.labels.tolist(), ev.captions):
        assert ev.class_names[y] == cap
    assert "three noise bursts" in ev.captions and "one beep" in ev.captions


def test_spoken_digits_skip_cleanly_without_espeak(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(D.EspeakUnavailable, match="espeak-ng"):
        D.spoken_digits(per_class=1)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_spoken_digits_with_espeak():
    s = D.spoken_digits(per_class=1)
    assert len(s) == 10 and s.labels.tolist() == list(range(10))


def _write_folder(root, with_bad: bool = False):
    (root / "low").mkdir(parents=True)
    (root / "high").mkdir()
    soundfile.write(root / "low" / "a.wav", _tone(220), SR)
    soundfile.write(root / "low" / "b.flac", _tone(250, 1.5), SR)
    soundfile.write(root / "high" / "c.ogg", _tone(880), SR, format="OGG", subtype="VORBIS")
    stereo = np.stack([_tone(990, sr=22050), _tone(990, sr=22050)], axis=1)
    soundfile.write(root / "high" / "d.wav", stereo, 22050)  # resampled + mixed to mono
    if with_bad:
        (root / "high" / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
        soundfile.write(root / "low" / "silent.wav", np.zeros(8000, np.float32), SR)


def test_folder_round_trip_classes_resample_crop_pad(tmp_path):
    _write_folder(tmp_path)
    clips = D.load_audio_folder(tmp_path, SR, 16384)
    assert clips.class_names == ["high", "low"]
    assert clips.files == ["high/c.ogg", "high/d.wav", "low/a.wav", "low/b.flac"]
    assert clips.labels.tolist() == [0, 0, 1, 1]
    assert clips.wave.shape == (4, 16384) and clips.captions is None
    a = clips.wave[2].numpy()
    assert np.allclose(a[:8000], _tone(220)[:8000], atol=1e-4)  # WAV: exact (16-bit)
    assert np.all(a[8000:] == 0)  # padded at the end
    b = clips.wave[3].numpy()
    assert np.allclose(b, _tone(250, 1.5)[:16384], atol=1e-4)  # cropped from the start
    # 22.05 kHz stereo -> 16 kHz mono: same tone, same duration
    d = clips.wave[1].numpy()
    spectrum = np.abs(np.fft.rfft(d[:7000]))
    assert abs(np.argmax(spectrum) * SR / 7000 - 990) < 5
    assert np.all(d[8100:] == 0) and np.abs(d[100:7900]).min() >= 0 and np.abs(d[:7900]).max() > 0.4


def test_folder_bad_files_are_named_or_skipped_and_counted(tmp_path):
    _write_folder(tmp_path, with_bad=True)
    with pytest.raises(D.AudioFileError, match=r"corrupt\.wav: cannot decode"):
        D.load_audio_folder(tmp_path)
    clips = D.load_audio_folder(tmp_path, on_error="skip")
    assert len(clips) == 4 and len(clips.skipped) == 2
    reasons = dict(clips.skipped)
    assert "cannot decode" in reasons["high/corrupt.wav"]
    assert "silent" in reasons["low/silent.wav"]
    with pytest.raises(D.AudioFileError, match=r"silent\.wav: silent"):
        D.load_audio_file(tmp_path / "low" / "silent.wav")


def test_folder_captions_jsonl_and_csv(tmp_path):
    for i, hz in enumerate((300, 600)):
        soundfile.write(tmp_path / f"{i}.wav", _tone(hz), SR)
    rows = [{"file": "0.wav", "caption": "a low hum"}, {"file": "1.wav", "caption": "a high hum"}]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    clips = D.load_audio_folder(tmp_path)
    assert clips.captions == ["a low hum", "a high hum"] and clips.labels is None
    assert D.folder_conditioning(tmp_path) == ("text", None)
    (tmp_path / "captions.jsonl").unlink()
    (tmp_path / "captions.csv").write_text("file,caption\n0.wav,a low hum\n")
    with pytest.raises(ValueError, match=r"1\.wav has no caption"):
        D.load_audio_folder(tmp_path)
    (tmp_path / "captions.csv").write_text("name,text\n0.wav,x\n")
    with pytest.raises(ValueError, match=r"captions\.csv: expected a header"):
        D.load_audio_folder(tmp_path)


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.load_audio_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no audio files"):
        D.load_audio_folder(tmp_path)
    soundfile.write(tmp_path / "top.wav", _tone(440), SR)
    (tmp_path / "cls").mkdir()
    soundfile.write(tmp_path / "cls" / "x.wav", _tone(440), SR)
    with pytest.raises(ValueError, match="mixes files at the top level"):
        D.load_audio_folder(tmp_path)


def test_folder_num_classes_mismatch_names_both_values(tmp_path):
    _write_folder(tmp_path)
    ds = mel_data("folder", root=str(tmp_path), num_classes="auto")
    assert ds.num_classes == 2 and ds.conditioning == "class"
    assert ds.tensors["x"].shape == (4, 1, 64, 64)
    assert abs(float(ds.tensors["x"].mean())) < 1e-4  # per-dataset normalisation
    with pytest.raises(ValueError, match=rf"data.num_classes=5 but {tmp_path} has 2 classes"):
        mel_data("folder", root=str(tmp_path), num_classes=5)


def test_mel_codec_shapes_and_griffin_lim_round_trip():
    codec = MelSpectrogramCodec("cpu")
    assert codec.config.num_samples == 16384 and mel_config("audioldm").hop_length == 160
    wave = torch.from_numpy(_tone(440, 16384 / SR))[None]
    mel = codec(wave)
    assert mel.shape == (1, 64, 64)
    back = GriffinLimVocoder(codec, n_iter=16)(mel)
    assert back.shape == (1, 16384)
    # the re-analysed mel is close to the original where the energy is (within 3 nats of the peak)
    keep = mel > mel.max() - 3
    assert (codec(back) - mel)[keep].abs().mean() < 0.2
    with pytest.raises(KeyError, match="unknown mel preset"):
        MelSpectrogramCodec("hifi")


@pytest.mark.slow  # loads MiniLM
def test_caption_folder_gives_text_conditioning(tmp_path):
    for i, hz in enumerate((300, 600, 900)):
        soundfile.write(tmp_path / f"{i}.wav", _tone(hz), SR)
    caps = ["a low hum", "a middle hum", "a high hum"]
    (tmp_path / "captions.csv").write_text(
        "file,caption\n" + "".join(f"{i}.wav,{c}\n" for i, c in enumerate(caps))
    )
    ds = mel_data("folder", root=str(tmp_path), num_classes="auto")
    assert ds.conditioning == "text" and ds.num_classes is None
    pooled = ds.tensors["text_pooled"]
    assert pooled.shape == (3, 384) and not torch.allclose(pooled[0], pooled[2])
