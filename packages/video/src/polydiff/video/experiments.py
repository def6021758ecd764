"""What the video configs build: training datasets and the hooks of ``polydiff train/sample``.

- :func:`digits_data`: bouncing digits as ``{"x" (1, F, S, S), ["class"]}`` plus, per
  ``task``, the concatenated frames of image-to-video (``"first_frame"``: the first frame
  repeated over time, SVD-style) or of MCVD-style masked training (``"masked"``: known frames
  and their mask for generation / prediction / interpolation rows), and the independent-frame
  rows of joint image-video training (``image_fraction``, ``cond["frames_independent"]``).
- :func:`shapes_text_data`: moving shapes with captions encoded by a text encoder.
- :func:`folder_data` / :func:`folder_hooks`: your own folder of videos
  (:class:`~polydiff.video.data.VideoFolderDataset`).
- :class:`VideoHooks` (``polydiff.train.hooks``): sampling conditions, GIF / MP4 files and the
  metrics of :mod:`polydiff.video.metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .data import (
    COLOURS,
    MOTIONS,
    SHAPES,
    SIZES,
    BouncingDigits,
    MovingShapes,
    ShapeClipSpec,
    VideoFolderDataset,
)
from .io import save_clip_grid_gif, save_gif, save_mp4

__all__ = [
    "TASKS",
    "ClipDataset",
    "VideoHooks",
    "digits_data",
    "folder_data",
    "folder_hooks",
    "describe_video_folder",
    "masked_condition",
    "shapes_text_data",
    "text_encoder",
]

TASKS = ("generate", "predict", "interpolate")
_ENCODERS: dict[str, Any] = {}


def text_encoder(name: str = "minilm", dim: int = 384) -> Any:
    """The offline MiniLM text encoder (``polydiff.nn.text``), built once per process."""
    if name != "minilm":
        raise ValueError(f"unknown text encoder {name!r}; expected 'minilm'")
    if name not in _ENCODERS:
        from polydiff.nn.text import MiniLMTextEncoder  # heavy optional part of polydiff.nn

        enc = MiniLMTextEncoder()
        if enc.dim != dim:
            raise ValueError(f"MiniLM tokens are {enc.dim}-d; set data.text_dim={enc.dim}")
        _ENCODERS[name] = enc
    return _ENCODERS[name]


def masked_condition(clips: torch.Tensor, tasks: Sequence[str], context: int) -> torch.Tensor:
    """MCVD-style conditioning (Voleti et al. 2022): ``cat([known frames * mask, mask], 1)``
    (B, C + 1, F, H, W) for a task per row: ``generate`` (nothing known), ``predict`` (the first
    ``context`` frames known) or ``interpolate`` (the first and last ``context`` frames)."""
    b, _, f = clips.shape[:3]
    if not 0 < 2 * context < f + 1:
        raise ValueError(f"context={context} frames leave none to generate in {f}-frame clips")
    mask = torch.zeros(b, 1, f, 1, 1, dtype=clips.dtype)
    for i, task in enumerate(tasks):
        if task == "predict":
            mask[i, :, :context] = 1
        elif task == "interpolate":
            mask[i, :, :context] = 1
            mask[i, :, f - context :] = 1
        elif task != "generate":
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    mask = mask.expand(b, 1, f, *clips.shape[3:])
    return torch.cat([clips * mask, mask], dim=1)


class ClipDataset(Dataset):
    """Clips (N, C, F, H, W) with per-row conditions, built in ``get_batch`` from the index.

    Rows ``[0, N * R)`` are videos (``R = len(tasks)`` for ``task="masked"``: row ``i`` is clip
    ``i % N`` under task ``tasks[i // N]``; else ``R = 1``); with ``image_fraction > 0`` the
    remaining rows are stacks of F independent frames drawn from random clips of one class
    (seeded), marked ``frames_independent`` (Ho et al. 2022, sec. 3.1). ``image_fraction=1``:
    only such rows (N of them), the data of a per-frame model to warm-start a video model from.
    """

    def __init__(
        self,
        videos: torch.Tensor,
        labels: torch.Tensor | None = None,
        text: Mapping[str, torch.Tensor] | None = None,
        task: str | None = None,
        context: int = 2,
        image_fraction: float = 0.0,
        seed: int = 0,
    ) -> None:
        if task not in (None, "first_frame", "masked"):
            raise ValueError(f"task must be None, 'first_frame' or 'masked', got {task!r}")
        if not 0.0 <= image_fraction <= 1.0:
            raise ValueError(f"image_fraction must be in [0, 1], got {image_fraction}")
        if image_fraction and (text is not None or task is not None):
            raise ValueError("joint image-video rows (image_fraction > 0) need task=None, no text")
        self.videos, self.labels, self.text = videos, labels, dict(text) if text else None
        self.task, self.context = task, context
        n, f = len(videos), videos.shape[2]
        self.n_video = n * (len(TASKS) if task == "masked" else 1)
        if image_fraction == 1.0:  # image rows only (as many as clips): a per-frame model
            self.n_video, n_image = 0, self.n_video
        else:
            n_image = round(self.n_video * image_fraction / (1 - image_fraction))
        rng = np.random.default_rng([seed, 99])
        if labels is not None:
            by_class = {int(c): np.flatnonzero(labels.numpy() == c) for c in labels.unique()}
            classes = rng.choice(sorted(by_class), size=n_image)
            clip_idx = (
                np.stack([rng.choice(by_class[c], size=f) for c in classes]) if n_image else None
            )
            self.image_labels = torch.as_tensor(classes, dtype=torch.long)
        else:
            clip_idx = rng.integers(0, n, size=(n_image, f)) if n_image else None
            self.image_labels = None
        self.image_rows = (
            (torch.as_tensor(clip_idx), torch.as_tensor(rng.integers(0, f, size=(n_image, f))))
            if n_image
            else None
        )
        self.n_image = n_image

    def __len__(self) -> int:
        return self.n_video + self.n_image

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.get_batch([i]).items()}

    def get_batch(self, indices: Sequence[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        n = len(self.videos)
        is_image = idx >= self.n_video
        clip = idx % n
        x = self.videos[clip].clone()
        out: dict[str, torch.Tensor] = {}
        if self.labels is not None:
            out["class"] = self.labels[clip].clone()
        if self.n_image and bool(is_image.any()):
            rows = (idx[is_image] - self.n_video).long()
            clips, frames = self.image_rows[0][rows], self.image_rows[1][rows]  # (k, F)
            stack = self.videos[clips, :, frames]  # (k, F, C, H, W)
            x[is_image] = stack.permute(0, 2, 1, 3, 4)
            if self.labels is not None:
                out["class"][is_image] = self.image_labels[rows]
        if self.n_image:
            out["frames_independent"] = is_image
        if self.text is not None:
            out.update({k: v[clip] for k, v in self.text.items()})
        if self.task == "first_frame":
            out["concat"] = x[:, :, :1].expand_as(x).clone()
        elif self.task == "masked":
            tasks = [TASKS[int(i) // n] for i in idx]
            out["concat"] = masked_condition(x, tasks, self.context)
        return {"x": x, **out}


def digits_data(
    n: int = 4000,
    frames: int = 8,
    size: int = 32,
    digit_size: int | None = None,
    num_digits: int | Sequence[int] = 1,
    conditional: bool = True,
    task: str | None = None,
    context: int = 2,
    image_fraction: float = 0.0,
    split: str = "train",
    seed: int = 0,
) -> ClipDataset:
    """Bouncing digits (:class:`~polydiff.video.data.BouncingDigits`) for training."""
    nd = num_digits if isinstance(num_digits, int) else tuple(num_digits)
    if conditional and nd != 1:
        raise ValueError(f"class conditioning needs num_digits=1 (one class per clip), got {nd}")
    ds = BouncingDigits(n, frames, size, digit_size, nd, split=split, seed=seed)
    labels = torch.as_tensor(ds.labels[:, 0]) if conditional else None
    return ClipDataset(ds.videos, labels, None, task, context, image_fraction, seed)


def shapes_text_data(
    text_encoder: Any, n: int = 2000, frames: int = 8, size: int = 32, seed: int = 0
) -> ClipDataset:
    """Moving shapes with captions encoded once (``{"text", "text_mask", "text_pooled"}``)."""
    ds = MovingShapes(n, frames, size, seed)
    return ClipDataset(ds.videos, text=_encode(text_encoder, ds.captions))


def _encode(encoder: Any, captions: Sequence[str]) -> dict[str, torch.Tensor]:
    unique = sorted(set(captions))
    enc = encoder.encode(unique)
    where = torch.tensor([unique.index(c) for c in captions])
    return {k: v[where] for k, v in enc.items()}


def folder_data(
    root: str,
    frames: int = 8,
    size: int | None = None,
    fps: float | None = None,
    channels: int | None = None,
    num_classes: int | None = None,
    captions: str | None = None,
    text_encoder: Any = None,
    clips_per_video: int = 1,
    on_error: str = "raise",
) -> ClipDataset:
    """Your own clips (:class:`~polydiff.video.data.VideoFolderDataset`): class sub-folders
    become ``"class"``, captions are encoded by ``text_encoder`` when the folder has them."""
    ds = VideoFolderDataset(
        root, frames, size, fps, channels, num_classes, captions,
        clips_per_video=clips_per_video, on_error=on_error,
    )  # fmt: skip
    if ds.skipped:
        print(f"polydiff.video: skipped {len(ds.skipped)} unusable clips of {root}:", flush=True)
        for path, why in ds.skipped:
            print(f"  {path}: {why}", flush=True)
    text = None
    if ds.captions is not None and text_encoder is not None:
        text = _encode(text_encoder, ds.captions)
    data = ClipDataset(ds.videos, ds.labels, text)
    data.info = ds.info  # type: ignore[attr-defined]
    return data


# --------------------------------------------------------------------------- hooks


class VideoHooks:
    """``polydiff.train.hooks`` of the video experiments.

    ``conditioning``: None, ``"class"`` (classes ``arange(n) % num_classes``), ``"text"``
    (random moving-shapes captions through ``text_encoder``), ``"first_frame"`` (image-to-video
    from the first frames of held-out clips, with their class when ``num_classes``) or
    ``"masked"`` (held-out clips, each repeated ``best_of`` times, half for prediction from
    ``context`` frames and half for interpolation). ``metrics``: ``"digits"`` scores the samples
    with :class:`~polydiff.video.metrics.VideoEvaluator`; None computes none. ``frames``,
    ``size``, ``digit_size`` describe the held-out bouncing digits (test split).
    """

    def __init__(
        self,
        conditioning: str | None = None,
        num_classes: int | None = None,
        text_encoder: Any = None,
        metrics: str | None = None,
        frames: int = 8,
        size: int = 32,
        digit_size: int | None = None,
        context: int = 2,
        best_of: int = 5,
        cache_dir: str | None = None,
        feature_steps: int = 600,
        clip_steps: int = 1000,
        fps: float = 8.0,
        max_files: int = 16,
        seed: int = 12345,
    ) -> None:
        if conditioning not in (None, "class", "text", "first_frame", "masked"):
            raise ValueError(
                "conditioning must be None, 'class', 'text', 'first_frame' or 'masked', "
                f"got {conditioning!r}"
            )
        if conditioning == "text" and text_encoder is None:
            raise ValueError("conditioning='text' needs a text_encoder")
        if conditioning == "class" and not num_classes:
            raise ValueError("conditioning='class' needs num_classes")
        if metrics not in (None, "digits"):
            raise ValueError(f"metrics must be None or 'digits', got {metrics!r}")
        self.conditioning, self.num_classes, self.text_encoder = (
            conditioning,
            num_classes,
            text_encoder,
        )
        self.metrics, self.frames, self.size, self.digit_size = metrics, frames, size, digit_size
        self.context, self.best_of, self.cache_dir = context, best_of, cache_dir
        self.clip_steps = clip_steps
        self.feature_steps, self.fps, self.max_files, self.seed = (
            feature_steps,
            fps,
            max_files,
            seed,
        )
        self._prompts: list[str] | None = None
        self._reference: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None

    # -- held-out clips
    def heldout(self, n: int) -> BouncingDigits:
        """``n`` bouncing-digits clips of the test split (digits never trained on)."""
        return BouncingDigits(n, self.frames, self.size, self.digit_size, 1, split="test",
                              seed=self.seed)  # fmt: skip

    def sample_cond(self, n: int, generator: torch.Generator | None) -> dict | None:
        self._reference = self._labels = self._prompts = None
        if self.conditioning == "class":
            return {"class": torch.arange(n) % self.num_classes}
        if self.conditioning == "text":
            specs = [
                ShapeClipSpec(s, c, z, m)
                for s in SHAPES
                for c in COLOURS
                for z in SIZES
                for m in MOTIONS
            ]
            idx = torch.randint(0, len(specs), (n,), generator=generator)
            self._prompts = [specs[i].caption for i in idx.tolist()]
            return dict(self.text_encoder.encode(self._prompts))
        if self.conditioning == "first_frame":
            ref = self.heldout(n)
            self._reference, self._labels = ref.videos, torch.as_tensor(ref.labels[:, 0])
            cond = {"concat": ref.videos[:, :, :1].expand_as(ref.videos).clone()}
            if self.num_classes:
                cond["class"] = self._labels.clone()
            return cond
        if self.conditioning == "masked":
            k = self.best_of
            m = -(-n // (2 * k))  # clips; rows beyond n are dropped (evaluate needs n = 2 m k)
            ref = self.heldout(m)
            half = ref.videos.repeat_interleave(k, 0)  # (m k, C, F, H, W)
            clips = torch.cat([half, half])[:n]
            tasks = (["predict"] * len(half) + ["interpolate"] * len(half))[:n]
            self._reference, self._labels = clips, torch.as_tensor(ref.labels[:, 0])
            return {"concat": masked_condition(clips, tasks, self.context)}
        return None

    def to_data(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-1, 1)

    def write(self, samples: torch.Tensor, cond: Mapping | None, out_dir: Path) -> list[Path]:
        out_dir = Path(out_dir)
        order = torch.arange(len(samples))
        if cond is not None and "class" in cond:
            order = torch.argsort(cond["class"].cpu(), stable=True)
        files = [save_clip_grid_gif(samples[order[:64]], out_dir / "grid.gif", fps=self.fps)]
        for i in range(min(self.max_files, len(samples))):
            files.append(save_gif(samples[i], out_dir / f"sample_{i:03d}.gif", fps=self.fps))
            files.append(save_mp4(samples[i], out_dir / f"sample_{i:03d}.mp4", fps=self.fps))
        return files

    def evaluate(
        self, samples: torch.Tensor, cond: Mapping | None, options: Mapping | None = None
    ) -> dict[str, float]:
        """The built-in metrics; with ``options["i3d_weights"]`` (``+evaluate.i3d_weights=<file>``)
        also ``fvd`` against as many held-out clips (:mod:`polydiff.video.i3d`)."""
        options = dict(options or {})
        for key in ("reference", "save_images"):
            if options.get(key):
                raise ValueError(
                    f"evaluate.{key}={options[key]}: the video evaluation takes no such setting"
                )
        out = self._builtin_metrics(samples, cond)
        if options.get("i3d_weights"):
            from .i3d import frechet_video_distance, load_i3d  # a large network: only on request

            net = load_i3d(options["i3d_weights"])
            ref = self.heldout(len(samples)).videos
            out["fvd"] = frechet_video_distance(net, ref, samples.cpu())
        return out

    def _builtin_metrics(self, samples: torch.Tensor, cond: Mapping | None) -> dict[str, float]:
        if self.metrics is None:
            return {}
        from .metrics import VideoEvaluator, prediction_scores

        ev = VideoEvaluator(self.cache_dir, self.frames, self.size, self.digit_size,
                            feature_steps=self.feature_steps,
                            clip_steps=self.clip_steps)  # fmt: skip
        samples = samples.cpu()
        if self.conditioning == "masked":
            if len(samples) % (2 * self.best_of):
                raise ValueError(
                    f"conditioning='masked' scores {self.best_of} samples per clip for prediction "
                    f"and for interpolation: evaluate.n must be a multiple of {2 * self.best_of}, "
                    f"got {len(samples)}"
                )
            n = len(samples) // 2
            ref = self._reference
            c = self.context
            out = {}
            pred = prediction_scores(samples[:n], ref[:n], self.best_of, known=slice(0, c))
            out.update({f"predict_{k}": v for k, v in pred.items()})
            f = ref.shape[2]
            inter = prediction_scores(
                samples[n:], ref[n:], self.best_of, known=(slice(0, c), slice(f - c, f))
            )
            out.update({f"interpolate_{k}": v for k, v in inter.items()})
            out.update(ev.evaluate(samples[:n], None, physics=True))
            return out
        labels = cond["class"].cpu() if cond is not None and "class" in cond else self._labels
        out = ev.evaluate(samples, labels)
        if self.conditioning == "first_frame":
            out["first_frame_mae"] = float(
                (samples[:, :, 0] - self._reference[:, :, 0]).abs().mean() / 2
            )
        return out

    def extra_npz(self, cond: Mapping | None) -> dict[str, np.ndarray]:
        if self.conditioning == "text" and self._prompts is not None:
            return {"prompts": np.asarray(self._prompts)}
        if self._reference is not None:
            return {"reference": self._reference.numpy()}
        return {}


def folder_hooks(root: str, frames: int = 8, fps: float = 8.0) -> VideoHooks:
    """Hooks for your own folder: class-conditional sampling (``arange(n) % num_classes``)
    when it has class sub-folders, else unconditional; no built-in metrics."""
    from .data import probe_video_folder

    info = probe_video_folder(root)
    if info.num_classes:
        return VideoHooks("class", info.num_classes, frames=frames, fps=fps)
    return VideoHooks(None, frames=frames, fps=fps)


def describe_video_folder(
    root: str,
    channels: Any = "auto",
    image_size: Any = "auto",
    num_classes: Any = "auto",
    captions: str | None = None,
) -> dict[str, Any]:
    """Facts of a folder of clips for ``data=video_folder`` (read before anything is built, see
    ``polydiff.train.config.describe_data``): ``channels`` (1 if every probed frame is grey,
    else 3), ``image_size`` (the shorter native side rounded down to a multiple of 8; an explicit
    size resizes), ``num_classes`` (class sub-folders; None = unconditional), caption presence.
    An explicit value that contradicts the data raises naming both."""
    from .data import probe_video_folder

    info = probe_video_folder(root, captions)
    found = {"channels": info.channels, "num_classes": info.num_classes}
    given = {"channels": channels, "num_classes": num_classes}
    out: dict[str, Any] = {"root": str(Path(root).expanduser().resolve())}
    for key in ("channels", "num_classes"):
        value = given[key]
        if value not in ("auto", None) and value != found[key]:
            raise ValueError(
                f"data.{key}={value} was given but the clips under {root} have "
                f"{key}={found[key]}; drop the override or fix the data"
            )
        out[key] = found[key] if value == "auto" else value
    native = min(info.native_size)
    out["image_size"] = max(8, native - native % 8) if image_size == "auto" else int(image_size)
    out["captioned"] = info.has_captions
    out["info"] = {
        "num_sources": len(info.sources),
        "classes": info.class_names,
        "native_size": list(info.native_size),
        "captions_file": info.captions_file,
    }
    return out
