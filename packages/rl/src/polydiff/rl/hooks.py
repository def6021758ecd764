"""Hooks for the training engine and the ``polydiff`` command (see ``polydiff.train.hooks``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from polydiff.rl.datasets import ActionChunks, TrajectoryWindows
from polydiff.rl.experiments import flat_metrics, rollouts_from_config


class RLHooks:
    """Sampling conditions, data space and rollout evaluation of an RL training view.

    ``sample_cond`` draws the conditions of random training items (observation histories for
    action chunks, start states for start-conditioned trajectories: the policy is sampled in
    the states the demonstrations visited); ``to_data`` maps model space back to environment
    units. :meth:`evaluate_model` is ``polydiff evaluate``: it rolls the trained model out as the
    experiment's ``rl`` node says (:mod:`polydiff.rl.experiments`).
    """

    def __init__(self, dataset: ActionChunks | TrajectoryWindows) -> None:
        if not isinstance(dataset, (ActionChunks, TrajectoryWindows)):
            raise TypeError(f"RLHooks needs an RL training view, got {type(dataset).__name__}")
        self.dataset = dataset

    def sample_cond(self, n: int, generator: torch.Generator | None) -> dict | None:
        if "vector" not in self.dataset[0]:
            return None
        idx = torch.randint(len(self.dataset), (n,), generator=generator)
        return {"vector": torch.stack([self.dataset[int(i)]["vector"] for i in idx])}

    def to_data(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.dataset, ActionChunks):
            return self.dataset.act_norm.unnormalize(x.clamp(-1.0, 1.0))
        return self.dataset.normalizer.unnormalize(x)

    def evaluate_model(self, run: Any) -> dict[str, float]:
        """Roll the opened run (``polydiff.train.run.OpenedRun``) out with ``run.cfg.rl``; figures
        go to ``<run>/eval/rollouts/``. Returns flat metrics (``"diffuser/success_rate"``...)."""
        rollouts = rollouts_from_config(run.cfg.get("rl"))
        return flat_metrics(rollouts(run, Path(run.run_dir) / "eval" / "rollouts"))
