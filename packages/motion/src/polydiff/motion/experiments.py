"""What the motion configs build: datasets, text encoders and the hooks of ``polydiff train``.

- :func:`motion_dataset`: the built-in procedural set or a HumanML3D folder as normalised,
  padded features ``{"x" (T, D), "seq_mask", "loss_mask", ["text_pooled" | "class"]}``; what the
  data is (feature count, classes, captions) is checked against the config and a mismatch
  names both values.
- :func:`text_encoder`: MiniLM (pooled sentence embedding, cached on disk) or a dependency-free
  bag-of-words encoder for tests.
- :class:`MotionHooks` (``polydiff.train.hooks``): prompts / actions and lengths of held-out
  motions to sample with, denormalisation, GIF / BVH / NPZ files, and the T2M protocol of
  ``polydiff evaluate`` (:meth:`MotionHooks.evaluate_model`: replications with confidence
  intervals, MultiModality, the real and nearest-caption retrieval rows).
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from polydiff.train.hooks import draw
from polydiff.train.sampling import generate

from .data import MotionSet, Normalizer, builtin_motions, load_humanml3d
from .features import features_to_joints
from .metrics import (
    T2M_PROTOCOL,
    confidence_interval,
    embed,
    evaluate_motions,
    load_or_train_evaluator,
    multimodality,
)
from .synthetic import ACTIONS

__all__ = [
    "MotionData",
    "MotionHooks",
    "WordsEncoder",
    "cache_root",
    "motion_dataset",
    "text_encoder",
]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$POLYDIFF_CACHE/motion``, else ``~/.cache/polydiff/motion``."""
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("POLYDIFF_CACHE")
    return Path(base) / "motion" if base else Path.home() / ".cache" / "polydiff" / "motion"


# ------------------------------------------------------------------------------- text encoders
class WordsEncoder:
    """Bag of words hashed (crc32) into ``dim`` slots, L2-normalised: a deterministic,
    dependency-free stand-in for MiniLM in tests and quick runs."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = self.pooled_dim = int(dim)

    def encode(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        out = torch.zeros(len(prompts), self.dim)
        for i, p in enumerate(prompts):
            for w in p.lower().replace(",", " ").split():
                out[i, zlib.crc32(w.encode()) % self.dim] += 1.0
        return {"text_pooled": torch.nn.functional.normalize(out, dim=-1)}


class _PooledMiniLM:
    """MiniLM's pooled sentence embedding, cached on disk (``minilm_pooled.safetensors``)."""

    def __init__(self, cache_dir: str | None) -> None:
        from polydiff.nn.text import EmbeddingCache, MiniLMTextEncoder

        path = cache_root(cache_dir) / "minilm_pooled.safetensors"
        self.cache = EmbeddingCache(path, encoder="minilm-pooled")
        self._enc = None
        self._factory = MiniLMTextEncoder
        self.dim = self.pooled_dim = 384

    def encode(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        missing = list(dict.fromkeys(p for p in prompts if p not in self.cache))
        if missing:
            if self._enc is None:
                self._enc = self._factory(cache=False)
            for i in range(0, len(missing), 256):
                chunk = missing[i : i + 256]
                pooled = self._enc.encode(chunk)["text_pooled"]
                for p, v in zip(chunk, pooled):
                    self.cache.put(p, v[None].clone(), v.clone())
            self.cache.save()
        return {"text_pooled": torch.stack([self.cache.get(p)[1] for p in prompts]).float()}


_ENCODERS: dict[tuple, Any] = {}


def text_encoder(name: str = "minilm", dim: int = 384, cache_dir: str | None = None) -> Any:
    """``"minilm"`` (384-d, offline, cached) or ``"words"`` (:class:`WordsEncoder` of ``dim``)."""
    key = (name, dim, cache_dir)
    if key not in _ENCODERS:
        if name == "minilm":
            if dim != 384:
                raise ValueError(f"MiniLM embeddings are 384-d; set data.text_dim=384 (got {dim})")
            _ENCODERS[key] = _PooledMiniLM(cache_dir)
        elif name == "words":
            _ENCODERS[key] = WordsEncoder(dim)
        else:
            raise ValueError(f"unknown text encoder {name!r}; expected 'minilm' or 'words'")
    return _ENCODERS[key]


# ------------------------------------------------------------------------------- datasets
class MotionData(Dataset):
    """Normalised, padded motions: one item per (motion, caption) when text-conditioned,
    one per motion otherwise. ``motions`` keeps the raw :class:`MotionSet`."""

    def __init__(
        self,
        motions: MotionSet,
        normalizer: Normalizer,
        max_len: int,
        conditioning: str | None,
        encoder: Any = None,
        num_classes: int | None = None,
    ) -> None:
        self.motions, self.normalizer, self.max_len = motions, normalizer, int(max_len)
        self.conditioning, self.encoder, self.num_classes = conditioning, encoder, num_classes
        rows, caps = [], []
        for i, cs in enumerate(motions.captions):
            for c in cs if conditioning == "text" else cs[:1] or [""]:
                rows.append(i)
                caps.append(c)
        self.rows, self.prompts = rows, caps
        n, d = len(rows), motions.dim
        x = torch.zeros(n, self.max_len, d)
        mask = torch.zeros(n, self.max_len, dtype=torch.bool)
        for k, i in enumerate(rows):
            f = torch.as_tensor(normalizer.normalize(motions.features[i][: self.max_len]))
            x[k, : len(f)] = f
            mask[k, : len(f)] = True
        self.tensors: dict[str, torch.Tensor] = {"x": x, "seq_mask": mask, "loss_mask": mask}
        if conditioning == "text":
            self.tensors["text_pooled"] = encoder.encode(caps)["text_pooled"].float()
        elif conditioning == "action":
            self.tensors["class"] = torch.as_tensor([motions.labels[i] for i in rows])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}

    def get_batch(self, indices) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {k: v[idx] for k, v in self.tensors.items()}

    def lengths(self) -> torch.Tensor:
        return self.tensors["seq_mask"].sum(1)


