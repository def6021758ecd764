"""Video metrics: per-frame FID and class accuracy, identity consistency, a physics score for
bouncing digits, PSNR / SSIM best-of-K for prediction (MCVD protocol) and its baselines.

- :class:`FrameNet`: a small CNN trained on frames of the built-in bouncing digits (digit class
  head + penultimate features), trained once and cached under ``cache_dir`` (safetensors) keyed
  by a hash of everything that produced it (the habit of mmagic and ``polydiff.image``).
- Per-frame FID: the Frechet distance (``polydiff.core.metrics``) between the FrameNet features
  of generated frames and of held-out real frames. Per-frame class accuracy: the FrameNet class
  of every frame vs the conditioning class. Identity consistency: the share of clips whose
  frames all get the same FrameNet class.
- Physics score (:func:`physics_residual`): each digit's intensity centroid per frame, fitted by
  the best constant-velocity motion with elastic bounces (speed kept, direction reversed at up
  to ``max_bounces`` instants per axis, placed anywhere between frames, solved exactly); the RMS
  residual in pixels. Real clips are the floor (~0: the built-in digits move exactly so).
- :func:`psnr` / :func:`ssim` (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 = 0.01,
  K2 = 0.03, mean over the valid region, as ``skimage.metrics.structural_similarity`` with
  ``gaussian_weights=True, use_sample_covariance=False``) on [0, 1] frames;
  :func:`prediction_scores`: best-of-K over K samples per clip of the mean over generated frames
  (Voleti et al. 2022, MCVD), with copy-last-frame and linear-extrapolation baselines.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from polydiff.core.fileio import atomic_path
from polydiff.core.metrics import frechet_distance_from_features

from .data import BouncingDigits

__all__ = [
    "FrameNet",
    "VideoEvaluator",
    "cache_root",
    "centroids",
    "copy_last_baseline",
    "fit_bounce",
    "linear_baseline",
    "load_frame_net",
    "physics_residual",
    "prediction_scores",
    "psnr",
    "ssim",
    "train_frame_net",
]

_VERSION = 2  # bump when FrameNet or its training changes (invalidates caches)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$POLYDIFF_CACHE/video``, else ``~/.cache/polydiff/video``."""
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("POLYDIFF_CACHE")
    return Path(base) / "video" if base else Path.home() / ".cache" / "polydiff" / "video"


# --------------------------------------------------------------------------- frame network


class FrameNet(nn.Module):
    """Small CNN on single frames (1, S, S): ``features`` (N, feature_dim) and class logits."""

    def __init__(self, width: int = 16, feature_dim: int = 64, num_classes: int = 10) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU()
            )

        self.body = nn.Sequential(
            block(1, width, 2),  # work at half resolution: cheap on a shared CPU
            block(width, 2 * width, 1),
            block(2 * width, 2 * width, 1),
            block(2 * width, 4 * width, 2),
            block(4 * width, 4 * width, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * width, feature_dim),
            nn.SiLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) in [-1, 1] -> (N, feature_dim)."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"FrameNet expects frames (N, 1, H, W), got {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _frames(videos: torch.Tensor) -> torch.Tensor:
    """(N, C, F, H, W) -> (N*F, C, H, W)."""
    n, c, f, h, w = videos.shape
    return videos.transpose(1, 2).reshape(n * f, c, h, w)


def train_frame_net(
    frames: int = 8,
    size: int = 32,
    digit_size: int | None = None,
    steps: int = 600,
    n: int = 1500,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> FrameNet:
    """Train a :class:`FrameNet` to classify the digit of bouncing-digits frames (training
    split, a seed no recipe trains on); AdamW, cosine LR, mild noise augmentation."""
    ds = BouncingDigits(n, frames, size, digit_size, 1, split="train", seed=10_000 + seed)
    x = _frames(ds.videos)
    y = torch.as_tensor(ds.labels[:, 0]).repeat_interleave(frames)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = FrameNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps))
    )
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        noise = torch.rand(batch_size, 1, 1, 1, generator=g) * 0.15
        loss = F.cross_entropy(net(x[idx] + noise * torch.randn(x[idx].shape, generator=g)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval().requires_grad_(False)


def load_frame_net(cache_dir: str | os.PathLike | None = None, **spec: Any) -> FrameNet:
    """The cached :class:`FrameNet` for ``spec`` (``train_frame_net`` keywords), trained and
    saved on first use; the file name carries a hash of the spec and the version."""
    key = {"version": _VERSION, **spec}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root(cache_dir) / f"framenet-{digest}.safetensors"
    if path.is_file():
        state = load_file(str(path))
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        if json.loads(meta.get("spec", "{}")) != key:
            raise ValueError(f"{path}: cached FrameNet spec {meta.get('spec')} is not {key}")
        net = FrameNet()
        net.load_state_dict(state)
        return net.eval().requires_grad_(False)
    net = train_frame_net(**spec)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp),
                  {"spec": json.dumps(key, sort_keys=True)})  # fmt: skip
    return net


