"""Audio networks: the 2-D U-Net on mel images, a Vocos-style vocoder, a DiffWave network.

- :func:`audio_unet`: :class:`polydiff.nn.UNet` (2-D, 1 channel) on ``(B, 1, n_mels, frames)``
  log-mel images, of a named size (:data:`AUDIO_UNET_SIZES`), with class labels
  (``cond["class"]``) or a pooled caption embedding (``cond["text_pooled"]``);
  ``pitch_map=True`` gives :class:`PitchConditionedUNet` for the notes' (instrument, pitch)
  labels.
- :class:`VocosVocoder`: Vocos (Siuzdak 2023): ConvNeXt blocks at the frame rate and an ISTFT
  head predicting log-magnitude and phase (``torch.istft``); ``forward(logmel) -> wave``.
- :class:`DiffWave`: DiffWave (Kong et al. 2021): a stack of dilated residual 1-D convolutions
  with gated tanh/sigmoid units, diffusion-step embedding and (optionally) an upsampled mel
  condition; ``forward(x (B, 1, L), t (B,), cond) -> (B, 1, L)``. Mel-conditioned it is a
  vocoder, unconditional a waveform generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from polydiff.nn import UNet
from polydiff.nn.embeddings import TimestepMLP, as_batch_t

from .data import PITCHES, folder_conditioning, midi_to_hz
from .spectral import MelSpectrogramCodec, harmonic_comb, locked_phase, mel_config

__all__ = [
    "AUDIO_UNET_SIZES",
    "DIFFWAVE_SIZES",
    "VOCODER_PHASES",
    "VOCODER_SIZES",
    "DiffWave",
    "PitchConditionedUNet",
    "VocoderDenoiser",
    "VocosVocoder",
    "audio_unet",
    "diffwave",
    "num_parameters",
    "random_segment",
    "vocos_vocoder",
]

CAPTION_DIM = 384  # all-MiniLM-L6-v2 pooled embedding

AUDIO_UNET_SIZES: dict[str, dict[str, Any]] = {
    # the "audio-" prefix keeps every U-Net size name project-wide unique: "tiny" / "small" are
    # polydiff.nn.UNET_SIZES' networks (runs saved before config version 3 are migrated on open)
    # seconds-long tests
    "audio-tiny": dict(model_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                       attention_levels=(2,), num_heads=2),
    # CPU recipes on 64x64 mels (~5 M parameters): narrow at full resolution, wide at 8x8, where
    # the attention runs (a CPU step costs about channels^2 x pixels per level)
    "audio-small": dict(model_channels=16, channel_mult=(1, 2, 4, 8), num_res_blocks=1,
                        attention_levels=(3,), num_heads=4),
    "audio-base": dict(model_channels=32, channel_mult=(1, 2, 4, 8), num_res_blocks=2,
                       attention_levels=(2, 3), num_heads=4),
    # 16x16 mel latents (64x64 mels / 4): ~2.9 M parameters at a quarter of audio-small's CPU cost
    "audio-latent": dict(model_channels=32, channel_mult=(1, 2, 4), num_res_blocks=1,
                         attention_levels=(2,), num_heads=4),
}  # fmt: skip


def _lookup(table: dict[str, dict[str, Any]], size: str, what: str) -> dict[str, Any]:
    if size not in table:
        raise KeyError(f"unknown {what} size {size!r}; available: {sorted(table)}")
    return dict(table[size])


def num_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def audio_unet(
    size: str = "audio-small",
    n_mels: int = 64,
    frames: int = 64,
    num_classes: int | str | None = None,
    pooled_dim: int | str | None = None,
    data_root: str | None = None,
    in_channels: int = 1,
    pitch_map: bool = False,
    preset: str = "cpu",
    **overrides: Any,
) -> UNet:
    """A 2-D U-Net of a named size on ``(B, in_channels, n_mels, frames)`` log-mel images (or
    ``in_channels``-channel mel latents, then ``n_mels`` x ``frames`` is the latent grid).

    ``num_classes`` / ``pooled_dim`` ``"auto"``: read from the audio folder ``data_root`` (class
    sub-folders -> their count; else a captions file -> the MiniLM width 384; else none).
    ``pitch_map``: the notes' labels also as a factorised vector and a harmonic comb on the mel
    axis of ``preset`` (:class:`PitchConditionedUNet`).
    """
    if "auto" in (num_classes, pooled_dim):
        if data_root is None:
            raise ValueError("num_classes / text_dim 'auto' need data.root=<audio folder>")
        kind, count = folder_conditioning(data_root)
        if num_classes == "auto":
            num_classes = count if kind == "class" else None
        if pooled_dim == "auto":
            pooled_dim = CAPTION_DIM if kind == "text" else None
    cfg = _lookup(AUDIO_UNET_SIZES, size, "audio U-Net")
    cfg.update(overrides)
    factor = 2 ** (len(cfg["channel_mult"]) - 1)
    if n_mels % factor or frames % factor:
        raise ValueError(
            f"n_mels {n_mels} and frames {frames} must be divisible by {factor} for audio U-Net "
            f"size {size!r}"
        )
    if pitch_map:
        if pooled_dim is not None:
            raise ValueError("pitch_map conditions on the notes' class labels, not captions")
        return PitchConditionedUNet(num_classes, preset, n_mels, in_channels, **cfg)
    return UNet(
        dims=2, in_channels=in_channels, num_classes=num_classes, pooled_dim=pooled_dim, **cfg
    )


class PitchConditionedUNet(UNet):
    """The notes U-Net: a joint label ``y = instrument * P + pitch`` (:data:`PITCHES`, P = 24)
    enters as (1) its class embedding, (2) a one-hot (instrument, pitch) vector through the
    embedding MLP (shared across the other factor), and (3) the pitch's harmonic comb on the mel
    axis (:func:`polydiff.audio.spectral.harmonic_comb`) as extra input channels broadcast over
    the frames. A convolutional network is close to shift-equivariant along frequency, so a
    label that enters only through the (spatially uniform) embedding leaves it to infer the
    absolute mel row of each partial; the comb hands it over as a map, as CoordConv (Liu et al.
    2018) and frequency-aware CNNs (Koutini et al. 2019) hand over coordinates. Rows with
    ``cond["null_mask"]`` (classifier-free guidance) see none of the three.

    On a grid of ``n_mels`` rows that is ``f`` times coarser than the preset's mel axis (the
    latents of a convolutional autoencoder downsampling by ``f``), the comb is folded
    space-to-depth into ``f`` channels: channel ``j`` of row ``r`` is mel bin ``f * r + j``.
    """

    def __init__(
        self, num_classes: int, preset: str = "cpu", n_mels: int = 64, in_channels: int = 1,
        **unet: Any,
    ) -> None:  # fmt: skip
        p = len(PITCHES)
        if not isinstance(num_classes, int) or num_classes < p or num_classes % p:
            raise ValueError(
                f"pitch_map needs the notes labels instrument * {p} + pitch: num_classes must "
                f"be a positive multiple of {p}, got {num_classes!r}"
            )
        mels = mel_config(preset).n_mels
        if n_mels < 1 or mels % n_mels:
            raise ValueError(
                f"pitch_map needs a grid whose {n_mels} rows divide the {mels} mels of preset "
                f"{preset!r} (the mel image or a latent downsampling it)"
            )
        self.instruments, self.fold = num_classes // p, mels // n_mels
        super().__init__(dims=2, in_channels=in_channels, num_classes=num_classes,
                         concat_channels=self.fold, cond_dim=self.instruments + p,
                         **unet)  # fmt: skip
        comb = harmonic_comb(midi_to_hz(torch.tensor(PITCHES, dtype=torch.float64)), preset)
        comb = comb.reshape(p, n_mels, self.fold).transpose(1, 2)  # (P, f, rows): mel f * r + j
        self.register_buffer("comb", comb.contiguous(), persistent=False)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, torch.Tensor] | None = None,
        **kw: Any,
    ) -> torch.Tensor:  # fmt: skip
        if cond is not None and cond.get("class") is not None:
            y = cond["class"].long()
            p = len(PITCHES)
            pitch, inst = y % p, y // p
            vec = torch.cat([F.one_hot(inst, self.instruments), F.one_hot(pitch, p)], dim=1)
            comb = self.comb[pitch].to(x.dtype)[..., None]  # (B, f, rows, 1)
            comb = comb.expand(-1, -1, -1, x.shape[-1])  # (B, f, rows, frames)
            cond = {**cond, "vector": vec.to(x.dtype), "concat": comb}
        return super().forward(x, t, cond, **kw)


# ---------------------------------------------------------------------------- Vocos vocoder
def random_segment(
    wave: torch.Tensor, mel: torch.Tensor, frames: int | None, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random window of ``frames`` mel frames from each clip of ``wave`` (B, 1, L) and
    ``mel`` (B, M, F), with ``L // F`` samples per frame (HiFi-GAN's training segments);
    ``frames`` None or >= F: the whole clips."""
    total = mel.shape[-1]
    if frames is None or frames >= total:
        return wave, mel
    hop = wave.shape[-1] // total
    dev = generator.device if generator is not None else mel.device
    start = torch.randint(0, total - frames + 1, (len(mel),), generator=generator, device=dev)
    start = start.to(mel.device)
    idx = start[:, None] + torch.arange(frames, device=mel.device)  # (B, frames)
    mel = torch.gather(mel, 2, idx[:, None].expand(-1, mel.shape[1], -1))
    sidx = (start * hop)[:, None] + torch.arange(frames * hop, device=wave.device)
    wave = torch.gather(wave, 2, sidx[:, None].expand(-1, wave.shape[1], -1))
    return wave, mel


