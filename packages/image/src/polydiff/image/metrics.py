"""Image metrics: a feature network trained on the built-in data, and reference feature models.

- :class:`FeatureNet`: a small CNN classifier trained on the built-in data (digits classes, or the
  four shapes attributes). Its penultimate features give FID (Frechet distance, Heusel et al.
  2017) and improved precision / recall (Kynkaanniemi et al. 2019) through
  :mod:`polydiff.core.metrics`; its heads give the class accuracy of class-conditional samples
  and the attribute accuracy of shapes prompts ("does 'a red circle' yield red circles").
  Trained once and cached under ``cache_dir`` (safetensors) keyed by a hash of everything that
  produced it; reference statistics are cached the same way (mmagic's habit).
- :class:`InceptionFeatures`: torchvision's Inception-v3 pool features (2048-d) from a local
  weights file, for FID numbers comparable with papers (torchvision's port of the network; the
  TF-FID graph of ``pytorch-fid`` differs slightly, so expect close, not identical, values).
- :class:`CLIPModel`: CLIP image/text embeddings via ``open_clip`` from local weights: CLIP score
  (Hessel et al. 2021, ``w * max(cos, 0)`` with ``w = 100`` as torchmetrics) and CLIP-FID
  (Kynkaanniemi et al. 2023).

Every feature extractor maps images ``(N, C, H, W)`` in [-1, 1] to features ``(N, F)``, so the
FID / precision-recall helpers work on built-in data, real folders (:func:`load_folder`) and
samples alike. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from polydiff.core.metrics import (
    feature_statistics,
    frechet_distance,
    precision_recall,
)

from .data import (
    ATTRIBUTES,
    DigitsDataset,
    ImageFileError,
    ShapesDataset,
    ShapeSpec,
    load_image_file,
    parse_caption,
)

__all__ = [
    "CLIPModel",
    "FeatureNet",
    "ImageEvaluator",
    "InceptionFeatures",
    "attribute_accuracy",
    "attribute_targets",
    "cache_root",
    "extract_features",
    "fid_from_features",
    "fit_feature_net",
    "load_feature_net",
    "load_folder",
    "train_feature_net",
]

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
# what a shapes image should show: captions, specs, or label tensors per attribute
AttributeTargets = Sequence[str] | Sequence[ShapeSpec] | dict[str, torch.Tensor]
_VERSION = 1  # bump when FeatureNet or its training changes (invalidates caches)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$POLYDIFF_CACHE/image``, else ``~/.cache/polydiff/image``."""
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("POLYDIFF_CACHE")
    return Path(base) / "image" if base else Path.home() / ".cache" / "polydiff" / "image"


ASSETS = Path(__file__).resolve().parent / "assets"  # a read-only cache shipped with the package


def find_cached(name: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """``name`` in the cache directory, else in the package's shipped assets, else None."""
    for folder in (cache_root(cache_dir), ASSETS):
        if (folder / name).is_file():
            return folder / name
    return None


def _hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path, meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), meta)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- feature network


