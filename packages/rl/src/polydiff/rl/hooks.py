"""Hooks for the training engine and the ``polydiff`` command (see ``polydiff.train.hooks``)."""

from __future__ import annotations

import torch

from polydiff.rl.datasets import ActionChunks, TrajectoryWindows


class RLHooks:
    """Sampling conditions and data space of an RL training view.

    For action chunks, ``sample_cond`` draws observation histories from the dataset (the policy
    is sampled in the states the demonstrations visited) and ``to_data`` maps actions back to
    environment units; for trajectories sampling is unconditional and ``to_data`` unnormalises.
    """

    def __init__(self, dataset: ActionChunks | TrajectoryWindows) -> None:
        if not isinstance(dataset, (ActionChunks, TrajectoryWindows)):
            raise TypeError(f"RLHooks needs an RL training view, got {type(dataset).__name__}")
        self.dataset = dataset

    def sample_cond(self, n: int, generator: torch.Generator | None) -> dict | None:
        if not isinstance(self.dataset, ActionChunks):
            return None
        idx = torch.randint(len(self.dataset), (n,), generator=generator)
        return {"vector": torch.stack([self.dataset[int(i)]["vector"] for i in idx])}

    def to_data(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.dataset, ActionChunks):
            return self.dataset.act_norm.unnormalize(x.clamp(-1.0, 1.0))
        assert isinstance(self.dataset, TrajectoryWindows)
        return self.dataset.normalizer.unnormalize(x)
