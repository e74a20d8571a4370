"""Sets of real numbers in, pointers out (dataset=sort-sets): the number-sorting task of "Order Matters: Sequence to
sequence for sets" (Vinyals, Bengio & Kudlur, ICLR 2016), for pointer models (models/rpw.py, kind "pointer").

Each example is N floats x_1 .. x_N ~ U[0, 1] (`generator.n`), drawn with numpy from `generator.seed` (train and
validation from two independent streams of it: the same pool on every machine). Its target is a list of K
pointers into the set (K = `generator.k`, null: N):

  target: sorted  the indices of the K smallest elements in ascending order of value (K = N: the argsort, the
                  paper's task). One right answer; evaluation asks for the exact sequence.
  target: set     the same K elements as an unordered output: every ordering of them is right. The data gives
                  them in ascending index order (an arbitrary canonical order, what a plain cross-entropy trains
                  on); method=read_process_write's `order: search` is the paper's output-order search over them.

Why `target: set` and not the search on sorting: the paper's search (θ* = argmax_θ Σ_X max_π log p(π(Y) | X))
is for outputs whose order is free. Sorting fixes the order, so a search there can only move the model away from
the one sequence its metric accepts; "the K smallest, in any order" keeps the same inputs and the same pointer
model and gives the search K! right orderings to choose among (the method also runs on `target: sorted`, where
it is allowed but pointless).

Sources are real-valued, which is why this is a data kind of its own and not the token-pairs kind
(tasks/seq2seq.py). A batch is a dict: x (B, N) float32, y (B, K) long pointers, index (B,) rows of the split;
train batches are a pure function of the global micro-batch index (tasks/batches.py ResumableBatchSampler over
the generated pool), so a resumed run sees exactly the batches of the uninterrupted one.

The module (methods/sets/module.py PointerModule) trains the pointer cross-entropy -Σ_t log p(y_t | y_<t, X);
validation logs val/loss (per output step), val/sequence_accuracy and val/position_accuracy of greedy pointer
decoding; `evaluate` reports the same on the whole validation split as eval/*. For `target: set`, accuracy is
order-free: sequence = the emitted set is the target set, position = the emitted element is in it; the
validation loss is that of the ordering greedy decoding restricted to the target elements picks (an upper bound
on min_π of the ordering's loss, so it does not penalise an order the model chose freely).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.base import BuildContext, Task, TaskData

log = logging.getLogger(__name__)
TARGETS = ("sorted", "set")
GENERATOR_KEYS = ("n", "k", "train_size", "val_size", "seed")


def generate_sets(n: int, size: int, seed: int, stream: int) -> np.ndarray:
    """(size, n) float32 ~ U[0, 1] from numpy's PCG64 seeded by (seed, stream)."""
    return np.random.default_rng([int(seed), int(stream)]).random((size, n), dtype=np.float32)


def set_targets(x: np.ndarray, k: int, target: str) -> np.ndarray:
    """(rows, k) pointers: the k smallest elements of each row in ascending order of value (`sorted`), or the same
    elements in ascending order of index (`set`: a canonical order of an unordered output)."""
    smallest = np.argsort(x, axis=1, kind="stable")[:, :k]
    return smallest if target == "sorted" else np.sort(smallest, axis=1)


