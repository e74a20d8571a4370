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
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig

from tasks.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where tensors are made (token_blocks, tasks/batches.py)
    import torch

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


def _root_cause(e: BaseException) -> str:
    """The first line of the innermost cause of `e` (pyarrow's parse error under datasets' generation error)."""
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else f"{type(e).__name__} (no rows)"


def local_file_problem(path: Path) -> str | None:
    """What is wrong with a local data file, from its size and its first 64 KiB (cheap: checked before any
    work), or None: empty, not UTF-8 text (.jsonl, .json, .txt, .csv), a first line that is not a JSON object
    (.jsonl), not Parquet."""
    path = Path(path).expanduser()
    suffix = path.suffix
    if not path.is_file() or suffix == ".gz":
        return None
    if path.stat().st_size == 0:
        return f"dataset.path: {path} is empty (no documents)"
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if suffix == ".parquet":
        return None if head[:4] == b"PAR1" else f"dataset.path: {path} is not a Parquet file (no PAR1 header)"
    if suffix not in (".jsonl", ".json", ".txt", ".csv"):
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not a character cut at the end of the chunk
            return f"dataset.path: {path} is not UTF-8 text (byte {head[e.start]:#04x} at offset {e.start})"
        text = head[: e.start].decode("utf-8")
    if suffix == ".jsonl":
        first, newline, _ = text.lstrip().partition("\n")
        if newline or len(head) == path.stat().st_size:  # the whole first line is here
            try:
                row = json.loads(first)
            except ValueError as e:
                return f"dataset.path: {path} is not JSON lines: line 1: {e}"
            if not isinstance(row, dict):
                return f"dataset.path: {path}: line 1 is a JSON {type(row).__name__}, not an object with a text field"
    return None


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
        try:
            ds = datasets.load_dataset(builder, split=d.split, streaming=bool(d.streaming), **kwargs)
        except Exception as e:  # noqa: BLE001  (a local file datasets cannot parse: one line naming it)
            if d.source != "local":
                raise
            raise ConfigError(f"dataset.path: cannot read {path} as {builder} data: {_root_cause(e)}") from e
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


WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4 of a trained WordPiece


_CONTINUATION_BASE = 0xF0000  # Unicode plane 15 (private use): where a word's non-initial characters stand in training


