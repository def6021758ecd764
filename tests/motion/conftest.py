"""Shared fixtures of the motion tests."""

from __future__ import annotations

import numpy as np
import pytest

SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]


def _smpl_like_arrays(v=40, seed=0):
    rng = np.random.default_rng(seed)
    j = len(SMPL_PARENTS)
    v_template = rng.normal(size=(v, 3))
    reg = np.zeros((j, v))
    reg[np.arange(j), np.arange(j)] = 1.0  # joint k sits on vertex k
    weights = np.zeros((v, j))
    weights[np.arange(v), np.arange(v) % j] = 1.0
    return {
        "v_template": v_template,
        "shapedirs": rng.normal(scale=0.01, size=(v, 3, 10)),
        "posedirs": np.zeros((v, 3, (j - 1) * 9)),
        "J_regressor": reg,
        "weights": weights,
        "kintree_table": np.stack([np.asarray(SMPL_PARENTS) % (2**32), np.arange(j)]),
        "f": np.array([[0, 1, 2], [2, 3, 4]]),
    }


@pytest.fixture
def smpl_like_arrays():
    """A factory of the arrays of a small SMPL-like model (24 joints on its first vertices)."""
    return _smpl_like_arrays
