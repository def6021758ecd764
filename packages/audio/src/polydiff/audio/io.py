"""Files people open: WAV per sample (soundfile, 16-bit PCM) and mel-spectrogram PNG grids.

Every file is written atomically (``polydiff.core.fileio.atomic_path``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import soundfile
import torch

from polydiff.core.fileio import atomic_path

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["save_mel_png", "write_wav", "write_wavs"]


def write_wav(path: str | Path, wave: torch.Tensor | np.ndarray, sample_rate: int) -> Path:
    """One mono clip as 16-bit PCM WAV (clipped to [-1, 1])."""
    w = np.asarray(wave.detach().cpu() if isinstance(wave, torch.Tensor) else wave, np.float32)
    w = np.clip(w.reshape(-1), -1.0, 1.0)
    path = Path(path)
    with atomic_path(path) as tmp:
        soundfile.write(str(tmp), w, sample_rate, subtype="PCM_16", format="WAV")
    return path


def write_wavs(
    out_dir: str | Path, waves: torch.Tensor, sample_rate: int, names: Sequence[str] | None = None
) -> list[Path]:
    """``sample_0000.wav`` ... (or ``names``) for each row of ``waves`` (N, L)."""
    out_dir = Path(out_dir)
    names = names or [f"sample_{i:04d}" for i in range(len(waves))]
    return [write_wav(out_dir / f"{n}.wav", w, sample_rate) for n, w in zip(names, waves)]


def save_mel_png(
    path: str | Path, logmel: torch.Tensor, titles: Sequence[str] | None = None, ncol: int = 4
) -> Path:
    """A grid of log-mel spectrograms ``(N, n_mels, F)`` (low frequencies at the bottom)."""
    m = logmel.detach().cpu().float().reshape(-1, *logmel.shape[-2:])
    n = len(m)
    ncol = max(1, min(ncol, n))
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.2 * ncol, 2.0 * nrow), dpi=80, squeeze=False)
    vmin, vmax = float(m.min()), float(m.max())
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(m[i].numpy(), origin="lower", aspect="auto", vmin=vmin, vmax=vmax)
            if titles is not None and i < len(titles):
                ax.set_title(titles[i], fontsize=6)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