def train_wordpiece(docs: list[str], vocab_size: int, min_frequency: int = 2, lowercase: bool = True):
    """BERT's tokenizer recipe trained on `docs`: BERT normalisation (lowercased when `lowercase`, accents
    stripped with it), BERT pre-tokenisation, WordPiece, every text encoded as [CLS] ... [SEP]; the special
    tokens WORDPIECE_SPECIALS are ids 0..4 ([PAD] = 0). A transformers tokenizer.

    The vocabulary is the one `tokenizers`' WordPieceTrainer learns (BPE merges over the words, continuation
    pieces prefixed ##), made deterministic: that trainer gives each "##c" an id in hash-map order, and merges
    whose counts tie are taken in id order, so every fresh process learned a slightly different vocabulary.
    Here a word's non-initial characters are renamed to private-use code points in sorted order and a plain
    BpeTrainer (every id from a sorted alphabet, so ties break the same way every time) learns the merges; the
    pieces are renamed back, those that start inside a word with ##. Same alphabet (every character in its
    word-initial form, every non-initial one as ##c), same counts, same vocabulary size; ties between equal
    counts break by code point."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    pre = pre_tokenizers.BertPreTokenizer()

    def words(doc):
        return [w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(doc))]

    chars: set[str] = set()
    inner: set[str] = set()
    for doc in docs:
        for w in words(doc):
            chars.update(w)
            inner.update(w[1:])
    inner_sorted = sorted(inner)
    if len(inner_sorted) > 0xFFFE:
        raise ValueError(f"train_wordpiece: {len(inner_sorted)} distinct characters; at most {0xFFFE} fit")
    to_private = {c: chr(_CONTINUATION_BASE + i) for i, c in enumerate(inner_sorted)}
    from_private = {v: k for k, v in to_private.items()}

    def renamed(doc):  # words are whitespace-free after BERT pre-tokenisation, so a space rejoins them losslessly
        return " ".join(w[0] + "".join(to_private[c] for c in w[1:]) for w in words(doc))

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(WORDPIECE_SPECIALS),
                                  initial_alphabet=sorted(chars), show_progress=False)
    bpe.train_from_iterator((renamed(d) for d in docs), trainer=trainer, length=len(docs))

    def piece(token):
        if token in WORDPIECE_SPECIALS:
            return token
        if token[0] in from_private:  # starts inside a word: every character of it is a renamed one
            return "##" + "".join(from_private[c] for c in token)
        return token[0] + "".join(from_private.get(c, c) for c in token[1:])

    vocab = {piece(t): i for t, i in bpe.get_vocab().items()}
    assert len(vocab) == bpe.get_vocab_size(), "two trained pieces renamed to one"
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def wordpiece_tokenizer(docs: list[str], vocab_size: int, cache: Path, min_frequency: int = 2, lowercase: bool = True):
    """train_wordpiece on `docs`, cached under `cache` by their content and the settings."""
    from transformers import PreTrainedTokenizerFast

    key = content_hash("wordpiece-v2", content_hash(*docs), vocab_size, min_frequency, lowercase)
    path = Path(cache) / "tokenizers" / key
    if not (path / "tokenizer.json").exists():
        log.info("training a %d-token WordPiece tokenizer on %d texts (cached at %s)", vocab_size, len(docs), path)
        tok = train_wordpiece(docs, int(vocab_size), int(min_frequency), bool(lowercase))
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tok.save_pretrained(str(tmp))
        publish(tmp, path)
    return PreTrainedTokenizerFast.from_pretrained(str(path))


ENCODER_TOKENIZER_KINDS = ("auto", "train", "hf")
ENCODER_TOKENIZER_DEFAULTS = {"kind": "auto", "name": None, "vocab_size": 4096, "min_frequency": 2, "lowercase": True}


def check_encoder_tokenizer(t: dict | None, key: str = "dataset.tokenizer") -> dict:
    """The `tokenizer` block of an encoder task with its defaults filled in, checked (one line naming the key)."""
    t = {**ENCODER_TOKENIZER_DEFAULTS, **(t or {})}
    if t["kind"] not in ENCODER_TOKENIZER_KINDS:
        raise ValueError(f"{key}.kind: {t['kind']!r}; choose one of: {', '.join(ENCODER_TOKENIZER_KINDS)}")
    if t["kind"] == "hf" and not t["name"]:
        raise ValueError(f"{key}.name: kind=hf needs a tokenizer name or directory")
    return t


def encoder_tokenizer(t: dict, model_source: str | None, train_texts: list[str], cache: Path):
    """The tokenizer of an encoder task (text classification, retrieval): `auto` takes a pretrained model's own
    (model.init_from an HF directory with a tokenizer, e.g. model=minilm's WordPiece, or hf://name: its ids are what
    its embeddings were trained on) and otherwise trains `train`, an uncased WordPiece on `train_texts` ([PAD]=0,
    [UNK], [CLS], [SEP], [MASK]), cached by content; `hf` loads `t["name"]`."""
    kind = t["kind"]
    if kind == "auto":
        source = str(model_source or "")
        src = Path(source).expanduser()
        if source.startswith("hf://"):
            kind, t = "hf", {**t, "name": source.removeprefix("hf://")}
        elif source and src.is_dir() and ((src / "tokenizer.json").exists() or (src / "vocab.txt").exists()):
            kind, t = "hf", {**t, "name": str(src)}
        else:
            kind = "train"
    if kind == "hf":
        from transformers import AutoTokenizer

        name = str(t["name"])
        local = Path(name).expanduser()
        tok = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else name)
        if tok.pad_token_id is None:
            raise ConfigError(f"dataset.tokenizer.name: {name} has no pad token")
        return tok
    return wordpiece_tokenizer(train_texts, int(t["vocab_size"]), cache, int(t["min_frequency"]), bool(t["lowercase"]))


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
    import torch

    n = max(0, (len(tokens) - 1) // seq_len)
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return torch.from_numpy(np.asarray(tokens)[idx].astype(np.int64).reshape(n, seq_len + 1))


def tokenizer_id(tokenizer, d: DictConfig) -> str:
    """What identifies a tokenizer in cache keys: a hash of its serialisation, else its configured name."""
    if hasattr(tokenizer, "backend_tokenizer"):
        return content_hash(tokenizer.backend_tokenizer.to_str())
    return str(d.tokenizer.name)


# ---------------------------------------------------------------------------------------------- batches
def __getattr__(name: str):
    """ResumableBatchSampler and BlockDataset live in tasks/batches.py (they subclass torch's classes); they are
    importable from here as before, and importing this module does not import torch."""
    if name in ("ResumableBatchSampler", "BlockDataset"):
        from tasks import batches

        return getattr(batches, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
