"""Data primitives every task shares: documents, the document split, tokenizers, the content-hash cache with
atomic publish, token blocks and the resumable batch sampler.

One loader serves every text source (`datasets.load_dataset` for hub names and local files, or the embedded
stdlib-docs corpus). Trained tokenizers and token streams are cached on disk under `paths.cache_dir`, keyed by
a hash of what they are built from. The train/val split is by a hash of each document's text, so it is the
same on every machine and does not shift when the corpus grows.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import sysconfig
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from tasks.errors import ConfigError

log = logging.getLogger(__name__)
EOS = "<|endoftext|>"
_SKIP_DIRS = {"test", "tests", "site-packages", "idlelib", "lib2to3", "__pycache__", "turtledemo", "ensurepip"}


# ---------------------------------------------------------------------------------------------- documents
def stdlib_sources():
    """(source text, parsed module) of every parseable .py file of this Python's stdlib, in a fixed order
    (tests and vendored code skipped)."""
    lib = sysconfig.get_paths()["stdlib"]
    for root, dirs, files in os.walk(lib):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            try:
                text = Path(root, f).read_text(encoding="utf-8")
                yield text, ast.parse(text)
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue


def stdlib_documents(min_chars: int = 200) -> list[str]:
    """English prose from this Python installation: pydoc topics and stdlib docstrings, in a fixed order."""
    import pydoc_data.topics

    docs = [pydoc_data.topics.topics[k].strip() for k in sorted(pydoc_data.topics.topics)]
    for _, tree in stdlib_sources():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                d = ast.get_docstring(node)
                if d and len(d) >= min_chars:
                    docs.append(d.strip())
    return [d for d in docs if len(d) >= min_chars]


def cached_stdlib_documents(cache: Path, min_chars: int = 200) -> list[str]:
    """stdlib_documents, read back from `cache` after the first time (walking and parsing the stdlib takes
    seconds): keyed by the Python version and the stdlib it is read from, which fix its content."""
    import sys

    path = Path(cache) / "documents" / f"stdlib-{content_hash('stdlib-docs-v1', sys.version, sysconfig.get_paths()['stdlib'], min_chars)}.json"
    if path.exists():
        return json.loads(path.read_text())
    docs = stdlib_documents(min_chars)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(docs))
    os.replace(tmp, path)
    return docs


def _builder_for(path: Path) -> tuple[str, dict]:
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    builders = {".jsonl": "json", ".json": "json", ".jsonl.gz": "json", ".json.gz": "json",
                ".txt": "text", ".parquet": "parquet", ".csv": "csv"}
    if suffix not in builders:
        raise ConfigError(f"dataset.path: cannot read '{path}'; use .jsonl, .json, .txt, .parquet, .csv "
                          "or a datasets save_to_disk directory")
    return builders[suffix], {"data_files": str(path)}


def load_documents(d: DictConfig, cache: Path | None = None) -> list[str]:
    """All documents of the configured source as strings. Hub names and local files share this path; the
    embedded corpus is cached under `cache` when one is given."""
    if d.source == "stdlib-docs":
        return stdlib_documents() if cache is None else cached_stdlib_documents(cache)
    import datasets

    path = Path(str(d.path)).expanduser()
    if d.source == "local" and path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        ds: Any = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[d.split]
    else:
        if d.source == "local":
            builder, kwargs = (_builder_for(path) if path.is_file() else ("text", {"data_dir": str(path)}))
        else:
            builder, kwargs = str(d.path), ({"name": d.subset} if d.subset else {})
        ds = datasets.load_dataset(builder, split=d.split, streaming=bool(d.streaming), **kwargs)
    docs = []
    for i, row in enumerate(ds):
        if d.max_documents is not None and i >= d.max_documents:
            break
        if d.text_field not in row:
            raise ConfigError(f"dataset.text_field: '{d.text_field}' is not a column; choose one of: {', '.join(row)}")
        text = row[d.text_field]
        if text and text.strip():
            docs.append(text)
    if not docs:
        raise ConfigError(f"dataset.path: no documents with text in {d.path}")
    return docs


def split_documents(docs: Iterable[str], val_fraction: float) -> tuple[list[str], list[str]]:
    train, val = [], []
    cut = int(val_fraction * 2**32)
    for doc in docs:
        h = int.from_bytes(hashlib.blake2b(doc.encode(), digest_size=4).digest(), "big")
        (val if h < cut else train).append(doc)
    if not train or not val:
        raise ConfigError(f"dataset.val_fraction: {val_fraction} leaves an empty split of {len(train) + len(val)} documents")
    return train, val


def publish(tmp: Path, final: Path) -> None:
    """Move a finished cache directory into place; if another process (a DDP rank) got there first, keep theirs."""
    import shutil

    try:
        os.replace(tmp, final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def content_hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- tokenizer
def train_tokenizer(docs: list[str], vocab_size: int, min_frequency: int = 2, special_tokens: tuple[str, ...] = ()):
    """Byte-level BPE trained on `docs`, wrapped as a transformers tokenizer. EOS is id 0; `special_tokens`
    (e.g. a mask token) follow it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS, *special_tokens],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=None)


