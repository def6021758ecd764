"""Video metrics: per-frame FID and class accuracy, identity consistency, a physics score for
bouncing digits, PSNR / SSIM best-of-K for prediction (MCVD protocol) and its baselines.

- :class:`VideoFeatureNet`: the built-in feature network, trained on the built-in bouncing
  digits once and cached under ``cache_dir`` (safetensors) keyed by a hash of everything that
  produced it (the habit of mmagic and ``polydiff.image``): a per-frame CNN (class and centroid
  heads) and a temporal encoder over its frame features (real vs temporally perturbed clips).
- Per-frame FID: the Frechet distance (``polydiff.core.metrics``) between the frame features of
  generated frames and of held-out real frames. Per-frame class accuracy: the class of every
  frame vs the conditioning class. Identity consistency: the share of clips whose frames all get
  the same class. ``clip_fd_builtin``: the Frechet distance on the clip features; it always
  works, and it is NOT FVD (see :mod:`polydiff.video.i3d` for FVD with I3D weights you provide).
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
    "VideoEvaluator",
    "VideoFeatureNet",
    "cache_root",
    "centroids",
    "copy_last_baseline",
    "fit_bounce",
    "linear_baseline",
    "load_feature_net",
    "perturb_time",
    "physics_residual",
    "windowed_physics_residual",
    "prediction_scores",
    "psnr",
    "ssim",
    "train_feature_net",
]

_VERSION = 3  # bump when FrameNet or its training changes (invalidates caches)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$POLYDIFF_CACHE/video``, else ``~/.cache/polydiff/video``."""
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("POLYDIFF_CACHE")
    return Path(base) / "video" if base else Path.home() / ".cache" / "polydiff" / "video"


# --------------------------------------------------------------------------- feature network


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())