class FeatureNet(nn.Module):
    """Small CNN: conv stages down to 4x4 (stride-2 stem above 16x16), pooled to ``feature_dim``
    features, one linear head per label set (``heads = {"class": 10}`` or the shapes attributes).

    Inputs of any size are resized to ``input_size``; grey / RGB mismatches are converted.
    """

    def __init__(
        self,
        in_channels: int,
        heads: dict[str, int],
        width: int = 16,
        feature_dim: int = 128,
        input_size: int = 16,
    ) -> None:
        super().__init__()
        self.in_channels, self.input_size = in_channels, input_size
        self.head_sizes = dict(heads)

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU()
            )

        self.body = nn.Sequential(
            block(in_channels, width, 2 if input_size > 16 else 1),  # work at <= 16x16
            block(width, 2 * width, 1),
            block(2 * width, 2 * width, 1),
            block(2 * width, 4 * width, 2),  # 8x8
            block(4 * width, 4 * width, 2),  # 4x4
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * width, feature_dim),
            nn.SiLU(),
        )
        self.heads = nn.ModuleDict({k: nn.Linear(feature_dim, n) for k, n in heads.items()})

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Match channels and size: (N, C, H, W) in [-1, 1] -> (N, in_channels, S, S)."""
        if x.ndim != 4:
            raise ValueError(f"FeatureNet expects (N, C, H, W) images, got {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            if self.in_channels == 1:
                x = x[:, :3].mean(1, keepdim=True)
            elif x.shape[1] == 1:
                x = x.expand(-1, self.in_channels, -1, -1)
            else:
                raise ValueError(
                    f"FeatureNet: cannot map {x.shape[1]} channels to {self.in_channels}"
                )
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", antialias=True)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, feature_dim)."""
        return self.body(self.prepare(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every head, ``{name: (N, classes)}``."""
        h = self.features(x)
        return {k: head(h) for k, head in self.heads.items()}


def _builtin(kind: str, n_shapes: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Training images and labels of a built-in feature net."""
    if kind == "digits":
        ds = DigitsDataset(size=16, split="train")
        return ds.images, {"class": ds.labels}
    if kind == "shapes":
        ds = ShapesDataset(n=n_shapes, size=32, seed=10_000)  # a seed no demo trains on
        labels = {k: torch.tensor([s.labels()[k] for s in ds.specs]) for k in ATTRIBUTES}
        return ds.images, labels
    raise ValueError(f"unknown feature net kind {kind!r}; expected 'digits' or 'shapes'")


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random shifts (+-2 px, reflection padded) and mild noise: robust to sample artefacts."""
    n = x.shape[0]
    pad = F.pad(x, (2, 2, 2, 2), mode="replicate")
    dy, dx = torch.randint(0, 5, (2,), generator=g).tolist()
    x = pad[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]
    sigma = torch.rand(n, 1, 1, 1, generator=g) * 0.1
    return x + sigma * torch.randn(x.shape, generator=g)


def train_feature_net(
    kind: str = "digits",
    steps: int = 800,
    batch_size: int = 128,
    lr: float = 3e-3,
    width: int = 16,
    n_shapes: int = 3600,
    seed: int = 0,
) -> FeatureNet:
    """Train a :class:`FeatureNet` on built-in data (``"digits"`` or ``"shapes"``); AdamW,
    cosine LR, shift + noise augmentation, cross-entropy summed over heads."""
    x, labels = _builtin(kind, n_shapes)
    heads = {k: int(v.max()) + 1 for k, v in labels.items()}
    if kind == "digits":
        heads = {"class": 10}
    if kind == "shapes":
        heads = {k: len(v) for k, v in ATTRIBUTES.items()}
    return fit_feature_net(
        x, labels, heads, steps=steps, batch_size=batch_size, lr=lr, width=width, seed=seed
    )


def fit_feature_net(
    x: torch.Tensor,
    labels: dict[str, torch.Tensor],
    heads: dict[str, int],
    steps: int = 800,
    batch_size: int = 128,
    lr: float = 3e-3,
    width: int = 16,
    seed: int = 0,
) -> FeatureNet:
    """Train a :class:`FeatureNet` on images ``x`` (N, C, H, W) in [-1, 1] with one
    classification head per label set (AdamW, cosine LR, shift + noise augmentation,
    cross-entropy summed over heads); the domain feature net of a user's own data."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = FeatureNet(x.shape[1], heads, width=width, input_size=x.shape[-1])
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps))
    )
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        logits = net(_augment(x[idx], g))
        loss = sum(F.cross_entropy(logits[k], labels[k][idx]) for k in heads)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval().requires_grad_(False)


def load_feature_net(
    kind: str = "digits",
    cache_dir: str | os.PathLike | None = None,
    steps: int = 800,
    **train_kwargs: Any,
) -> FeatureNet:
    """The cached feature net of ``kind`` (trained and saved on first use).

    The file name carries a hash of ``(kind, steps, train_kwargs, version)``, so changing how
    the net is trained never returns a stale one.
    """
    from safetensors.torch import load_file

    spec = {"kind": kind, "steps": steps, "version": _VERSION, **train_kwargs}
    name = f"featnet-{kind}-{_hash(spec)}.safetensors"
    found = find_cached(name, cache_dir)
    if found is not None:
        path = found
        state = load_file(str(path))
        heads = {
            k.split(".")[1]: v.shape[0]
            for k, v in state.items()
            if k.startswith("heads.") and k.endswith(".bias")
        }
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            input_size = int((fh.metadata() or {}).get("input_size", 16))
        w = state["body.0.0.weight"]
        net = FeatureNet(w.shape[1], heads, width=w.shape[0], input_size=input_size)
        net.load_state_dict(state)
        return net.eval().requires_grad_(False)
    path = cache_root(cache_dir) / name
    net = train_feature_net(kind, steps=steps, **train_kwargs)
    meta = {"spec": json.dumps(spec), "input_size": str(net.input_size)}
    _save_atomic(net.state_dict(), path, meta)
    return net


