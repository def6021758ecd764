"""What the image configs build: training datasets and the hooks of ``polydiff train/sample``.

- :func:`digits_data`: digits as ``{"x"}`` or ``{"x", "class"}``.
- :func:`shapes_text_data`: shapes with captions encoded by a text encoder
  (``{"x", "text", "text_mask", "text_pooled"}``).
- :func:`shapes_autoencoder` / :func:`digits_autoencoder` / :func:`latent_data`: the KL
  autoencoders trained (or loaded from the cache) on shapes / digits, and any dataset encoded
  into their scaled latents.
- :class:`ImageHooks` (``polydiff.train.hooks``): sampling conditions (classes or prompts),
  latent decoding, PNG grids, and metrics from :class:`~polydiff.image.metrics.ImageEvaluator`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from polydiff.train.data import TensorDictDataset
from polydiff.train.run import open_run

from .autoencoder import AutoencoderConfig, KLAutoencoder, LatentDataset, load_or_train_autoencoder
from .controlnet import ControlNet, OutlineFillDataset
from .data import CaptionEncodedDataset, DigitsDataset, ShapesDataset, all_shape_specs
from .io import save_image_grid
from .ip_adapter import IPAdapter, ReferencePairs

__all__ = [
    "ImageHooks",
    "InMemoryDataset",
    "controlnet_on_run",
    "digits_autoencoder",
    "digits_data",
    "ip_adapter_on_run",
    "latent_data",
    "outline_fill_data",
    "reference_pairs_data",
    "shapes_autoencoder",
    "shapes_text_data",
    "text_encoder",
]


_ENCODERS: dict[tuple[str, int], Any] = {}


def text_encoder(name: str = "minilm", dim: int = 384) -> Any:
    """A text encoder by name, built once per process: ``"minilm"`` (the offline
    ``polydiff.nn.text.MiniLMTextEncoder``, 384-d) or ``"hashed"`` (:class:`HashedWordEncoder`
    of width ``dim``, dependency-free, for tests and quick demos)."""
    key = (name, dim)
    if key not in _ENCODERS:
        if name == "minilm":
            from polydiff.nn.text import MiniLMTextEncoder

            enc = MiniLMTextEncoder()
            if enc.dim != dim:
                raise ValueError(f"MiniLM tokens are {enc.dim}-d; set data.text_dim={enc.dim}")
        elif name == "hashed":
            from .models import HashedWordEncoder

            enc = HashedWordEncoder(dim)
        else:
            raise ValueError(f"unknown text encoder {name!r}; expected 'minilm' or 'hashed'")
        _ENCODERS[key] = enc
    return _ENCODERS[key]


class InMemoryDataset(TensorDictDataset):
    """Aligned tensors with ``get_batch`` (the trainer skips per-item collation)."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        n = {len(v) for v in tensors.values()}
        if len(n) != 1 or "x" not in tensors:
            raise ValueError(
                f"need 'x' and tensors of one length, got lengths "
                f"{ {k: len(v) for k, v in tensors.items()} }"
            )
        self.tensors = tensors


def _collect(ds: Dataset, keys: Sequence[str]) -> InMemoryDataset:
    items = [ds[i] for i in range(len(ds))]  # type: ignore[arg-type]
    out = {}
    for k in ("x", *keys):
        vals = [it[k] for it in items]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else torch.tensor(vals)
    return InMemoryDataset(**out)


def digits_data(
    size: int = 16,
    conditional: bool = False,
    split: str = "train",
    classes: Sequence[int] | None = None,
) -> InMemoryDataset:
    """scikit-learn digits in [-1, 1] (only ``classes`` if given); with ``conditional`` the
    items carry ``"class"``."""
    ds = DigitsDataset(size=size, split=split, classes=None if classes is None else list(classes))
    tensors = {"x": ds.images}
    if conditional:
        tensors["class"] = ds.labels
    return InMemoryDataset(**tensors)


def shapes_text_data(
    text_encoder: Any, n: int = 2400, size: int = 32, seed: int = 0
) -> InMemoryDataset:
    """Shapes with captions encoded once by ``text_encoder`` (``encode(list[str]) -> dict``)."""
    enc = CaptionEncodedDataset(ShapesDataset(n=n, size=size, seed=seed), text_encoder.encode)
    return _collect(enc, ("text", "text_mask", "text_pooled"))


