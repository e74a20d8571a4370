"""ZIP-FIT: Embedding-Free Data Selection via Compression-Based Alignment
(Obbad et al., arXiv:2410.18194), with the `random` and a DSIR-style baseline
(Xie et al., "Data Selection for Language Models via Importance Resampling", arXiv:2302.03169).

ZIP-FIT ranks every source example x by its alignment with a target set Y and keeps the top k:

    C(s)        = length in bytes of the compressed UTF-8 string s        (paper: gzip)
    NCD(x, y)   = (C(x‖y) − min(C(x), C(y))) / max(C(x), C(y))            x‖y: string concatenation, source first
    align(x, Y) = mean_{y ∈ Y} (1 − NCD(x, y))
    selection   = the k source examples of highest align(x, Y)

Details from the official code (stair-lab/ZIP-FIT, src/zip_fit/zipfit.py): the concatenation is
source + target, the alignment is the plain mean of 1 − NCD over the target examples, and compressed sizes
of the source and the target examples are computed once and reused. Its default codec today is lz4 at
level 0 (not in the stdlib); here the paper's gzip is the default, at level 9 (Python's default; gzip at
level 0 only stores, which would make every NCD ≈ 1). Other stdlib codecs: zlib, bz2, lzma (raw
LZMA2 stream, no container header).

Ties in the score are broken by the SHA-256 of the example's text, so the selected set depends only on the
multiset of source texts, never on their order or on how work was split across processes.

DSIR-style baseline (hashed n-gram importance resampling): features are unigrams and bigrams of word tokens
hashed into `num_buckets` (DSIR default 10 000) buckets; a bag-of-n-grams model p_target (from the target
set) and p_raw (from the source) with add-one smoothing; the log importance weight of x is
Σ_f count_f(x)·(log p_target(f) − log p_raw(f)); k examples are resampled without replacement by the Gumbel
top-k trick (top-k of log w + Gumbel noise), seeded.

The method (`method=zip_fit`, on a multi-domain task: tasks/mixture.py): the source pool is every train document of the sampled
domains; the target set Y is the first `target_size` train documents of `target_domain` (a `sample: false`
domain: never trained on, its val split gives the target-set loss val/loss/<target>). The selector
(`zip_fit` | `random` | `dsir`, the same k) keeps k documents, the selection is saved as a `datasets` Dataset
(columns text, domain, score) under <cache>/selections/<content hash> and reused when it exists, and training
draws only from it (MixtureData.replace_train_documents). Source documents are put in content-hash order
first, so every selector's result depends only on the set of source documents, not on their order.
Paper settings: gzip, k chosen per experiment (here `k` or `fraction` of the pool).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import logging
import lzma
import math
import os
import re
import shutil
import sys
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from methods.base import Method

log = logging.getLogger(__name__)

CODECS = ("gzip", "zlib", "bz2", "lzma")


def compressed_size(text: str, codec: str = "gzip", level: int = 9) -> int:
    """C(text): bytes of the compressed UTF-8 encoding (gzip without timestamp; lzma as a raw LZMA2 stream,
    `level` its preset 0-9; bz2 levels start at 1)."""
    data = text.encode("utf-8")
    if codec == "gzip":
        return len(gzip.compress(data, compresslevel=level, mtime=0))
    if codec == "zlib":
        return len(zlib.compress(data, level))
    if codec == "bz2":
        return len(bz2.compress(data, compresslevel=max(1, level)))
    if codec == "lzma":  # raw LZMA2, dictionary just large enough for the input (a 64 MiB one costs
        # ~50 ms of allocation per call at preset 9 and compresses short texts no better)
        dict_size = max(1 << 12, min(1 << 26, 1 << max(0, len(data) - 1).bit_length()))
        filters = [{"id": lzma.FILTER_LZMA2, "preset": level, "dict_size": dict_size}]
        return len(lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters))
    raise ValueError(f"codec={codec!r} is not one of {', '.join(CODECS)}")


def ncd(x: str, y: str, codec: str = "gzip", level: int = 9) -> float:
    """Normalized compression distance between two strings."""
    cx, cy = compressed_size(x, codec, level), compressed_size(y, codec, level)
    return (compressed_size(x + y, codec, level) - min(cx, cy)) / max(cx, cy)


def _alignment_chunk(args) -> list[float]:
    sources, targets, target_sizes, codec, level = args
    scores = []
    for x in sources:
        cx = compressed_size(x, codec, level)
        sims = [1.0 - (compressed_size(x + y, codec, level) - min(cx, cy)) / max(cx, cy)
                for y, cy in zip(targets, target_sizes)]
        scores.append(math.fsum(sims) / len(sims))
    return scores


def _progress(total: int, desc: str, enabled: bool):
    """A tqdm bar when tqdm is installed, else a plain counter on stderr."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
        return tqdm(total=total, desc=desc)
    except ImportError:
        class Plain:
            n = 0

            def update(self, k):
                self.n += k
                print(f"\r{desc}: {self.n}/{total}", end="", file=sys.stderr)

            def close(self):
                print(file=sys.stderr)
        return Plain()


