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
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import math
import re
import sys
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np

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
                seed: int = 0) -> np.ndarray:
    """DSIR-style importance resampling: Gumbel top-k on the log importance weights, seeded."""
    if not 0 < k <= len(source):
        raise ValueError(f"k={k} must be in 1..{len(source)}")
    log_w = dsir_log_weights(source, target, num_buckets)
    keys = log_w + np.random.default_rng(seed).gumbel(size=len(source))
    return np.argsort(-keys, kind="stable")[:k]


def select_split(dataset, indices):
    """The selected rows of a `datasets.Dataset` as a new Dataset, in selection order."""
    return dataset.select([int(i) for i in indices])