def shapes_autoencoder(
    n: int = 2400,
    size: int = 32,
    seed: int = 0,
    steps: int = 1000,
    batch_size: int = 32,
    z_channels: int = 4,
    base_channels: int = 16,
    kl_weight: float = 1e-4,
    cache_dir: str | None = None,
) -> KLAutoencoder:
    """The KL autoencoder of the shapes data (trained once, then loaded from the cache)."""
    images = ShapesDataset(n=n, size=size, seed=seed).images
    cfg = AutoencoderConfig(in_channels=3, z_channels=z_channels, base_channels=base_channels)
    return load_or_train_autoencoder(
        images, cache_dir, cfg, steps=steps, batch_size=batch_size, kl_weight=kl_weight
    )


def digits_autoencoder(
    size: int = 16,
    steps: int = 600,
    batch_size: int = 64,
    z_channels: int = 2,
    base_channels: int = 16,
    channel_mult: Sequence[int] = (1, 2),
    cache_dir: str | None = None,
) -> KLAutoencoder:
    """The KL autoencoder of the digits (``2**(len(channel_mult)-1)``-fold downsampling; trained
    once on the training split, then loaded from the cache)."""
    images = DigitsDataset(size=size, split="train").images
    cfg = AutoencoderConfig(
        in_channels=1, z_channels=z_channels, base_channels=base_channels,
        channel_mult=tuple(channel_mult),
    )  # fmt: skip
    return load_or_train_autoencoder(images, cache_dir, cfg, steps=steps, batch_size=batch_size)


def latent_data(
    base: Dataset, autoencoder: KLAutoencoder, keys: Sequence[str] = ()
) -> InMemoryDataset:
    """``base`` encoded into scaled latents (``x`` replaced), keeping condition ``keys``."""
    return _collect(LatentDataset(base, autoencoder), keys)


class ImageHooks:
    """``polydiff.train.hooks`` of the image experiments.

    ``conditioning``: ``None``, ``"class"`` (uniform random digits) or ``"text"`` (random shapes
    captions through ``text_encoder``). ``autoencoder`` decodes latents in :meth:`to_data`.
    ``metrics``: ``"digits"`` / ``"shapes"`` use the built-in feature network (FID, precision,
    recall, class / attribute accuracy); None computes none.
    """

    def __init__(
        self,
        conditioning: str | None = None,
        num_classes: int = 10,
        text_encoder: Any = None,
        autoencoder: KLAutoencoder | None = None,
        metrics: str | None = None,
        cache_dir: str | None = None,
        feature_steps: int = 800,
        grid_rows: int = 8,
    ) -> None:
        if conditioning not in (None, "class", "text"):
            raise ValueError(f"conditioning must be None, 'class' or 'text', got {conditioning!r}")
        if conditioning == "text" and text_encoder is None:
            raise ValueError("conditioning='text' needs a text_encoder")
        self.conditioning, self.num_classes = conditioning, num_classes
        self.text_encoder, self.autoencoder = text_encoder, autoencoder
        self.metrics, self.cache_dir, self.feature_steps = metrics, cache_dir, feature_steps
        self.grid_rows = grid_rows
        self._prompts: list[str] | None = None

    def sample_cond(self, n: int, generator: torch.Generator | None) -> dict | None:
        if self.conditioning == "class":
            return {"class": torch.arange(n) % self.num_classes}
        if self.conditioning == "text":
            captions = [s.caption for s in all_shape_specs()]
            idx = torch.randint(0, len(captions), (n,), generator=generator)
            self._prompts = [captions[i] for i in idx.tolist()]
            enc = self.text_encoder.encode(self._prompts)
            return dict(enc)
        return None

    def to_data(self, x: torch.Tensor) -> torch.Tensor:
        if self.autoencoder is not None:
            x = torch.cat(
                [self.autoencoder.to_image(x[i : i + 256]) for i in range(0, len(x), 256)]
            )
        return x.clamp(-1, 1)

    def write(self, samples: torch.Tensor, cond: Mapping | None, out_dir: Path) -> list[Path]:
        n = min(len(samples), self.grid_rows * 8)
        order = torch.arange(len(samples))
        if cond is not None and "class" in cond:  # one row per class
            order = torch.argsort(cond["class"].cpu(), stable=True)
        path = save_image_grid(samples[order[:n]], Path(out_dir) / "grid.png", nrow=8, scale=4)
        return [path]

    def evaluate(self, samples: torch.Tensor, cond: Mapping | None) -> dict[str, float]:
        if self.metrics is None:
            return {}
        from .metrics import ImageEvaluator

        ev = ImageEvaluator(self.metrics, self.cache_dir, feature_steps=self.feature_steps)
        labels = cond["class"].cpu() if cond is not None and "class" in cond else None
        captions = self._prompts if self.conditioning == "text" else None
        return ev.evaluate(samples.cpu(), labels=labels, captions=captions)

    def primary_metric(self) -> tuple[str, str] | None:
        """FID on the built-in feature network ranks weights (``sample.ema=auto``): it falls
        with both fidelity and diversity and has no ties, while class accuracy saturates near 1
        and, on the few hundred samples the choice affords, its s.e. (~0.03) exceeds the
        differences between EMA lengths."""
        return ("fid", "min") if self.metrics is not None else None

    def guard_metrics(self) -> list[tuple[str, str]]:
        """Class accuracy (conditional models; ignored when evaluate does not report it) may not
        drop below the raw weights' for an EMA to be chosen: on a 300-step digits run every EMA
        lowers FID but also class accuracy (raw 0.375 vs 0.32 for sigma_rel 0.025)."""
        return [("class_accuracy", "max")] if self.metrics is not None else []

    def extra_npz(self, cond: Mapping | None) -> dict[str, np.ndarray]:
        if self.conditioning == "text" and self._prompts is not None:
            return {"prompts": np.asarray(self._prompts)}
        return {}


