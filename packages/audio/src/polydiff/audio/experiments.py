"""What the audio configs build: datasets, the vocoder objective, and the ``polydiff`` hooks.

Datasets (items ``{"x", <cond>}``, in memory, memoised per process so the hooks reuse them):

- :func:`mel_data`: normalised log-mel images ``x`` (1, n_mels, frames) with ``"class"`` or a
  caption embedding ``"text_pooled"`` (MiniLM); per-dataset mean / std normalisation.
- :func:`wave_data`: waveforms ``x`` (1, L), optionally with their log-mel ``"mel"`` (vocoders).
- :func:`latent_mel_data`: the normalised log-mels encoded by a KL autoencoder
  (:mod:`polydiff.nn.autoencoder`, trained once through ``polydiff.train.fit_parameters`` by
  :func:`mel_autoencoder`, then cached): AudioLDM-style latent diffusion (Liu et al. 2023).

Sources: ``notes`` / ``events`` / ``digits`` (built-in, :mod:`polydiff.audio.data`) or
``folder`` (``root=<dir>``, classes from sub-folders, captions from captions.jsonl / .csv).

:class:`VocoderObjective` trains a ``mel -> waveform`` network (mel L1 + MR-STFT) through the
same trainer; its "denoiser" ignores ``x`` and ``sigma`` and returns the vocoder's output (the
regression estimate of ``x0`` from the condition), so a one-step sampler yields it exactly and
``polydiff sample / evaluate`` work on vocoder runs unchanged.

Hooks: :class:`AudioHooks` (mel or waveform diffusion: conditions, WAV + mel PNG, metrics on the
vocoded audio) and :class:`VocoderHooks` (held-out real mels in, vocoder metrics vs Griffin-Lim).
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from auraloss.freq import MultiResolutionSTFTLoss
from safetensors.torch import load_file, save_file

from polydiff.core.fileio import atomic_path
from polydiff.core.metrics import frechet_distance_from_features
from polydiff.nn.autoencoder import AutoencoderConfig, KLAutoencoder, vae_loss
from polydiff.train import fit_parameters
from polydiff.train.data import TensorDictDataset

from .data import (
    EVENT_COUNTS,
    PITCHES,
    AudioClips,
    load_audio_folder,
    midi_to_hz,
    spoken_digits,
    synth_events,
    synth_notes,
)
from .io import save_mel_png, write_wavs
from .metrics import (
    AudioClassifier,
    cache_root,
    load_or_train_classifier,
    log_spectral_distance,
    mel_cepstral_distortion,
    mrstft_distance,
    pitch_accuracy,
)
from .models import VocoderDenoiser, random_segment
from .spectral import GriffinLimVocoder, MelSpectrogramCodec, mel_config
from .vggish import VGGish, load_vggish, vggish_fad

__all__ = [
    "AudioDataset",
    "AudioHooks",
    "VocoderHooks",
    "VocoderObjective",
    "audio_clips",
    "latent_mel_data",
    "load_vocoder",
    "mel_autoencoder",
    "mel_data",
    "text_encoder",
    "wave_data",
]

SOURCES = ("notes", "events", "digits", "folder")


# ------------------------------------------------------------------------------ data
@functools.lru_cache(maxsize=8)
def audio_clips(
    source: str = "notes",
    per_class: int = 8,
    seed: int = 0,
    preset: str = "cpu",
    root: str | None = None,
    on_error: str = "raise",
) -> AudioClips:
    """The clips of a source at the preset's sample rate and clip length (memoised)."""
    cfg = mel_config(preset)
    sr, n = cfg.sample_rate, cfg.num_samples
    if source == "folder":
        if root is None:
            raise ValueError("source='folder' needs data.root=<directory of audio files>")
        clips = load_audio_folder(root, sr, n, on_error=on_error)
        if clips.skipped:
            print(f"polydiff.audio: skipped {len(clips.skipped)} file(s) in {root}: "
                  f"{clips.skipped[:3]}", flush=True)  # fmt: skip
        return clips
    if root is not None:
        raise ValueError(f"data.root={root!r} is only used with source='folder' (got {source!r})")
    if source == "notes":
        return synth_notes(per_class, seed, sample_rate=sr, num_samples=n)
    if source == "events":
        return synth_events(per_class, seed, sample_rate=sr, num_samples=n)
    if source == "digits":
        return spoken_digits(per_class, seed, sample_rate=sr, num_samples=n)
    raise ValueError(f"unknown audio source {source!r}; valid choices: {list(SOURCES)}")