@dataclass
class SetData(TaskData):
    """The generated pool: what the run and every method hook get."""

    train_x: np.ndarray  # (train_size, n) float32
    train_y: np.ndarray  # (train_size, k) int64 pointers
    val_x: np.ndarray
    val_y: np.ndarray
    n: int
    k: int
    target: str
    tokenizer: Any = None  # no tokens: nothing to save
    vocab_size: int = 0  # the pointer's output size (n): what the runner reports as vocab_size

    @property
    def module_class(self):  # imported when a run builds its module (Lightning and torch), not to validate a config
        from methods.sets.module import PointerModule

        return PointerModule

    # -- the task protocol -------------------------------------------------------------------
    def make_loaders(self, batch_size: int, total_micro_batches: int, seed: int, start=lambda: 0, rank: int = 0,
                     world: int = 1, val_batches: int | None = None, num_workers: int = 0):
        """Train batches: ResumableBatchSampler over the pool (a pure function of the global micro-batch index);
        validation: this rank's share of the first `val_batches` x batch_size x world sets, in order."""
        import torch

        from tasks.batches import ResumableBatchSampler

        n_val = len(self.val_x) if val_batches is None else min(len(self.val_x), val_batches * batch_size * world)
        train = SetRows(self.train_x, self.train_y)
        val = SetRows(self.val_x, self.val_y, rows=list(range(n_val))[rank::world])
        sampler = ResumableBatchSampler(len(train), batch_size, total_micro_batches, seed, start, rank, world)
        train_dl = torch.utils.data.DataLoader(train, batch_sampler=sampler, collate_fn=collate_sets,
                                               num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
        val_dl = torch.utils.data.DataLoader(val, batch_size=batch_size, shuffle=False, collate_fn=collate_sets)
        return train_dl, val_dl

    def counts(self) -> dict[str, int]:
        return {"train_sets": len(self.train_x), "val_sets": len(self.val_x), "set_size": self.n,
                "output_steps": self.k}

    def uniform_loss(self) -> float:
        """The loss per output step of a pointer uniform over the elements not yet emitted: mean_t log(N - t)."""
        return float(np.mean([np.log(self.n - t) for t in range(self.k)]))

    def baselines(self, val_dl) -> dict[str, float]:
        return {"val/uniform_loss": self.uniform_loss()}

    def evaluate(self, model) -> dict[str, float]:
        """Greedy pointer decoding of the whole validation split: sequence and position accuracy."""
        from methods.sets.pointer import greedy_accuracy

        return greedy_accuracy(model, self.val_x, self.val_y, self.target)


class SetRows:
    """(x, y, row) per example; `rows` selects and orders them (a torch Dataset by protocol)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, rows: list[int] | None = None):
        self.x, self.y = x, y
        self.rows = list(range(len(x))) if rows is None else rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        r = self.rows[i]
        return self.x[r], self.y[r], r


def collate_sets(items) -> dict:
    """{x: (B, N) float32, y: (B, K) long, index: (B,) long}."""
    import torch

    return {"x": torch.from_numpy(np.stack([it[0] for it in items])),
            "y": torch.from_numpy(np.stack([it[1] for it in items]).astype(np.int64)),
            "index": torch.tensor([it[2] for it in items], dtype=torch.long)}


class SortSets(Task):
    """Number sorting (`target: sorted`) or the k smallest as a set (`target: set`); see the module docstring."""

    provides = frozenset({"sets"})
    model_kinds = ("pointer",)

    def __init__(self, generator: dict | None = None, target: str = "sorted"):
        g = {"n": 5, "k": None, "train_size": 100_000, "val_size": 1000, "seed": 0, **dict(generator or {})}
        problems = [f"dataset.generator.{key}: unknown key; choose keys from: {', '.join(GENERATOR_KEYS)}"
                    for key in g if key not in GENERATOR_KEYS]
        ints = {}
        for key in ("n", "train_size", "val_size", "seed"):
            v = g.get(key)
            if isinstance(v, bool) or not isinstance(v, int):
                problems.append(f"dataset.generator.{key}: must be an integer, got {v!r}")
            ints[key] = v if isinstance(v, int) else 0
        if target not in TARGETS:
            problems.append(f"dataset.target: must be one of {', '.join(TARGETS)}, got {target!r}")
        n = ints["n"]
        if not problems:
            if n < 2:
                problems.append(f"dataset.generator.n: must be >= 2 (elements per set), got {n}")
            for key in ("train_size", "val_size"):
                if ints[key] < 1:
                    problems.append(f"dataset.generator.{key}: must be positive, got {ints[key]}")
            if ints["seed"] < 0:
                problems.append(f"dataset.generator.seed: must be >= 0, got {ints['seed']}")
        k = g["k"]
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max(n, 1)):
            problems.append(f"dataset.generator.k: must be null (= n) or an integer in [1, n = {n}], got {k!r}")
        if problems:
            raise ValueError("; ".join(problems))
        self.n, self.k = n, (n if k is None else int(k))
        self.train_size, self.val_size, self.seed, self.target = ints["train_size"], ints["val_size"], ints["seed"], target

    def build(self, ctx: BuildContext) -> SetData:
        train_x = generate_sets(self.n, self.train_size, self.seed, 0)
        val_x = generate_sets(self.n, self.val_size, self.seed, 1)
        log.info("sort-sets: %d train / %d val sets of %d floats ~ U[0, 1], target %s (%d pointers)",
                 self.train_size, self.val_size, self.n, self.target, self.k)
        return SetData(train_x, set_targets(train_x, self.k, self.target), val_x, set_targets(val_x, self.k, self.target),
                       self.n, self.k, self.target, vocab_size=self.n)

    def vocab_size_hint(self) -> int | None:
        return self.n
