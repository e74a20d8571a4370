"""Multi-domain data (tasks.mixture.MixtureTask): several domains, one tokenizer, domain-labelled batches drawn by
domain probabilities that may change during training.

    dataset.domains: a list of mappings, one per domain, in the order of every per-domain array:
        name        the domain's name (val/loss/<name>)
        kind        prose | code | markov | local | hub
        documents   how many documents to take (null: all; markov: how many to generate)
        sample      false: never drawn for training by default (natural probability 0), but it has documents
                    and a validation loss: a target / specific set (ZIP-FIT, DGA)
        ...         the kind's own keys (DOMAIN_KEYS below)

Every domain's documents are split train/val by a hash of their text (tasks.common.split_documents); a document
already in an earlier domain is dropped from later ones, so domains are disjoint. One byte-level BPE tokenizer
is trained on the union of the train documents; documents and token streams are cached on disk by content hash.

A training micro-batch b (of B examples per device) is drawn with a generator seeded by (seed, b): each
example's domain from probs(b // accumulate_grad_batches), then one of that domain's (seq_len + 1)-token
blocks uniformly (with replacement). Batches are thus a pure function of the micro-batch index: a resumed run
sees the batches the uninterrupted run would have seen, and a method may change the probabilities during
training (set_sampling: they are read when a micro-batch is drawn, i.e. up to one prefetched batch ahead).
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tasks.base import BuildContext, Task
from tasks.common import (
    content_hash,
    load_documents,
    load_tokenizer,
    publish,
    split_documents,
    stdlib_documents,
    stdlib_sources,
    token_blocks,
    tokenize,
    tokenizer_id,
)
from tasks.errors import ConfigError, choices_hint
from tasks.lm_corpus import TokenData, check_tokenizer

log = logging.getLogger(__name__)

COMMON_KEYS = {"name", "kind", "documents", "sample"}
DOMAIN_KEYS: dict[str, dict[str, Any]] = {  # kind -> its own keys and their defaults
    "prose": {"min_chars": 200},                        # stdlib docstrings and pydoc topics of at least min_chars
    "code": {"min_chars": 200, "max_chars": 4000},      # stdlib functions/classes; longer classes by method
    "markov": {"states": 32, "order": 1, "seed": 0,     # words, context length, chain seed (a list: a mix of chains)
               "length": 200, "concentration": 0.1},   # words per document, Dirichlet concentration of the rows
    "local": {"path": None, "text_field": "text", "split": "train"},
    "hub": {"path": None, "subset": None, "text_field": "text", "split": "train", "streaming": True},
}


# ---------------------------------------------------------------------------------------------- config
def check_domains(domains: Any) -> list[str]:
    """The problems of `dataset.domains` (one line each), checked when the task is configured."""
    if not isinstance(domains, (list, tuple)) or not domains:
        return ["dataset.domains: dataset.source=mixture needs a non-empty list of domains (name, kind, documents)"]
    out, names = [], []
    for i, dom in enumerate(domains):
        where = f"dataset.domains[{i}]"
        if not isinstance(dom, dict):
            out.append(f"{where}: expected a mapping with keys name, kind, documents, got {dom!r}")
            continue
        name, kind = dom.get("name"), dom.get("kind")
        if not isinstance(name, str) or not name or "/" in name:
            out.append(f"{where}.name: a non-empty name without '/' is required, got {name!r}")
        else:
            names.append(name)
            where = f"dataset.domains[{name}]"
        if kind not in DOMAIN_KEYS:
            out.append(f"{where}.kind: {kind!r} is not valid; {choices_hint(str(kind), list(DOMAIN_KEYS))}")
            continue
        valid = COMMON_KEYS | set(DOMAIN_KEYS[kind])
        for key in dom:
            if key not in valid:
                out.append(f"{where}.{key}: not a key of a {kind} domain; {choices_hint(str(key), sorted(valid))}")
        n = dom.get("documents")
        if n is None and kind == "markov" or n is not None and (not isinstance(n, int) or isinstance(n, bool) or n <= 0):
            out.append(f"{where}.documents: must be a positive integer{'' if kind == 'markov' else ' or null (all)'}, got {n!r}")
        if not isinstance(dom.get("sample", True), bool):
            out.append(f"{where}.sample: must be true or false, got {dom.get('sample')!r}")
        if kind in ("local", "hub") and not dom.get("path"):
            out.append(f"{where}.path: a {kind} domain needs a path (a file/dir or a hub name)")
        if kind == "local" and dom.get("path") and not Path(str(dom["path"])).expanduser().exists():
            out.append(f"{where}.path: no such file or directory: {dom['path']}")
        if kind == "markov":
            spec = {**DOMAIN_KEYS["markov"], **dom}
            for key in ("states", "order", "length"):
                if not isinstance(spec[key], int) or isinstance(spec[key], bool) or spec[key] <= 0:
                    out.append(f"{where}.{key}: must be a positive integer, got {spec[key]!r}")
            if not isinstance(spec["concentration"], (int, float)) or spec["concentration"] <= 0:
                out.append(f"{where}.concentration: must be > 0, got {spec['concentration']!r}")
            seeds = spec["seed"] if isinstance(spec["seed"], list) else [spec["seed"]]
            if not seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
                out.append(f"{where}.seed: a non-negative integer or a list of them, got {spec['seed']!r}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        out.append(f"dataset.domains: names must be unique; repeated: {', '.join(dupes)}")
    if not out and not any(d.get("sample", True) for d in domains):
        out.append("dataset.domains: every domain has sample: false; at least one must be drawn for training")
    return out


def _domain_specs(d: DictConfig) -> list[dict]:
    domains = OmegaConf.to_container(d.domains, resolve=True) if OmegaConf.is_config(d.domains) else list(d.domains)
    problems = check_domains(domains)
    if problems:
        raise ConfigError(problems)
    return [{**DOMAIN_KEYS[dom["kind"]], "documents": None, "sample": True, **dom} for dom in domains]


# ---------------------------------------------------------------------------------------------- domains
def code_documents(min_chars: int = 200, max_chars: int = 4000) -> list[str]:
    """Python source of this installation's stdlib, one document per top-level function or class (a class
    longer than max_chars: one per method), in a fixed order."""
    docs = []
    for text, tree in stdlib_sources():
        lines = text.splitlines()
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            chunk = "\n".join(lines[node.lineno - 1:node.end_lineno])
            if len(chunk) > max_chars and isinstance(node, ast.ClassDef):
                parts = ["\n".join(lines[m.lineno - 1:m.end_lineno]) for m in node.body
                         if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
            else:
                parts = [chunk]
            docs += [p for p in parts if min_chars <= len(p) <= max_chars]
    return docs


def markov_documents(name: str, documents: int, states: int = 32, order: int = 1, seed: int | list[int] = 0,
                     length: int = 200, concentration: float = 0.1) -> list[str]:
    """`documents` texts of `length` words from a random Markov chain of the given order over `states` words.

    The chain (its made-up words and its transition rows, each a Dirichlet(concentration) draw: small values
    make a chain of low entropy) depends only on `seed`, so distinct seeds are distinct domains; a list of
    seeds draws each document from one of those chains. The documents drawn depend on the domain's name as
    well: two domains of the same chain share no documents (a specific set "from domain A's chain")."""
    seeds = seed if isinstance(seed, list) else [seed]
    chains = []
    for s in seeds:
        rng = np.random.default_rng([s, states, order])
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
        words: list[str] = []
        while len(words) < states:
            w = "".join(rng.choice(letters, size=int(rng.integers(2, 7))))
            if w not in words:
                words.append(w)
        rows = rng.dirichlet(np.full(states, concentration), size=states ** order)
        chains.append((np.array(words), np.cumsum(rows, axis=1)))
    name_seed = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big")
    rng = np.random.default_rng([name_seed, *seeds, states, order])
    out = []
    for _ in range(documents):
        words, cdf = chains[int(rng.integers(len(chains)))]
        context = [int(x) for x in rng.integers(states, size=order)]
        ids = list(context)
        for u in rng.random(length - order):
            row = 0
            for c in context:
                row = row * states + c
            nxt = min(int(np.searchsorted(cdf[row], u * cdf[row, -1], side="right")), states - 1)
            ids.append(nxt)
            context = context[1:] + [nxt]
        out.append(" ".join(words[ids]))
    return out


def _pick(docs: list[str], n: int | None) -> list[str]:
    """n documents spread over the corpus: the first n in the order of a hash of their text (deterministic)."""
    if n is None or n >= len(docs):
        return docs
    order = sorted(range(len(docs)), key=lambda i: hashlib.blake2b(docs[i].encode(), digest_size=8).digest())
    return [docs[i] for i in sorted(order[:n])]


def domain_documents(spec: dict, cache: Path) -> list[str]:
    """The documents of one domain; those of the built-in kinds are cached on disk (keyed by the spec and the
    Python installation they are read from)."""
    kind, n = spec["kind"], spec["documents"]
    if kind in ("local", "hub"):
        sub = OmegaConf.create({"source": kind, "path": spec["path"], "subset": spec.get("subset"),
                                "split": spec["split"], "text_field": spec["text_field"],
                                "streaming": bool(spec.get("streaming", False)), "max_documents": n})
        return load_documents(sub)
    own = {k: spec[k] for k in sorted(DOMAIN_KEYS[kind])}
    key = content_hash("mixture-docs-v1", kind, spec["name"] if kind == "markov" else "", n, own, sys.version,
                sysconfig.get_paths()["stdlib"])
    path = cache / "mixture" / "documents" / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    if kind == "prose":
        docs = _pick(stdlib_documents(spec["min_chars"]), n)
    elif kind == "code":
        docs = _pick(code_documents(spec["min_chars"], spec["max_chars"]), n)
    else:
        docs = markov_documents(spec["name"], n, **own)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(docs))
    os.replace(tmp, path)
    return docs


def _tokens(tokenizer, tok_id: str, docs: list[str], cache: Path) -> np.ndarray:
    """The documents' token stream (each followed by EOS), cached by content hash."""
    path = cache / "mixture" / "tokens" / f"{content_hash('mixture-tokens-v1', content_hash(*docs), tok_id)}.npy"
    if path.exists():
        return np.load(path)
    ids = tokenize(tokenizer, docs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npy")
    np.save(tmp, ids)
    publish(tmp, path)
    return ids


# ---------------------------------------------------------------------------------------------- data
@dataclass
class MixtureData(TokenData):
    """TokenData (train/val: every domain's stream concatenated, for the runner's statistics) with the domains.

    `domains` and `sampled` are in config order; every per-domain array follows it."""

    domains: list[str] = field(default_factory=list)
    sampled: list[bool] = field(default_factory=list)
    domain_docs: dict[tuple[str, str], list[str]] = field(default_factory=dict, repr=False)  # (domain, split)
    domain_tokens: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, repr=False)
    cache_dir: str = ""
    tok_id: str = ""
    probs_fn: Callable[[int], np.ndarray] | None = field(default=None, repr=False)  # None: natural_probs
    accumulate: int = 1  # trainer.accumulate_grad_batches (set by MixtureTask.build): micro-batch b is optimizer step b // this
    max_steps: int | None = None  # trainer.max_steps (set by MixtureTask.build), for schedules given as fractions of training

    # -- domains -----------------------------------------------------------------------------
    def _index(self, domain: str) -> int:
        if domain not in self.domains:
            raise KeyError(f"no domain {domain!r}; the domains are {', '.join(self.domains)}")
        return self.domains.index(domain)

    def documents(self, domain: str, split: str) -> list[str]:
        self._index(domain)
        return list(self.domain_docs[(domain, split)])

    def domain_stream(self, domain: str, split: str) -> np.ndarray:
        self._index(domain)
        return self.domain_tokens[(domain, split)]

    def n_blocks(self, domain: str, split: str) -> int:
        return max(0, (len(self.domain_stream(domain, split)) - 1) // self.seq_len)

    def block(self, domain: str, split: str, j: int) -> torch.Tensor:
        tokens, L = self.domain_stream(domain, split), self.seq_len
        return torch.from_numpy(np.asarray(tokens[j * L:j * L + L + 1], dtype=np.int64))

    def domain_blocks(self, domain: str, split: str) -> torch.Tensor:
        """(n, seq_len + 1) non-overlapping blocks of one domain's tokens (consecutive ones share a boundary token)."""
        return token_blocks(self.domain_stream(domain, split), self.seq_len)

    @property
    def sizes(self) -> np.ndarray:
        """Train blocks per domain (sample: false domains included)."""
        return np.array([self.n_blocks(d, "train") for d in self.domains], dtype=np.int64)

    def natural_probs(self) -> np.ndarray:
        """q_k ∝ train blocks of domain k; 0 for sample: false domains."""
        n = self.sizes * np.asarray(self.sampled, dtype=np.float64)
        if n.sum() <= 0:
            raise ConfigError("dataset.domains: the sampled domains have no training blocks; raise their documents")
        return n / n.sum()

    # -- sampling ----------------------------------------------------------------------------
    def set_sampling(self, probs: Callable[[int], np.ndarray] | None) -> None:
        """Domain probabilities as a function of the optimizer step (None: natural_probs). Called for every
        micro-batch when it is drawn, so a method may change them during training."""
        self.probs_fn = probs

    def probs(self, step: int) -> np.ndarray:
        p = np.asarray(self.probs_fn(step) if self.probs_fn is not None else self.natural_probs(), dtype=np.float64)
        if p.shape != (len(self.domains),) or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
            raise ValueError(f"domain probabilities at step {step} must be {len(self.domains)} non-negative numbers "
                             f"(one per domain: {', '.join(self.domains)}), got {p.tolist()}")
        empty = [d for d, pk, n in zip(self.domains, p, self.sizes) if pk > 0 and n == 0]
        if empty:
            raise ValueError(f"domain probabilities at step {step} put mass on domains without training blocks: {empty}")
        return p / p.sum()

    # -- selection ---------------------------------------------------------------------------
    def replace_train_documents(self, domain_docs: dict[str, list[str]]) -> MixtureData:
        """A new MixtureData whose train split of each given domain is these documents (tokenized with the same
        tokenizer, cached); the other domains and every val split unchanged. A custom sampling function is
        kept; the default (natural) follows the new sizes."""
        docs, tokens = dict(self.domain_docs), dict(self.domain_tokens)
        cache = Path(self.cache_dir)
        for domain, texts in domain_docs.items():
            self._index(domain)
            docs[(domain, "train")] = list(texts)
            tokens[(domain, "train")] = _tokens(self.tokenizer, self.tok_id, list(texts), cache)
        train = np.concatenate([tokens[(d, "train")] for d in self.domains])
        key = content_hash("mixture-replaced", self.cache_key, {d: content_hash(*t) for d, t in domain_docs.items()})
        return replace(self, train=train, train_docs=sum(len(docs[(d, "train")]) for d in self.domains),
                       domain_docs=docs, domain_tokens=tokens, cache_key=key)

    # -- batches -----------------------------------------------------------------------------
    def make_loaders(self, batch_size: int, total_micro_batches: int, seed: int, start: Callable[[], int] = lambda: 0,
                     rank: int = 0, world: int = 1, val_batches: int | None = None, num_workers: int = 0):
        """Train batches (tokens (B, T+1) long, domain (B,) long) drawn by MixtureSampler; val batches the same
        tuples over every domain's val blocks (val_batches caps each domain at val_batches * B * world blocks)."""
        train_dl = torch.utils.data.DataLoader(
            DomainBlocks(self, "train", []),  # global block indices come from the sampler
            batch_sampler=MixtureSampler(self, batch_size, total_micro_batches, seed, start, rank, world),
            num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
        val_items = []
        for k, d in enumerate(self.domains):
            n = self.n_blocks(d, "val")
            if n == 0:
                raise ConfigError(f"dataset.domains[{d}]: its val split is shorter than model.seq_len + 1 tokens; "
                                  "raise its documents or dataset.val_fraction")
            if val_batches is not None:
                n = min(n, val_batches * batch_size * world)
            val_items += [(k, j) for j in range(n)]
        val_dl = torch.utils.data.DataLoader(DomainBlocks(self, "val", val_items[rank::world]), batch_size=batch_size,
                                             shuffle=False, generator=torch.Generator().manual_seed(seed))
        return train_dl, val_dl

    @staticmethod
    def eval_targets(val_dl) -> torch.Tensor:
        """Every validation block's targets, (n, T), for the unigram baseline."""
        ds = val_dl.dataset
        return torch.stack([ds[i][0][1:] for i in range(len(ds))])

    def counts(self) -> dict[str, int]:
        out = super().counts()
        for d in self.domains:
            out[f"train_blocks/{d}"] = self.n_blocks(d, "train")
        return out


class DomainBlocks(torch.utils.data.Dataset):
    """Items (block tokens (T+1,), domain index) of a MixtureData split. Indexed by position in `items`
    ((domain index, block index) pairs), or, for train, by a global block index from MixtureSampler."""

    def __init__(self, data: MixtureData, split: str, items: list[tuple[int, int]]):
        self.data, self.split, self.items = data, split, items
        self.domain_names = list(data.domains)
        sizes = [data.n_blocks(d, split) for d in data.domains]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.items) if self.split == "val" else int(self.offsets[-1])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.split == "val":
            k, j = self.items[i]
        else:
            k = int(np.searchsorted(self.offsets, i, side="right")) - 1
            j = i - int(self.offsets[k])
        return self.data.block(self.data.domains[k], self.split, j), k


class MixtureSampler(torch.utils.data.Sampler):
    """Micro-batch b: B * world examples drawn with a generator seeded by (seed, b), each a domain from
    data.probs(b // accumulate) by inverse CDF (a domain of probability 0 is never drawn) and then one of
    its train blocks uniformly; rank r takes the r-th B of them. Yields global block indices (DomainBlocks)."""

    def __init__(self, data: MixtureData, batch_size: int, total: int, seed: int, start: Callable[[], int] = lambda: 0,
                 rank: int = 0, world: int = 1):
        self.data, self.bs, self.total, self.seed = data, batch_size, total, seed
        self.start, self.rank, self.world = start, rank, world

    def __len__(self) -> int:
        return self.total

    def draw(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(domain index, block index within the domain) of every example of micro-batch b on this rank."""
        p = self.data.probs(b // self.data.accumulate)
        sizes = self.data.sizes
        rng = np.random.default_rng([self.seed, b])
        n = self.bs * self.world
        cdf = np.cumsum(p)
        domains = np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), len(p) - 1)
        blocks = np.minimum((rng.random(n) * sizes[domains]).astype(np.int64), sizes[domains] - 1)
        lo = self.rank * self.bs
        return domains[lo:lo + self.bs], blocks[lo:lo + self.bs]

    def __iter__(self):
        offsets = np.concatenate([[0], np.cumsum(self.data.sizes)]).astype(np.int64)
        for b in range(int(self.start()), self.total):
            domains, blocks = self.draw(b)
            yield (offsets[domains] + blocks).tolist()


# ---------------------------------------------------------------------------------------------- build
def mixture_from_documents(docs: dict[str, list[str]], sampled: list[bool], d: DictConfig, seq_len: int, cache: Path,
                           version: str, data_class: type | None = None, tokenizer_domains: list[str] | None = None,
                           where=lambda name: f"dataset.domains[{name}]", fix: str = "raise its documents", **extra):
    """The MixtureData (or `data_class`) of documents per domain, in order: each domain split by d.val_fraction,
    one tokenizer (d.tokenizer) trained on the train documents of `tokenizer_domains` (default: every domain), the tokens
    cached by content. `where(name)` and `fix` word a split error; `extra` goes to the data class."""
    split = {}
    for name, texts in docs.items():
        try:
            split[name] = split_documents(texts, float(d.val_fraction))
        except ConfigError as e:
            raise ConfigError(f"{where(name)}: {e}; {fix}") from e
    names = list(docs)
    union = [t for name in (tokenizer_domains or names) for t in split[name][0]]
    tokenizer = load_tokenizer(d.tokenizer, union, cache)
    tok_id = tokenizer_id(tokenizer, d)
    domain_docs, domain_tokens = {}, {}
    for name in names:
        for part, texts in zip(("train", "val"), split[name]):
            domain_docs[(name, part)] = texts
            domain_tokens[(name, part)] = _tokens(tokenizer, tok_id, texts, cache)
    train = np.concatenate([domain_tokens[(n, "train")] for n in names])
    val = np.concatenate([domain_tokens[(n, "val")] for n in names])
    key = content_hash(version, [(n, content_hash(*docs[n])) for n in names], d.val_fraction, tok_id)
    return (data_class or MixtureData)(
        train, val, tokenizer, len(tokenizer), seq_len, sum(len(split[n][0]) for n in names),
        sum(len(split[n][1]) for n in names), key, domains=names, sampled=list(sampled), domain_docs=domain_docs,
        domain_tokens=domain_tokens, cache_dir=str(cache), tok_id=tok_id, **extra)


def build_mixture_data(d: DictConfig, seq_len: int, cache_dir: str) -> MixtureData:
    cache = Path(cache_dir).expanduser()
    specs = _domain_specs(d)
    seen: set[str] = set()
    docs: dict[str, list[str]] = {}
    for spec in specs:
        raw = domain_documents(spec, cache)
        kept = [t for t in dict.fromkeys(raw) if t not in seen]
        if len(kept) < len(raw):
            log.info("domain %s: %d duplicate documents dropped (within it or shared with an earlier domain)",
                     spec["name"], len(raw) - len(kept))
        seen.update(kept)
        docs[spec["name"]] = kept
    names = [s["name"] for s in specs]
    data = mixture_from_documents(docs, [bool(s["sample"]) for s in specs], d, seq_len, cache, "mixture-v1",
                                  where=lambda name: f"dataset.domains[{name}]", fix="raise its documents")
    for name, spec in zip(names, specs):
        if spec["sample"] and data.n_blocks(name, "train") == 0:
            raise ConfigError(f"dataset.domains[{name}]: its train split is shorter than model.seq_len + 1 tokens; "
                              "raise its documents")
    log.info("mixture: %s", ", ".join(f"{n} {data.n_blocks(n, 'train')}/{data.n_blocks(n, 'val')} blocks"
                                      f"{'' if s else ' (not sampled)'}" for n, s in zip(names, data.sampled)))
    return data


class MixtureTask(Task):
    """Several domains, domain-labelled batches drawn by probabilities a method may change during training."""

    provides = frozenset({"tokens", "documents", "domains"})
    model_kinds = ("causal-lm",)

    def __init__(self, domains: list | None = None, val_fraction: float = 0.1, tokenizer: dict | None = None):
        domains = OmegaConf.to_container(domains, resolve=True) if OmegaConf.is_config(domains) else domains
        problems = check_domains(domains)
        if not 0.0 < float(val_fraction) < 1.0:
            problems.append(f"dataset.val_fraction: must be in (0, 1), got {val_fraction}")
        tokenizer = check_tokenizer(tokenizer, problems)
        if problems:
            raise ValueError("; ".join(problems))
        self.spec = OmegaConf.create({"domains": domains, "val_fraction": float(val_fraction), "tokenizer": tokenizer})

    def vocab_size_hint(self) -> int | None:
        return int(self.spec.tokenizer.vocab_size) if self.spec.tokenizer.kind == "train" else None

    def build(self, ctx: BuildContext) -> MixtureData:
        data = build_mixture_data(self.spec, ctx.seq_len, str(ctx.cache_dir))
        data.accumulate, data.max_steps = int(ctx.accumulate_grad_batches), int(ctx.max_steps)
        return data
