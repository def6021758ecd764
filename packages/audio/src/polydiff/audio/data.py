"""Audio data: procedural built-in sets (nothing downloaded) and loaders for folders of files.

Built-in, seeded, 16 kHz mono float32 clips of ``num_samples`` samples (~1 s):

- :func:`synth_notes`: NSynth-style instrument notes by additive synthesis: per-instrument
  harmonic profiles, inharmonicity ``f_k = k f0 sqrt(1 + B k^2)`` (Fletcher 1964), ADSR
  envelopes and vibrato; :data:`INSTRUMENTS` x :data:`PITCHES` (2 octaves, MIDI 60-83), with
  captions such as "a bright plucked note at C4".
- :func:`synth_events`: sound events (rising / falling chirps, hits, noise bursts, beeps) repeated
  1-3 times in rhythm, with captions such as "two rising chirps".
- :func:`spoken_digits`: the digits 0-9 spoken by ``espeak-ng`` (an SC09 stand-in) when the
  program is installed; :class:`EspeakUnavailable` otherwise (callers skip cleanly).

Real data: :func:`load_audio_folder` reads WAV / FLAC / OGG files (soundfile), resamples
(torchaudio), mixes to mono and crops / pads; classes come from sub-folders, captions from a
``captions.jsonl`` / ``captions.csv`` beside them. A corrupt or silent file is named in the
error, or skipped and counted with ``on_error="skip"``.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

__all__ = [
    "AUDIO_EXTENSIONS",
    "EVENT_COUNTS",
    "EVENT_TYPES",
    "INSTRUMENTS",
    "PITCHES",
    "AudioClips",
    "AudioFileError",
    "EspeakUnavailable",
    "event_caption",
    "folder_conditioning",
    "folder_files",
    "load_audio_file",
    "load_audio_folder",
    "midi_to_hz",
    "note_caption",
    "note_name",
    "spoken_digits",
    "synth_events",
    "synth_notes",
]

SAMPLE_RATE = 16000
NUM_SAMPLES = 16384
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
SILENCE_PEAK = 1e-4  # a clip whose absolute peak is below this is "silent"


class AudioFileError(ValueError):
    """A file that cannot be used (corrupt, unreadable, silent)."""


class EspeakUnavailable(RuntimeError):
    """``espeak-ng`` is not installed: the spoken-digits set cannot be made."""


@dataclass
class AudioClips:
    """Aligned clips: ``wave`` (N, L) float32, optional ``labels`` (N,), ``captions``."""

    wave: torch.Tensor
    sample_rate: int
    labels: torch.Tensor | None = None
    class_names: list[str] = field(default_factory=list)
    captions: list[str] | None = None
    files: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def __len__(self) -> int:
        return len(self.wave)


# ------------------------------------------------------------------------------ helpers
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def midi_to_hz(midi: float | torch.Tensor) -> float | torch.Tensor:
    """Equal temperament, A4 = MIDI 69 = 440 Hz."""
    return 440.0 * 2.0 ** ((midi - 69) / 12.0)


def note_name(midi: int) -> str:
    """``60 -> "C4"`` (scientific pitch notation)."""
    return f"{NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


def _adsr(n: int, sr: int, a: float, d: float, s: float, r: float, hold: float) -> np.ndarray:
    """Piecewise-linear ADSR envelope of ``n`` samples (times in seconds, ``s`` a level)."""
    t = np.arange(n) / sr
    env = np.interp(t, [0, a, a + d, max(hold, a + d), max(hold, a + d) + r], [0, 1, s, s, 0])
    return env.astype(np.float64)


# ------------------------------------------------------------------------------ notes
@dataclass(frozen=True)
class Instrument:
    """An additive-synthesis instrument: partial amplitudes, inharmonicity, envelope, vibrato."""

    name: str
    caption: str  # "a bright plucked note"
    partials: tuple[float, ...]  # amplitude of harmonic k = 1, 2, ...
    inharmonicity: float  # B in f_k = k f0 sqrt(1 + B k^2)
    attack: float
    decay: float
    sustain: float
    release: float
    decay_rate: float  # extra exponential decay (1/s): plucks and mallets ring down
    vibrato_hz: float
    vibrato_cents: float


INSTRUMENTS: tuple[Instrument, ...] = (
    Instrument("pluck", "a bright plucked note", tuple(1.0 / k for k in range(1, 13)),
               2e-4, 0.005, 0.15, 0.4, 0.05, 3.0, 0.0, 0.0),
    Instrument("bowed", "a soft bowed note", tuple(1.0 / k**1.5 for k in range(1, 11)),
               0.0, 0.12, 0.1, 0.85, 0.1, 0.0, 5.5, 20.0),
    Instrument("reed", "a hollow reed note",
               tuple((1.0 / k if k % 2 else 0.05 / k) for k in range(1, 12)),
               0.0, 0.04, 0.05, 0.8, 0.08, 0.0, 4.5, 8.0),
    Instrument("mallet", "a mellow mallet note", (1.0, 0.08, 0.02, 0.25),
               0.02, 0.003, 0.3, 0.2, 0.05, 5.0, 0.0, 0.0),
)  # fmt: skip

PITCHES: tuple[int, ...] = tuple(range(60, 84))  # C4 .. B5, two octaves


def note_caption(instrument: int, pitch_index: int) -> str:
    """``"a bright plucked note at C4"``."""
    return f"{INSTRUMENTS[instrument].caption} at {note_name(PITCHES[pitch_index])}"


def synth_note(
    instrument: Instrument,
    midi: int,
    rng: np.random.Generator,
    sample_rate: int = SAMPLE_RATE,
    num_samples: int = NUM_SAMPLES,
) -> np.ndarray:
    """One note (``num_samples``,) with random detune (+-5 cents), phases, gain and hold."""
    n, sr = num_samples, sample_rate
    t = np.arange(n) / sr
    f0 = float(midi_to_hz(midi)) * 2.0 ** (rng.uniform(-5, 5) / 1200)
    vib = (
        instrument.vibrato_cents
        / 1200
        * np.sin(2 * np.pi * instrument.vibrato_hz * t + rng.uniform(0, 2 * np.pi))
    )
    inst_f = f0 * 2.0**vib  # instantaneous fundamental (Hz)
    phase = 2 * np.pi * np.cumsum(inst_f) / sr
    wave = np.zeros(n)
    for k, amp in enumerate(instrument.partials, start=1):
        ratio = k * math.sqrt(1 + instrument.inharmonicity * k * k)
        if ratio * f0 >= 0.45 * sr:
            break
        damp = np.exp(-instrument.decay_rate * k**0.5 * t) if instrument.decay_rate else 1.0
        wave += amp * damp * np.sin(ratio * phase + rng.uniform(0, 2 * np.pi))
    hold = rng.uniform(0.55, 0.75) * n / sr
    i = instrument
    wave *= _adsr(n, sr, i.attack, i.decay, i.sustain, i.release, hold)
    wave *= rng.uniform(0.5, 0.9) / max(np.abs(wave).max(), 1e-9)
    return wave.astype(np.float32)


def synth_notes(
    per_class: int = 8,
    seed: int = 0,
    instruments: int = len(INSTRUMENTS),
    sample_rate: int = SAMPLE_RATE,
    num_samples: int = NUM_SAMPLES,
) -> AudioClips:
    """Every (instrument, pitch) pair ``per_class`` times; label ``instrument * 24 + pitch``."""
    if not 1 <= instruments <= len(INSTRUMENTS):
        raise ValueError(f"instruments must be in [1, {len(INSTRUMENTS)}], got {instruments}")
    rng = np.random.default_rng(seed)
    waves, labels, captions = [], [], []
    for _ in range(per_class):
        for ii in range(instruments):
            for pi, midi in enumerate(PITCHES):
                waves.append(synth_note(INSTRUMENTS[ii], midi, rng, sample_rate, num_samples))
                labels.append(ii * len(PITCHES) + pi)
                captions.append(note_caption(ii, pi))
    names = [note_caption(ii, pi) for ii in range(instruments) for pi in range(len(PITCHES))]
    return AudioClips(
        torch.from_numpy(np.stack(waves)), sample_rate, torch.tensor(labels), names, captions
    )


# ------------------------------------------------------------------------------ events
EVENT_TYPES: tuple[str, ...] = ("rising chirp", "falling chirp", "hit", "noise burst", "beep")
EVENT_COUNTS: tuple[str, ...] = ("one", "two", "three")


def event_caption(event: int, count: int) -> str:
    """``"two rising chirps"`` (``count`` is 0-based: 0 = one)."""
    noun = EVENT_TYPES[event]
    return f"{EVENT_COUNTS[count]} {noun}" + ("s" if count > 0 else "")


def _event(kind: int, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / sr
    if kind in (0, 1):  # linear chirp over an octave-plus
        lo, hi = rng.uniform(300, 500), rng.uniform(1500, 2500)
        f_start, f_end = (lo, hi) if kind == 0 else (hi, lo)
        f = f_start + (f_end - f_start) * t / t[-1]
        w = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.hanning(n)
    elif kind == 2:  # hit: a decaying low thump plus a click
        f = rng.uniform(80, 160)
        w = np.sin(2 * np.pi * f * t) * np.exp(-t * 30) + 0.3 * rng.standard_normal(n) * np.exp(
            -t * 200
        )
    elif kind == 3:  # noise burst
        w = rng.standard_normal(n) * np.hanning(n)
    else:  # beep: a steady tone
        f = rng.choice([880.0, 1000.0, 1200.0])
        w = np.sin(2 * np.pi * f * t) * _adsr(n, sr, 0.005, 0.0, 1.0, 0.01, t[-1] - 0.01)
    return w / max(np.abs(w).max(), 1e-9)


def synth_events(
    per_class: int = 16,
    seed: int = 0,
    sample_rate: int = SAMPLE_RATE,
    num_samples: int = NUM_SAMPLES,
) -> AudioClips:
    """Each (event type, count) pair ``per_class`` times; label ``event * 3 + count``."""
    rng = np.random.default_rng(seed)
    waves, labels, captions = [], [], []
    ev_len = int(0.18 * sample_rate)
    for _ in range(per_class):
        for e in range(len(EVENT_TYPES)):
            for c in range(len(EVENT_COUNTS)):
                wave = np.zeros(num_samples)
                period = int(rng.uniform(0.26, 0.3) * sample_rate)
                start = int(rng.uniform(0.02, 0.08) * sample_rate)
                for k in range(c + 1):
                    lo = start + k * period
                    seg = _event(e, min(ev_len, num_samples - lo), sample_rate, rng)
                    wave[lo : lo + len(seg)] += seg
                wave *= rng.uniform(0.5, 0.9) / max(np.abs(wave).max(), 1e-9)
                waves.append(wave.astype(np.float32))
                labels.append(e * len(EVENT_COUNTS) + c)
                captions.append(event_caption(e, c))
    names = [event_caption(e, c) for e in range(len(EVENT_TYPES)) for c in range(len(EVENT_COUNTS))]
    return AudioClips(
        torch.from_numpy(np.stack(waves)), sample_rate, torch.tensor(labels), names, captions
    )


# ------------------------------------------------------------------------------ spoken digits
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def spoken_digits(
    per_class: int = 4,
    seed: int = 0,
    sample_rate: int = SAMPLE_RATE,
    num_samples: int = NUM_SAMPLES,
    program: str = "espeak-ng",
) -> AudioClips:
    """Digits 0-9 spoken by ``espeak-ng`` with random speed / pitch (an SC09 stand-in).

    Raises :class:`EspeakUnavailable` when ``program`` is not on PATH.
    """
    exe = shutil.which(program)
    if exe is None:
        raise EspeakUnavailable(
            f"{program!r} is not installed (apt-get install espeak-ng): the spoken-digits set "
            "is unavailable"
        )
    rng = np.random.default_rng(seed)
    waves, labels, captions = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(per_class):
            for d, word in enumerate(DIGIT_WORDS):
                path = Path(tmp) / f"{d}.wav"
                speed, pitch = int(rng.integers(120, 200)), int(rng.integers(20, 80))
                subprocess.run(
                    [exe, "-w", str(path), "-s", str(speed), "-p", str(pitch), word],
                    check=True,
                    capture_output=True,
                )
                waves.append(load_audio_file(path, sample_rate, num_samples))
                labels.append(d)
                captions.append(f"a voice saying {word}")
    return AudioClips(
        torch.stack(waves), sample_rate, torch.tensor(labels), list(DIGIT_WORDS), captions
    )


# ------------------------------------------------------------------------------ real files
def load_audio_file(
    path: str | Path, sample_rate: int = SAMPLE_RATE, num_samples: int | None = NUM_SAMPLES
) -> torch.Tensor:
    """A file as mono float32 ``(num_samples,)`` at ``sample_rate`` (cropped from the start or
    zero-padded at the end). Raises :class:`AudioFileError` naming the file when it cannot be
    decoded or is silent (peak below 1e-4)."""
    path = Path(path)
    try:
        data, sr = soundfile.read(str(path), dtype="float32", always_2d=True)  # (L, C)
    except Exception as err:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise AudioFileError(f"{path}: cannot decode audio ({err})") from err
    if data.size == 0:
        raise AudioFileError(f"{path}: no audio samples")
    wave = torch.from_numpy(data.mean(axis=1))
    if sr != sample_rate:
        wave = torchaudio.functional.resample(wave, sr, sample_rate)
    if num_samples is not None:
        wave = wave[:num_samples]
        if len(wave) < num_samples:
            wave = torch.nn.functional.pad(wave, (0, num_samples - len(wave)))
    peak = float(wave.abs().max())
    if not math.isfinite(peak):
        raise AudioFileError(f"{path}: non-finite samples")
    if peak < SILENCE_PEAK:
        raise AudioFileError(f"{path}: silent (peak {peak:.2e} < {SILENCE_PEAK:g})")
    return wave.float()


def _read_captions(root: Path) -> dict[str, str] | None:
    """``captions.jsonl`` (``{"file": ..., "caption": ...}`` per line) or ``captions.csv``
    (header ``file,caption``); file names relative to ``root``."""
    jl, cs = root / "captions.jsonl", root / "captions.csv"
    if jl.is_file() and cs.is_file():
        raise ValueError(f"{root}: both captions.jsonl and captions.csv exist; keep one")
    out: dict[str, str] = {}
    if jl.is_file():
        for no, line in enumerate(jl.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out[str(row["file"])] = str(row["caption"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{jl}:{no}: expected a JSON object with 'file' and 'caption' ({err})"
                ) from err
        return out
    if cs.is_file():
        with cs.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"file", "caption"} <= set(reader.fieldnames):
                raise ValueError(f"{cs}: expected a header with 'file' and 'caption' columns")
            for row in reader:
                out[row["file"]] = row["caption"]
        return out
    return None


def folder_files(root: str | Path) -> tuple[list[Path], list[str]]:
    """Audio files under ``root`` (sorted) and the class names (sorted sub-folders that hold
    audio; empty when the files lie directly in ``root``)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"audio folder {root} does not exist or is not a directory")
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
    )
    if not files:
        raise ValueError(f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    parents = sorted({p.parent.relative_to(root).as_posix() for p in files})
    if parents == ["."]:
        return files, []
    if "." in parents:
        raise ValueError(
            f"{root}: mixes files at the top level with class sub-folders {parents[1:]}; put "
            "every file in a class folder, or none"
        )
    return files, parents


def folder_conditioning(root: str | Path) -> tuple[str | None, int | None]:
    """What a folder can condition on, without decoding audio: ``("class", n_classes)`` with
    class sub-folders, else ``("text", None)`` with a captions file, else ``(None, None)``."""
    _, classes = folder_files(root)
    if classes:
        return "class", len(classes)
    root = Path(root)
    if (root / "captions.jsonl").is_file() or (root / "captions.csv").is_file():
        return "text", None
    return None, None


def load_audio_folder(
    root: str | Path,
    sample_rate: int = SAMPLE_RATE,
    num_samples: int = NUM_SAMPLES,
    on_error: str = "raise",
    max_files: int | None = None,
) -> AudioClips:
    """Every WAV / FLAC / OGG under ``root``: classes from sub-folders, captions from
    ``captions.jsonl`` / ``captions.csv`` (every kept file must then have one).

    ``on_error="raise"`` stops at the first corrupt or silent file naming it; ``"skip"`` drops
    such files and lists them in ``AudioClips.skipped``.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    root = Path(root)
    files, classes = folder_files(root)
    if max_files is not None:
        files = files[:max_files]
    captions_map = _read_captions(root)
    waves, labels, caps, kept, skipped = [], [], [], [], []
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            wave = load_audio_file(path, sample_rate, num_samples)
        except AudioFileError as err:
            if on_error == "raise":
                raise
            skipped.append((rel, str(err)))
            continue
        if captions_map is not None:
            if rel not in captions_map:
                raise ValueError(f"{root}: {rel} has no caption in the captions file")
            caps.append(captions_map[rel])
        waves.append(wave)
        kept.append(rel)
        if classes:
            labels.append(classes.index(path.parent.relative_to(root).as_posix()))
    if not waves:
        raise ValueError(f"{root}: every audio file was skipped ({len(skipped)}: {skipped[:3]})")
    return AudioClips(
        torch.stack(waves),
        sample_rate,
        torch.tensor(labels) if classes else None,
        classes,
        caps if captions_map is not None else None,
        kept,
        skipped,
    )