_ENCODERS: dict[str, Any] = {}


def text_encoder(name: str = "minilm") -> Any:
    """The caption encoder (built once per process): ``"minilm"`` (offline all-MiniLM-L6-v2)."""
    if name != "minilm":
        raise ValueError(f"unknown text encoder {name!r}; expected 'minilm'")
    if name not in _ENCODERS:
        from polydiff.nn.text import MiniLMTextEncoder  # optional heavy dependency (tokenizers)

        _ENCODERS[name] = MiniLMTextEncoder()
    return _ENCODERS[name]


def encode_captions(captions: list[str], encoder: str = "minilm") -> torch.Tensor:
    """Pooled caption embeddings (N, D), each distinct caption encoded once."""
    unique = sorted(set(captions))
    pooled = text_encoder(encoder).encode(unique)["text_pooled"].float()
    row = {c: i for i, c in enumerate(unique)}
    return pooled[torch.tensor([row[c] for c in captions])]


class AudioDataset(TensorDictDataset):
    """In-memory items plus what the hooks need: the clips, the preset, the normalisation."""

    def __init__(
        self, clips: AudioClips, preset: str, conditioning: str | None, stats: tuple[float, float],
        x: torch.Tensor, **cond: torch.Tensor,
    ) -> None:  # fmt: skip
        super().__init__(x, **cond)
        self.clips, self.preset, self.conditioning, self.stats = clips, preset, conditioning, stats

    @property
    def num_classes(self) -> int | None:
        return len(self.clips.class_names) if self.clips.labels is not None else None


def _log_mels(wave: torch.Tensor, preset: str) -> torch.Tensor:
    codec = MelSpectrogramCodec(preset)
    with torch.no_grad():
        return torch.cat([codec(wave[i : i + 256]) for i in range(0, len(wave), 256)])


def _conditioning(clips: AudioClips, conditioning: str | None, source: str) -> str | None:
    if conditioning == "auto":
        return "class" if clips.labels is not None else ("text" if clips.captions else None)
    if conditioning == "class" and clips.labels is None:
        raise ValueError(f"conditioning='class' but the {source} data has no classes (sub-folders)")
    if conditioning == "text" and not clips.captions:
        raise ValueError(
            f"conditioning='text' but the {source} data has no captions (captions.jsonl / .csv)"
        )
    if conditioning not in (None, "class", "text"):
        raise ValueError(
            f"conditioning must be null, 'auto', 'class' or 'text', got {conditioning!r}"
        )
    return conditioning


def data_num_classes(
    source: str = "notes",
    root: str | None = None,
    num_classes: int | str | None = None,
    **kw: Any,
) -> int | None:
    """The number of classes the data has; an explicit ``num_classes`` that differs is an error
    naming both values (``"auto"`` = whatever the data has)."""
    if num_classes == "auto":
        num_classes = None
    clips = audio_clips(source, root=root, **kw)
    found = len(clips.class_names) if clips.labels is not None else None
    if num_classes is not None and found is not None and num_classes != found:
        where = root if source == "folder" else f"the {source} data"
        raise ValueError(f"data.num_classes={num_classes} but {where} has {found} classes")
    return found if num_classes is None else num_classes