# --------------------------------------------------------------------------- generic helpers


@torch.no_grad()
def extract_features(fn: FeatureFn, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Apply a feature extractor in batches: (N, C, H, W) in [-1, 1] -> (N, F) float64."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    out = [
        fn(images[i : i + batch_size].float()).double() for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out)


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Frechet distance between Gaussian fits of two feature sets."""
    mu1, c1 = feature_statistics(real)
    mu2, c2 = feature_statistics(fake)
    return float(frechet_distance(mu1, c1, mu2, c2))


def load_folder(
    folder: str | os.PathLike,
    size: int | None = None,
    channels: int = 3,
    on_error: str = "raise",
    limit: int | None = None,
) -> torch.Tensor:
    """Every image under ``folder`` (recursively) as ``(N, channels, size, size)`` in [-1, 1].

    Unreadable files raise :class:`ImageFileError` naming them (or are skipped with
    ``on_error="skip"``). Without ``size`` all images must share one size.
    """
    from .data import IMAGE_EXTENSIONS

    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"load_folder: no images under {folder}")
    images = []
    for f in files[:limit]:
        try:
            images.append(load_image_file(f, channels, size))
        except ImageFileError:
            if on_error != "skip":
                raise
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise ValueError(f"load_folder: images under {folder} differ in size {shapes}; pass size=")
    return torch.stack(images)


# --------------------------------------------------------------------------- attributes


def attribute_targets(attributes: AttributeTargets, n: int) -> dict[str, torch.Tensor]:
    """Normalise shapes targets to ``{attribute: LongTensor(n)}`` (indices into
    :data:`~polydiff.image.data.ATTRIBUTES`).

    ``attributes``: captions (``"a small red circle at the top left"``), :class:`ShapeSpec`
    objects, or a dict of label tensors / lists for any subset of the four attributes.
    """
    if isinstance(attributes, dict):
        unknown = set(attributes) - set(ATTRIBUTES)
        if unknown or not attributes:
            raise ValueError(
                f"attribute targets must name some of {list(ATTRIBUTES)}, got {sorted(attributes)}"
            )
        out = {}
        for k, v in attributes.items():
            t = torch.as_tensor(v).reshape(-1).long()
            if len(t) != n:
                raise ValueError(f"{len(t)} '{k}' labels for {n} images")
            if len(t) and (t.min() < 0 or t.max() >= len(ATTRIBUTES[k])):
                raise ValueError(
                    f"'{k}' labels must lie in [0, {len(ATTRIBUTES[k])}) ({ATTRIBUTES[k]}), "
                    f"got range [{int(t.min())}, {int(t.max())}]"
                )
            out[k] = t
        return out
    if isinstance(attributes, str):
        raise TypeError("attribute targets: pass a list of captions, not a single string")
    if len(attributes) != n:
        raise ValueError(f"{len(attributes)} captions / specs for {n} images")
    specs = [a if isinstance(a, ShapeSpec) else parse_caption(a) for a in attributes]
    labels = [s.labels() for s in specs]
    return {k: torch.tensor([lab[k] for lab in labels], dtype=torch.long) for k in ATTRIBUTES}


@torch.no_grad()
def attribute_accuracy(
    images: torch.Tensor,
    attributes: AttributeTargets,
    net: FeatureNet | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, float]:
    """Does "a red circle" yield red circles? Accuracy of the shapes :class:`FeatureNet`'s
    attribute heads on ``images`` (N, C, H, W) in [-1, 1] against the prompted attributes.

    Returns ``{attribute: accuracy}`` for every scored attribute plus ``"all"`` (the fraction of
    images with every scored attribute right). ``net`` defaults to the cached shapes feature net
    (shipped with the package; trained on first use otherwise). Real shapes images score ~1;
    images carrying no information score at chance (``1 / len(ATTRIBUTES[k])`` on balanced
    prompts).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    targets = attribute_targets(attributes, len(images))
    net = net if net is not None else load_feature_net("shapes", cache_dir)
    missing = set(targets) - set(net.head_sizes)
    if missing:
        raise ValueError(
            f"the feature net has no head for {sorted(missing)} (heads {sorted(net.head_sizes)}); "
            "use the shapes feature net"
        )
    ok_all = torch.ones(len(images), dtype=torch.bool)
    hits: dict[str, list[torch.Tensor]] = {k: [] for k in targets}
    for i in range(0, len(images), 256):
        logits = net(images[i : i + 256].float())
        for k in targets:
            hits[k].append(logits[k].argmax(-1).cpu() == targets[k][i : i + 256])
    out = {}
    for k in targets:
        ok = torch.cat(hits[k])
        out[k] = float(ok.float().mean())
        ok_all &= ok
    out["all"] = float(ok_all.float().mean())
    return out


