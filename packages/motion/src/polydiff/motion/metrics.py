"""Motion metrics: the T2M protocol (Guo et al. 2022) with an evaluator trained on the data,
plus kinematic checks.

Evaluator (:class:`T2MEvaluator`, Guo et al. 2022 sec. 5): a *movement encoder* (1-D
convolutions over the features without foot contacts, time downsampled by 4), a *motion
encoder* (bidirectional GRU over the movement codes, masked by length) and a *text encoder*
(an MLP over the pooled MiniLM sentence embedding, in place of GloVe + BiGRU), trained so that
a caption's embedding lies near its motion's: a symmetric InfoNCE loss (in place of the
paper's margin loss). Trained once per data set and cached (safetensors) by a hash of what
produced it.

Protocol numbers, on evaluator embeddings:

- **R-precision top-k**: in batches of 32 (text_i, motion_i), rank the 32 motions by Euclidean
  distance to each text; the share whose own motion is within the first k (k = 1, 2, 3).
- **MM-Dist**: mean distance between a text and its motion.
- **FID**: Frechet distance between generated and real motion embeddings.
- **Diversity**: mean distance between two random sets of 300 motion embeddings (pairwise i-i).
- **MultiModality**: for each of 100 texts with 30 generations, the mean distance of 10 random
  pairs.
Replications: the protocol repeats everything (20x) and reports mean and 95% CI
``1.96 std / sqrt(reps)`` (:func:`confidence_interval`). :data:`T2M_PROTOCOL` holds these sizes
as Guo et al.'s evaluator sets them (``diversity_times=300, mm_num_samples=100,
mm_num_repeats=30, mm_num_times=10, replication_times=20``, R-precision batches of 32).

Kinematic: **foot skating ratio** (GMD, Karunratanakul et al. 2023: share of foot-frames with
the toe below 5 cm in both frames and moving faster than 0.5 m/s horizontally), **jitter**
(mean jerk magnitude, m/s^3) and **bone-length error** (mean |length - target|, m).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from polydiff.core.metrics import frechet_distance_from_features

from .features import FPS, features_to_joints
from .skeleton import PARENTS, TARGET_BONE_LENGTHS

__all__ = [
    "T2M_PROTOCOL",
    "T2MEvaluator",
    "bone_length_error",
    "confidence_interval",
    "diversity",
    "evaluate_motions",
    "foot_skating_ratio",
    "jitter",
    "load_or_train_evaluator",
    "mm_dist",
    "multimodality",
    "r_precision",
]

_VERSION = 1

# the T2M evaluation sizes (Guo et al. 2022: evaluate_options, final_evaluations)
T2M_PROTOCOL: dict[str, int] = {
    "replications": 20,  # replication_times
    "diversity_times": 300,
    "mm_prompts": 100,  # mm_num_samples
    "mm_repeats": 30,  # mm_num_repeats
    "mm_times": 10,  # mm_num_times
}
R_PRECISION_BATCH = 32  # the protocol's batch of (text, motion) pairs


# ------------------------------------------------------------------------------- protocol math
def r_precision(
    text: torch.Tensor, motion: torch.Tensor, batch: int = 32, top_k: int = 3
) -> list[float]:
    """Top-1..k R-precision over consecutive batches of ``batch`` pairs (a last partial batch is
    dropped, as the protocol's loader)."""
    hits = torch.zeros(top_k)
    count = 0
    for s in range(0, len(text) - batch + 1, batch):
        d = torch.cdist(text[s : s + batch].double(), motion[s : s + batch].double())  # (B, B)
        rank = (d < d.diagonal()[:, None]).sum(1)  # motions strictly closer than the true one
        for k in range(top_k):
            hits[k] += (rank <= k).sum()
        count += batch
    if count == 0:
        raise ValueError(f"R-precision needs at least {batch} pairs, got {len(text)}")
    return (hits / count).tolist()


def mm_dist(text: torch.Tensor, motion: torch.Tensor) -> float:
    """Mean Euclidean distance between matched text and motion embeddings."""
    return float((text.double() - motion.double()).norm(dim=-1).mean())


def diversity(
    emb: torch.Tensor, times: int = 300, generator: torch.Generator | None = None
) -> float:
    """Mean distance between ``emb[a_i]`` and ``emb[b_i]`` for two random index sets of size
    ``times`` (drawn without replacement each, as the protocol)."""
    if len(emb) < times:
        raise ValueError(f"diversity needs at least {times} embeddings, got {len(emb)}")
    a = torch.randperm(len(emb), generator=generator)[:times]
    b = torch.randperm(len(emb), generator=generator)[:times]
    return float((emb[a].double() - emb[b].double()).norm(dim=-1).mean())


def multimodality(
    emb: torch.Tensor, times: int = 10, generator: torch.Generator | None = None
) -> float:
    """``emb`` (P, R, d): P texts with R generations each; mean distance of ``times`` random
    pairs of generations per text."""
    p, r, _ = emb.shape
    if r < times:
        raise ValueError(f"multimodality needs at least {times} generations per text, got {r}")
    a = torch.stack([torch.randperm(r, generator=generator)[:times] for _ in range(p)])
    b = torch.stack([torch.randperm(r, generator=generator)[:times] for _ in range(p)])
    rows = torch.arange(p)[:, None]
    return float((emb[rows, a].double() - emb[rows, b].double()).norm(dim=-1).mean())


def confidence_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the protocol's 95% half-width ``1.96 std / sqrt(n)`` (numpy std, ddof 0)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(1.96 * v.std() / math.sqrt(len(v)))


# ------------------------------------------------------------------------------- kinematic
def foot_skating_ratio(
    joints: np.ndarray, height: float = 0.05, speed: float = 0.5, fps: int = FPS
) -> float:
    """Share of (toe, frame-pair) with the toe below ``height`` in both frames and a horizontal
    speed above ``speed`` m/s (joints (T, 22, 3), y up, floor at the lowest point)."""
    toes = np.asarray(joints)[:, [10, 11]]
    toes = toes - np.asarray(joints)[:, :, 1].min() * np.array([0, 1, 0])
    low = (toes[1:, :, 1] < height) & (toes[:-1, :, 1] < height)
    v = np.linalg.norm((toes[1:] - toes[:-1])[..., [0, 2]], axis=-1) * fps
    return float((low & (v > speed)).mean())


def jitter(joints: np.ndarray, fps: int = FPS) -> float:
    """Mean jerk magnitude ``|x'''|`` over joints and frames, m/s^3."""
    j = np.diff(np.asarray(joints), n=3, axis=0) * fps**3
    return float(np.linalg.norm(j, axis=-1).mean())


def bone_length_error(joints: np.ndarray, target: np.ndarray = TARGET_BONE_LENGTHS[1:]) -> float:
    """Mean |bone length - target| over bones and frames, metres."""
    j = np.asarray(joints)
    lengths = np.linalg.norm(j[:, 1:] - j[:, [max(p, 0) for p in PARENTS[1:]]], axis=-1)
    return float(np.abs(lengths - target).mean())


# ------------------------------------------------------------------------------- evaluator
class T2MEvaluator(nn.Module):
    """Movement encoder + motion encoder + text encoder (see module docstring)."""

    def __init__(
        self, feat_dim: int = 263, text_dim: int = 384, hidden: int = 128, out: int = 128
    ) -> None:
        super().__init__()
        d = feat_dim - 4  # foot contacts are left out, as Guo et al.
        self.movement = nn.Sequential(
            nn.Conv1d(d, hidden, 4, 2, 1),
            nn.Dropout(0.1),
            nn.LeakyReLU(0.2),
            nn.Conv1d(hidden, hidden, 4, 2, 1),
            nn.Dropout(0.1),
            nn.LeakyReLU(0.2),
        )
        self.gru = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.motion_out = nn.Sequential(
            nn.Linear(2 * hidden, hidden),
            nn.LayerNorm(hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, out),
        )
        self.text = nn.Sequential(
            nn.Linear(text_dim, 2 * hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(2 * hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, out),
        )
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def encode_motion(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) normalised features, lengths (B,) -> (B, out)."""
        valid = torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None].to(x.device)
        x = x[..., :-4] * valid[..., None].to(x.dtype)  # padding never leaks into the codes
        h = self.movement(x.transpose(1, 2)).transpose(1, 2)  # (B, T/4, H)
        steps = (lengths.clamp(min=4) // 4).clamp(max=h.shape[1]).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(h, steps, batch_first=True, enforce_sorted=False)
        _, last = self.gru(packed)  # (2, B, H)
        return self.motion_out(torch.cat([last[0], last[1]], -1))

    def encode_text(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.text(pooled)


def _evaluator_key(hooks, steps: int, hidden: int) -> str:
    ms = hooks.data.motions
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [
                _VERSION,
                steps,
                hidden,
                type(hooks.data.encoder).__name__,
                getattr(hooks.data.encoder, "dim", 0),
                hooks.data.max_len,
            ]
        ).encode()
    )
    for name, f, caps in zip(ms.names, ms.features, ms.captions):
        h.update(name.encode())
        h.update(np.ascontiguousarray(f[:2]).tobytes())
        h.update("|".join(caps).encode())
    return h.hexdigest()[:16]


def load_or_train_evaluator(
    hooks,
    cache_dir: str | None = None,
    steps: int = 2000,
    hidden: int = 128,
    batch_size: int = 64,
    seed: int = 0,
) -> T2MEvaluator:
    """The evaluator of ``hooks.data`` (text-captioned), trained once then loaded from the cache."""
    from safetensors.torch import load_file, save_file

    from polydiff.core.fileio import atomic_path

    from .experiments import cache_root

    data = hooks.data
    if "text_pooled" not in data.tensors:
        raise ValueError(
            "the T2M evaluator needs a text-conditioned data set (data.conditioning=text)"
        )
    net = T2MEvaluator(data.motions.dim, data.tensors["text_pooled"].shape[1], hidden, hidden)
    path = (
        cache_root(cache_dir) / f"t2m-evaluator-{_evaluator_key(hooks, steps, hidden)}.safetensors"
    )
    if path.is_file():
        net.load_state_dict(load_file(str(path)))
        return net.eval()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    x, lengths = data.tensors["x"], data.lengths()
    text, rows = data.tensors["text_pooled"], torch.as_tensor(data.rows)
    net.train()
    for step in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=gen)
        # distinct motions in a batch (captions of one motion are not negatives of each other)
        _, first = np.unique(rows[idx].numpy(), return_index=True)
        idx = idx[torch.as_tensor(first)]
        m = F.normalize(net.encode_motion(x[idx], lengths[idx]), dim=-1)
        t = F.normalize(net.encode_text(text[idx]), dim=-1)
        logits = net.log_scale.exp() * t @ m.T
        target = torch.arange(len(idx))
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        opt.zero_grad()
        loss.backward()
        opt.step()
        for g in opt.param_groups:
            g["lr"] = 1e-3 * 0.5 * (1 + math.cos(math.pi * (step + 1) / steps))
    net.eval()
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    return net


@torch.no_grad()
def embed(
    net: T2MEvaluator, normalized: torch.Tensor, lengths: torch.Tensor, pooled: torch.Tensor | None
):
    """(motion, text) embeddings (unnormalised scale: the L2-normalised codes times 10)."""
    m = (
        torch.cat(
            [
                F.normalize(
                    net.encode_motion(normalized[i : i + 256], lengths[i : i + 256]), dim=-1
                )
                for i in range(0, len(normalized), 256)
            ]
        )
        * 10
    )
    t = None if pooled is None else F.normalize(net.encode_text(pooled), dim=-1) * 10
    return m, t


def evaluate_motions(
    samples: torch.Tensor,
    lengths: Sequence[int],
    hooks,
    kind: str = "t2m",
    cache_dir: str | None = None,
    steps: int = 2000,
    hidden: int = 128,
    seed: int = 0,
    diversity_times: int = T2M_PROTOCOL["diversity_times"],
    real: bool = True,
) -> dict[str, Any]:
    """Metrics of generated features (N, T, D) (data space) with the lengths they were drawn
    with; the real reference is ``hooks.reference`` (the rows sampled by ``sample_cond``).
    Diversity uses ``min(diversity_times, N)`` pairs (recorded as ``diversity_pairs``);
    ``real=False`` leaves out the ``*_real`` copies of the numbers."""
    lengths_t = torch.as_tensor(list(lengths))
    out: dict[str, Any] = {}
    joints = features_to_joints(samples.float()).numpy()
    real_ds = hooks.reference
    rows = hooks._last.get("rows")
    if rows is None or len(rows) != len(samples):
        raise ValueError("evaluate needs the conditioning drawn by sample_cond for these samples")
    real_feats = [real_ds.motions.features[real_ds.rows[int(r)]] for r in rows]
    real_joints = [
        features_to_joints(torch.as_tensor(f[: int(n)])).numpy()
        for f, n in zip(real_feats, lengths_t)
        if real
    ]
    for name, fn in (
        ("foot_skating_ratio", foot_skating_ratio),
        ("jitter", jitter),
        ("bone_length_error", bone_length_error),
    ):
        out[name] = float(np.mean([fn(joints[i, : int(n)]) for i, n in enumerate(lengths_t)]))
        if real:
            out[f"{name}_real"] = float(np.mean([fn(j) for j in real_joints]))
    if kind != "t2m" or "text_pooled" not in hooks.data.tensors:
        return out
    net = load_or_train_evaluator(hooks, cache_dir, steps, hidden, seed=seed)
    norm = hooks.data.normalizer
    gen_n = norm.normalize(samples.float())
    real_x = real_ds.tensors["x"][rows]
    pooled = real_ds.tensors["text_pooled"][rows]
    m_gen, t = embed(net, gen_n, lengths_t, pooled)
    m_real, _ = embed(net, real_x, hooks.reference.lengths()[rows], None)
    g = torch.Generator().manual_seed(seed)
    times = min(int(diversity_times), len(m_gen))  # the protocol's 300 when there are as many
    for tag, m in (("", m_gen), ("_real", m_real))[: 2 if real else 1]:
        top = r_precision(t, m, batch=R_PRECISION_BATCH)
        out.update({f"r_precision_top{k + 1}{tag}": v for k, v in enumerate(top)})
        out[f"mm_dist{tag}"] = mm_dist(t, m)
        out[f"diversity{tag}"] = diversity(m, times, g)
    out["diversity_pairs"] = times
    out["fid"] = float(frechet_distance_from_features(m_real.double(), m_gen.double()))
    out["evaluator"] = "t2m-contrastive (movement+motion GRU, MiniLM-pooled text)"
    out["n"] = len(samples)
    return out