class VideoFeatureNet(nn.Module):
    """The built-in feature network of bouncing digits (not I3D; nothing downloaded).

    - frame encoder: a CNN on single frames (1, S, S), full resolution in the first layer,
      with a digit-class head (``features`` (N, feature_dim));
    - motion encoder: two temporal convolutions (kernel 3) over the intensity-centroid track
      (:func:`centroids`, in units of an eighth of the canvas: where the digit is, which pooled
      CNN features forget), averaged over time; head: real vs temporally perturbed clip
      (shuffled, swapped, frozen or stuttering frames);
    - clip features (N, feature_dim + clip_dim): the frame features averaged over time
      (appearance) next to the motion features.
    """

    def __init__(
        self, width: int = 16, feature_dim: int = 64, clip_dim: int = 32, num_classes: int = 10
    ) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _block(1, w, 1), _block(w, 2 * w, 1), _block(2 * w, 2 * w, 2),
            _block(2 * w, 4 * w, 1), _block(4 * w, 4 * w, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, feature_dim), nn.SiLU(),
        )  # fmt: skip
        self.head = nn.Linear(feature_dim, num_classes)
        self.temporal = nn.Sequential(
            nn.Conv1d(2, clip_dim, 3, padding=1), nn.SiLU(),
            nn.Conv1d(clip_dim, clip_dim, 3, padding=1), nn.SiLU(),
        )  # fmt: skip
        self.clip_head = nn.Linear(clip_dim, 1)  # real vs temporally perturbed

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Frames (N, 1, H, W) in [-1, 1] -> (N, feature_dim)."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"VideoFeatureNet expects frames (N, 1, H, W), got {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of frames (N, 1, H, W)."""
        return self.head(self.features(x))

    def motion_features(self, tracks: torch.Tensor) -> torch.Tensor:
        """Centroid tracks (N, F, 2) (:func:`_tracks`) -> motion features (N, clip_dim)."""
        return self.temporal(tracks.transpose(1, 2)).mean(2)

    def clip_features(self, videos: torch.Tensor) -> torch.Tensor:
        """Clips (N, 1, F, H, W) in [-1, 1] -> (N, feature_dim + clip_dim)."""
        n, f = videos.shape[0], videos.shape[2]
        feats = self.features(_frames(videos)).view(n, f, -1)
        return torch.cat([feats.mean(1), self.motion_features(_tracks(videos))], -1)


def _tracks(videos: torch.Tensor) -> torch.Tensor:
    """Intensity centroids of clips (N, 1, F, H, W) relative to the canvas centre in units of
    an eighth of the canvas (empty frames: 0), (N, F, 2) float32."""
    size = torch.tensor(videos.shape[-2:], dtype=torch.float64) - 1
    tr = (torch.from_numpy(centroids(videos)) / size * 2 - 1) * 4
    return torch.nan_to_num(tr, nan=0.0).float()


def _frames(videos: torch.Tensor) -> torch.Tensor:
    """(N, C, F, H, W) -> (N*F, C, H, W)."""
    n, c, f, h, w = videos.shape
    return videos.transpose(1, 2).reshape(n * f, c, h, w)


def perturb_time(feats: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Temporally perturbed copies of frame sequences (N, F, ...): per row one of a random
    permutation, two adjacent frames swapped, frames frozen from a random frame on, or one
    frame replaced by its successor (a stutter). Every result breaks constant-velocity motion
    (the identity and the time reversal, which is physical, are never drawn as permutations)."""
    n, f = feats.shape[:2]
    out = feats.clone()
    kind = torch.randint(0, 4, (n,), generator=generator)
    for i in range(n):
        k = int(kind[i])
        j = int(torch.randint(1, f - 1, (1,), generator=generator)) if f > 2 else 1
        if k == 0:
            perm = torch.randperm(f, generator=generator)
            ident = torch.arange(f)
            while f > 2 and (torch.equal(perm, ident) or torch.equal(perm, ident.flip(0))):
                perm = torch.randperm(f, generator=generator)
            out[i] = feats[i, perm]
        elif k == 1:
            out[i, [j - 1, j]] = feats[i, [j, j - 1]]
        elif k == 2:
            out[i, j:] = feats[i, j - 1 : j]
        else:
            out[i, j] = feats[i, min(j + 1, f - 1)]
            if j + 1 >= f:
                out[i, j] = feats[i, j - 1]
    return out


def train_feature_net(
    frames: int = 8,
    size: int = 32,
    digit_size: int | None = None,
    steps: int = 800,
    clip_steps: int = 1000,
    n: int = 1500,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> VideoFeatureNet:
    """Train a :class:`VideoFeatureNet` on bouncing digits (training split, a seed no recipe
    trains on). Frames: class (cross-entropy, label smoothing 0.05), random 1-pixel shifts and
    noise; then the motion encoder on centroid tracks: real vs :func:`perturb_time`
    (binary cross-entropy). AdamW, 50 warmup steps + cosine LR."""
    ds = BouncingDigits(n, frames, size, digit_size, 1, split="train", seed=10_000 + seed)
    x = _frames(ds.videos)
    y = torch.as_tensor(ds.labels[:, 0]).repeat_interleave(frames)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = VideoFeatureNet()

    def schedule(total: int):
        return lambda i: min(1.0, (i + 1) / 50) * 0.5 * (1 + math.cos(math.pi * i / total))

    opt = torch.optim.AdamW([*net.body.parameters(), *net.head.parameters()], lr=lr,
                            weight_decay=1e-4)  # fmt: skip
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(steps))
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        xb = torch.roll(x[idx], shifts=torch.randint(-1, 2, (2,), generator=g).tolist(),
                        dims=(2, 3))  # fmt: skip
        xb = xb + torch.rand(batch_size, 1, 1, 1, generator=g) * 0.2 * torch.randn(
            xb.shape, generator=g
        )
        loss = F.cross_entropy(net(xb), y[idx], label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    tracks = _tracks(ds.videos)
    opt = torch.optim.AdamW([*net.temporal.parameters(), *net.clip_head.parameters()], lr=lr,
                            weight_decay=1e-4)  # fmt: skip
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(clip_steps))
    half = batch_size // 2
    net.temporal.train()
    for _ in range(clip_steps):
        idx = torch.randint(0, n, (batch_size,), generator=g)
        seq = torch.cat([tracks[idx[:half]], perturb_time(tracks[idx[half:]], g)])
        real = torch.cat([torch.ones(half), torch.zeros(batch_size - half)])
        out = net.clip_head(net.motion_features(seq))
        loss = F.binary_cross_entropy_with_logits(out[:, 0], real)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval().requires_grad_(False)


def load_feature_net(cache_dir: str | os.PathLike | None = None, **spec: Any) -> VideoFeatureNet:
    """The cached :class:`VideoFeatureNet` for ``spec`` (``train_feature_net`` keywords),
    trained and saved on first use; the file name carries a hash of the spec and the version."""
    key = {"version": _VERSION, **spec}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root(cache_dir) / f"videonet-{digest}.safetensors"
    if path.is_file():
        state = load_file(str(path))
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        if json.loads(meta.get("spec", "{}")) != key:
            raise ValueError(f"{path}: cached VideoFeatureNet spec {meta.get('spec')} is not {key}")
        net = VideoFeatureNet()
        net.load_state_dict(state)
        return net.eval().requires_grad_(False)
    net = train_feature_net(**spec)
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


def windowed_physics_residual(
    videos: torch.Tensor, window: int, stride: int | None = None, threshold: float = 0.1
) -> np.ndarray:
    """Per clip, the mean :func:`physics_residual` of its ``window``-frame windows (every
    ``stride`` frames, default ``window // 2``, the last window ending at the last frame).

    For clips longer than the training length (autoregressive extension): each window is scored
    like a short clip, against the short clips' real floor, including the windows that straddle
    the seams between generated chunks. On a whole long clip the residual also measures how many
    bounces the fit may place (``max_bounces``), so real clips of 3x the length score far above
    real short ones. NaN where a window has an empty frame."""
    f = videos.shape[2]
    if not 2 <= window <= f:
        raise ValueError(f"window must be in [2, {f}] frames (the clip length), got {window}")
    stride = stride or max(1, window // 2)
    starts = sorted({*range(0, f - window + 1, stride), f - window})
    per = np.stack([physics_residual(videos[:, :, s : s + window], threshold=threshold)
                    for s in starts], axis=1)  # fmt: skip
    return per.mean(1)


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
    the same ``frames`` / ``size`` / ``digit_size`` (test split), with the built-in
    :class:`VideoFeatureNet` (``feature_steps`` / ``clip_steps``: its training steps)."""

    def __init__(
        self,
        cache_dir: str | os.PathLike | None = None,
        frames: int = 8,
        size: int = 32,
        digit_size: int | None = None,
        feature_steps: int = 600,
        clip_steps: int = 1000,
        net: VideoFeatureNet | None = None,
        seed: int = 777,
    ) -> None:
        self.frames, self.size, self.digit_size, self.seed = frames, size, digit_size, seed
        self.net = net or load_feature_net(
            cache_dir, frames=frames, size=size, digit_size=digit_size, steps=feature_steps,
            clip_steps=clip_steps,
        )  # fmt: skip

    @torch.no_grad()
    def predict(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-frame features (N*F, D), per-frame classes (N, F) and clip features (N, D')."""
        n, f = len(videos), videos.shape[2]
        x = _frames(videos.float())
        feats = torch.cat([self.net.features(x[i : i + 512]) for i in range(0, len(x), 512)])
        classes = self.net.head(feats).argmax(1).view(n, f)
        motion = self.net.motion_features(_tracks(videos))
        clip = torch.cat([feats.view(n, f, -1).mean(1), motion], -1)
        return feats.double(), classes, clip.double()

    def reference(self, n: int, seed: int | None = None) -> BouncingDigits:
        """``n`` held-out clips (test split; ``seed`` defaults to the evaluator's)."""
        return BouncingDigits(n, self.frames, self.size, self.digit_size, 1, split="test",
                              seed=self.seed if seed is None else seed)  # fmt: skip

    def evaluate(
        self, samples: torch.Tensor, labels: torch.Tensor | None = None, physics: bool = True
    ) -> dict[str, float]:
        """Per-frame FID, clip FD on the built-in clip features (``clip_fd_builtin``: not FVD),
        identity consistency, [per-frame class accuracy], [physics residual]; each with the
        same score of real held-out clips (``*_real``: a second real set of the same size for
        the distances, the first one's accuracy and physics), the ceiling or floor the
        feature net and the fit allow."""
        if samples.ndim != 5 or samples.shape[1] != 1:
            raise ValueError(
                f"expected bouncing-digits samples (N, 1, F, H, W), got {tuple(samples.shape)}"
            )
        n = max(len(samples), 64)
        ref, ref2 = self.reference(n), self.reference(len(samples), seed=self.seed + 1)
        feats, classes, clip = self.predict(samples)
        ref_feats, ref_classes, ref_clip = self.predict(ref.videos)
        ref2_feats, _, ref2_clip = self.predict(ref2.videos)
        ref_labels = torch.as_tensor(ref.labels[:, 0])[:, None]
        out = {
            "frame_fid": float(frechet_distance_from_features(ref_feats, feats)),
            "frame_fid_real": float(frechet_distance_from_features(ref_feats, ref2_feats)),
            "clip_fd_builtin": float(frechet_distance_from_features(ref_clip, clip)),
            "clip_fd_builtin_real": float(frechet_distance_from_features(ref_clip, ref2_clip)),
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