# --------------------------------------------------------------------------- physics


def centroids(videos: torch.Tensor, threshold: float = 0.1) -> np.ndarray:
    """Intensity centroid (y, x) per frame of single-object clips (N, 1, F, H, W) in [-1, 1]:
    ``I = relu((x + 1) / 2 - threshold)`` (the threshold drops faint background noise of
    samples); frames with no mass give NaN. Returns (N, F, 2)."""
    if videos.ndim != 5:
        raise ValueError(f"videos must be (N, C, F, H, W), got {tuple(videos.shape)}")
    inten = ((videos.detach().double().mean(1) + 1) / 2 - threshold).clamp_min(0)  # (N,F,H,W)
    h, w = inten.shape[-2:]
    ys = torch.arange(h, dtype=torch.float64)[:, None]
    xs = torch.arange(w, dtype=torch.float64)[None, :]
    mass = inten.sum((-2, -1))
    cy = (inten * ys).sum((-2, -1)) / mass
    cx = (inten * xs).sum((-2, -1)) / mass
    out = torch.stack([cy, cx], -1)
    out[mass <= 1e-9] = float("nan")
    return out.numpy()


def _unfolded_time(t: np.ndarray, bounces: np.ndarray) -> np.ndarray:
    """``s(t)`` with ``p = a + v s(t)``: the direction flips at each bounce time, continuously,
    ``s = 2 sum_{i<=j} (-1)^(i+1) b_i + (-1)^j t`` after the j-th bounce. ``bounces`` (K, B)
    sorted rows -> (K, T)."""
    s = np.broadcast_to(t, (bounces.shape[0], t.size)).astype(np.float64).copy()
    offset = np.zeros((bounces.shape[0], 1))
    sign = 1.0
    for j in range(bounces.shape[1]):
        b = bounces[:, j : j + 1]
        offset = offset + 2 * sign * b
        sign = -sign
        s = np.where(t[None] > b, offset + sign * t[None], s)
    return s


