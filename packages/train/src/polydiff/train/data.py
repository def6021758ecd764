"""The dataset convention shared by every modality, and a resumable, shardable batch order.

A dataset item is a dict ``{"x": Tensor, <cond key>: Tensor, ...}`` or a bare tensor
(unconditional). The trainer splits a collated batch into ``x`` and ``cond`` (the remaining keys,
or None). A dataset may implement ``get_batch(indices) -> dict | Tensor`` to skip per-item
collation (in-memory datasets such as :class:`TensorDictDataset`).

The order of samples is a function of ``(seed, epoch)`` only; a run's data position is the number
of global batches consumed, so stopping and resuming reproduces the exact same stream, and
``world_size`` processes each read their slice of the same global batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

__all__ = ["BatchOrder", "TensorDictDataset", "make_loader", "split_batch"]


def split_batch(batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """Split a collated batch into ``(x, cond)``; ``cond`` is None when there is nothing else."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and len(batch) == 1:
        return split_batch(batch[0])
    if isinstance(batch, Mapping):
        if "x" not in batch:
            raise KeyError(f"dataset items must carry the key 'x'; got keys {sorted(batch)}")
        cond = {k: v for k, v in batch.items() if k != "x"}
        return batch["x"], (cond or None)
    raise TypeError(
        f"dataset items must be a dict with key 'x' or a bare tensor, got {type(batch).__name__}"
    )


class TensorDictDataset(Dataset):
    """In-memory dataset of aligned tensors: ``TensorDictDataset(x=X, **cond)``."""

    def __init__(self, x: torch.Tensor, **cond: torch.Tensor) -> None:
        for k, v in cond.items():
            if len(v) != len(x):
                raise ValueError(f"cond[{k!r}] has {len(v)} rows but x has {len(x)}")
        self.tensors = {"x": x, **cond}

    def __len__(self) -> int:
        return len(self.tensors["x"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}

    def get_batch(self, indices: Sequence[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {k: v[idx] for k, v in self.tensors.items()}


class BatchOrder(Sampler[torch.Tensor]):
    """Yields this process's index tensors, one per optimizer micro-batch, forever.

    Global batch ``g`` (size ``batch_size * world_size``) is the slice
    ``[g * G, (g + 1) * G)`` of the epoch's permutation (a function of ``seed`` and the epoch;
    the incomplete last batch of an epoch is dropped); process ``rank`` takes its contiguous
    ``batch_size`` rows of it. ``start`` is the number of global batches already consumed.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ) -> None:
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world_size, self.start = rank, world_size, start
        self.global_batch = batch_size * world_size
        self.per_epoch = n // self.global_batch
        if self.per_epoch == 0:
            raise ValueError(
                f"dataset has {n} items, fewer than one global batch "
                f"({batch_size} per process x {world_size} processes)"
            )

    def permutation(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[torch.Tensor]:
        g = self.start
        epoch, perm = -1, None
        while True:
            e, b = divmod(g, self.per_epoch)
            if e != epoch:
                epoch, perm = e, self.permutation(e)
            lo = b * self.global_batch + self.rank * self.batch_size
            yield perm[lo : lo + self.batch_size]  # LongTensor (batch_size,)
            g += 1


class _Batched(Dataset):
    """Maps an index list to a collated batch (so loader workers collate in parallel)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, indices: torch.Tensor) -> Any:
        if hasattr(self.dataset, "get_batch"):
            return self.dataset.get_batch(indices)
        return default_collate([self.dataset[i] for i in indices.tolist()])


def make_loader(
    dataset: Dataset, order: BatchOrder, num_workers: int = 0, pin_memory: bool = False
) -> Iterator[Any]:
    """An endless iterator of collated batches in ``order``."""
    if num_workers == 0 and hasattr(dataset, "get_batch"):
        return (dataset.get_batch(idx) for idx in order)  # no DataLoader machinery needed
    loader = DataLoader(
        _Batched(dataset),
        sampler=order,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
    return iter(loader)