@functools.lru_cache(maxsize=8)
def mel_data(
    source: str = "notes",
    per_class: int = 8,
    seed: int = 0,
    preset: str = "cpu",
    conditioning: str | None = "auto",
    root: str | None = None,
    on_error: str = "raise",
    num_classes: int | str | None = None,
    text_encoder: str = "minilm",
) -> AudioDataset:
    """Normalised log-mel images ``x`` (N, 1, n_mels, frames) with their condition."""
    clips = audio_clips(source, per_class, seed, preset, root, on_error)
    data_num_classes(source, root, num_classes, per_class=per_class, seed=seed, preset=preset,
                     on_error=on_error)  # fmt: skip
    cond_kind = _conditioning(clips, conditioning, source)
    logmel = _log_mels(clips.wave, preset)
    mean, std = float(logmel.mean()), float(logmel.std())
    x = ((logmel - mean) / std)[:, None]  # (N, 1, M, F)
    cond: dict[str, torch.Tensor] = {}
    if cond_kind == "class":
        cond["class"] = clips.labels
    elif cond_kind == "text":
        cond["text_pooled"] = encode_captions(list(clips.captions or []), text_encoder)
    return AudioDataset(clips, preset, cond_kind, (mean, std), x, **cond)


@functools.lru_cache(maxsize=8)
def wave_data(
    source: str = "notes",
    per_class: int = 8,
    seed: int = 0,
    preset: str = "cpu",
    with_mel: bool = True,
    root: str | None = None,
    on_error: str = "raise",
) -> AudioDataset:
    """Waveforms ``x`` (N, 1, L) and, ``with_mel``, their log-mels ``"mel"`` (N, n_mels, F)."""
    clips = audio_clips(source, per_class, seed, preset, root, on_error)
    cond = {"mel": _log_mels(clips.wave, preset)} if with_mel else {}
    x = clips.wave[:, None].float()
    return AudioDataset(clips, preset, "mel" if with_mel else None, (0.0, 1.0), x, **cond)


# ------------------------------------------------------------------------------ latent mels
class _VAELoss:
    """``loss(ae, x, cond, generator)``: :func:`polydiff.nn.autoencoder.vae_loss` of a batch."""

    def __init__(self, kl_weight: float) -> None:
        self.kl_weight = kl_weight

    def __call__(self, net, x: torch.Tensor, cond=None, generator=None) -> torch.Tensor:
        recon, mean, logvar = net(x, generator=generator)
        return vae_loss(recon, x, mean, logvar, self.kl_weight)[0]


def _autoencoder_file(key: dict, cache_dir: str | None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root(cache_dir) / f"mel-autoencoder-{digest}.safetensors"


def mel_autoencoder(
    data: AudioDataset,
    z_channels: int = 4,
    base_channels: int = 16,
    channel_mult: tuple[int, ...] = (1, 2, 2),
    steps: int = 600,
    batch_size: int = 16,
    lr: float = 2e-3,
    kl_weight: float = 1e-4,
    seed: int = 0,
    cache_dir: str | None = None,
) -> KLAutoencoder:
    """The KL autoencoder of ``data``'s normalised log-mels (LDM / AudioLDM first stage): trained
    by ``polydiff.train.fit_parameters`` (AdamW, seeded), its latent scale factor measured on the
    data, then cached as safetensors keyed by a hash of the data and these settings."""
    cfg = AutoencoderConfig(in_channels=1, z_channels=z_channels, base_channels=base_channels,
                            channel_mult=tuple(channel_mult))  # fmt: skip
    x = data.tensors["x"]
    key = {"config": asdict(cfg), "steps": steps, "batch_size": batch_size, "lr": lr,
           "kl_weight": kl_weight, "seed": seed, "version": 1,
           "data": hashlib.sha256(x.numpy().tobytes()).hexdigest()}  # fmt: skip
    path = _autoencoder_file(key, cache_dir)
    torch.manual_seed(seed)
    ae = KLAutoencoder(cfg)
    if path.is_file():
        ae.load_state_dict(load_file(str(path)))
        return ae.eval().requires_grad_(False)
    fit_parameters(ae, _VAELoss(kl_weight), TensorDictDataset(x), steps=steps, lr=lr,
                   batch_size=batch_size, seed=seed)  # fmt: skip
    ae.eval().requires_grad_(False)
    ae.measure_scale_factor(x)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in ae.state_dict().items()}, str(tmp))
    return ae