# --------------------------------------------------------------------------- evaluator


class ImageEvaluator:
    """Metrics of images against the built-in data (``kind="digits"`` or ``"shapes"``) or any
    reference set, with the built-in :class:`FeatureNet` as feature extractor.

    ``reference`` defaults to the built-in held-out images (digits test split; a fresh shapes
    set); its feature statistics are cached on disk keyed by the net and the reference data.
    """

    def __init__(
        self,
        kind: str = "digits",
        cache_dir: str | os.PathLike | None = None,
        net: FeatureNet | None = None,
        reference: torch.Tensor | None = None,
        feature_steps: int = 800,
    ) -> None:
        self.kind = kind
        self.cache_dir = cache_root(cache_dir)
        self.net = net if net is not None else load_feature_net(kind, cache_dir, feature_steps)
        if reference is None:
            if kind == "digits":
                reference = DigitsDataset(size=16, split="test").images
            elif kind == "shapes":
                reference = ShapesDataset(n=1200, size=32, seed=20_000).images
            else:
                raise ValueError(f"kind must be 'digits' or 'shapes', got {kind!r}")
        self.reference = reference
        self._ref_features: torch.Tensor | None = None

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] -> (N, F) float64."""
        return extract_features(self.net.features, images)

    @property
    def reference_features(self) -> torch.Tensor:
        if self._ref_features is None:
            self._ref_features = self._cached_reference_features()
        return self._ref_features

    def _cached_reference_features(self) -> torch.Tensor:
        from safetensors.torch import load_file

        h = hashlib.sha256()
        for v in self.net.state_dict().values():
            h.update(v.detach().cpu().float().numpy().tobytes())
        h.update(self.reference.float().numpy().tobytes())
        path = self.cache_dir / f"reffeat-{self.kind}-{h.hexdigest()[:16]}.safetensors"
        if path.is_file():
            return load_file(str(path))["features"]
        feats = self.features(self.reference)
        _save_atomic({"features": feats}, path, {"kind": self.kind})
        return feats

    def fid(self, images: torch.Tensor) -> float:
        """FID of ``images`` against the reference, on FeatureNet features."""
        return fid_from_features(self.reference_features, self.features(images))

    def precision_recall(self, images: torch.Tensor, k: int = 3) -> dict[str, float]:
        """Improved precision / recall on FeatureNet features (sets subsampled to equal size)."""
        fake = self.features(images)
        real = self.reference_features
        n = min(len(real), len(fake))
        return precision_recall(real[:n], fake[:n], k=k)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predicted label of every head, ``{head: LongTensor(N)}``."""
        out: dict[str, list[torch.Tensor]] = {k: [] for k in self.net.head_sizes}
        for i in range(0, len(images), 256):
            logits = self.net(images[i : i + 256].float())
            for k in out:
                out[k].append(logits[k].argmax(-1))
        return {k: torch.cat(v) for k, v in out.items()}

    def class_accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Fraction of class-conditional samples the classifier assigns to their class."""
        if "class" not in self.net.head_sizes:
            raise ValueError(f"the {self.kind} feature net has no 'class' head")
        pred = self.predict(images)["class"]
        return float((pred == labels.to(pred.device)).float().mean())

    def attribute_accuracy(
        self, images: torch.Tensor, attributes: AttributeTargets
    ) -> dict[str, float]:
        """Per-attribute accuracy of shapes samples against their prompts, plus ``"all"`` (every
        scored attribute right); see :func:`attribute_accuracy`."""
        return attribute_accuracy(images, attributes, net=self.net)

    def evaluate(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        captions: Sequence[str] | None = None,
    ) -> dict[str, float]:
        """FID, precision, recall, and class / attribute accuracy when labels / captions given."""
        out = {"fid": self.fid(images), **self.precision_recall(images)}
        if labels is not None:
            out["class_accuracy"] = self.class_accuracy(images, labels)
        if captions is not None:
            out.update(
                {f"attr_{k}": v for k, v in self.attribute_accuracy(images, captions).items()}
            )
        return out


# --------------------------------------------------------------------------- reference models


class InceptionFeatures(nn.Module):
    """Inception-v3 2048-d pool features (torchvision architecture) from a local weights file.

    ``weights``: a torchvision ``inception_v3`` state dict (``.pth`` / ``.pt`` loaded with
    ``weights_only=True``, or ``.safetensors``). Images in [-1, 1] are resized to 299x299
    bilinearly and fed in [-1, 1], the input range of the original TF graph.
    """

    def __init__(self, weights: str | os.PathLike) -> None:
        super().__init__()
        from torchvision.models import inception_v3

        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"InceptionFeatures: weights file {path} not found")
        self.net = inception_v3(
            weights=None, aux_logits=True, init_weights=False, transform_input=False
        )
        state = _load_state(path)
        try:
            self.net.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(
                f"InceptionFeatures: {path} is not an inception_v3 state dict: {e}"
            ) from e
        self.net.fc = nn.Identity()
        self.net.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(x)  # (N, 2048): eval mode returns the logits path only


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot load weights file {path}: {e}") from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


class CLIPModel(nn.Module):
    """CLIP image / text embeddings through ``open_clip`` from a local checkpoint.

    ``model_config``: optional path of an ``open_clip`` model-config JSON (registered under
    ``model_name``), for architectures ``open_clip`` does not ship.
    """

    def __init__(
        self,
        pretrained: str | os.PathLike,
        model_name: str = "ViT-B-32",
        model_config: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        import open_clip

        path = Path(pretrained)
        if not path.is_file():
            raise FileNotFoundError(
                f"CLIPModel: weights file {path} not found (nothing is downloaded)"
            )
        if model_config is not None:
            open_clip.add_model_config(str(model_config))
        self.model = open_clip.create_model(model_name, pretrained=str(path), device="cpu")
        self.model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        size = self.model.visual.image_size
        self.image_size = size if isinstance(size, int) else size[0]
        mean = getattr(self.model.visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        std = getattr(self.model.visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] -> L2-normalised image embeddings (N, D)."""
        x = (images.float() + 1) / 2
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(self.image_size,) * 2, mode="bicubic", align_corners=False)
        x = (x.clamp(0, 1) - self.mean) / self.std
        return F.normalize(self.model.encode_image(x), dim=-1)

    @torch.no_grad()
    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> L2-normalised text embeddings (N, D)."""
        return F.normalize(self.model.encode_text(self.tokenizer(list(prompts))), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_features(images)

    def clip_score(self, images: torch.Tensor, prompts: Sequence[str], w: float = 100.0) -> float:
        """Mean ``w * max(cos(image, prompt), 0)`` over pairs (Hessel et al. 2021)."""
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts for {len(images)} images")
        img = extract_features(self.image_features, images)
        txt = torch.cat(
            [self.text_features(prompts[i : i + 256]) for i in range(0, len(prompts), 256)]
        )
        return float((w * (img * txt.double()).sum(-1).clamp_min(0)).mean())

    def clip_fid(self, real: torch.Tensor, fake: torch.Tensor) -> float:
        """Frechet distance on CLIP image embeddings (CLIP-FID)."""
        return fid_from_features(
            extract_features(self.image_features, real), extract_features(self.image_features, fake)
        )


def folder_fid(
    real: str | os.PathLike | torch.Tensor,
    fake: str | os.PathLike | torch.Tensor,
    features: FeatureFn,
    size: int | None = None,
    channels: int = 3,
) -> float:
    """FID between two image folders (or tensors) under any feature extractor."""
    a = real if isinstance(real, torch.Tensor) else load_folder(real, size, channels)
    b = fake if isinstance(fake, torch.Tensor) else load_folder(fake, size, channels)
    return fid_from_features(extract_features(features, a), extract_features(features, b))


def noise_images(n: int, channels: int, size: int, seed: int = 0) -> np.ndarray:
    """Uniform noise images in [-1, 1] (the 'bad generator' of metric sanity checks)."""
    return np.random.default_rng(seed).uniform(-1, 1, (n, channels, size, size)).astype(np.float32)
