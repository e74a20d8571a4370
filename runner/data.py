"""Data: documents -> tokenizer -> token stream -> packed blocks -> resumable batches.

One loader serves every source (`datasets.load_dataset` for hub names and local files, or the embedded
stdlib-docs corpus). Token streams and trained tokenizers are cached on disk under
`paths.cache_dir`, keyed by a hash of the documents and the tokenizer spec. The train/val split is by a
hash of each document's text, so it is the same on every machine and does not shift when the corpus grows.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import sysconfig
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from runner.errors import ConfigError

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


def _builder_for(path: Path) -> tuple[str, dict]:
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    builders = {".jsonl": "json", ".json": "json", ".jsonl.gz": "json", ".json.gz": "json",
                ".txt": "text", ".parquet": "parquet", ".csv": "csv"}
    if suffix not in builders:
        raise ConfigError(f"dataset.path: cannot read '{path}'; use .jsonl, .json, .txt, .parquet, .csv "
                          "or a datasets save_to_disk directory")
    return builders[suffix], {"data_files": str(path)}


def load_documents(d: DictConfig) -> list[str]:
    """All documents of the configured source as strings. Hub names and local files share this path."""
    if d.source == "stdlib-docs":
        return stdlib_documents()
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


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished cache directory into place; if another process (a DDP rank) got there first, keep theirs."""
    import shutil

    try:
        os.replace(tmp, final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- tokenizer
def train_tokenizer(docs: list[str], vocab_size: int, min_frequency: int = 2):
    """Byte-level BPE trained on `docs`, wrapped as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=None)


def load_tokenizer(tcfg: DictConfig, train_docs: list[str], cache: Path):
    if tcfg.kind == "hf":
        from transformers import AutoTokenizer

        name = str(tcfg.name)
        local = Path(name).expanduser()
        return AutoTokenizer.from_pretrained(str(local) if local.is_dir() else name)
    from transformers import PreTrainedTokenizerFast

    key = _hash("tok-v1", _hash(*train_docs), tcfg.vocab_size, tcfg.min_frequency)
    path = cache / "tokenizers" / key
    if (path / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(path))
    log.info("training a %d-token BPE tokenizer on %d documents (cached at %s)", tcfg.vocab_size, len(train_docs), path)
    tok = train_tokenizer(train_docs, int(tcfg.vocab_size), int(tcfg.min_frequency))
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tok.save_pretrained(str(tmp))
    _publish(tmp, path)
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
        return _hash(tokenizer.backend_tokenizer.to_str())
    return str(d.tokenizer.name)


@dataclass
class TokenData:
    """What the runner hands to methods: token streams, the tokenizer, and corpus statistics."""

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


def build_data(d: DictConfig, seq_len: int, cache_dir: str) -> TokenData:
    if d.source == "noisy-copy":  # a generated seq2seq task: runner.seq2seq.Seq2SeqData
        from runner.seq2seq import build_seq2seq_data

        return build_seq2seq_data(d, seq_len)
    if d.source in ("fictitious-authors", "tofu"):  # question/answer facts for unlearning: runner/qa.py
        from runner.qa import build_qa_data

        return build_qa_data(d, seq_len, cache_dir)
    if d.source == "mixture":  # several domains, sampled by weights that may change: runner/mixture.py
        from runner.mixture import build_mixture_data

        return build_mixture_data(d, seq_len, cache_dir)
    cache = Path(cache_dir).expanduser()
    docs = load_documents(d)
    train_docs, val_docs = split_documents(docs, float(d.val_fraction))
    tokenizer = load_tokenizer(d.tokenizer, train_docs, cache)
    tok_id = tokenizer_id(tokenizer, d)
    key = _hash("tokens-v2", _hash(*docs), d.val_fraction, tok_id)
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
        _publish(tmp, tdir)
    return TokenData(np.asarray(train), np.asarray(val), tokenizer, len(tokenizer), seq_len,
                     len(train_docs), len(val_docs), key)


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


def make_loaders(data: TokenData, batch_size: int, total_micro_batches: int, seed: int, start: Callable[[], int],
                 rank: int = 0, world: int = 1, val_batches: int | None = None, num_workers: int = 0):
    train = BlockDataset(data.blocks("train"))
    val_blocks = data.blocks("val")
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


def eval_targets(val_dl) -> torch.Tensor:
    """The tokens validation scores (every block's targets), e.g. for the unigram baseline."""
    return val_dl.dataset.blocks[:, 1:]