def alignment_scores(source: Sequence[str], target: Sequence[str], codec: str = "gzip", level: int = 9,
                     workers: int = 1, chunk_size: int = 64, progress: bool = False) -> np.ndarray:
    """align(x, Y) for every source example, float64 array in source order. `workers` > 1 uses processes."""
    if codec not in CODECS:
        raise ValueError(f"codec={codec!r} is not one of {', '.join(CODECS)}")
    if not target:
        raise ValueError("target set is empty")
    targets = list(target)
    target_sizes = [compressed_size(y, codec, level) for y in targets]
    chunks = [list(source[i:i + chunk_size]) for i in range(0, len(source), chunk_size)]
    jobs = [(chunk, targets, target_sizes, codec, level) for chunk in chunks]
    bar = _progress(len(source), f"zip_fit ({codec})", progress)
    scores: list[float] = []
    if workers <= 1:
        results = map(_alignment_chunk, jobs)
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(_alignment_chunk, jobs)
    try:
        for chunk, chunk_scores in zip(chunks, results):
            scores.extend(chunk_scores)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if workers > 1:
            pool.shutdown()
        if bar is not None:
            bar.close()
    return np.asarray(scores, dtype=np.float64)


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def top_k_indices(scores: np.ndarray, texts: Sequence[str], k: int) -> np.ndarray:
    """Indices of the k highest scores; ties broken by content hash (order-independent)."""
    if not 0 < k <= len(texts):
        raise ValueError(f"k={k} must be in 1..{len(texts)} (the number of source examples)")
    order = sorted(range(len(texts)), key=lambda i: (-float(scores[i]), content_hash(texts[i])))
    return np.asarray(order[:k], dtype=np.int64)


def zip_fit_select(source: Sequence[str], target: Sequence[str], k: int, codec: str = "gzip",
                   level: int = 9, workers: int = 1, progress: bool = False) -> np.ndarray:
    """ZIP-FIT: indices into `source` of the k examples best aligned with `target`, best first."""
    scores = alignment_scores(source, target, codec, level, workers=workers, progress=progress)
    return top_k_indices(scores, source, k)


