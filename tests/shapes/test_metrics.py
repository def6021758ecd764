"""PVD / PointFlow metrics against brute-force references on small inputs, and their identities."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import trimesh

from polydiff.shapes import metrics as M


def _clouds(n, p, seed=0, scale=0.2):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, p, 3)) * scale).float()


def _brute_chamfer(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = np.array([[np.sum((x - y) ** 2) for y in b] for x in a])
    return d.min(1).mean() + d.min(0).mean()


def _brute_emd(a, b):
    """Minimum over all bijections (permutations), mean Euclidean cost."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    best = math.inf
    for perm in itertools.permutations(range(len(b))):
        best = min(best, np.mean([np.linalg.norm(a[i] - b[j]) for i, j in enumerate(perm)]))
    return best


def test_chamfer_matches_brute_force_symmetric_and_zero_on_equal_sets():
    a, b = _clouds(3, 17, 0), _clouds(3, 11, 1)
    got = M.chamfer_distance(a, b)
    want = [_brute_chamfer(x, y) for x, y in zip(a, b)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    torch.testing.assert_close(M.chamfer_distance(b, a), got)
    perm = a[:, torch.randperm(17)]
    assert M.chamfer_distance(a, perm).abs().max() < 1e-6


def test_blocked_chamfer_equals_kdtree_and_the_symmetric_matrix_the_full_one(monkeypatch):
    """The lifted-GEMM Chamfer, forced into several row blocks and several refs per block,
    equals a float64 k-d tree Chamfer; ``pairwise_distances(x)`` (each pair once) equals
    ``pairwise_distances(x, x)``."""
    from scipy.spatial import cKDTree

    a, b = _clouds(4, 150, 9), _clouds(5, 130, 10, scale=0.3)
    want = np.array(
        [
            [
                (cKDTree(q).query(p)[0] ** 2).mean() + (cKDTree(p).query(q)[0] ** 2).mean()
                for q in b.double().numpy()
            ]
            for p in a.double().numpy()
        ]
    )
    for block in (2**18, 1000, 1):  # one block; 7 rows x 1 ref; one row per block
        monkeypatch.setattr(M, "_BLOCK", block)
        got = M.pairwise_distances(a, b)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-8)
        np.testing.assert_allclose(M.chamfer_distance(a, b[:4]).numpy(), want.diagonal(), 1e-4)
        sym = M.pairwise_distances(b)
        torch.testing.assert_close(sym, M.pairwise_distances(b, b), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(sym, sym.t())
    with pytest.raises(ValueError, match="paired"):
        M.chamfer_distance(a, b)


def test_exact_emd_equals_brute_force_assignment():
    a, b = _clouds(4, 6, 2), _clouds(4, 6, 3)
    got = M.earth_movers_distance(a, b)
    want = [_brute_emd(x, y) for x, y in zip(a, b)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    assert M.earth_movers_distance(a, a[:, torch.randperm(6)]).abs().max() < 1e-6
    # EMD >= the mean nearest-neighbour distance (the assignment is a constrained matching)
    d = M.squared_distances(a, b).sqrt()
    assert (got + 1e-6 >= d.min(2).values.mean(1)).all()
    with pytest.raises(ValueError, match="equal size"):
        M.earth_movers_distance(a, b[:, :5])


def _brute_pvd(samples, refs, dist):
    """The PVD table written out literally from its definitions."""
    ns, nr = len(samples), len(refs)
    d_sr = np.array([[dist(s, r) for r in refs] for s in samples])
    mmd = np.mean([min(d_sr[i, j] for i in range(ns)) for j in range(nr)])
    cov = len({int(np.argmin(d_sr[i])) for i in range(ns)}) / nr
    allc = list(refs) + list(samples)
    labels = [1] * nr + [0] * ns
    right = 0
    for i, x in enumerate(allc):
        ds = [dist(x, y) if j != i else math.inf for j, y in enumerate(allc)]
        right += labels[int(np.argmin(ds))] == labels[i]
    return mmd, cov, right / (nr + ns)


def test_mmd_cov_1nna_match_the_literal_protocol():
    samples, refs = _clouds(5, 8, 4), _clouds(6, 8, 5, scale=0.25)
    got = M.compute_all_metrics(samples, refs, emd=True)
    for tag, dist in (("CD", _brute_chamfer), ("EMD", _brute_emd)):
        if tag == "EMD":
            dist = lambda x, y: float(M.earth_movers_distance(x[None], y[None]))  # noqa: E731
        mmd, cov, nna = _brute_pvd(samples.numpy(), refs.numpy(), dist)
        assert got[f"MMD-{tag}"] == pytest.approx(mmd, rel=1e-5)
        assert got[f"COV-{tag}"] == pytest.approx(cov)
        assert got[f"1-NNA-{tag}"] == pytest.approx(nna)


def test_metric_identities():
    """1-NNA of a set against itself split in halves ~0.5; COV of a set against itself is 1."""
    clouds = _clouds(80, 32, 6)
    d = M.pairwise_distances(clouds, clouds)
    mc = M.lgan_mmd_cov(d)
    assert mc["cov"] == 1.0 and mc["mmd"] == pytest.approx(0, abs=1e-6)
    a, b = clouds[:40], clouds[40:]
    nna = M.one_nn_accuracy(
        M.pairwise_distances(a, a), M.pairwise_distances(a, b), M.pairwise_distances(b, b)
    )
    assert 0.35 <= nna <= 0.65
    # two well separated sets are told apart perfectly
    far = clouds[40:] + 2.0
    nna_far = M.one_nn_accuracy(
        M.pairwise_distances(a, a), M.pairwise_distances(a, far), M.pairwise_distances(far, far)
    )
    assert nna_far == 1.0


def _brute_jsd(samples, refs, res):
    grid = []
    for i, j, k in itertools.product(range(res), repeat=3):
        p = np.array([i, j, k]) / (res - 1) - 0.5
        if np.linalg.norm(p) <= 0.5:
            grid.append(p)
    grid = np.array(grid)

    def counts(clouds):
        c = np.zeros(len(grid))
        for pt in clouds.reshape(-1, 3):
            c[np.argmin(((grid - pt) ** 2).sum(1))] += 1
        return c / c.sum()

    def h(p):
        p = p[p > 0]
        return -(p * np.log2(p)).sum()

    p, q = counts(samples), counts(refs)
    return h((p + q) / 2) - (h(p) + h(q)) / 2


def test_jsd_matches_brute_force_and_is_zero_on_equal_sets():
    s, r = _clouds(3, 20, 7, scale=0.15).numpy(), _clouds(3, 20, 8, scale=0.15).numpy()
    assert M.jsd_between_sets(s, r, resolution=6) == pytest.approx(_brute_jsd(s, r, 6), abs=1e-12)
    assert M.jsd_between_sets(s, s) == pytest.approx(0.0, abs=1e-12)
    assert 0 < M.jsd_between_sets(s, r) <= 1.0
    assert len(M.unit_ball_grid(28)) < 28**3


def test_mesh_metrics():
    a = np.zeros((4, 4, 4), bool)
    b = a.copy()
    a[:2] = True
    b[1:3] = True
    assert M.volume_iou(a, b) == pytest.approx(1 / 3)
    assert M.volume_iou(a, a) == 1.0
    closed = trimesh.creation.box()
    holed = trimesh.creation.box()
    holed.update_faces(np.arange(12) > 0)
    assert M.watertight_ratio([closed, holed, trimesh.Trimesh()]) == pytest.approx(1 / 3)