def load_tokenizer(tcfg: DictConfig, train_docs: list[str], cache: Path, special_tokens: tuple[str, ...] = ()):
    """The configured tokenizer: a hub/local one by name (`kind: hf`), or a BPE trained on `train_docs` and cached
    by their content (`kind: train`; `special_tokens` are added after EOS)."""
    if tcfg.kind == "hf":
        from transformers import AutoTokenizer

        name = str(tcfg.name)
        local = Path(name).expanduser()
        return AutoTokenizer.from_pretrained(str(local) if local.is_dir() else name)
    from transformers import PreTrainedTokenizerFast

    key = content_hash("tok-v1", content_hash(*train_docs), tcfg.vocab_size, tcfg.min_frequency,
                       *([list(special_tokens)] if special_tokens else []))
    path = cache / "tokenizers" / key
    if (path / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(path))
    log.info("training a %d-token BPE tokenizer on %d documents (cached at %s)", tcfg.vocab_size, len(train_docs), path)
    tok = train_tokenizer(train_docs, int(tcfg.vocab_size), int(tcfg.min_frequency), tuple(special_tokens))
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tok.save_pretrained(str(tmp))
    publish(tmp, path)
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def tokenize(tokenizer, docs: list[str], batch: int = 1000) -> np.ndarray:
    """Concatenate the documents' token ids, each followed by EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("dataset.tokenizer.name: the tokenizer has no EOS token to separate documents")
    vocab = len(tokenizer)
    dtype = np.uint16 if vocab < 2**16 else np.uint32
    out = []
    for i in range(0, len(docs), batch):
        # split_special_tokens: a document that contains the text "<|endoftext|>" is not cut in two
        enc = tokenizer(docs[i:i + batch], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        for ids in enc:
            out.append(np.asarray(ids + [eos], dtype=dtype))
    return np.concatenate(out) if out else np.zeros(0, dtype=dtype)


# ---------------------------------------------------------------------------------------------- token data
def token_blocks(tokens: np.ndarray, seq_len: int) -> torch.Tensor:
    """(n, seq_len + 1) int64 non-overlapping blocks of a token stream (n may be 0); consecutive blocks share
    one boundary token."""
    n = max(0, (len(tokens) - 1) // seq_len)
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return torch.from_numpy(np.asarray(tokens)[idx].astype(np.int64).reshape(n, seq_len + 1))


def tokenizer_id(tokenizer, d: DictConfig) -> str:
    """What identifies a tokenizer in cache keys: a hash of its serialisation, else its configured name."""
    if hasattr(tokenizer, "backend_tokenizer"):
        return content_hash(tokenizer.backend_tokenizer.to_str())
    return str(d.tokenizer.name)


# ---------------------------------------------------------------------------------------------- batches
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