# ------------------------------------------------------------------ models built on a trained run
def _with_run_weights(
    base: nn.Module, base_run: str | None, ema: bool | float | str, what: str
) -> nn.Module:
    """``base`` with the weights of the trained run ``base_run`` (chosen by ``ema``, as
    ``polydiff sample``'s ``sample.ema``); ``base_run=None`` keeps its initial weights (smoke
    tests)."""
    if base_run is None:
        return base
    trained = open_run(base_run, ema=ema).model
    try:
        base.load_state_dict(trained.state_dict())
    except RuntimeError as err:
        raise ValueError(
            f"{what}: model.base does not match the network of {base_run} "
            f"({str(err).splitlines()[0]}); give model.base its model config"
        ) from None
    return base


def outline_fill_data(n: int = 1200, size: int = 16, seed: int = 0, control: bool = True) -> Any:
    """Fill50K-like outline -> filled-shape pairs (:class:`OutlineFillDataset`); without
    ``control`` only the images (the unconditional base a ControlNet is trained on)."""
    pairs = OutlineFillDataset(n=n, size=size, seed=seed)
    return pairs if control else InMemoryDataset(x=pairs.images)


def controlnet_on_run(
    base: nn.Module,
    base_run: str | None = None,
    ema: bool | float | str = True,
    hint_channels: int = 1,
    **kwargs: Any,
) -> ControlNet:
    """A :class:`ControlNet` (Zhang et al. 2023) on the frozen U-Net ``base`` (the model config
    of the run ``base_run``, whose trained weights it loads)."""
    base = _with_run_weights(base, base_run, ema, "controlnet_on_run")
    return ControlNet(base, hint_channels, **kwargs)


def reference_pairs_data(
    size: int = 16, classes: Sequence[int] | None = None, null_class: int = 10, seed: int = 0
) -> ReferencePairs:
    """Digits image-prompt pairs (:class:`ReferencePairs`): image, another image of its class as
    the reference, and the base model's null class."""
    chosen = None if classes is None else list(classes)
    ds = DigitsDataset(size=size, split="train", classes=chosen)
    return ReferencePairs(ds.images, ds.labels, null_class, seed=seed)


def ip_adapter_on_run(
    base: nn.Module,
    image_shape: Sequence[int],
    base_run: str | None = None,
    ema: bool | float | str = True,
    **kwargs: Any,
) -> IPAdapter:
    """An :class:`IPAdapter` (Ye et al. 2023) on the frozen network ``base`` (the model config of
    the run ``base_run``, whose trained weights it loads); ``kwargs``: ``num_tokens``,
    ``token_dim``, ``stages``, ..."""
    base = _with_run_weights(base, base_run, ema, "ip_adapter_on_run")
    return IPAdapter(base, image_shape, **kwargs)