class LatentMelDataset(AudioDataset):
    """:class:`AudioDataset` of scaled autoencoder latents ``x`` (N, z, M / f, F / f) that
    decodes them back to normalised log-mels (:meth:`decode`)."""

    autoencoder: KLAutoencoder

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (N, z, h, w) -> normalised log-mel images (N, 1, M, F)."""
        ae = self.autoencoder
        return torch.cat([ae.decode(z[i : i + 64] / ae.scale_factor) for i in range(0, len(z), 64)])


def latent_mel_data(
    autoencoder: Mapping[str, Any] | None = None, cache_dir: str | None = None, **mel: Any
) -> LatentMelDataset:
    """:func:`mel_data` (settings ``mel``) encoded by :func:`mel_autoencoder` (settings
    ``autoencoder``): items ``{"x": latent (z, M / f, F / f), <condition>}`` (posterior means,
    unit variance)."""

    def frozen(d: Mapping[str, Any]) -> tuple:
        return tuple(sorted((k, v if isinstance(v, (str, int, float, type(None))) else tuple(v))
                            for k, v in dict(d).items()))  # fmt: skip

    return _latent_mel_data(frozen(mel), frozen(autoencoder or {}), cache_dir)


@functools.lru_cache(maxsize=4)
def _latent_mel_data(mel: tuple, autoencoder: tuple, cache_dir: str | None) -> LatentMelDataset:
    mels = mel_data(**dict(mel))
    ae = mel_autoencoder(mels, **dict(autoencoder or {}), cache_dir=cache_dir)
    x = mels.tensors["x"]
    z = torch.cat([ae.to_latent(x[i : i + 64]) for i in range(0, len(x), 64)])
    cond = {k: v for k, v in mels.tensors.items() if k != "x"}
    out = LatentMelDataset(mels.clips, mels.preset, mels.conditioning, mels.stats, z, **cond)
    out.autoencoder = ae
    return out


# ------------------------------------------------------------------------------ vocoder objective
class VocoderObjective:
    """Vocoder training loss: ``mel_weight * L1(logmel(G(m)), m) + stft_weight * MR-STFT``
    (HiFi-GAN's mel loss, Kong et al. 2020 Eq. 3, plus auraloss' multi-resolution STFT loss,
    Yamamoto et al. 2020 Eq. 5), on random ``segment_frames``-frame windows of the clips (None:
    whole clips); no adversarial term (:class:`polydiff.audio.gan.GANVocoderObjective` adds it)."""

    def __init__(
        self, preset: str = "cpu", mel_weight: float = 1.0, stft_weight: float = 1.0,
        segment_frames: int | None = None,
    ) -> None:  # fmt: skip
        self.segment_frames = segment_frames
        self.codec = MelSpectrogramCodec(preset)
        self.mrstft = MultiResolutionSTFTLoss()
        self.mel_weight, self.stft_weight = mel_weight, stft_weight

    def loss(
        self, net: torch.nn.Module, x: torch.Tensor, cond: Mapping | None, generator: Any = None
    ) -> torch.Tensor:
        if cond is None or "mel" not in cond:
            raise KeyError("VocoderObjective needs items with 'mel' (use wave_data(with_mel=True))")
        x, mel = random_segment(x, cond["mel"], self.segment_frames, generator)
        y = net(mel)  # (B, 1, L)
        mel_loss = F.l1_loss(self.codec(y), mel)
        return self.mel_weight * mel_loss + self.stft_weight * self.mrstft(y, x)

    def denoiser(self, net: torch.nn.Module) -> VocoderDenoiser:
        return VocoderDenoiser(net)


# ------------------------------------------------------------------------------ vocoders
Vocoder = Callable[[torch.Tensor], torch.Tensor]  # log-mel (B, M, F) -> wave (B, L)


def load_vocoder(spec: str, preset: str = "cpu", griffin_lim_iters: int = 32) -> Vocoder:
    """``"griffinlim"`` or the directory of a trained vocoder run (Vocos-style or a
    mel-conditioned DiffWave, sampled with the run's own sampler)."""
    if spec == "griffinlim":
        return GriffinLimVocoder(MelSpectrogramCodec(preset), n_iter=griffin_lim_iters)
    from polydiff.train.run import open_run
    from polydiff.train.sampling import generate

    run = open_run(spec)
    den = run.denoiser(guidance=False)

    @torch.no_grad()
    def vocode(logmel: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(logmel), 16):
            mel = logmel[i : i + 16].float()
            shape = (1, mel.shape[-1] * mel_config(preset).hop_length)
            gen = torch.Generator().manual_seed(i)
            out.append(generate(den, shape, len(mel), run.sampler, cond={"mel": mel},
                                generator=gen)[:, 0])  # fmt: skip
        return torch.cat(out)

    return vocode


def timed_vocode(vocoder: Vocoder, logmel: torch.Tensor, sample_rate: int):
    """``(wave, real-time factor)``: CPU-wall seconds spent / seconds of audio produced."""
    t0 = time.perf_counter()
    with torch.no_grad():
        wave = vocoder(logmel)
    seconds = time.perf_counter() - t0
    return wave.reshape(len(logmel), -1), seconds / (wave.numel() / sample_rate)


# ------------------------------------------------------------------------------ hooks
class AudioHooks:
    """``polydiff.train.hooks`` of mel and waveform diffusion.

    ``dataset`` is the training :class:`AudioDataset` (normalisation, classes, captions);
    ``representation`` ``"mel"`` (samples are normalised log-mels, vocoded by ``vocoder``:
    ``"griffinlim"`` or a vocoder run directory), ``"latent"`` (autoencoder latents of a
    :func:`latent_mel_data`, decoded to log-mels, then as ``"mel"``) or ``"wave"``.
    ``metrics``: ``"notes"`` (pitch / instrument accuracy, FAD), ``"events"`` (event / count
    accuracy, FAD), or None.
    ``reference`` is held-out real data for the Frechet distance and its real-vs-real floor
    (``fad_real_floor``: as many real training clips as samples); ``fad_vocoder_floor`` is that
    floor with the clips' log-mels vocoded as the samples are (mel and latent runs), so the
    share of ``fad`` the vocoder alone accounts for is visible.
    The metric classifier trains ``classifier_steps`` on ``classifier_per_class`` clips per
    class (default 6 notes / 24 events) of another seed of the built-in set, then is cached.
    ``vggish``: a VGGish weights file (:func:`polydiff.audio.vggish.load_vggish`): adds the
    VGGish FAD and its real-vs-real floor (``fad_vggish``, ``fad_vggish_real_floor``).
    """

    def __init__(
        self,
        dataset: AudioDataset,
        representation: str = "mel",
        vocoder: str = "griffinlim",
        metrics: str | None = None,
        reference: AudioDataset | None = None,
        cache_dir: str | None = None,
        classifier_steps: int = 300,
        griffin_lim_iters: int = 32,
        max_files: int = 32,
        classifier_per_class: int | None = None,
        vggish: str | None = None,
    ) -> None:
        if representation not in ("mel", "latent", "wave"):
            raise ValueError(
                f"representation must be 'mel', 'latent' or 'wave', got {representation!r}"
            )
        if representation == "latent" and not isinstance(dataset, LatentMelDataset):
            raise ValueError("representation='latent' needs a latent_mel_data dataset")
        if metrics not in (None, "notes", "events"):
            raise ValueError(f"metrics must be null, 'notes' or 'events', got {metrics!r}")
        self.dataset, self.representation, self.metrics = dataset, representation, metrics
        self.vocoder_spec, self.reference = vocoder, reference or dataset
        self.cache_dir, self.classifier_steps = cache_dir, classifier_steps
        self.griffin_lim_iters, self.max_files = griffin_lim_iters, max_files
        self.classifier_per_class = classifier_per_class
        self.vggish_path = vggish
        self._vggish: VGGish | None = None
        self.sample_rate = mel_config(dataset.preset).sample_rate
        self._vocoder: Vocoder | None = None
        self._prompts: list[str] | None = None
        self.last_rtf: float | None = None

    # -- conditions
    def sample_cond(self, n: int, generator: torch.Generator | None) -> dict | None:
        kind = self.dataset.conditioning
        if kind == "class":
            return {"class": torch.arange(n) % int(self.dataset.num_classes or 1)}
        if kind == "text":
            pool = sorted(set(self.dataset.clips.captions or []))
            idx = torch.randint(0, len(pool), (n,), generator=generator)
            self._prompts = [pool[i] for i in idx.tolist()]
            return {"text_pooled": encode_captions(self._prompts)}
        return None

    # -- spaces
    def to_data(self, x: torch.Tensor) -> torch.Tensor:
        if self.representation == "latent":
            x = self.dataset.decode(x)  # (N, 1, M, F) normalised log-mel
        if self.representation != "wave":
            mean, std = self.dataset.stats
            return x[:, 0] * std + mean  # (N, n_mels, F) log-mel
        return x[:, 0].clamp(-1, 1)  # (N, L)

    def vocoder(self) -> Vocoder:
        if self._vocoder is None:
            self._vocoder = load_vocoder(self.vocoder_spec, self.dataset.preset,
                                         self.griffin_lim_iters)  # fmt: skip
        return self._vocoder

    def waves(self, samples: torch.Tensor) -> torch.Tensor:
        """Samples in data space -> waveforms (N, L); records the vocoder's real-time factor."""
        if self.representation == "wave":
            return samples.reshape(len(samples), -1)
        wave, self.last_rtf = timed_vocode(self.vocoder(), samples, self.sample_rate)
        return wave

    def _titles(self, cond: Mapping | None, n: int) -> list[str] | None:
        if self._prompts is not None and self.dataset.conditioning == "text":
            return self._prompts[:n]
        if cond is not None and "class" in cond:
            names = self.dataset.clips.class_names
            return [names[int(c)] for c in cond["class"][:n]]
        return None

    # -- files
    def write(self, samples: torch.Tensor, cond: Mapping | None, out_dir: Path) -> list[Path]:
        out_dir = Path(out_dir)
        n = min(len(samples), self.max_files)
        wave = self.waves(samples[:n])
        files = write_wavs(out_dir, wave, self.sample_rate)
        mel = samples[:n] if self.representation != "wave" else _log_mels(wave, self.dataset.preset)
        files.append(save_mel_png(out_dir / "mels.png", mel[:16], self._titles(cond, 16)))
        if self.last_rtf is not None:
            print(f"polydiff.audio: vocoder {self.vocoder_spec} real-time factor "
                  f"{self.last_rtf:.4f} ({n} clips)", flush=True)  # fmt: skip
        return files

    def extra_npz(self, cond: Mapping | None) -> dict[str, np.ndarray]:
        if self.dataset.conditioning == "text" and self._prompts is not None:
            return {"prompts": np.asarray(self._prompts)}
        return {}

    # -- metrics
    def classifier(self) -> AudioClassifier:
        """The metric network of ``metrics`` (trained on its own seed of the built-in data)."""
        preset = self.dataset.preset
        source = self.metrics
        per_class = self.classifier_per_class or (6 if source == "notes" else 24)

        def clips() -> AudioClips:
            return audio_clips(source, per_class, 1000, preset)

        def labels() -> list[torch.Tensor]:
            y = clips().labels
            k = len(PITCHES) if source == "notes" else len(EVENT_COUNTS)
            return [y // k, y % k]

        key = {"source": source, "per_class": per_class, "seed": 1000}
        return load_or_train_classifier(key, lambda: clips().wave, labels, self.cache_dir,
                                        self.classifier_steps, preset)  # fmt: skip

    def evaluate(self, samples: torch.Tensor, cond: Mapping | None) -> dict[str, float]:
        if self.metrics is None:  # own data: only the VGGish FAD (against the training clips)
            if self.vggish_path is None:
                return {}
            wave = self.waves(samples)
            return {**self._vggish_scores(wave), "n": float(len(wave))}
        wave = self.waves(samples)
        net = self.classifier()
        mel = _log_mels(wave, self.dataset.preset)
        with torch.no_grad():
            logits = net(mel)
            fake = net.features(mel)
            real = net.features(_log_mels(self.reference.clips.wave, self.dataset.preset))
            train = net.features(_log_mels(self.dataset.clips.wave, self.dataset.preset))
        # the floor: as many real training clips as samples, against the same reference
        out: dict[str, float] = {
            "fad": float(frechet_distance_from_features(real, fake)),
            "fad_real_floor": float(frechet_distance_from_features(real, train[: len(fake)])),
            "n": float(len(wave)),
        }
        if self.representation != "wave":  # the same real clips through the samples' vocoder
            out["fad_vocoder_floor"] = self._vocoder_floor(real, len(fake))
        out.update(self._vggish_scores(wave))
        if self.last_rtf is not None:
            out["vocoder_rtf"] = float(self.last_rtf)
        requested = self._requested(cond, len(wave))
        if requested is not None:
            a, b = requested
            pa, pb = logits[0].argmax(-1), logits[1].argmax(-1)
            notes = self.metrics == "notes"
            first, second = ("instrument", "pitch") if notes else ("event", "count")
            out[f"{first}_accuracy"] = float((pa == a).float().mean())
            out[f"{second}_class_accuracy"] = float((pb == b).float().mean())
            out["both_accuracy"] = float(((pa == a) & (pb == b)).float().mean())
            if self.metrics == "notes":
                hz = midi_to_hz(torch.tensor([PITCHES[int(i)] for i in b]).double()).numpy()
                out.update(pitch_accuracy(wave, hz, self.sample_rate))
        return out

    def _vocoder_floor(self, real: torch.Tensor, n: int) -> float:
        """FAD of the floor's real clips after their log-mels went through the vocoder that
        turns samples into audio: the share of ``fad`` the vocoder alone accounts for."""
        preset = self.dataset.preset
        mel = _log_mels(self.dataset.clips.wave[:n], preset)
        with torch.no_grad():
            wave = self.vocoder()(mel).reshape(len(mel), -1)
            feats = self.classifier().features(_log_mels(wave, preset))
        return float(frechet_distance_from_features(real, feats))

    def _vggish_scores(self, wave: torch.Tensor) -> dict[str, float]:
        """VGGish FAD of ``wave`` vs the reference clips, and the real-vs-real floor (as many
        training clips as samples); empty without ``vggish`` weights."""
        if self.vggish_path is None:
            return {}
        if self._vggish is None:
            self._vggish = load_vggish(self.vggish_path)
        ref, train = self.reference.clips.wave, self.dataset.clips.wave[: len(wave)]
        return {
            "fad_vggish": vggish_fad(self._vggish, ref, wave),
            "fad_vggish_real_floor": vggish_fad(self._vggish, ref, train),
        }

    def _requested(self, cond: Mapping | None, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The requested (instrument, pitch) or (event, count) labels of the samples."""
        if self.dataset.clips.class_names == [] or self.dataset.conditioning is None:
            return None
        k = len(PITCHES) if self.metrics == "notes" else len(EVENT_COUNTS)
        if self.dataset.conditioning == "class" and cond is not None and "class" in cond:
            y = cond["class"].cpu()
        elif self.dataset.conditioning == "text" and self._prompts is not None:
            names = self.dataset.clips.class_names
            y = torch.tensor([names.index(p) for p in self._prompts[:n]])
        else:
            return None
        return y // k, y % k


class VocoderHooks:
    """Hooks of vocoder runs: held-out real log-mels in (``reference``, a :func:`wave_data`
    with mels), metrics of the vocoded audio vs the real audio, beside Griffin-Lim on the same
    mels: MR-STFT, LSD, MCD, pitch accuracy (notes), and Griffin-Lim's real-time factor."""

    def __init__(
        self, reference: AudioDataset, griffin_lim_iters: int = 32, max_files: int = 16,
        pitch: bool | None = None,
    ) -> None:  # fmt: skip
        if "mel" not in reference.tensors:
            raise ValueError("VocoderHooks needs a reference wave_data(with_mel=True)")
        self.reference, self.max_files = reference, max_files
        self.griffin_lim_iters = griffin_lim_iters
        self.sample_rate = mel_config(reference.preset).sample_rate
        names = reference.clips.class_names
        if pitch is None:  # the notes: score the requested pitch of each clip
            pitch = len(names) % len(PITCHES) == 0 and " note at " in names[0]
        self.pitch = pitch

    def sample_cond(self, n: int, generator: torch.Generator | None) -> dict:
        total = len(self.reference)
        if n > total:
            raise ValueError(f"asked for {n} vocoded clips but the reference set has {total}")
        return {"mel": self.reference.tensors["mel"][:n]}

    def to_data(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), -1)

    def write(self, samples: torch.Tensor, cond: Mapping | None, out_dir: Path) -> list[Path]:
        n = min(len(samples), self.max_files)
        files = write_wavs(out_dir, samples[:n], self.sample_rate)
        mel = _log_mels(samples[:n], self.reference.preset)
        files.append(save_mel_png(Path(out_dir) / "mels.png", mel[:16]))
        return files

    def _scores(self, wave: torch.Tensor, real: torch.Tensor, labels) -> dict[str, float]:
        preset = self.reference.preset
        out = {
            "mrstft": float(mrstft_distance(wave, real).mean()),
            "lsd": float(log_spectral_distance(wave, real, preset).mean()),
            "mcd": float(mel_cepstral_distortion(wave, real, preset).mean()),
        }
        if self.pitch and labels is not None:
            hz = midi_to_hz(torch.tensor([PITCHES[int(y) % len(PITCHES)] for y in labels]).double())
            p = pitch_accuracy(wave, hz.numpy(), self.sample_rate)
            out["pitch_accuracy"] = p["pitch_accuracy"]
            out["pitch_error_cents"] = p["pitch_error_cents"]
        return out

    def evaluate(self, samples: torch.Tensor, cond: Mapping | None) -> dict[str, float]:
        n = len(samples)
        real = self.reference.clips.wave[:n]
        labels = self.reference.clips.labels
        labels = None if labels is None else labels[:n]
        gl = GriffinLimVocoder(MelSpectrogramCodec(self.reference.preset), self.griffin_lim_iters)
        gl_wave, gl_rtf = timed_vocode(gl, self.reference.tensors["mel"][:n], self.sample_rate)
        out = self._scores(samples.reshape(n, -1), real, labels)
        out.update({f"griffinlim_{k}": v for k, v in self._scores(gl_wave, real, labels).items()})
        out["griffinlim_rtf"] = gl_rtf
        out["n"] = float(n)
        return out
