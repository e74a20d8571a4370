"""The task protocol: a kind of data, chosen by `_target_` in configs/dataset/<name>.yaml.

A task has two halves, both in the task's own file (tasks/lm_corpus.py is the plainest example):

    class MyTask(Task):                      # the builder: the YAML's keys are its constructor's arguments
        provides = frozenset({"tokens"})     # what methods may ask of it (Method.needs_task)
        model_kinds = ("causal-lm",)         # the architectures its batches are for (Architecture.kind)
        def __init__(self, my_key: int = 3): # cheap, no I/O: preflight builds it to check the config;
            ...                              # raise ValueError("dataset.my_key: ...") for a bad value
        def build(self, ctx: BuildContext) -> TaskData:   # the I/O: documents, tokenizer, cached arrays
            ...

    class MyData(TaskData):                  # what the run (and every method hook) gets
        module_class = MyModule              # the LightningModule its batches need (None: MethodModule)
        def make_loaders(...)                # resumable, rank-aware (train, val) loaders
        def counts(self)                     # {"train_examples": ...}: what it reports, in its own units
        def baselines(self, val_dl)          # reference numbers beside val/loss (a unigram perplexity, ...)
        def evaluate(self, model)            # its own metrics (BLEU, TOFU's forget quality, ...)
        def figures(self, model, directory)  # its own plots of the final model (a confusion matrix, ...)

The runner owns `name`, `batch_size` and `num_workers` of the dataset config; every other key goes to the
constructor, checked against its signature like a method's. A task never imports `runner`: what it needs of
the run arrives in `BuildContext`, including trained models on demand (`ctx.trained_model(role, changes)`, or
another model and task altogether: `ctx.trained_model.path(role, model=(option, overrides), dataset=...)`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from methods.base import TrainedModel


@dataclass
class BuildContext:
    """What a task may know of the run that builds it."""

    seq_len: int  # model.seq_len
    cache_dir: Path  # paths.cache_dir: cache what you build under it, keyed by content
    seed: int
    batch_size: int  # dataset.batch_size
    max_steps: int  # trainer.max_steps
    accumulate_grad_batches: int
    needs: frozenset[str] = frozenset()  # what the method asks of the task (Method.needs_task)
    role: str | None = None  # this run trains one of the runner's cached models ("base", ...); None: a user's run
    base_steps: int | None = None  # steps of the runner's cached base model, when the run starts from it
    # (role, changes to this task's arguments) -> that model trained and cached by the runner, in eval mode
    trained_model: TrainedModel | None = None
    load_model: Callable[[str], Any] | None = None  # a run dir, .ckpt, HF dir or model.pt -> that model, eval mode
    # where the run's model comes from (model.init_from, resolved: a run dir, .ckpt, HF dir, hf://name, model.pt) or
    # None (random init): a task may take a pretrained model's own tokenizer from it
    model_source: str | None = None


class TaskData:
    """Built data: the tokenizer, loaders, the module its batches need, its counts and metrics."""

    # Every task's data has `tokenizer` (what `save` writes and methods encode with) and `vocab_size` (what the
    # model's embeddings need) attributes; a dataclass declares them as fields (tasks/lm_corpus.py TokenData).
    module_class: ClassVar[type | None] = None  # None: methods.module.MethodModule (next-token LM batches)

    def make_loaders(self, batch_size: int, total_micro_batches: int, seed: int, start: Callable[[], int],
                     rank: int = 0, world: int = 1, val_batches: int | None = None, num_workers: int = 0):
        """(train loader, val loader). Train batches must be a pure function of the global micro-batch index,
        starting at `start()` (the micro-batches already seen, restored on resume); rank r of `world` takes
        its own share. `val_batches` caps validation at that many batches per rank."""
        raise NotImplementedError

    def counts(self) -> dict[str, int]:
        """What the run reports of the data, in the task's own units: {"train_tokens": ..., "val_pairs": ...}."""
        return {}

    def baselines(self, val_dl) -> dict[str, float]:
        """Reference numbers for the validation set, logged beside val/loss (e.g. {"val/unigram_ppl": ...})."""
        return {}

    def evaluate(self, model) -> dict[str, float]:
        """The task's own metrics of the final model (logged as eval/<name>)."""
        return {}

    def figures(self, model, directory: Path) -> dict[str, Path]:
        """Figures of the final model written under `directory` ({name: image file}): kept in the run directory,
        logged to W&B as images, listed in summary.json (e.g. a confusion matrix)."""
        return {}

    def save(self, directory: Path) -> None:
        """Save what a later run needs to read the model's inputs (the tokenizer)."""
        tokenizer = getattr(self, "tokenizer", None)
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(str(directory))


class Task:
    """The builder of a kind of data. Subclass it; the YAML names the subclass in `_target_`."""

    provides: ClassVar[frozenset[str]] = frozenset()  # capabilities a method may need (Method.needs_task)
    model_kinds: ClassVar[tuple[str, ...]] = ("causal-lm",)  # Architecture.kind values it trains
    # Constructor arguments that change evaluation only, not what a model trained on the task learns: left out
    # of the cache key of the runner's trained models (dotted, e.g. "generator.retain_model").
    eval_only_args: ClassVar[frozenset[str]] = frozenset()

    def build(self, ctx: BuildContext) -> TaskData:
        raise NotImplementedError

    def vocab_size_hint(self) -> int | None:
        """The vocabulary size without building anything (dry runs); None: unknown until built."""
        return None

    def ignored_args(self) -> dict[str, str]:
        """The arguments this task was given but ignores as configured, {dotted key: why} (e.g. a file path for
        the embedded corpus): the runner refuses each before any work, naming the dataset options that use it."""
        return {}