def _ls_residual(p: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Sum of squared residuals of the least-squares fit ``p ~ a + v s`` per row of s (K, T)."""
    sm, pm = s.mean(1, keepdims=True), p.mean()
    ds, dp = s - sm, p - pm
    var = (ds**2).sum(1)
    v = np.where(var > 0, (ds * dp).sum(1) / np.where(var > 0, var, 1), 0.0)
    return ((dp[None] - v[:, None] * ds) ** 2).sum(1)


def _bounce_fits(p: np.ndarray, intervals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares fits with one bounce inside each given frame interval ``(k_i, k_i + 1)``.

    With ``c_i = 2 v b_i`` the model ``p = a + v s(t)`` is linear in ``(a, v, c_1..c_k)``:
    ``p(t) = a + (-1)^j v t + sum_{i <= j} (-1)^(i+1) c_i`` with ``j`` the bounces before t.
    Where the solution puts a bounce outside its interval, the bounce is clipped into it and
    ``(a, v)`` refitted (the constrained optimum then lies on the interval's edge, which the
    neighbouring interval also covers). Returns (sum of squared residuals (K,), bounces (K, k)).
    """
    t = np.arange(len(p), dtype=np.float64)
    n_before = (t[None, None, :] > intervals[:, :, None]).sum(1)  # (K, T): bounces before t
    sign = np.where(n_before % 2 == 0, 1.0, -1.0)
    k = intervals.shape[1]
    cols = [np.ones_like(sign), sign * t[None]]
    for i in range(k):
        cols.append((-1.0) ** i * (n_before > i))
    design = np.stack(cols, -1)  # (K, T, k + 2)
    gram = design.transpose(0, 2, 1) @ design + 1e-12 * np.eye(k + 2)
    theta = np.linalg.solve(gram, (design.transpose(0, 2, 1) @ p)[..., None])[..., 0]  # (K, k+2)
    res = ((design @ theta[..., None])[..., 0] - p) ** 2
    sq = res.sum(1)
    v = theta[:, 1:2]
    with np.errstate(divide="ignore", invalid="ignore"):
        b = theta[:, 2:] / (2 * v)
    clipped = np.clip(np.nan_to_num(b, nan=0.0), intervals, intervals + 1)
    bad = ~np.all((b >= intervals - 1e-9) & (b <= intervals + 1 + 1e-9), axis=1)
    if bad.any():
        sq[bad] = _ls_residual(p, _unfolded_time(t, clipped[bad]))
    return sq, clipped


def fit_bounce(p: np.ndarray, max_bounces: int = 2) -> tuple[float, np.ndarray]:
    """Best constant-speed motion with up to ``max_bounces`` elastic reversals for one axis
    ``p`` (T,): ``(sum of squared residuals, bounce times)``.

    Every placement of the bounces in distinct frame intervals is solved in closed form
    (:func:`_bounce_fits`), so the fit is exact for motion that follows the model.
    """
    t = np.arange(len(p), dtype=np.float64)
    best, best_b = float(_ls_residual(p, t[None])[0]), np.zeros(0)
    for k in range(1, min(max_bounces, len(p) - 1) + 1):
        if best < 1e-12:
            break
        intervals = np.array(list(itertools.combinations(t[:-1], k)))
        sq, b = _bounce_fits(p, intervals)
        i = int(sq.argmin())
        if sq[i] < best - 1e-12:
            best, best_b = float(sq[i]), b[i]
    return best, best_b


def physics_residual(
    videos: torch.Tensor, max_bounces: int | None = None, threshold: float = 0.1
) -> np.ndarray:
    """Per clip, the RMS residual (pixels, over frames and both axes) of the centroid track of a
    single-digit clip (N, 1, F, H, W) to its best constant-velocity-with-bounce fit
    (:func:`fit_bounce`; ``max_bounces`` per axis, default ``max(2, ceil((F - 1) / 7))``).
    Clips with an empty frame give NaN."""
    tracks = centroids(videos, threshold)
    f = tracks.shape[1]
    max_bounces = max_bounces or max(2, math.ceil((f - 1) / 7))
    out = np.full(len(tracks), np.nan)
    for i, tr in enumerate(tracks):
        if np.isnan(tr).any():
            continue
        sq = sum(fit_bounce(tr[:, a], max_bounces)[0] for a in range(2))
        out[i] = math.sqrt(sq / (2 * f))
    return out


# --------------------------------------------------------------------------- PSNR / SSIM


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images in [0, 1] (data range 1), reduced over all but the first dim."""
    mse = (a.double() - b.double()).square().flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM (Wang et al. 2004, eq. 13) of images (N, C, H, W) in [0, 1]: local statistics by an
    11x11 Gaussian window (sigma 1.5) over the valid region, K1 = 0.01, K2 = 0.03, averaged over
    pixels and channels. Returns (N,)."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(
            f"ssim needs two (N, C, H, W) tensors of one shape, got {a.shape}, {b.shape}"
        )
    if min(a.shape[-2:]) < 11:
        raise ValueError(f"ssim needs images of at least 11x11, got {tuple(a.shape[-2:])}")
    n, c = a.shape[:2]
    win = _gaussian_window().to(a.device)[None, None].expand(c, 1, 11, 11)
    a, b = a.double(), b.double()

    def filt(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, win, groups=c)

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return s.flatten(1).mean(1)


def _generated_frames(f: int, known: slice | Sequence[slice]) -> list[int]:
    known = [known] if isinstance(known, slice) else list(known)
    given = {i for s in known for i in range(f)[s]}
    return [i for i in range(f) if i not in given]


def _frame_scores(
    pred: torch.Tensor, ref: torch.Tensor, frames: list[int]
) -> dict[str, torch.Tensor]:
    """Mean PSNR / SSIM over ``frames`` of clips (N, C, F, H, W) in [-1, 1] -> (N,) each."""
    p = (pred[:, :, frames].clamp(-1, 1) + 1) / 2
    r = (ref[:, :, frames].clamp(-1, 1) + 1) / 2
    n, c, f, h, w = p.shape
    pf, rf = _frames(p), _frames(r)
    return {
        "psnr": psnr(pf, rf).view(n, f).mean(1),
        "ssim": ssim(pf, rf).view(n, f).mean(1),
    }


def copy_last_baseline(ref: torch.Tensor, known: int) -> torch.Tensor:
    """Every frame after the first ``known`` is a copy of the last known frame."""
    out = ref.clone()
    out[:, :, known:] = ref[:, :, known - 1 : known]
    return out


def linear_baseline(ref: torch.Tensor, known: int) -> torch.Tensor:
    """Pixel-wise linear extrapolation from the last two known frames, clipped to [-1, 1]."""
    if known < 2:
        return copy_last_baseline(ref, known)
    out = ref.clone()
    last, prev = ref[:, :, known - 1], ref[:, :, known - 2]
    for i in range(known, ref.shape[2]):
        out[:, :, i] = (last + (i - known + 1) * (last - prev)).clamp(-1, 1)
    return out


def prediction_scores(
    samples: torch.Tensor, reference: torch.Tensor, k: int, known: slice | Sequence[slice]
) -> dict[str, float]:
    """MCVD protocol: ``k`` consecutive samples per clip (N*k, C, F, H, W) against their
    reference clips (N*k rows, each clip repeated k times); per sample the mean PSNR / SSIM over
    the generated frames, the best of the k per clip, averaged over clips. For prediction
    (``known`` a leading slice) also copy-last-frame and linear-extrapolation baselines."""
    if len(samples) != len(reference) or len(samples) % k:
        raise ValueError(
            f"need N*k samples and references, got {len(samples)}, {len(reference)}, k={k}"
        )
    f = samples.shape[2]
    frames = _generated_frames(f, known)
    scores = _frame_scores(samples, reference, frames)
    out = {f"{m}_best_of_{k}": float(v.view(-1, k).max(1).values.mean()) for m, v in scores.items()}
    out.update({f"{m}_mean": float(v.mean()) for m, v in scores.items()})
    if isinstance(known, slice) and known.start in (None, 0):
        c = known.stop
        ref = reference[::k]
        for name, fn in (("copy_last", copy_last_baseline), ("linear", linear_baseline)):
            base = _frame_scores(fn(ref, c), ref, frames)
            out.update({f"{name}_{m}": float(v.mean()) for m, v in base.items()})
    return out


# --------------------------------------------------------------------------- evaluator


class VideoEvaluator:
    """Scores bouncing-digits samples (N, 1, F, H, W) in [-1, 1] against held-out real clips of
    the same ``frames`` / ``size`` / ``digit_size`` (test split)."""

    def __init__(
        self,
        cache_dir: str | os.PathLike | None = None,
        frames: int = 8,
        size: int = 32,
        digit_size: int | None = None,
        feature_steps: int = 600,
        net: FrameNet | None = None,
        seed: int = 777,
    ) -> None:
        self.frames, self.size, self.digit_size, self.seed = frames, size, digit_size, seed
        self.net = net or load_frame_net(
            cache_dir, frames=frames, size=size, digit_size=digit_size, steps=feature_steps
        )

    @torch.no_grad()
    def predict(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame features (N*F, D) and classes (N, F)."""
        x = _frames(videos.float())
        feats = torch.cat([self.net.features(x[i : i + 512]) for i in range(0, len(x), 512)])
        classes = self.net.head(feats).argmax(1).view(len(videos), -1)
        return feats.double(), classes

    def reference(self, n: int) -> BouncingDigits:
        return BouncingDigits(n, self.frames, self.size, self.digit_size, 1, split="test",
                              seed=self.seed)  # fmt: skip

    def evaluate(
        self, samples: torch.Tensor, labels: torch.Tensor | None = None, physics: bool = True
    ) -> dict[str, float]:
        """Per-frame FID, identity consistency, [per-frame class accuracy] (with the same scores
        of real held-out clips: the feature net's ceiling), [physics residual of the samples and
        of as many real clips (the floor)]."""
        if samples.ndim != 5 or samples.shape[1] != 1:
            raise ValueError(
                f"expected bouncing-digits samples (N, 1, F, H, W), got {tuple(samples.shape)}"
            )
        ref = self.reference(max(len(samples), 64))
        feats, classes = self.predict(samples)
        ref_feats, ref_classes = self.predict(ref.videos)
        ref_labels = torch.as_tensor(ref.labels[:, 0])[:, None]
        out = {
            "frame_fid": float(frechet_distance_from_features(ref_feats, feats)),
            "identity_consistency": float((classes == classes[:, :1]).all(1).double().mean()),
            # the same scores of real held-out clips: the ceiling the feature net allows
            "identity_consistency_real": float(
                (ref_classes == ref_classes[:, :1]).all(1).double().mean()
            ),
            "class_accuracy_real": float((ref_classes == ref_labels).double().mean()),
        }
        if labels is not None:
            out["class_accuracy"] = float((classes == labels[:, None]).double().mean())
        if physics:
            fake = physics_residual(samples)
            real = physics_residual(ref.videos[: len(samples)])
            if np.isfinite(fake).any():  # strict JSON: no NaN; all-empty samples leave it out
                out["physics_residual"] = float(np.nanmean(fake))
            out["physics_residual_real"] = float(np.nanmean(real))
            out["physics_empty_fraction"] = float(np.isnan(fake).mean())
        return out