_MOTIONS: dict[str, MotionSet] = {}


def _builtin_cached(params: dict[str, Any], cache_dir: str | None) -> MotionSet:
    """Built-in motions, generated once per process and cached on disk by parameter hash."""
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    if key in _MOTIONS:
        return _MOTIONS[key]
    path = cache_root(cache_dir) / f"builtin-v1-{key}.npz"
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        lengths = z["lengths"]
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        features = z["features"]  # NpzFile re-reads the member on every access: read it once
        feats = [features[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        ncap = int(z["captions"].shape[1])
        caps = [[str(c) for c in row[:ncap] if c] for row in z["captions"]]
        ms = MotionSet(
            feats, caps, z["labels"].tolist(), [str(n) for n in z["names"]], label_names=ACTIONS
        )
    else:
        ms = builtin_motions(**params)
        width = max(len(c) for c in ms.captions)
        caps = np.asarray([c + [""] * (width - len(c)) for c in ms.captions])
        from polydiff.core.fileio import atomic_path

        with atomic_path(path) as tmp:
            np.savez(
                tmp,
                features=np.concatenate(ms.features),
                captions=caps,
                lengths=np.asarray([len(f) for f in ms.features]),
                labels=np.asarray(ms.labels),
                names=np.asarray(ms.names),
            )
    _MOTIONS[key] = ms
    return ms


def load_motions(
    source: str = "builtin",
    split: str = "train",
    *,
    root: str | None = None,
    n: int = 2000,
    seed: int = 0,
    min_len: int = 40,
    max_len: int = 60,
    combo_prob: float = 0.3,
    mirror: bool = False,
    on_error: str = "raise",
    cache_dir: str | None = None,
) -> MotionSet:
    """The raw motions of a data config: ``source="builtin"`` (``split="test"`` is a disjoint
    seed) or ``"humanml3d"`` (``root`` needed)."""
    if source == "builtin":
        if split not in ("train", "test"):
            raise ValueError(f"built-in motion splits are 'train' and 'test', got {split!r}")
        params = dict(
            n=int(n if split == "train" else max(n // 4, 32)),
            seed=int(seed if split == "train" else seed + 100_003),
            min_len=int(min_len),
            max_len=int(max_len),
            combo_prob=float(combo_prob),
            mirror=bool(mirror and split == "train"),
        )
        return _builtin_cached(params, cache_dir)
    if source == "humanml3d":
        if root is None:
            raise ValueError("data.source=humanml3d needs data.root=<HumanML3D folder>")
        return load_humanml3d(root, split, min_len=min_len, on_error=on_error)
    raise ValueError(f"unknown motion data source {source!r}; expected 'builtin' or 'humanml3d'")


_DATASETS: dict[tuple, MotionData] = {}


def motion_dataset(
    source: str = "builtin",
    conditioning: str | None = "text",
    *,
    dim: int = 263,
    max_len: int = 60,
    num_classes: int | None = None,
    text_encoder: Any = None,
    split: str = "train",
    root: str | None = None,
    n: int = 2000,
    seed: int = 0,
    min_len: int = 40,
    combo_prob: float = 0.3,
    mirror: bool = False,
    on_error: str = "raise",
    cache_dir: str | None = None,
) -> MotionData:
    """A training / evaluation set (see module docstring); built once per process."""
    if conditioning not in (None, "text", "action"):
        raise ValueError(f"conditioning must be null, 'text' or 'action', got {conditioning!r}")
    key = (
        source,
        conditioning,
        dim,
        max_len,
        num_classes,
        id(text_encoder),
        split,
        root,
        n,
        seed,
        min_len,
        combo_prob,
        mirror,
        on_error,
        cache_dir,
    )
    if key in _DATASETS:
        return _DATASETS[key]
    ms = load_motions(
        source,
        split,
        root=root,
        n=n,
        seed=seed,
        min_len=min_len,
        max_len=max_len,
        combo_prob=combo_prob,
        mirror=mirror,
        on_error=on_error,
        cache_dir=cache_dir,
    )
    where = root or "the built-in motions"
    if ms.dim != dim:
        raise ValueError(
            f"data.dim={dim} but {where} has {ms.dim}-channel features; set data.dim={ms.dim}"
        )
    if conditioning == "text" and not all(ms.captions):
        raise ValueError(f"conditioning=text but {where} has motions without captions")
    if conditioning == "action":
        found = len(ms.label_names) or (max(ms.labels) + 1 if ms.labels else 0)
        if not ms.labels:
            raise ValueError(f"conditioning=action but {where} has no action labels")
        if num_classes != found:
            raise ValueError(
                f"data.num_classes={num_classes} but {where} has {found} action classes; "
                f"set data.num_classes={found}"
            )
    if conditioning == "text" and text_encoder is None:
        raise ValueError("conditioning=text needs data.text (a text encoder)")
    if split == "train" or source == "humanml3d" and ms.mean is not None:
        norm = (
            Normalizer(ms.mean.astype(np.float32), ms.std.astype(np.float32))
            if ms.mean is not None
            else Normalizer.fit(ms.features)
        )
    else:  # held-out motions use the training statistics
        norm = motion_dataset(
            source,
            conditioning,
            dim=dim,
            max_len=max_len,
            num_classes=num_classes,
            text_encoder=text_encoder,
            root=root,
            n=n,
            seed=seed,
            min_len=min_len,
            combo_prob=combo_prob,
            mirror=mirror,
            on_error=on_error,
            cache_dir=cache_dir,
        ).normalizer
    ds = MotionData(ms, norm, max_len, conditioning, text_encoder, num_classes)
    ds.skipped = ms.skipped  # type: ignore[attr-defined]
    _DATASETS[key] = ds
    return ds


# ------------------------------------------------------------------------------- hooks
class MotionHooks:
    """``polydiff.train.hooks`` of the motion experiments.

    ``data``: the training :class:`MotionData`; ``reference``: held-out motions (default: the
    ``test`` split of the same source) whose captions / actions and lengths condition sampling
    and whose features are the metrics' real reference. ``metrics``: ``"t2m"`` (evaluator
    metrics and the kinematic ones) or ``"kinematic"`` (foot skating, jitter, bone lengths) or
    null. ``files``: how many samples get a GIF and a BVH. ``edit``: defaults of
    ``polydiff motion-edit`` (:func:`polydiff.motion.pipeline.edit_run`).
    """

    def __init__(
        self,
        data: MotionData,
        reference: MotionData | None = None,
        metrics: str | None = "t2m",
        files: int = 4,
        evaluator: Mapping[str, Any] | None = None,
        cache_dir: str | None = None,
        edit: Mapping[str, Any] | None = None,
    ) -> None:
        if metrics not in (None, "t2m", "kinematic"):
            raise ValueError(f"metrics must be null, 't2m' or 'kinematic', got {metrics!r}")
        self.data, self.reference = data, reference if reference is not None else data
        self.metrics, self.files = metrics, int(files)
        self.evaluator_options = dict(evaluator or {})
        self.edit_options = dict(edit or {})
        self.cache_dir = cache_dir
        self._last: dict[str, Any] = {}

    @property
    def conditioning(self) -> str | None:
        return self.data.conditioning

    def sample_cond(self, n: int, generator: torch.Generator | None) -> dict | None:
        ref = self.reference
        rows = torch.randint(0, len(ref), (n,), generator=generator)
        cond: dict[str, torch.Tensor] = {"seq_mask": ref.tensors["seq_mask"][rows].clone()}
        self._last = {"rows": rows, "prompts": [ref.prompts[int(r)] for r in rows]}
        if self.conditioning == "text":
            cond["text_pooled"] = ref.tensors["text_pooled"][rows].clone()
        elif self.conditioning == "action":
            cond["class"] = ref.tensors["class"][rows].clone()
        return cond

    def to_data(self, x: torch.Tensor) -> torch.Tensor:
        """Denormalised HumanML3D features (N, T, D)."""
        return self.data.normalizer.denormalize(x.float())

    def lengths(self, samples: torch.Tensor, cond: Mapping | None) -> list[int]:
        if cond is not None and "seq_mask" in cond:
            return [int(v) for v in cond["seq_mask"].sum(1).tolist()]
        return [samples.shape[1]] * len(samples)

    def write(self, samples: torch.Tensor, cond: Mapping | None, out_dir: Path) -> list[Path]:
        from .io import save_motion_files

        prompts = self._last.get("prompts")
        if self.conditioning == "action" and cond is not None:
            prompts = [ACTIONS[int(c)] for c in cond["class"]]
        return save_motion_files(
            samples.cpu(), self.lengths(samples, cond), Path(out_dir), prompts, self.files
        )

    def evaluate(
        self, samples: torch.Tensor, cond: Mapping | None, options: Mapping | None = None
    ) -> dict[str, Any]:
        """Metrics of one set of samples drawn by :meth:`sample_cond` (one replication)."""
        if self.metrics is None:
            return {}
        times = (options or {}).get("diversity_times", T2M_PROTOCOL["diversity_times"])
        return evaluate_motions(
            samples.cpu(),
            self.lengths(samples, cond),
            self,
            kind=self.metrics,
            cache_dir=self.cache_dir,
            diversity_times=int(times),
            **self.evaluator_options,
        )

    def retrieval(self) -> tuple[torch.Tensor, list[int]]:
        """The nearest-caption retrieval baseline for the prompts last drawn by
        :meth:`sample_cond`: the training motion whose caption is nearest (cosine, pooled text)
        to each prompt, data-space features (N, T, D) and lengths."""
        rows = self._last["rows"]
        train = self.data
        sim = self.reference.tensors["text_pooled"][rows] @ train.tensors["text_pooled"].T
        feats = torch.zeros(len(rows), train.max_len, train.motions.dim)
        lengths = []
        for i, k in enumerate(sim.argmax(dim=1).tolist()):
            f = torch.as_tensor(train.motions.features[train.rows[k]][: train.max_len])
            feats[i, : len(f)] = f
            lengths.append(len(f))
        return feats, lengths

    def protocol_sizes(self, evaluate: Mapping[str, Any]) -> dict[str, int]:
        """The evaluation sizes of an ``evaluate`` node: :data:`T2M_PROTOCOL` unless set."""
        sizes = {k: int(evaluate.get(k, v)) for k, v in T2M_PROTOCOL.items()}
        bad = {k: v for k, v in sizes.items() if v < (0 if k == "mm_prompts" else 1)}
        if bad:
            raise ValueError(
                f"evaluate sizes must be positive (mm_prompts=0: no MultiModality), got {bad}"
            )
        if sizes["mm_prompts"] and sizes["mm_repeats"] < sizes["mm_times"]:
            raise ValueError(
                f"evaluate.mm_repeats={sizes['mm_repeats']} is below evaluate.mm_times="
                f"{sizes['mm_times']} (MultiModality draws mm_times pairs of generations)"
            )
        return sizes

    def evaluate_model(self, run: Any) -> dict[str, Any]:
        """``polydiff evaluate`` of a motion run: the T2M protocol (Guo et al. 2022 sec. 5).

        ``evaluate.replications`` times: ``evaluate.n`` prompts of held-out motions (seed
        ``evaluate.seed + r``) are generated and scored (:meth:`evaluate`); every number is the
        mean over replications with its 95% half-width in ``<name>_ci95``. The same prompts give
        the real row (``*_real``) and the nearest-caption retrieval row (``retrieval_*``).
        MultiModality: ``evaluate.mm_repeats`` generations for each of ``evaluate.mm_prompts``
        prompts, ``evaluate.mm_times`` pairs each (``mm_prompts=0``: not computed). Sizes
        default to :data:`T2M_PROTOCOL`; those used are recorded under ``protocol`` and named
        when smaller.
        """
        e = run.cfg.evaluate
        sizes = self.protocol_sizes(e)
        n, seed, batch = int(e.n), int(e.seed), run.cfg.sample.get("batch_size")
        options = {"diversity_times": sizes["diversity_times"]}
        reps: list[dict[str, Any]] = []
        for r in range(sizes["replications"]):
            data, cond = draw(
                run.denoiser(), self, run.sample_shape, n, run.sampler, seed=seed + r,
                batch_size=batch,
            )  # fmt: skip
            found = self.evaluate(data, cond, options)
            if self.metrics == "t2m" and "text_pooled" in self.data.tensors:
                feats, lengths = self.retrieval()
                base = evaluate_motions(
                    feats, lengths, self, cache_dir=self.cache_dir, real=False,
                    diversity_times=sizes["diversity_times"], **self.evaluator_options,
                )  # fmt: skip
                found.update({f"retrieval_{k}": v for k, v in base.items()})
            reps.append(found)
        out: dict[str, Any] = {}
        for key, value in reps[0].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                mean, half = confidence_interval([float(rep[key]) for rep in reps])
                out[key] = mean
                if len(reps) > 1 and key.rsplit("_", 1)[-1] not in ("n", "pairs"):
                    out[f"{key}_ci95"] = half
            else:
                out[key] = value
        if self.metrics == "t2m" and "text_pooled" in self.data.tensors and sizes["mm_prompts"]:
            out["multimodality"] = self.multimodality(run, sizes, seed)
        out["replications"] = sizes["replications"]
        out["protocol"] = sizes
        smaller = {k: v for k, v in sizes.items() if v < T2M_PROTOCOL[k]}
        out["protocol_note"] = (
            "T2M protocol sizes"
            if not smaller and n >= sizes["diversity_times"]
            else "smaller than the T2M protocol: "
            + ", ".join(f"{k}={v} (protocol {T2M_PROTOCOL[k]})" for k, v in smaller.items())
            + (" (MultiModality not computed)" if not sizes["mm_prompts"] else "")
            + (f", n={n} < diversity_times" if n < sizes["diversity_times"] else "")
        )
        return out

    def multimodality(self, run: Any, sizes: Mapping[str, int], seed: int) -> float:
        """MultiModality (Guo et al. 2022): ``mm_repeats`` generations of ``mm_prompts`` prompts."""
        prompts, repeats = sizes["mm_prompts"], sizes["mm_repeats"]
        gen = torch.Generator().manual_seed(seed + 10_007)
        cond = self.sample_cond(prompts, gen)
        rep = {k: v.repeat_interleave(repeats, 0) for k, v in cond.items()}
        x = generate(
            run.denoiser(), run.sample_shape, prompts * repeats, run.sampler, cond=rep,
            generator=gen, batch_size=run.cfg.sample.get("batch_size"),
        )  # fmt: skip
        net = load_or_train_evaluator(self, self.cache_dir, **self.evaluator_options)
        m, _ = embed(net, x, rep["seq_mask"].sum(1), None)  # x is normalised (model space)
        return multimodality(m.reshape(prompts, repeats, -1), sizes["mm_times"], gen)

    def extra_npz(self, cond: Mapping | None) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if self._last.get("prompts") and self.conditioning == "text":
            out["prompts"] = np.asarray(self._last["prompts"])
        if cond is not None and "seq_mask" in cond:
            out["lengths"] = cond["seq_mask"].sum(1).cpu().numpy()
        return out

    def joints(self, samples: torch.Tensor) -> torch.Tensor:
        """Joint positions (N, T, 22, 3) of data-space samples."""
        return features_to_joints(samples.float())
