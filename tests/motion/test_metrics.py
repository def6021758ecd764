"""T2M protocol metrics and kinematic metrics against brute-force references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from polydiff.motion.features import FPS
from polydiff.motion.metrics import (
    T2MEvaluator,
    bone_length_error,
    confidence_interval,
    diversity,
    foot_skating_ratio,
    jitter,
    mm_dist,
    multimodality,
    r_precision,
)
from polydiff.motion.skeleton import PARENTS, TARGET_BONE_LENGTHS
from polydiff.motion.synthetic import MotionSpec, Segment, generate_motion


def _r_precision_loops(text, motion, batch, k):
    hits, count = [0] * k, 0
    for s in range(0, len(text) - batch + 1, batch):
        for i in range(batch):
            d = [float(np.linalg.norm(text[s + i] - motion[s + j])) for j in range(batch)]
            order = sorted(range(batch), key=lambda j: (d[j], j != i))  # ties favour the truth
            pos = order.index(i)
            for kk in range(k):
                hits[kk] += pos <= kk
            count += 1
    return [h / count for h in hits]


def test_r_precision_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    text = torch.randn(70, 5, generator=g)
    motion = text + 1.2 * torch.randn(70, 5, generator=g)
    got = r_precision(text, motion, batch=32, top_k=3)
    ref = _r_precision_loops(text.numpy(), motion.numpy(), 32, 3)
    assert got == pytest.approx(ref)
    assert r_precision(text, text, batch=32) == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="at least 32"):
        r_precision(text[:10], motion[:10])


def test_mm_dist_diversity_multimodality_brute_force():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(40, 4, generator=g), torch.randn(40, 4, generator=g)
    assert mm_dist(a, b) == pytest.approx(
        np.mean([np.linalg.norm(x - y) for x, y in zip(a.numpy(), b.numpy())])
    )
    # diversity with times = n is the mean distance of two random permutations
    emb = torch.randn(12, 3, generator=g)
    got = diversity(emb, times=12, generator=torch.Generator().manual_seed(5))
    gg = torch.Generator().manual_seed(5)
    p, q = torch.randperm(12, generator=gg), torch.randperm(12, generator=gg)
    assert got == pytest.approx(np.mean([np.linalg.norm(emb[i] - emb[j]) for i, j in zip(p, q)]))
    # multimodality of identical generations is 0; of two points at distance d it is
    # d * P(pair differs)
    assert multimodality(torch.ones(3, 10, 2), times=10) == 0.0
    e = torch.zeros(1, 10, 1)
    e[0, 5:] = 1.0
    gg = torch.Generator().manual_seed(2)
    got = multimodality(e, times=10, generator=gg)
    gg = torch.Generator().manual_seed(2)
    ia, ib = torch.randperm(10, generator=gg), torch.randperm(10, generator=gg)
    assert got == pytest.approx(
        float(np.mean([abs(e[0, i, 0] - e[0, j, 0]) for i, j in zip(ia, ib)]))
    )
    mean, half = confidence_interval([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and half == pytest.approx(1.96 * math.sqrt(1.25) / 2)


def test_foot_skating_brute_force():
    rng = np.random.default_rng(0)
    j = rng.normal(scale=0.05, size=(30, 22, 3))
    j[:, :, 1] = np.abs(j[:, :, 1])
    ref_count, total = 0, 0
    floor = j[:, :, 1].min()
    for t, toe in itertools.product(range(29), (10, 11)):
        h0, h1 = j[t, toe, 1] - floor, j[t + 1, toe, 1] - floor
        v = np.hypot(j[t + 1, toe, 0] - j[t, toe, 0], j[t + 1, toe, 2] - j[t, toe, 2]) * FPS
        ref_count += h0 < 0.05 and h1 < 0.05 and v > 0.5
        total += 1
    assert foot_skating_ratio(j) == pytest.approx(ref_count / total)
    # a standing motion does not skate; a walk only while a swinging toe is low (toe-off and
    # heel-strike frames); dragging the whole body along skates on every frame
    walk = generate_motion(MotionSpec((Segment("walk", 1.0, "forward"),), 60))
    assert foot_skating_ratio(walk) < 0.3
    stand = generate_motion(MotionSpec((Segment("wave", 1.0, side="left"),), 60))
    assert foot_skating_ratio(stand) == 0.0
    dragged = stand + np.linspace(0, 3, 60)[:, None, None] * np.array([1.0, 0, 0])
    assert foot_skating_ratio(dragged) > 0.9


def test_jitter_and_bone_lengths_brute_force():
    rng = np.random.default_rng(1)
    j = rng.normal(size=(8, 22, 3))
    ref = np.mean([
        np.linalg.norm((j[t + 3] - 3 * j[t + 2] + 3 * j[t + 1] - j[t])[k]) * FPS**3
        for t in range(5) for k in range(22)
    ])  # fmt: skip
    assert jitter(j) == pytest.approx(ref)
    ref_b = np.mean([abs(np.linalg.norm(j[t, k] - j[t, PARENTS[k]]) - TARGET_BONE_LENGTHS[k])
                     for t in range(8) for k in range(1, 22)])  # fmt: skip
    assert bone_length_error(j) == pytest.approx(ref_b)
    walk = generate_motion(MotionSpec((Segment("walk"),), 40))
    assert bone_length_error(walk) < 1e-9


def test_evaluator_shapes_and_length_masking():
    net = T2MEvaluator(263, 16, hidden=8, out=8).eval()
    x = torch.randn(3, 40, 263)
    lengths = torch.tensor([40, 24, 12])
    m = net.encode_motion(x, lengths)
    assert m.shape == (3, 8)
    x2 = x.clone()
    x2[1, 24:] = 99.0  # padding beyond the length does not change the code
    assert torch.allclose(net.encode_motion(x2, lengths), m, atol=1e-6)
    assert net.encode_text(torch.randn(3, 16)).shape == (3, 8)


def test_t2m_evaluation_of_the_real_motions_matches_the_reference_row(tmp_path):
    """Scoring the reference motions themselves: FID 0 and the same R-precision / MM-Dist."""
    from polydiff.motion.experiments import MotionHooks, motion_dataset, text_encoder

    enc = text_encoder("words", 32)
    kw = dict(n=40, min_len=20, max_len=24, text_encoder=enc, cache_dir=str(tmp_path))
    train = motion_dataset("builtin", "text", **kw)
    ref = motion_dataset("builtin", "text", split="test", **kw)
    hooks = MotionHooks(train, ref, metrics="t2m", cache_dir=str(tmp_path),
                        evaluator={"steps": 5, "hidden": 16})  # fmt: skip
    cond = hooks.sample_cond(32, torch.Generator().manual_seed(0))
    samples = hooks.to_data(ref.tensors["x"][hooks._last["rows"]])
    m = hooks.evaluate(samples, cond)
    assert m["fid"] == pytest.approx(0.0, abs=1e-6)
    assert m["r_precision_top3"] == pytest.approx(m["r_precision_top3_real"])
    assert m["mm_dist"] == pytest.approx(m["mm_dist_real"], rel=1e-5)
    assert m["diversity_pairs"] == 32 and m["n"] == 32
    assert list(tmp_path.glob("t2m-evaluator-*.safetensors"))  # trained once, cached


def test_protocol_sizes_default_to_t2m_and_are_checked():
    from polydiff.motion.experiments import MotionHooks
    from polydiff.motion.metrics import T2M_PROTOCOL

    assert T2M_PROTOCOL == {"replications": 20, "diversity_times": 300, "mm_prompts": 100,
                            "mm_repeats": 30, "mm_times": 10}  # fmt: skip
    hooks = MotionHooks.__new__(MotionHooks)
    assert hooks.protocol_sizes({"n": 320}) == T2M_PROTOCOL
    assert hooks.protocol_sizes({"mm_prompts": 8})["mm_prompts"] == 8
    with pytest.raises(ValueError, match="mm_repeats=4 is below evaluate.mm_times=10"):
        hooks.protocol_sizes({"mm_repeats": 4})
    with pytest.raises(ValueError, match="positive"):
        hooks.protocol_sizes({"replications": 0})
    with pytest.raises(ValueError, match="at least 10 generations"):
        multimodality(torch.zeros(2, 5, 3), 10)