class VocoderDenoiser:
    """``D(x, sigma, cond) = vocoder(cond["mel"])``: the denoiser of a deterministic regressor
    (a one-step sampler to sigma 0 returns the vocoder's output exactly)."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: Mapping | None = None
    ) -> torch.Tensor:
        if cond is None or cond.get("mel") is None:
            raise KeyError("a vocoder run needs cond['mel'] (log-mel spectrograms)")
        return self.net(cond["mel"]).to(x.dtype).reshape(x.shape)


class ConvNeXtBlock1d(nn.Module):
    """ConvNeXt block (Liu et al. 2022) in 1-D: depthwise conv 7, LayerNorm, MLP x3, layer scale."""

    def __init__(self, dim: int, mult: int = 3, layer_scale: float = 1e-2) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1, self.pw2 = nn.Linear(dim, mult * dim), nn.Linear(mult * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).transpose(1, 2)  # (B, F, D)
        h = self.pw2(F.gelu(self.pw1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


VOCODER_PHASES = ("direct", "if", "locked")  # VocosVocoder(phase=...): see its docstring
VOCODER_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(dim=32, layers=2),
    "small": dict(dim=128, layers=6),
    "base": dict(dim=512, layers=8),  # Vocos' own size
}


class VocosVocoder(nn.Module):
    """Vocos-style vocoder: log-mel ``(B, n_mels, F)`` -> waveform ``(B, 1, F * hop)``.

    The backbone runs at the frame rate; the head predicts per-frame log-magnitude and phase of
    ``n_fft // 2 + 1`` bins, and ``torch.istft`` (centred, Hann) synthesises the waveform
    (Siuzdak 2023, Eq. 1-2). One extra frame is appended (edge-replicated) so the output has
    exactly ``F * hop`` samples.

    ``phase`` says what the head's second half means:

    - ``"direct"``: the phase angle of each frame (Vocos);
    - ``"if"``: the instantaneous frequency, as GANSynth (Engel et al. 2019, sec. 3.1) models
      it: the phase advance of bin ``k`` over one hop, ``omega_k hop + pi tanh(d_t[k])``
      (``omega_k = 2 pi k / n_fft``; the tanh covers every wrapped advance), integrated over the
      frames, ``phi_t[k] = sum_{s <= t} (omega_k hop + pi tanh(d_s[k]))`` (the phase vocoder's
      synthesis, Flanagan & Golden 1966). A frame-rate convolutional backbone is close to
      shift-equivariant in time: on a steady note its features, hence a directly predicted
      phase, are the same in every frame, which synthesises partials only on the
      ``sample_rate / hop`` grid; a steady advance is what a steady partial needs, so the
      frequency of a partial is a function of the local mel only;
    - ``"locked"``: none; the head predicts the log-magnitude only and the phase is the
      phase-locked vocoder's (:func:`~polydiff.audio.spectral.locked_phase`: partial frequencies
      from the magnitude peaks, one phase per partial, integrated over frames), as TiFGAN
      (Marafioti et al. 2019) generates magnitudes and reconstructs their phase. Measured on the
      notes (``benchmarks/results/audio.md``): the direct head's partials sit on the 62.5 Hz hop
      grid (a pure mallet tone misses its pitch), the locked head's at their own frequency.

    ``mel_prior`` (a mel preset name, e.g. ``"cpu"``) adds the log of the mel mapped back to
    linear frequency by the pseudo-inverse of that preset's filterbank (a least-squares inverse,
    as Griffin-Lim starts from) to the predicted log-magnitude, so the head learns a correction
    of a spectrum whose partials are already near their frequency instead of placing them from
    the 47 Hz-wide low mel bands.
    """

    def __init__(
        self, n_mels: int = 64, n_fft: int = 1024, hop_length: int = 256, dim: int = 128,
        layers: int = 6, phase: str = "direct", mel_prior: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        if phase not in VOCODER_PHASES:
            raise ValueError(f"unknown vocoder phase {phase!r}; available: {list(VOCODER_PHASES)}")
        self.n_mels, self.n_fft, self.hop_length, self.phase = n_mels, n_fft, hop_length, phase
        self.mel_prior = mel_prior
        if mel_prior is not None:  # the least-squares inverse of the preset's mel filterbank
            c = mel_config(mel_prior)
            if (c.n_mels, c.n_fft, c.hop_length) != (n_mels, n_fft, hop_length):
                raise ValueError(
                    f"mel_prior preset {mel_prior!r} has n_mels / n_fft / hop "
                    f"{c.n_mels} / {c.n_fft} / {c.hop_length}, the vocoder "
                    f"{n_mels} / {n_fft} / {hop_length}"
                )
            fb = MelSpectrogramCodec(c).melspec.mel_scale.fb.double()  # (K, M)
            self.register_buffer("prior", torch.linalg.pinv(fb.T).float(), persistent=False)
        self.embed = nn.Conv1d(n_mels, dim, 7, padding=3)
        self.norm_in = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.Sequential(*[ConvNeXtBlock1d(dim) for _ in range(layers)])
        self.norm_out = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, (1 if phase == "locked" else 2) * (n_fft // 2 + 1))
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        # omega_k * hop modulo 2 pi, from integers (exact): the advance of bin k's own frequency
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
        advance = 2 * math.pi * torch.remainder(k * hop_length, n_fft) / n_fft
        self.register_buffer("bin_advance", advance.float()[:, None], persistent=False)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        if logmel.ndim != 3 or logmel.shape[1] != self.n_mels:
            raise ValueError(
                f"VocosVocoder expects log-mel (B, {self.n_mels}, F), got {tuple(logmel.shape)}"
            )
        frames = logmel.shape[-1]
        logmel = F.pad(logmel, (0, 1), mode="replicate")  # (B, M, F + 1)
        m = (logmel + 5.0) / 5.0  # ~unit scale
        h = self.norm_in(self.embed(m).transpose(1, 2)).transpose(1, 2)
        h = self.norm_out(self.blocks(h).transpose(1, 2))  # (B, F + 1, D)
        out = self.head(h).transpose(1, 2)  # (B, K or 2K, F + 1)
        if self.mel_prior is not None:  # the head corrects log(pinv(fb) mel) (phase: locked)
            lin = torch.einsum("km,bmf->bkf", self.prior, torch.exp(logmel))
            out = torch.cat([out[:, : self.n_fft // 2 + 1] + torch.log(lin.clamp(min=1e-5)),
                             out[:, self.n_fft // 2 + 1 :]], dim=1)  # fmt: skip
        if self.phase == "locked":
            mag = torch.exp(out).clamp(max=1e2)
            phase = locked_phase(mag, self.n_fft, self.hop_length)
        else:
            log_mag, phase = out.chunk(2, dim=1)  # (B, K, F + 1) each
            if self.phase == "if":  # integrate the per-hop advance (GANSynth's IF)
                phase = torch.cumsum(self.bin_advance + math.pi * torch.tanh(phase), dim=-1)
            mag = torch.exp(log_mag).clamp(max=1e2)
        spec = torch.polar(mag, phase)  # phase as an angle, as Vocos (cos, sin of p)
        wave = torch.istft(
            spec, self.n_fft, self.hop_length, self.n_fft, self.window, center=True,
            length=frames * self.hop_length,
        )  # fmt: skip
        return wave[:, None]  # (B, 1, F * hop)


def vocos_vocoder(
    size: str = "small", n_mels: int = 64, n_fft: int = 1024, hop_length: int = 256, **overrides
) -> VocosVocoder:
    """A :class:`VocosVocoder` of a named size (:data:`VOCODER_SIZES`)."""
    cfg = _lookup(VOCODER_SIZES, size, "Vocos vocoder")
    cfg.update(overrides)
    return VocosVocoder(n_mels=n_mels, n_fft=n_fft, hop_length=hop_length, **cfg)


# ---------------------------------------------------------------------------- DiffWave
class _ResidualLayer(nn.Module):
    """DiffWave residual layer (Fig. 2): dilated conv + step + mel, gated unit, 1x1 res/skip."""

    def __init__(self, channels: int, dilation: int, emb_dim: int, n_mels: int | None) -> None:
        super().__init__()
        self.dilated = nn.Conv1d(channels, 2 * channels, 3, padding=dilation, dilation=dilation)
        self.step = nn.Linear(emb_dim, channels)
        self.cond = nn.Conv1d(n_mels, 2 * channels, 1) if n_mels else None
        self.out = nn.Conv1d(channels, 2 * channels, 1)

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, mel: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.dilated(x + self.step(emb)[..., None])  # (B, 2C, L)
        if self.cond is not None and mel is not None:
            h = h + self.cond(mel)
        gate, filt = h.chunk(2, dim=1)
        h = torch.sigmoid(gate) * torch.tanh(filt)
        res, skip = self.out(h).chunk(2, dim=1)
        return (x + res) / math.sqrt(2.0), skip


DIFFWAVE_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(channels=16, layers=4, cycle=4),
    "small": dict(channels=48, layers=12, cycle=6),
    "base": dict(channels=64, layers=30, cycle=10),  # DiffWave's vocoder (Kong et al. 2021)
}


class DiffWave(nn.Module):
    """DiffWave network ``(x (B, 1, L), t (B,), cond) -> (B, 1, L)`` (Kong et al. 2021).

    ``n_mels`` set: ``cond["mel"]`` ``(B, n_mels, L // hop)`` log-mels, upsampled to the sample
    rate by transposed 2-D convolutions (stride ``hop`` split over two layers, as the paper).
    Condition dropout (``cond["null_mask"]``) zeroes the mel of the dropped rows.
    """

    def __init__(
        self, channels: int = 64, layers: int = 30, cycle: int = 10, n_mels: int | None = None,
        hop_length: int = 256, emb_dim: int = 128,
    ) -> None:  # fmt: skip
        super().__init__()
        self.n_mels, self.hop_length = n_mels, hop_length
        self.accepts_null_mask = n_mels is not None
        self.inp = nn.Conv1d(1, channels, 1)
        self.embed = TimestepMLP(emb_dim, freq_dim=emb_dim)
        if n_mels:
            s1 = 2 ** (int(math.log2(hop_length)) // 2)
            if hop_length % s1:
                raise ValueError(f"hop_length {hop_length} must be a power of two")
            s2 = hop_length // s1
            self.upsample = nn.ModuleList(
                [
                    nn.ConvTranspose2d(1, 1, (3, 2 * s), stride=(1, s), padding=(1, s // 2))
                    for s in (s1, s2)
                ]
            )
        self.layers = nn.ModuleList(
            [_ResidualLayer(channels, 2 ** (i % cycle), emb_dim, n_mels) for i in range(layers)]
        )
        self.skip_out = nn.Conv1d(channels, channels, 1)
        self.out = nn.Conv1d(channels, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _mel(self, cond: Mapping[str, torch.Tensor] | None, length: int) -> torch.Tensor | None:
        if not self.n_mels:
            return None
        if cond is None or cond.get("mel") is None:
            raise KeyError(
                f"this DiffWave is mel-conditioned ({self.n_mels} mels): pass cond['mel']"
            )
        mel = (cond["mel"].float() + 5.0) / 5.0  # (B, M, F)
        null = cond.get("null_mask")
        if null is not None:
            mel = mel * (~null.bool()).to(mel.dtype)[:, None, None]
        h = mel[:, None]  # (B, 1, M, F)
        for up in self.upsample:
            h = F.leaky_relu(up(h), 0.4)
        h = h[:, 0]  # (B, M, F * hop)
        if h.shape[-1] != length:
            raise ValueError(f"mel of {mel.shape[-1]} frames x hop {self.hop_length} != {length}")
        return h

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != 1:
            raise ValueError(f"DiffWave expects x of shape (B, 1, L), got {tuple(x.shape)}")
        emb = self.embed(as_batch_t(t, x.shape[0], x.device))  # (B, E)
        mel = self._mel(cond, x.shape[-1])
        h = F.relu(self.inp(x))  # (B, C, L)
        skips = 0.0
        for layer in self.layers:
            h, skip = layer(h, emb, mel)
            skips = skips + skip
        h = F.relu(self.skip_out(skips / math.sqrt(len(self.layers))))
        return self.out(h)


def diffwave(
    size: str = "small", n_mels: int | None = None, hop_length: int = 256, **overrides: Any
) -> DiffWave:
    """A :class:`DiffWave` of a named size (:data:`DIFFWAVE_SIZES`); ``n_mels`` = vocoder."""
    cfg = _lookup(DIFFWAVE_SIZES, size, "DiffWave")
    cfg.update(overrides)
    return DiffWave(n_mels=n_mels, hop_length=hop_length, **cfg)
