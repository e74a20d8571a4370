"""Language modelling on a text corpus: documents -> tokenizer -> token stream -> packed blocks -> batches.

    dataset=stdlib-docs (embedded, no network) | c4 | fineweb-edu (hub, streamed) | local (dataset.path=...)

Batches are (B, T+1) token blocks (inputs and next-token targets), a pure function of the micro-batch index
(exact resume). The run reports val/loss and val/ppl (methods.module.MethodModule) and the perplexity of the
add-one-smoothed unigram distribution of the train split on the same validation tokens: the floor a language
model has to beat.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import OmegaConf

from tasks.base import BuildContext, Task, TaskData
from tasks.common import (
    content_hash,
    load_documents,
    load_tokenizer,
    local_file_problem,
    publish,
    split_documents,
    token_blocks,
    tokenize,
    tokenizer_id,
)
from tasks.errors import ConfigError, choices_hint

if TYPE_CHECKING:  # torch is imported where loaders are made: validating a config builds LMCorpus without it
    import torch

log = logging.getLogger(__name__)

SOURCES = ("stdlib-docs", "hub", "local")
TOKENIZER_KEYS = {"kind": "train", "name": None, "vocab_size": 4096, "min_frequency": 2}
MIN_BPE_VOCAB = 257  # the byte alphabet and EOS (tasks/common.py train_tokenizer)
# What each source reads of the arguments that name where documents come from (tasks/common.py load_documents).
SOURCE_KEYS = {"stdlib-docs": (), "local": ("path", "split", "text_field", "streaming", "max_documents"),
               "hub": ("path", "subset", "split", "text_field", "streaming", "max_documents")}


def check_tokenizer(spec: Any, problems: list[str]) -> dict:
    """dataset.tokenizer with its defaults filled in; its problems appended, one line each."""
    spec = dict(spec or {})
    for key in spec:
        if key not in TOKENIZER_KEYS:
            problems.append(f"dataset.tokenizer.{key}: unknown key; {choices_hint(key, list(TOKENIZER_KEYS))}")
    spec = {**TOKENIZER_KEYS, **spec}
    if spec["kind"] not in ("train", "hf"):
        problems.append(f"dataset.tokenizer.kind: {spec['kind']!r} is not valid; choose one of: train, hf")
    elif spec["kind"] == "hf" and not spec["name"]:
        problems.append("dataset.tokenizer.name: tokenizer.kind=hf needs a hub name or a local directory")
    elif spec["kind"] == "train" and (not isinstance(spec["vocab_size"], int) or spec["vocab_size"] <= 0):
        problems.append(f"dataset.tokenizer.vocab_size: tokenizer.kind=train needs a positive size, got {spec['vocab_size']!r}")
    elif spec["kind"] == "train" and spec["vocab_size"] < MIN_BPE_VOCAB:
        problems.append(f"dataset.tokenizer.vocab_size: a byte-level BPE has at least {MIN_BPE_VOCAB} tokens (256 bytes "
                        f"and <|endoftext|>; a task's own special tokens add to it), got {spec['vocab_size']}; the "
                        f"tokenizer would silently be larger (tasks/common.py train_tokenizer)")
    return spec


def ignored_tokenizer_keys(spec: dict) -> dict[str, str]:
    """The keys of a dataset.tokenizer (check_tokenizer's, defaults filled in) its kind ignores, set to a value
    of their own: {dotted key: why}."""
    unused = ("name",) if spec["kind"] == "train" else ("vocab_size", "min_frequency") if spec["kind"] == "hf" else ()
    why = {"train": "it trains its own BPE", "hf": "it loads tokenizer.name as it is"}.get(spec["kind"], "")
    return {f"tokenizer.{k}": f"tokenizer.kind={spec['kind']}: {why}" for k in unused
            if spec[k] is not None and spec[k] != TOKENIZER_KEYS[k]}


@dataclass
class TokenData(TaskData):
    """A tokenized corpus: the train/val token streams, the tokenizer, and corpus statistics. What methods get
    as `data` (`blocks("train")`, `val`, `tokenizer`, `seq_len`)."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: Any
    vocab_size: int
    seq_len: int
    train_docs: int
    val_docs: int
    cache_key: str

    def blocks(self, split: str) -> torch.Tensor:
        """Non-overlapping (n, seq_len + 1) blocks; consecutive blocks share one boundary token."""
        tokens = self.train if split == "train" else self.val
        if len(tokens) <= self.seq_len:
            raise ConfigError(f"model.seq_len: {self.seq_len} is longer than the {split} split ({len(tokens)} tokens)")
        return token_blocks(tokens, self.seq_len)

    def unigram_ppl(self, targets: torch.Tensor | np.ndarray | None = None) -> float:
        """Perplexity of the add-one-smoothed unigram distribution of train on `targets` (default: every
        val token after the first): the floor a language model has to beat on the same tokens."""
        counts = np.bincount(np.asarray(self.train, dtype=np.int64), minlength=self.vocab_size).astype(np.float64) + 1.0
        logp = np.log(counts / counts.sum())
        t = np.asarray(self.val[1:] if targets is None else targets, dtype=np.int64).reshape(-1)
        return float(np.exp(-logp[t].mean()))

    # -- the task protocol -------------------------------------------------------------------
    def make_loaders(self, batch_size: int, total_micro_batches: int, seed: int, start: Callable[[], int] = lambda: 0,
                     rank: int = 0, world: int = 1, val_batches: int | None = None, num_workers: int = 0):
        from tasks.batches import block_loaders

        return block_loaders(self.blocks("train"), self.blocks("val"), batch_size, total_micro_batches, seed, start,
                             rank, world, val_batches, num_workers)

    def eval_targets(self, val_dl) -> torch.Tensor:
        """The tokens validation scores (every block's targets)."""
        return val_dl.dataset.blocks[:, 1:]

    def counts(self) -> dict[str, int]:
        return {"train_docs": self.train_docs, "val_docs": self.val_docs, "train_tokens": len(self.train),
                "val_tokens": len(self.val)}

    def baselines(self, val_dl) -> dict[str, float]:
        return {"val/unigram_ppl": self.unigram_ppl(self.eval_targets(val_dl))}


class LMCorpus(Task):
    """Next-token prediction on a text corpus: the embedded stdlib-docs, a hub corpus, or local files."""

    provides = frozenset({"tokens", "documents"})
    model_kinds = ("causal-lm",)

    def __init__(self, source: str = "stdlib-docs", path: str | None = None, subset: str | None = None,
                 split: str = "train", text_field: str = "text", streaming: bool = False,
                 max_documents: int | None = None, val_fraction: float = 0.05, tokenizer: dict | None = None):
        problems: list[str] = []
        if source not in SOURCES:
            problems.append(f"dataset.source: {source!r} is not valid; {choices_hint(source, list(SOURCES))}")
        if source in ("local", "hub") and not path:
            problems.append(f"dataset.path: dataset.source={source} needs a path (a file/dir or a hub name)")
        if source == "local" and path and not Path(str(path)).expanduser().exists():
            problems.append(f"dataset.path: no such file or directory: {path}")
        elif source == "local" and path and (problem := local_file_problem(Path(str(path)))):
            problems.append(problem)
        if not 0.0 < float(val_fraction) < 1.0:
            problems.append(f"dataset.val_fraction: must be in (0, 1), got {val_fraction}")
        self.tokenizer = check_tokenizer(tokenizer, problems)
        if problems:
            raise ValueError("; ".join(problems))
        given = {"path": path, "subset": subset, "split": split, "text_field": text_field, "streaming": streaming,
                 "max_documents": max_documents}
        defaults = {k: p.default for k, p in inspect.signature(LMCorpus.__init__).parameters.items()}
        why = "the embedded corpus reads no file" if source == "stdlib-docs" else "it reads no such key"
        self._ignored = {k: f"source {source}: {why}" for k, v in given.items()
                         if k not in SOURCE_KEYS[source] and v != defaults[k]}
        self._ignored.update(ignored_tokenizer_keys(self.tokenizer))
        self.spec = OmegaConf.create({"source": source, "path": path, "subset": subset, "split": split,
                                      "text_field": text_field, "streaming": streaming,
                                      "max_documents": max_documents, "val_fraction": float(val_fraction),
                                      "tokenizer": self.tokenizer})

    def vocab_size_hint(self) -> int | None:
        return int(self.tokenizer["vocab_size"]) if self.tokenizer["kind"] == "train" else None

    def ignored_args(self) -> dict[str, str]:
        return dict(self._ignored)

    def documents(self, cache: Path | None = None) -> tuple[list[str], list[str], list[str]]:
        """(all documents, train documents, val documents); the embedded corpus cached under `cache`."""
        docs = load_documents(self.spec, cache)
        train, val = split_documents(docs, self.spec.val_fraction)
        return docs, train, val

    def build(self, ctx: BuildContext, special_tokens: tuple[str, ...] = ()) -> TokenData:
        cache = Path(ctx.cache_dir).expanduser()
        docs, train_docs, val_docs = self.documents(cache)
        tokenizer = load_tokenizer(self.spec.tokenizer, train_docs, cache, special_tokens)
        tok_id = tokenizer_id(tokenizer, self.spec)
        key = content_hash("tokens-v2", content_hash(*docs), self.spec.val_fraction, tok_id)
        tdir = cache / "tokens" / key
        if (tdir / "train.npy").exists() and (tdir / "val.npy").exists():
            train, val = np.load(tdir / "train.npy", mmap_mode="r"), np.load(tdir / "val.npy", mmap_mode="r")
        else:
            log.info("tokenizing %d train / %d val documents (cached at %s)", len(train_docs), len(val_docs), tdir)
            train, val = tokenize(tokenizer, train_docs), tokenize(tokenizer, val_docs)
            tmp = tdir.with_name(tdir.name + f".tmp{os.getpid()}")
            tmp.mkdir(parents=True, exist_ok=True)
            np.save(tmp / "train.npy", train)
            np.save(tmp / "val.npy", val)
            publish(tmp, tdir)
        return TokenData(np.asarray(train), np.asarray(val), tokenizer, len(tokenizer), ctx.seq_len,
                         len(train_docs), len(val_docs), key)
