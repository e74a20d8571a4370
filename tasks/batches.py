"""The resumable batch sampler and the dataset of token blocks every task's loaders use (tasks/common.py names
them too). Apart from tasks/common.py because they subclass torch's classes: validating a config imports that
file (a task's constructor checks its arguments), and importing torch takes seconds."""

from __future__ import annotations

from collections.abc import Callable

import torch

from tasks.errors import ConfigError


class ResumableBatchSampler(torch.utils.data.Sampler):
    """Batches as a pure function of the global micro-batch index.

    Micro-batch b of the run is slice (b mod per_epoch) of data-epoch (b div per_epoch)'s permutation, seeded
    by (seed, data-epoch); rank r of a world of size w takes the r-th of w consecutive slices. Iteration
    starts at `start()` (the micro-batches already seen, restored from a checkpoint), so a resumed run
    sees exactly the batches the uninterrupted run would have seen.
    """

    def __init__(self, n: int, batch_size: int, total: int, seed: int, start: Callable[[], int] = lambda: 0,
                 rank: int = 0, world: int = 1):
        if n < batch_size * world:
            raise ConfigError(f"dataset.batch_size: {batch_size} x {world} device(s) is more than the {n} training blocks")
        self.n, self.bs, self.total, self.seed = n, batch_size, total, seed
        self.start, self.rank, self.world = start, rank, world
        self.per_epoch = n // (batch_size * world)

    def __len__(self) -> int:
        return self.total

    def _perm(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self):
        epoch, perm = -1, None
        for b in range(int(self.start()), self.total):
            e, pos = divmod(b, self.per_epoch)
            if e != epoch:
                epoch, perm = e, self._perm(e)
            lo = (pos * self.world + self.rank) * self.bs
            yield perm[lo:lo + self.bs].tolist()


class BlockDataset(torch.utils.data.Dataset):
    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.blocks[i]