def random_select(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Baseline: k of n indices uniformly without replacement, seeded."""
    if not 0 < k <= n:
        raise ValueError(f"k={k} must be in 1..{n}")
    return np.random.default_rng(seed).choice(n, size=k, replace=False)


_TOKEN = re.compile(r"\w+|[^\w\s]")


def hashed_ngram_counts(text: str, num_buckets: int = 10_000) -> np.ndarray:
    """Counts of hashed unigrams and bigrams of lower-cased word/punctuation tokens (crc32, stable)."""
    tokens = _TOKEN.findall(text.lower())
    grams = tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]
    ids = [zlib.crc32(g.encode("utf-8")) % num_buckets for g in grams]
    return np.bincount(np.asarray(ids, dtype=np.int64), minlength=num_buckets).astype(np.float64)


def dsir_log_weights(source: Sequence[str], target: Sequence[str], num_buckets: int = 10_000) -> np.ndarray:
    """log p_target(x) − log p_raw(x) under hashed bag-of-n-grams models (add-one smoothing)."""
    source_features = np.stack([hashed_ngram_counts(x, num_buckets) for x in source])
    target_counts = sum(hashed_ngram_counts(y, num_buckets) for y in target)
    log_p_target = np.log(target_counts + 1.0) - np.log(target_counts.sum() + num_buckets)
    raw_counts = source_features.sum(axis=0)
    log_p_raw = np.log(raw_counts + 1.0) - np.log(raw_counts.sum() + num_buckets)
    return source_features @ (log_p_target - log_p_raw)


def dsir_select(source: Sequence[str], target: Sequence[str], k: int, num_buckets: int = 10_000,
                seed: int = 0, log_weights: np.ndarray | None = None) -> np.ndarray:
    """DSIR-style importance resampling: Gumbel top-k on the log importance weights (given, or computed), seeded."""
    if not 0 < k <= len(source):
        raise ValueError(f"k={k} must be in 1..{len(source)}")
    log_w = dsir_log_weights(source, target, num_buckets) if log_weights is None else log_weights
    keys = log_w + np.random.default_rng(seed).gumbel(size=len(source))
    return np.argsort(-keys, kind="stable")[:k]


def select_split(dataset, indices):
    """The selected rows of a `datasets.Dataset` as a new Dataset, in selection order."""
    return dataset.select([int(i) for i in indices])


# ---------------------------------------------------------------------------------------------- the method
SELECTORS = ("zip_fit", "random", "dsir")


def _choice_error(key: str, value: Any, choices: Sequence[str]) -> ValueError:
    return ValueError(f"method.{key}: {value!r} is not valid; choose one of: {', '.join(choices)}")


def held_out_domain(data, requested: str | None, key: str) -> str:
    """The target/specific domain: `requested`, or the config's only `sample: false` domain."""
    if requested is not None:
        if requested not in data.domains:
            raise _choice_error(key, requested, data.domains)
        return requested
    held_out = [d for d, s in zip(data.domains, data.sampled) if not s]
    if len(held_out) != 1:
        raise ValueError(f"method.{key}: null needs exactly one `sample: false` domain in dataset.domains, "
                         f"found {len(held_out)}; choose one of: {', '.join(data.domains)}")
    return held_out[0]


def cache_root(data) -> Path:
    """The runner's cache (paths.cache_dir) as the data knows it, else METHODBENCH_CACHE, else ~/.cache."""
    root = getattr(data, "cache_dir", None) or os.environ.get("METHODBENCH_CACHE") or "~/.cache/methodbench"
    return Path(str(root)).expanduser()


class ZipFit(Method):
    """ZIP-FIT data selection (or the random / DSIR-style baseline at the same k) before training."""

    needs_task = frozenset({"domains"})
    needs_model = frozenset({"causal-lm"})

    def __init__(self, name: str = "zip_fit", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 selector: str = "zip_fit", k: int | None = None, fraction: float = 0.25,
                 target_domain: str | None = None, target_size: int = 50, codec: str = "gzip", level: int = 9,
                 num_buckets: int = 10_000, workers: int = 1, progress: bool = True, seed: int | None = None):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        if selector not in SELECTORS:
            raise _choice_error("selector", selector, SELECTORS)
        if codec not in CODECS:
            raise _choice_error("codec", codec, CODECS)
        problems = []
        if k is not None and int(k) <= 0:
            problems.append(f"method.k: must be a positive number of documents or null (use `fraction`), got {k}")
        if not 0.0 < float(fraction) <= 1.0:
            problems.append(f"method.fraction: must be in (0, 1], got {fraction}")
        if int(target_size) <= 0:
            problems.append(f"method.target_size: must be positive, got {target_size}")
        if int(workers) < 1:
            problems.append(f"method.workers: must be >= 1, got {workers}")
        if problems:
            raise ValueError("; ".join(problems))
        self.selector, self.k, self.fraction = selector, None if k is None else int(k), float(fraction)
        self.target_domain, self.target_size = target_domain, int(target_size)
        self.codec, self.level, self.num_buckets = codec, int(level), int(num_buckets)
        self.workers, self.progress, self.seed = int(workers), bool(progress), seed
        self.stats: dict[str, float] = {}

    # -- selection ---------------------------------------------------------------------------
    def select(self, source: Sequence[str], target: Sequence[str], k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices into `source` of the selection, their scores)."""
        if self.selector == "zip_fit":
            scores = alignment_scores(source, target, self.codec, self.level, workers=self.workers,
                                      progress=self.progress)
            return top_k_indices(scores, source, k), scores
        if self.selector == "dsir":
            log_w = dsir_log_weights(source, target, self.num_buckets)
            return dsir_select(source, target, k, self.num_buckets, seed, log_weights=log_w), log_w
        return random_select(len(source), k, seed), np.zeros(len(source))

    def selection_spec(self, k: int, seed: int) -> dict:
        """Everything besides the documents that decides the selection: its cache key."""
        return {"v": 1, "selector": self.selector, "k": k, "codec": self.codec, "level": self.level,
                "num_buckets": self.num_buckets, "seed": seed if self.selector != "zip_fit" else None}

    def selection(self, data):
        """The selected documents as a `datasets` Dataset (text, domain, score), computed once and cached."""
        import datasets

        target_name = held_out_domain(data, self.target_domain, "target_domain")
        target = list(data.documents(target_name, "train"))[: self.target_size]
        if not target:
            raise ValueError(f"method.target_domain: domain {target_name!r} has no train documents")
        pool = [(content_hash(text), domain, text) for domain, sampled in zip(data.domains, data.sampled)
                if sampled and domain != target_name for text in data.documents(domain, "train")]
        pool.sort()  # content order: the selection depends on the set of documents only
        source = [text for _, _, text in pool]
        k = self.k if self.k is not None else max(1, round(self.fraction * len(source)))
        if k > len(source):
            raise ValueError(f"method.k: {k} is more than the {len(source)} source documents")
        seed = int(torch.initial_seed() if self.seed is None else self.seed)  # the run's seed
        h = hashlib.sha256(json.dumps(self.selection_spec(k, seed), sort_keys=True).encode())
        for _, domain, text in pool:
            h.update(f"{domain}\0{content_hash(text)}\0".encode())
        h.update(b"target")
        for text in target:
            h.update(content_hash(text).encode())
        path = cache_root(data) / "selections" / h.hexdigest()[:16]
        self.stats = {"selection/target_domain": target_name, "selection/k": k, "selection/pool": len(source)}
        if (path / "selection.json").exists():
            self.stats.update(json.loads((path / "selection.json").read_text()))
            self.stats["selection/reused"] = 1
            log.info("%s: reusing the selection of %d documents at %s", self.selector, k, path)
            return datasets.load_from_disk(str(path / "dataset"))
        log.info("%s: selecting %d of %d source documents for target %r (%d documents, %s)", self.selector, k,
                 len(source), target_name, len(target), self.codec if self.selector == "zip_fit" else "")
        t0 = time.perf_counter()
        self.data = data  # a subclass's select may need more of the task (PreSelect: its tokenizer)
        chosen, scores = self.select(source, target, k, seed)
        seconds = time.perf_counter() - t0
        ds = datasets.Dataset.from_dict({"text": [source[i] for i in chosen],
                                         "domain": [pool[i][1] for i in chosen],
                                         "score": [float(scores[i]) for i in chosen]})
        meta = {"selection/seconds": seconds, "selection/seconds_per_1000": 1000 * seconds / len(source)}
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        datasets.disable_progress_bars()  # one bar per save of a few rows: noise
        try:
            ds.save_to_disk(str(tmp / "dataset"))
        finally:
            datasets.enable_progress_bars()
        (tmp / "selection.json").write_text(json.dumps(meta) + "\n")
        try:
            os.replace(tmp, path)
        except OSError:  # another process published it first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        self.stats.update(meta)
        self.stats["selection/reused"] = 0
        return ds

    def prepare_data(self, data):
        ds = self.selection(data)
        target = self.stats["selection/target_domain"]
        # every source domain's train split becomes its selected documents (none: the domain is never drawn)
        by_domain: dict[str, list[str]] = {d: [] for d, s in zip(data.domains, data.sampled) if s and d != target}
        for text, domain in zip(ds["text"], ds["domain"]):
            by_domain[domain].append(text)
        for domain, texts in by_domain.items():
            self.stats[f"selection/share/{domain}"] = len(texts) / len(ds)
        shares = ", ".join(f"{k.rsplit('/', 1)[1]} {v:.1%}" for k, v in self.stats.items() if "/share/" in k)
        selected = data.replace_train_documents(by_domain)
        sizes = selected.sizes
        self.stats["selection/train_blocks"] = int(sum(sizes[data.domains.index(d)] for d in by_domain))
        log.info("%s selection: %d documents, %d training blocks (%s)", self.selector, len(ds),
                 self.stats["selection/train_blocks"], shares)
        return selected

    def evaluate(self, model, data) -> dict[str, float]:
        """Selection time and, per source domain, its share of the selection (logged as eval/selection/...)."""
        return {k: float(v) for k, v in self.stats.items() if isinstance(v, (int, float))}
