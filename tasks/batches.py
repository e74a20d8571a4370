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


class LabelledRows(torch.utils.data.Dataset):
    """(token ids, label, row) per example of an encoder task; `rows` selects and orders them."""

    def __init__(self, ids: list[list[int]], labels, rows: list[int] | None = None):
        self.ids, self.labels = ids, labels
        self.rows = list(range(len(ids))) if rows is None else rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        r = self.rows[i]
        return self.ids[r], self.labels[r], r


class LabelledCollate:
    """A batch dict: input_ids and attention_mask (B, L) right-padded to the longest row (methods.batching), labels
    (B,) of `label_dtype`, index (B,): the rows' positions in their split."""

    def __init__(self, pad_id: int, label_dtype: torch.dtype = torch.long):
        self.pad_id, self.label_dtype = pad_id, label_dtype

    def __call__(self, items) -> dict:
        from methods.batching import pad_right

        input_ids, mask = pad_right([x[0] for x in items], self.pad_id)
        labels = torch.tensor([float(x[1]) if self.label_dtype.is_floating_point else int(x[1]) for x in items],
                              dtype=self.label_dtype)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels,
                "index": torch.tensor([x[2] for x in items], dtype=torch.long)}


def labelled_loaders(train: tuple[list[list[int]], object], val: tuple[list[list[int]], object], pad_id: int,
                     batch_size: int, total_micro_batches: int, seed: int, start: Callable[[], int] = lambda: 0,
                     rank: int = 0, world: int = 1, val_batches: int | None = None, num_workers: int = 0,
                     label_dtype: torch.dtype = torch.long):
    """(train, val) loaders of an encoder task's (ids, labels) splits: training batches are a pure function of the
    global micro-batch index (ResumableBatchSampler); validation is the val split in order, this rank's share of
    its first `val_batches` x batch_size x world rows (all of them when None)."""
    train_set = LabelledRows(*train)
    val_ids, val_labels = val
    n_val = len(val_ids) if val_batches is None else min(len(val_ids), val_batches * batch_size * world)
    val_set = LabelledRows(val_ids, val_labels, rows=list(range(n_val))[rank::world])
    sampler = ResumableBatchSampler(len(train_set), batch_size, total_micro_batches, seed, start, rank, world)
    collate = LabelledCollate(pad_id, label_dtype)
    train_dl = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, collate_fn=collate,
                                           num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
    val_dl = torch.utils.data.DataLoader(val_set, batch_size=batch_size, shuffle=False, collate_fn=collate)
    return train_dl, val_dl


def block_loaders(train_blocks, val_blocks, batch_size: int, total_micro_batches: int, seed: int,
                  start: Callable[[], int] = lambda: 0, rank: int = 0, world: int = 1, val_batches: int | None = None,
                  num_workers: int = 0):
    """(train, val) loaders of fixed-size token blocks (next-token LM batches): training batches a pure function of the
    global micro-batch index (ResumableBatchSampler); validation this rank's share of the first `val_batches` x
    batch_size x world blocks (all when None), in order."""
    train = BlockDataset(train_blocks)
    if val_batches is not None:
        val_blocks = val_blocks[: val_batches * batch_size * world]
    val_blocks = val_blocks[rank::world]
    sampler = ResumableBatchSampler(len(train), batch_size, total_micro_batches, seed, start, rank, world)
    # explicit generators: iterating a loader must not draw from the global RNG (exact resume)
    train_dl = torch.utils.data.DataLoader(train, batch_sampler=sampler, num_workers=num_workers,
                                           generator=torch.Generator().manual_seed(seed))
    val_dl = torch.utils.data.DataLoader(BlockDataset(val_blocks), batch_size=batch_size, shuffle=False,
                                         generator=torch.Generator().manual_seed(seed))
    return train_dl, val_dl
