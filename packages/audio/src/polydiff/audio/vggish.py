"""VGGish (Hershey et al. 2017) in pure torch, for the Frechet Audio Distance with user weights.

FAD (Kilgour et al. 2019) is the Frechet distance between Gaussians fitted to VGGish embeddings of
two sets of clips. Nothing is downloaded: :func:`load_vggish` reads weights the user points to
(``.safetensors``, or a torch state dict ``.pth`` / ``.pt`` read with ``weights_only=True``, i.e.
without executing code), with the parameter names of the torch port of the AudioSet release
(``features.{0,3,6,8,11,13}``, ``embeddings.{0,2,4}``: e.g. ``vggish-10086976.pth``).

Front end (``vggish_input.waveform_to_examples`` of the AudioSet release): 16 kHz mono, 25 ms
periodic-Hann frames every 10 ms, FFT 512, magnitude spectrum, 64 HTK mel bands 125-7500 Hz,
``log(mel + 0.01)``, non-overlapping examples of 96 frames (0.96 s; a trailing partial example
is dropped). The mel filterbank is torchaudio's HTK one (triangles linear in Hz between
mel-spaced edges; the release draws them linear in mel: a sub-percent difference per band).
The embedding is the 128-d output of the last fully connected layer, before PCA /
quantisation and without a final ReLU, as the FAD reference code uses it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from safetensors.torch import load_file
from torch import nn

from polydiff.core.metrics import frechet_distance_from_features

__all__ = ["VGGish", "VGGishFrontEnd", "load_vggish", "vggish_fad"]

SAMPLE_RATE = 16000
EXAMPLE_FRAMES, MEL_BANDS = 96, 64


class VGGishFrontEnd(nn.Module):
    """Waveform ``(B, L)`` at 16 kHz -> log-mel examples ``(N, 1, 96, 64)`` and, per example, the
    index of its clip."""

    def __init__(self) -> None:
        super().__init__()
        self.win, self.hop, self.n_fft = 400, 160, 512  # 25 ms, 10 ms, next power of two
        self.register_buffer("window", torch.hann_window(self.win, periodic=True), persistent=False)
        fb = torchaudio.functional.melscale_fbanks(
            self.n_fft // 2 + 1, 125.0, 7500.0, MEL_BANDS, SAMPLE_RATE, norm=None, mel_scale="htk"
        )  # (257, 64)
        self.register_buffer("mel_fb", fb, persistent=False)

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, frames, 64) ``log(mel + 0.01)`` with unpadded frames from sample 0."""
        if wave.shape[-1] < self.win:
            raise ValueError(f"VGGish needs clips of at least {self.win} samples, got {wave.shape}")
        # torch.stft centres the 400-sample window in each 512-sample frame; padding by the
        # difference makes frame i cover samples [160 i, 160 i + 400) exactly as the release
        # (whose FFT zero-pads after the window: the same magnitudes)
        pad = (self.n_fft - self.win) // 2
        wave = F.pad(wave.float(), (pad, pad))
        spec = torch.stft(
            wave, self.n_fft, self.hop, self.win, self.window, center=False, return_complex=True
        ).abs()  # (B, 257, frames)
        return torch.log(spec.transpose(1, 2) @ self.mel_fb + 0.01)

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mel = self.log_mel(wave.reshape(-1, wave.shape[-1]))  # (B, T, 64)
        n = mel.shape[1] // EXAMPLE_FRAMES
        if n == 0:
            raise ValueError(
                f"VGGish needs at least 0.96 s per clip ({EXAMPLE_FRAMES} frames), got "
                f"{mel.shape[1]} frames"
            )
        ex = mel[:, : n * EXAMPLE_FRAMES].reshape(len(mel), n, EXAMPLE_FRAMES, MEL_BANDS)
        clip = torch.arange(len(mel)).repeat_interleave(n)
        return ex.reshape(-1, 1, EXAMPLE_FRAMES, MEL_BANDS), clip


class VGGish(nn.Module):
    """The VGGish network: four VGG conv groups (64, 128, 256x2, 512x2; 3x3, max-pool 2) on a
    (96, 64) log-mel example, three fully connected layers (4096, 4096, 128)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 4 * 6, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 128),
        )  # fmt: skip
        self.front_end = VGGishFrontEnd()

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        """(N, 1, 96, 64) log-mel examples -> (N, 128) embeddings."""
        h = self.features(examples)  # (N, 512, 6, 4)
        h = h.permute(0, 2, 3, 1).reshape(len(h), -1)  # TF's NHWC flatten order
        return self.embeddings(h)

    @torch.no_grad()
    def embed(self, wave: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Embeddings of every 0.96 s example of the 16 kHz clips ``wave`` (B, L) -> (N, 128)."""
        ex, _ = self.front_end(wave)
        return torch.cat([self(ex[i : i + batch_size]) for i in range(0, len(ex), batch_size)])


def load_vggish(path: str | Path) -> VGGish:
    """A :class:`VGGish` with the weights of ``path`` (``.safetensors`` or a ``.pth`` / ``.pt``
    state dict, loaded without executing code); errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VGGish weights {path} not found")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    elif path.suffix in (".pth", ".pt"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickled code or a corrupt file: never unpickled
            raise ValueError(
                f"{path}: not a plain torch state dict (read with weights_only=True): {err}"
            ) from err
    else:
        raise ValueError(f"{path}: expected VGGish weights as .safetensors, .pth or .pt")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a mapping of parameter names to tensors")
    net = VGGish()
    state = {k: v for k, v in state.items() if not k.startswith("pproc.")}  # PCA: not used
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: not VGGish weights: missing {sorted(missing)[:4]}, unexpected "
            f"{sorted(unexpected)[:4]} (expected features.N / embeddings.N of the torch port)"
        )
    return net.eval()


def vggish_fad(net: VGGish, real: torch.Tensor, fake: torch.Tensor) -> float:
    """Frechet Audio Distance (Kilgour et al. 2019) between 16 kHz clip sets (B, L) on ``net``'s
    embeddings of their 0.96 s examples."""
    return float(frechet_distance_from_features(net.embed(real), net.embed(fake)))
